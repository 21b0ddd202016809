"""Every error, from every layer, in one JSON envelope (SPEC: "Errors").

    {"success": false, "error": 404, "message": "resource not found"}

Routing (404, 405), abort() and the HTTP exceptions the app raises, the
validation of flask-smorest (400, 422, with per-field `errors`), the database
(503 when it cannot answer now, else 500) and any unexpected exception all
come out here. A 500 never carries a traceback or SQL: the log keeps those.
"""

import json

from flask import g
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

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


def _field_errors(messages):
    """{"json": {"name": [...]}} -> ({"name": [...]}, "name: ...; age: ..."),
    bounded whatever the size of the request."""
    fields = {}
    for location_errors in (messages or {}).values():
        fields.update(location_errors)
    listed = {_cut(str(field)): errors for field, errors in list(fields.items())[:LISTED_FIELDS]}
    summary = "; ".join(
        f"{field}: {' '.join(map(str, errors)) if isinstance(errors, list) else errors}"
        for field, errors in listed.items()
    )
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
    if hasattr(e, "error_code"):
        body["code"] = e.error_code
    response.data = json.dumps(body, separators=(",", ":")) + "\n"  # as jsonify does
    response.content_type = "application/json"
    return response


def register_error_handlers(app):
    app.register_error_handler(HTTPException, error_response)

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
