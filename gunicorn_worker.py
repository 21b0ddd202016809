"""gunicorn's sync worker, made to lose no connection at a graceful stop.

Heroku sends SIGTERM at every restart and deploy. gunicorn's sync workers then
finish the request in hand and exit; the listening socket stays open until the
last of them has exited, and the connections the kernel accepted for it
meanwhile, queued but never taken by a worker, are reset when it closes: a
client that had sent its request gets no answer (gunicorn issues #2529,
#3397). This worker, once its loop has stopped, takes every connection still
queued, closes the socket (from then on a connection is refused, which a
client can tell from a lost request), then serves what it took.
"""

from gunicorn.workers.sync import SyncWorker


class _Closed:
    """Stands for a closed listener: serving a request reads its address."""

    def __init__(self, address):
        self.address = address

    def getsockname(self):
        return self.address


class DrainingSyncWorker(SyncWorker):
    def run(self):
        super().run()  # returns once SIGTERM has stopped the loop
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
