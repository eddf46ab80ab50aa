"""A privilege-separated broker: a root process opens a file for the one
user it serves, and refuses everyone else, deciding by each request's
Sender, as the kernel attests it.  Run it as root."""

import os
import socket
import tempfile

import fdpass

SERVED_UID = 65534  # nobody: the sandboxed worker this broker serves

folder = tempfile.mkdtemp()
os.chmod(folder, 0o755)  # workers must reach the socket
secret = os.path.join(folder, "secret")
with open(secret, "w") as f:
    f.write("for nobody's eyes only\n")
os.chmod(secret, 0o600)  # root's: no worker can open it itself
path = os.path.join(folder, "broker.sock")


def worker(uid: int) -> int:
    """Become uid, ask the broker for the secret; exit status 0 if it came."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        mine, theirs = socket.socketpair()  # the reply comes back on this pair
        with fdpass.FDChannel(sock) as broker, fdpass.FDChannel(mine) as reply, theirs:
            broker.send_fds([theirs], b"secret")
            theirs.close()
            try:
                with reply.recv_file("r") as f:
                    return 0 if f.read() == "for nobody's eyes only\n" else 1
            except EOFError:  # the broker closed our reply socket: refused
                return 2


with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, \
        fdpass.FDChannel(sock, passcred=True) as requests:  # before bind(): no request lacks a sender
    sock.bind(path)
    os.chmod(path, 0o666)
    outcome = {}
    for uid in (SERVED_UID, 4242):
        pid = os.fork()  # fdpass has no thread running: it has discarded nothing
        if pid == 0:  # the worker: never returns into the broker's code
            try:
                os._exit(worker(uid))
            finally:
                os._exit(3)
        data, fds, sender = requests.recv_message_from(64, maxfds=1)
        try:
            if sender.uid == SERVED_UID and data == b"secret" and len(fds) == 1:
                with open(secret, "rb") as f:
                    fdpass.send(fds[0], f.fileno())  # a number in, never raises
        finally:
            for fd in fds + [sender.pidfd]:
                if fd >= 0:
                    os.close(fd)  # the reply socket, and the sender's pidfd
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        outcome[sender.uid] = "served" if status == 0 else "refused"
print(outcome)  # {65534: 'served', 4242: 'refused'}
os.remove(secret)
os.remove(path)
os.rmdir(folder)
