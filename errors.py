"""Every error, from every layer, in one JSON envelope (SPEC: "Errors").

    {"success": false, "error": 404, "message": "resource not found"}

Routing (404, 405), abort() and the HTTP exceptions the app raises, the
validation of flask-smorest (400, 422, with per-field `errors`), the database
(503 when it cannot answer now, else 500) and any unexpected exception all
come out here. A 500 never carries a traceback or SQL: the log keeps those.
"""

import json
import re

from flask import current_app, g, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed, NotFound, ServiceUnavailable
from werkzeug.routing import RequestRedirect

import metrics
from database import unavailable

MESSAGES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "resource not found",
    405: "method not allowed",
    412: "precondition failed",
    413: "request body too large",
    415: "unsupported media type",
    422: "unprocessable entity",
    500: "internal server error",
    503: "service unavailable",
}


# A 422 (or 400) names its bad fields, each once, and at most this many of them,
# each name cut to a length: 20,000 unknown fields in a body gave a 1.26 MB answer.
LISTED_FIELDS = 20
LISTED_NAME = 100
SCHEMA_ERRORS = "_schema"  # marshmallow's key for an error of no one field


def _field_errors(messages):
    """{"json": {"name": [...]}} -> ({"name": [...]}, "name: ...; age: ..."),
    bounded whatever the size of the request. An error of the body as a whole
    (marshmallow's `_schema`: an empty PATCH) is said first, without a name."""
    fields = {}
    for location_errors in (messages or {}).values():
        fields.update(location_errors)
    whole = fields.pop(SCHEMA_ERRORS, [])
    listed = {_cut(str(field)): errors for field, errors in list(fields.items())[:LISTED_FIELDS]}
    parts = [" ".join(map(str, whole))] if whole else []
    parts += [
        f"{field}: {' '.join(map(str, errors)) if isinstance(errors, list) else errors}"
        for field, errors in listed.items()
    ]
    summary = "; ".join(parts)
    if len(fields) > len(listed):
        summary += f"; and {len(fields) - len(listed):,} more"
    return listed, summary


def _cut(name):
    return name if len(name) <= LISTED_NAME else name[: LISTED_NAME - 1] + "…"


def error_response(e):
    """The envelope of an HTTPException. Starts from the exception's own
    response so headers such as a 405's Allow survive. A refusal (401, 403,
    429) is counted here, where every one of them is answered."""
    metrics.count_rejection(e)
    response = e.get_response()
    body = {"success": False, "error": e.code, "message": MESSAGES.get(e.code, e.name.lower())}
    if "description" in vars(e):  # a message we wrote, not Werkzeug's default
        body["message"] = e.description
    fields, summary = _field_errors(getattr(e, "data", {}).get("messages"))
    if fields:
        body["message"] = f"invalid {'fields' if e.code == 422 else 'query parameters'}: {summary}"
        body["errors"] = fields
    elif summary:  # the body as a whole
        body["message"] = summary
    if hasattr(e, "error_code"):
        body["code"] = e.error_code
    response.data = json.dumps(body, separators=(",", ":")) + "\n"  # as jsonify does
    response.content_type = "application/json"
    return response


# The methods a 405 names, in this order (HEAD and OPTIONS go with GET and any route).
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def routing_error(e):
    """The router's 404 and 405, with the route the client likely meant:
    `/actors/` and `/actors//3` name `/actors` and `/actors/3`; a method that
    the path does not take names the route that does (`POST /movies/7/actors`:
    `PUT /movies/7/actors/{actor_id}`)."""
    if e is not request.routing_exception:  # a view's own 404 (no such actor)
        return error_response(e)
    adapter = current_app.create_url_adapter(request)
    path = request.path
    if isinstance(e, NotFound):
        merged = re.sub("/{2,}", "/", path)
        bare = merged.rstrip("/") or "/"
        if bare != path and _routed(adapter, bare):
            why = "has //" if "//" in path.rstrip("/") else "ends with a slash"
            e = NotFound(f"resource not found: {path} {why}; the path is {bare}")
    else:
        allowed = [m for m in METHODS if m in e.valid_methods]
        message = f"method not allowed: {path} takes {', '.join(allowed)}, not {request.method}"
        if meant := _method_meant(adapter, path, request.method, allowed):
            message += f"; did you mean {meant}?"
        e = MethodNotAllowed(valid_methods=e.valid_methods, description=message)
    return error_response(e)


def _routed(adapter, path):
    """Whether a route serves this path (with any method)."""
    try:
        adapter.match(path, method=request.method)
    except (MethodNotAllowed, RequestRedirect):
        return True
    except NotFound:
        return False
    return True


def _method_meant(adapter, path, method, allowed):
    """What a method sent to the wrong route likely meant: PATCH for a PUT of
    an item; for a collection, the same method on one of its items, or the PUT
    that creates one (a cast is a PUT of /movies/{movie_id}/actors/{actor_id})."""
    if method == "PUT" and "PATCH" in allowed:
        return f"PATCH {path}"
    if not allowed:
        return None
    rule, _ = adapter.match(path, method=allowed[0], return_rule=True)
    for candidate in current_app.url_map.iter_rules():
        item = re.fullmatch(re.escape(rule.rule) + r"/<(?:\w+:)?(\w+)>", candidate.rule)
        for wanted in (method, "PUT") if method == "POST" else (method,):
            if item and wanted in candidate.methods:
                return f"{wanted} {path}/{{{item[1]}}}"
    return None


def register_error_handlers(app):
    app.register_error_handler(HTTPException, error_response)
    app.register_error_handler(NotFound, routing_error)
    app.register_error_handler(MethodNotAllowed, routing_error)

    @app.errorhandler(DBAPIError)
    def database_error(e):
        if unavailable(e):
            # No bug to trace: the service recovers when the database is back.
            app.logger.warning("database unavailable: %s", e.orig)
            return error_response(ServiceUnavailable("the database is unavailable"))
        e.hide_parameters = True  # the log keeps the SQL, never the values a client sent
        app.logger.exception("database error, request_id=%s", g.get("request_id"))
        return error_response(InternalServerError())

    @app.errorhandler(Exception)
    def unexpected(e):
        # The traceback stays in the server's log; the client gets the request id.
        app.logger.exception("unexpected error, request_id=%s", g.get("request_id"))
        return error_response(InternalServerError())
