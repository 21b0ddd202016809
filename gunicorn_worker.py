"""gunicorn's sync worker, made to lose no connection at a graceful stop, and to
answer gunicorn's own refusals in the API's JSON envelope.

Heroku sends SIGTERM at every restart and deploy. gunicorn's sync workers then
finish the request in hand and exit; the listening socket stays open until the
last of them has exited, and the connections the kernel accepted for it
meanwhile, queued but never taken by a worker, are reset when it closes: a
client that had sent its request gets no answer (gunicorn issues #2529,
#3397). So at a stop of the whole server the master first closes the door: on
Linux a socket filter drops new connections' SYNs on the listening socket
(shared by the master and every worker; a client's SYN is retried a second
later and refused, the socket being closed by then). Handshakes already under
way complete (their ACKs pass the filter) and are queued. Each worker, once its
loop has stopped, finds the door closed, takes every connection already queued,
closes the socket, then serves what it took. (Draining without the door left a
race: a connection queued between the drain's last accept() and the close() was
reset.)

Only a stop of the whole server closes the door: the socket outlives any one
worker, so a worker that leaves alone (recycled by --max-requests, replaced at a
HUP reload, sent its own SIGTERM, killed for its timeout) leaves the queue to
the others and to its replacement, as stock gunicorn does. The master closes the
door when it is sent SIGTERM (when_ready installs that; gunicorn.conf.py names
it), before gunicorn's stop closes its listeners and signals the workers. Heroku
sends SIGTERM to every process at once, so a worker's may come first: a worker
stopped by SIGTERM gives the master a moment to close the door before it leaves
alone.
"""

import ctypes
import json
import signal
import socket
import struct
import time

from gunicorn.http import errors
from gunicorn.workers.sync import SyncWorker

SO_ATTACH_FILTER = 26  # Linux's <asm-generic/socket.h>; Python's socket module does not name it
SO_GET_FILTER = SO_ATTACH_FILTER  # the same option read back: the filter's length in instructions, 0 without one
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
# The master closes the door within milliseconds of its SIGTERM; a worker sent
# SIGTERM waits this long for it, checking every DOOR_CHECK, before it leaves alone.
MASTER_CLOSES_THE_DOOR_WITHIN = 1.0
DOOR_CHECK = 0.01


def refuse_new_connections(listener):
    """Close the door: attach the filter; False where the platform has none."""
    instructions = b"".join(struct.pack("HBBI", *instruction) for instruction in _NO_NEW_CONNECTIONS)
    program = ctypes.create_string_buffer(instructions, len(instructions))
    fprog = struct.pack("HL", len(_NO_NEW_CONNECTIONS), ctypes.addressof(program))
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies the program
    except OSError:
        return False
    return True


def refusing_new_connections(listener):
    """Whether the door is closed: a filter is attached to the socket (False where
    the platform cannot tell; there the worker never drains, as stock gunicorn)."""
    try:
        return len(listener.getsockopt(socket.SOL_SOCKET, SO_GET_FILTER, 1024)) > 0
    except OSError:
        return False


def when_ready(arbiter):
    """gunicorn's hook, run in the master once it listens: the master's SIGTERM (a
    graceful stop of the whole server) first closes the door. Not when another
    process holds the sockets too (a new master started by USR2, systemd's socket
    activation), where gunicorn's own stop leaves them open for it too."""
    queue_the_signal = signal.getsignal(signal.SIGTERM)  # the arbiter's handler

    def close_the_door(sig, frame):
        if arbiter.reexec_pid == arbiter.master_pid == 0 and not arbiter.systemd:
            for listener in arbiter.LISTENERS:
                refuse_new_connections(listener)
        queue_the_signal(sig, frame)

    signal.signal(signal.SIGTERM, close_the_door)


class _Closed:
    """Stands for a closed listener: serving a request reads its address."""

    def __init__(self, address):
        self.address = address

    def getsockname(self):
        return self.address


class _ErrorPage:
    """The client, as gunicorn's handle_error writes its HTML error page to it:
    the page is kept, not sent; everything else is the client's."""

    def __init__(self, client):
        self.client = client
        self.page = b""

    def sendall(self, data):
        self.page += data

    def __getattr__(self, name):
        return getattr(self.client, name)


# What gunicorn could not read, and how the envelope says it.
UNREADABLE = [
    (errors.InvalidRequestMethod, "the request method is not valid"),
    (errors.InvalidHTTPVersion, "the HTTP version is not supported"),
    (errors.InvalidRequestLine, "the request line is malformed"),
    ((errors.InvalidHeader, errors.InvalidHeaderName, errors.ObsoleteFolding), "a header field is malformed"),
    (errors.UnsupportedTransferCoding, "the transfer coding is not supported"),
]


class DrainingSyncWorker(SyncWorker):
    """gunicorn's sync worker that drains the queue behind a closed door, and
    answers gunicorn's refusals in the envelope."""

    terminated = False  # whether SIGTERM stopped the loop

    def handle_exit(self, sig, frame):
        self.terminated = True
        super().handle_exit(sig, frame)

    def run(self):
        super().run()  # returns once the loop has stopped
        if not self.whole_server_stopping():
            return  # leaving alone: the others and the replacement take the queue
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

    def whole_server_stopping(self):
        """Whether the master has closed the door; after a SIGTERM, which may
        have reached every process at once, once the master has had a moment."""
        waiting = MASTER_CLOSES_THE_DOOR_WITHIN if self.terminated else 0
        deadline = time.monotonic() + waiting
        while not any(refusing_new_connections(listener) for listener in self.sockets):
            if time.monotonic() >= deadline:
                return False
            self.notify()  # still alive: the master's timeout is not for this wait
            time.sleep(DOOR_CHECK)
        return True

    def handle_error(self, req, client, addr, exc):
        """gunicorn's answer to a request it refuses (its status and its log
        lines), with the API's JSON envelope instead of its HTML page."""
        written = _ErrorPage(client)
        super().handle_error(req, written, addr, exc)
        status_line = written.page.split(b"\r\n", 1)[0].decode("latin-1")
        if not status_line:
            return  # gunicorn wrote nothing
        _version, status, reason = status_line.split(" ", 2)
        if req is None and getattr(exc, "req", None) is None:
            # Refused before a request was read (gunicorn's access line needs one, which
            # some of its errors carry): counted, and its access line (logs.GunicornLogger).
            self.log.refused(int(status))
        envelope = {"success": False, "error": int(status), "message": self.refusal(int(status), reason, exc)}
        body = (json.dumps(envelope, separators=(",", ":")) + "\n").encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        try:
            client.sendall(head.encode("latin-1") + body)
        except OSError:
            self.log.debug("Failed to send error message.")

    def refusal(self, status, reason, exc):
        """The envelope's message for a refusal of gunicorn's."""
        if status == 414:
            return f"the request line is longer than {self.cfg.limit_request_line} bytes"
        if status == 431:
            return (
                f"the request has more than {self.cfg.limit_request_fields} header fields, "
                f"or one longer than {self.cfg.limit_request_field_size} bytes"
            )
        for kind, message in UNREADABLE:
            if isinstance(exc, kind):
                return message
        return "the request could not be read" if status == 400 else reason.lower()
