"""A pre-fork server: the parent accepts TCP connections and hands each to
one of the workers it forked at the start, which answers the client itself.

The workers are forked before fdpass has a thread running (it has
discarded nothing yet): see "fork()" in the guide to hostile peers."""

import os
import socket

import fdpass

WORKERS = 2


def work(number: int, parent: fdpass.FDChannel) -> None:
    """Answer each connection the parent hands over, until it hangs up."""
    while True:
        try:
            conn = parent.recv_socket()
        except EOFError:
            return
        with conn:
            conn.sendall(b"worker %d: " % number + conn.recv(100))


listener = socket.create_server(("127.0.0.1", 0))
workers = []
for number in range(WORKERS):
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the worker: it never returns into the parent's code
        status = 1
        try:
            listener.close()
            ours.close()
            for _, earlier in workers:
                earlier.close()
            with fdpass.FDChannel(theirs) as parent:
                work(number, parent)
            status = 0
        finally:
            os._exit(status)
    theirs.close()
    workers.append((pid, fdpass.FDChannel(ours)))

answers = []
with listener:
    for request in range(4):
        with socket.create_connection(listener.getsockname(), timeout=10) as client:
            client.sendall(b"request %d" % request)
            conn, _ = listener.accept()
            with conn:  # the worker has its own copy
                workers[request % WORKERS][1].send_fd(conn)
            answers.append(client.recv(100).decode())
print(answers)  # ['worker 0: request 0', 'worker 1: request 1', 'worker 0: request 2', 'worker 1: request 3']
for pid, channel in workers:
    channel.close()  # the worker's next receive: EOFError
print([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid, _ in workers])  # [0, 0]
