"""What every request goes through, before and after its view: its request id,
the body's size limit, and the headers every response carries."""

import uuid

from flask import g, request
from werkzeug.exceptions import RequestEntityTooLarge

from config import MIB

# An oversized body is read and discarded up to this bound before the 413, so
# the client sees the answer instead of a reset connection.
DRAIN_LIMIT = 64 * MIB


def init_hooks(app):
    app.before_request(assign_request_id)
    app.before_request(refuse_oversized_body)
    app.after_request(security_headers)


def assign_request_id():
    """The request's id, which its response carries in X-Request-ID and its
    audit event records. Always the app's own: a client's X-Request-ID (which
    Heroku's router passes through) would let a writer make an event name
    another request."""
    g.request_id = uuid.uuid4().hex


def refuse_oversized_body():
    """413 before authentication; routing errors (404, 405) come first."""
    if request.routing_exception is not None:
        return
    length = request.content_length
    if length is not None and length > request.max_content_length:
        stream = request.environ["wsgi.input"]
        remaining = min(length, DRAIN_LIMIT)
        while remaining > 0:
            chunk = stream.read(min(remaining, MIB))
            if not chunk:
                break
            remaining -= len(chunk)
        raise RequestEntityTooLarge(f"the body is larger than {request.max_content_length} bytes")


# Added to every response; nothing else sets them. (Werkzeug's setdefault looks
# through the headers once per name: four of them measured 30 us a request.)
SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]


def security_headers(response):
    response.headers.add("X-Request-ID", g.get("request_id", ""))
    response.headers.extend(SECURITY_HEADERS)
    # Responses to bearer tokens must stay out of shared caches (the docs page's files set their own).
    response.headers.setdefault("Cache-Control", "no-store")
    return response
