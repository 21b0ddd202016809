"""gunicorn's settings (it reads ./gunicorn.conf.py by itself): the production start.

Starting under this file is what makes a start "production": the app then
refuses to run with the local issuer, so a deploy without AUTH0_DOMAIN (or
AUTH0_ISSUER and JWKS_URL) fails closed instead of minting its own keys.
"""

import atexit
import os
import shutil
import tempfile

import gunicorn_worker

os.environ.setdefault("REQUIRE_ISSUER", "1")


# Metrics across workers (metrics.py): each worker counts in files of its own in
# a directory, which a scrape adds up. The directory is this instance's alone
# (a second instance beside it counts its own requests), made here, before
# prometheus_client is imported (it reads PROMETHEUS_MULTIPROC_DIR then), kept
# when a reload (HUP) runs this file again in the same master, and removed when
# the master exits (not a worker: they exit through the same atexit handlers).
def metrics_directory():
    master = os.getpid()
    if os.environ.get("CASTING_METRICS_MASTER") != str(master):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory = tempfile.mkdtemp(prefix="casting-metrics-")
        os.environ["CASTING_METRICS_MASTER"] = str(master)
        atexit.register(lambda: os.getpid() == master and shutil.rmtree(directory, ignore_errors=True))
    return os.environ["PROMETHEUS_MULTIPROC_DIR"]


METRICS_DIRECTORY = metrics_directory()


def child_exit(server, worker):
    """A worker is gone: its counts stay in the directory, and a replacement
    starts files of its own, so no counter goes backwards."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, METRICS_DIRECTORY)


bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# The sync worker, but at a graceful stop of the whole server (Heroku's SIGTERM)
# the master closes the door to new connections and the workers serve the ones
# already queued instead of leaving them to be reset; a worker that leaves alone
# (--max-requests, HUP) leaves the door open. And gunicorn's own refusals
# (414, 431, 400) answer in the API's JSON envelope.
worker_class = "gunicorn_worker.DrainingSyncWorker"
when_ready = gunicorn_worker.when_ready
# Build the app once in the master: a misconfiguration stops the start with
# one clear error instead of workers failing to boot in a loop.
preload_app = True
# Log lines in LOG_FORMAT (logs.py), gunicorn's own too, from start-up to shutdown.
logger_class = "logs.GunicornLogger"
# One line per request on stdout, for Heroku's log tools: method, path (never
# the query string), status, duration and the request id the client also gets
# (with LOG_FORMAT=json, one JSON object with the same and more: logs.py).
# No header is logged, so no token is.
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms request_id=%({x-request-id}o)s'
timeout = 30
graceful_timeout = 20
keepalive = 5
# gunicorn's own refusals (414, 431) are in the API's envelope, but still no
# request the API accepts may meet them: a 200-character ?q= percent-encoded is
# up to 2,400 bytes, and an Auth0 access token with many permissions can run to
# several kilobytes.
limit_request_line = 8190
# gunicorn 27's control socket sits at one path per user, shared by every
# gunicorn that user runs (tests, the benchmark); the app does not use it.
control_socket_disable = True
limit_request_field_size = 16384
