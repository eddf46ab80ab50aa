"""A service under systemd: its listener comes from socket activation, or
from the descriptor store after a restart; on its first start it makes
one and stores it.  Outside systemd it runs too, on a port of its own."""

import socket

from fdpass import systemd

passed = dict(systemd.listen_fds())               # {"http": 3} after a restart
if "http" in passed:
    http = socket.socket(fileno=passed["http"])   # the listener the last instance stored
else:
    http = socket.create_server(("127.0.0.1", 0))
    systemd.store_fds("http", [http])             # kept by systemd across restarts
systemd.notify("READY=1")                         # False outside systemd: no NOTIFY_SOCKET
print("serving on", http.family.name)  # serving on AF_INET
http.close()
