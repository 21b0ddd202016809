"""gunicorn's sync worker, made to lose no connection at a graceful stop.

Heroku sends SIGTERM at every restart and deploy. gunicorn's sync workers then
finish the request in hand and exit; the listening socket stays open until the
last of them has exited, and the connections the kernel accepted for it
meanwhile, queued but never taken by a worker, are reset when it closes: a
client that had sent its request gets no answer (gunicorn issues #2529,
#3397). This worker, once its loop has stopped, has the kernel stop taking new
connections on the socket, takes every connection already queued, closes the
socket (from then on a connection is refused, which a client can tell from a
lost request), then serves what it took.

Draining alone left a race: a connection the kernel queued between the drain's
last accept() and the close() was reset, and a worker preempted there made the
window milliseconds wide (test_fleet.py lost one request in a few runs). So,
on Linux, a socket filter first drops new connections' SYNs on the listening
socket (shared by every worker: the first to stop closes it to new clients for
all); a client's SYN is then retried a second later and refused, since the
socket is closed by then. Handshakes already under way complete (their ACKs
pass the filter) and are queued, and the drain takes them.
"""

import ctypes
import socket
import struct
import time

from gunicorn.workers.sync import SyncWorker

SO_ATTACH_FILTER = 26  # Linux's <asm-generic/socket.h>; Python's socket module does not name it
# Classic BPF, run on each packet for the listening socket with the TCP header at offset 0:
# drop a segment whose flags are SYN without ACK (a new connection), let every other one through.
_NO_NEW_CONNECTIONS = [
    (0x30, 0, 0, 13),  # ldb [13]          the TCP flags
    (0x54, 0, 0, 0x12),  # and #0x12         SYN | ACK
    (0x15, 0, 1, 0x02),  # jeq #0x02, 0, 1   SYN alone?
    (0x06, 0, 0, 0),  # ret #0            drop it
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1           keep the rest
]
# Long enough for a handshake already under way to reach the queue (on one host, microseconds).
HANDSHAKES_IN_FLIGHT = 0.05


def refuse_new_connections(listener):
    """Attach the filter; False where the platform has none (then only the drain runs)."""
    instructions = b"".join(struct.pack("HBBI", *instruction) for instruction in _NO_NEW_CONNECTIONS)
    program = ctypes.create_string_buffer(instructions, len(instructions))
    fprog = struct.pack("HL", len(_NO_NEW_CONNECTIONS), ctypes.addressof(program))
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies the program
    except OSError:
        return False
    return True


class _Closed:
    """Stands for a closed listener: serving a request reads its address."""

    def __init__(self, address):
        self.address = address

    def getsockname(self):
        return self.address


class DrainingSyncWorker(SyncWorker):
    def run(self):
        super().run()  # returns once SIGTERM has stopped the loop
        if any([refuse_new_connections(listener) for listener in self.sockets]):
            time.sleep(HANDSHAKES_IN_FLIGHT)
        queued = []
        for listener in self.sockets:
            address = listener.getsockname()
            while True:
                try:
                    client, peer = listener.accept()  # non-blocking: until none is waiting
                except OSError:
                    break
                queued.append((_Closed(address), client, peer))
            listener.close()
        for listener, client, peer in queued:
            client.setblocking(True)
            self.handle(listener, client, peer)
