"""Prometheus metrics (SPEC: "Metrics and logs"): the series, and GET /metrics.

The series and their labels are fixed; no label ever carries a raw path, an
id, a subject or a query string, so the series stay bounded whatever clients
send:

- http_requests_total{method,route,status}: every answered request once;
- http_request_duration_seconds{method,route}: how long the app took;
- auth_rejections_total{code}: each 401 by its `code`, each 403 as `forbidden`;
- rate_limit_rejections_total{scope}: each 429, by budget (`subject`, `address`);
- jwks_fetches_total{outcome}: each fetch of the issuer's key set.

Under gunicorn the numbers cover every worker of the instance: gunicorn.conf.py
gives each instance a directory of its own (PROMETHEUS_MULTIPROC_DIR, set before
prometheus_client is imported) where each worker keeps its counts in a file of
its own, which outlives the worker, and a scrape adds up the files
(prometheus_client's multiprocess mode). Elsewhere (`flask run`, the tests) the
counts live in the process.

/metrics exists only while METRICS_TOKEN is set (without it, the same 404 as
any unknown path), answers only that bearer token (compared in constant time),
is never rate-limited, and its successful scrapes are not counted.
"""

import hmac
import os
import time

from flask import Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.exceptions import Unauthorized

from hooks import DESCRIBED, UNMATCHED

# The *_created series are not in the SPEC's list, and multiprocess mode has none.
disable_created_metrics()

REGISTRY = CollectorRegistry()
REQUESTS = Counter("http_requests_total", "Answered requests.", ["method", "route", "status"], registry=REGISTRY)
DURATION = Histogram(
    "http_request_duration_seconds",
    "Time the app took to answer a request.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
AUTH_REJECTIONS = Counter(
    "auth_rejections_total", "Requests refused a 401 (by code) or a 403 (forbidden).", ["code"], registry=REGISTRY
)
RATE_LIMIT_REJECTIONS = Counter(
    "rate_limit_rejections_total", "Requests refused a 429, by budget.", ["scope"], registry=REGISTRY
)
JWKS_FETCHES = Counter("jwks_fetches_total", "Fetches of the issuer's key set.", ["outcome"], registry=REGISTRY)

# A label of a fixed set: any other method (HTTP allows any token) is "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The WSGI environ's mark of a request counted by the app (gunicorn's logger counts the others).
COUNTED = "casting.counted"


class ScrapeRefused(Unauthorized):
    """A scrape without the METRICS_TOKEN bearer token (a 401 in the envelope)."""

    error_code = "invalid_metrics_token"


def init_metrics(app):
    """With METRICS_TOKEN set: count every answer of the app, and serve /metrics."""
    if not app.config.get("METRICS_TOKEN"):
        return
    app.wsgi_app = CountRequests(app.wsgi_app)
    app.add_url_rule("/metrics", "metrics", scrape)


def scrape():
    token = current_app.config["METRICS_TOKEN"]
    parts = request.headers.get("Authorization", "").split()
    sent = parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else ""
    if not hmac.compare_digest(sent.encode(), token.encode()):
        raise ScrapeRefused("a scrape needs the bearer token that METRICS_TOKEN sets")
    return Response(generate_latest(registry()), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def registry():
    """What a scrape reads: every worker's files in multiprocess mode, else this process's series."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return merged
    return REGISTRY


class CountRequests:
    """WSGI middleware: counts and times each answer of the app, with the route
    that hooks.describe_request found (`unmatched` when none). A successful
    scrape is not counted."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        statuses = []

        def start(status, headers, exc_info=None):
            statuses.append(status)
            return start_response(status, headers, exc_info)

        body = self.wsgi_app(environ, start)
        if statuses:  # an answer (else the app raised, and gunicorn answers and counts it)
            route = environ.get(DESCRIBED, {}).get("route", UNMATCHED)
            status = int(statuses[-1][:3])
            if not (route == "/metrics" and status == 200):
                count_request(environ.get("REQUEST_METHOD"), route, status, time.perf_counter() - started)
            environ[COUNTED] = True
        return body


_children = {}  # (method, route, status) -> the two series' children: labels() costs more than an increment


def count_request(method, route, status, seconds):
    method = method if method in METHODS else "other"
    key = (method, route, status)
    children = _children.get(key)
    if children is None:
        children = _children[key] = (REQUESTS.labels(method, route, str(status)), DURATION.labels(method, route))
    children[0].inc()
    children[1].observe(seconds)


def count_rejection(error):
    """Count a refusal that errors.py answers in the envelope: a 401 by its
    code, a 403, a 429 by the budget it spent."""
    if error.code == 401:
        AUTH_REJECTIONS.labels(getattr(error, "error_code", "unauthorized")).inc()
    elif error.code == 403:
        AUTH_REJECTIONS.labels("forbidden").inc()
    elif error.code == 429:
        scope = getattr(error, "scope", None)  # ratelimit.RateLimited's
        RATE_LIMIT_REJECTIONS.labels(scope if scope in ("subject", "address") else "other").inc()


def count_jwks_fetch(succeeded):
    JWKS_FETCHES.labels("success" if succeeded else "failure").inc()
