"""What every request goes through, before and after its view: its request id,
the body's size limit, the headers every response carries, and what the access
line and the metrics say of it."""

import io
import re
import uuid

from flask import current_app, g, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from config import MIB

# An oversized body is read and discarded up to this bound before the 413, so
# the client sees the answer instead of a reset connection.
DRAIN_LIMIT = 64 * MIB


def init_hooks(app):
    app.before_request(assign_request_id)
    app.before_request(refuse_oversized_body)
    app.after_request(security_headers)
    app.after_request(describe_request)


def assign_request_id():
    """The request's id, which its response carries in X-Request-ID and its
    audit event records. Always the app's own: a client's X-Request-ID (which
    Heroku's router passes through) would let a writer make an event name
    another request."""
    g.request_id = uuid.uuid4().hex


def refuse_oversized_body():
    """413 before authentication; routing errors (404, 405) come first. A body
    sent with Transfer-Encoding: chunked has no length up front: it is read
    here, up to the limit and a byte more, so that it is refused like any
    other (read whole, not cut at the limit)."""
    environ = request.environ
    # Most requests send no body: decided from the environ alone (Werkzeug's
    # properties cost 6 us a request here).
    if not environ.get("CONTENT_LENGTH") and "HTTP_TRANSFER_ENCODING" not in environ:
        return
    if request.routing_exception is not None:
        return
    limit = request.max_content_length
    length = request.content_length
    if length is None and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        body = _read(environ["wsgi.input"], limit + 1)
        if len(body) <= limit:
            # The server has already taken the body apart; the app reads it as a sized one.
            environ.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})
            for name in ("wsgi.input_terminated", "HTTP_TRANSFER_ENCODING"):
                environ.pop(name, None)
            return
        _read(environ["wsgi.input"], DRAIN_LIMIT - len(body), keep=False)
    elif length is None or length <= limit:
        return
    else:
        _read(environ["wsgi.input"], min(length, DRAIN_LIMIT), keep=False)
    raise RequestEntityTooLarge(f"the body is larger than {limit} bytes")


def _read(stream, size, keep=True):
    """Up to `size` bytes of the body (a server's stream may return fewer than
    asked for at a time); with keep=False, read and discard them."""
    chunks = []
    try:
        while size > 0:
            chunk = stream.read(min(size, MIB))
            if not chunk:
                break
            size -= len(chunk)
            if keep:
                chunks.append(chunk)
    except Exception:  # the server's own error for a malformed chunk (gunicorn's InvalidChunkSize, ...)
        raise BadRequest("the body's chunked encoding is malformed") from None
    return b"".join(chunks)


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


# The WSGI environ's key for what describe_request says of a request.
DESCRIBED = "casting.request"
UNMATCHED = "unmatched"  # the route of a request that no route matched
_TEMPLATES = {}  # a route's rule -> its OpenAPI path template


def describe_request(response):
    """What the access line (logs.py, written by gunicorn once the answer is
    sent) and the request metrics (metrics.py) say of this request, kept in its
    WSGI environ, where both find it: its id, its route as the OpenAPI
    description writes it (never the path sent: the series stay bounded), the
    token's subject when one verified, and the trace id of a valid W3C
    traceparent."""
    environ = request.environ
    environ[DESCRIBED] = {
        "request_id": g.get("request_id"),
        "route": route_template(request.url_rule),
        "subject": subject(response.status_code),
        "trace_id": trace_id(environ.get("HTTP_TRACEPARENT")),  # the header, without Werkzeug's lookup
    }
    return response


def subject(status):
    """The `sub` of the token this request verified: g.claims once its
    permission held (auth.requires_auth); for a 403 or a subject's 429, which
    come after the verification, the verifier's memory of the token."""
    claims = g.get("claims")
    if claims is None and status in (403, 429):
        parts = request.headers.get("Authorization", "").split()
        if len(parts) == 2:
            claims = current_app.extensions["auth"].cached(parts[1])
    return claims["sub"] if claims else None


def route_template(rule):
    """The OpenAPI path template of a route's rule: /actors/<id:actor_id> is
    /actors/{actor_id}. No rule (a 404, a 405): "unmatched"."""
    if rule is None:
        return UNMATCHED
    template = _TEMPLATES.get(rule.rule)
    if template is None:
        template = _TEMPLATES[rule.rule] = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
    return template


# W3C Trace Context, version 00: version-traceid-parentid-flags, lower-case hex.
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
NO_ID = re.compile(r"0+")


def trace_id(header):
    """The trace-id of a valid traceparent header, or None: an invalid one is
    never echoed (neither id may be all zeros)."""
    if not header:
        return None
    match = TRACEPARENT.fullmatch(header.strip())
    if match is None or NO_ID.fullmatch(match[1]) or NO_ID.fullmatch(match[2]):
        return None
    return match[1]
