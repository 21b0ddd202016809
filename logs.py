"""Log lines (SPEC: "Metrics and logs"): today's text, or one JSON object a line.

LOG_FORMAT=json makes every line the app and gunicorn write, on stdout and
stderr, one JSON object with `time` (RFC 3339, UTC), `level`, `logger` and
`message`, and what else the line knows: the request id of a line logged while
a request is served, the traceback of an error (in the same line). gunicorn
writes the access line, one per request once its answer is sent, with the
request's id, method, route, path (never the query string), status, duration,
subject and trace id (hooks.describe_request keeps them in the WSGI environ).
Unset or `text`, the lines are today's, and the access line adds `trace_id=`
when the request came with a valid W3C traceparent.

In both formats no line holds a bearer token or a query string: the error
logs are scrubbed of what looks like one (a parse error of gunicorn's quotes
the request line; a database error may quote a value a client sent).

gunicorn.conf.py names GunicornLogger, which sets all this up in gunicorn's
master before the app is loaded, so that gunicorn's own lines from start-up to
shutdown are in the same format.
"""

import json
import logging
import re
import sys
import threading
import time

from flask import g, has_request_context, request
from gunicorn.glogging import Logger

import metrics
from config import log_format, server_setting
from hooks import DESCRIBED, UNMATCHED


def init_logs(app):
    """The app's own logs (its loggers reach the root logger) in LOG_FORMAT.
    Under gunicorn, GunicornLogger has already done it."""
    if app.config["LOG_FORMAT"] == "json":
        json_root_logger()
    else:
        logging.basicConfig(level=logging.INFO)  # today's lines
    for handler in logging.getLogger().handlers:
        handler.addFilter(SCRUB)


# --- one JSON object a line ---------------------------------------------------------------


def rfc3339(created):
    """A log record's time, in UTC: 2026-01-31T09:26:53.124Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time, level, logger, message; then the
    access line's fields, or the request id of a line logged during a request;
    and the traceback of an error, in the same line."""

    def format(self, record):
        line = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            line.update(fields)
        elif has_request_context():
            line["request_id"] = g.get("request_id")
        if record.exc_info or record.exc_text:
            line["traceback"] = record.exc_text or self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


JSON = JsonFormatter()


def json_handler(stream):
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSON)
    handler.addFilter(SCRUB)
    handler.casting_json = True  # so that setting up twice adds no second handler
    return handler


def json_root_logger():
    """The root logger (the app's loggers, warnings) writes JSON on stderr, and
    so does an uncaught exception, once, in the process."""
    root = logging.getLogger()
    if any(getattr(handler, "casting_json", False) for handler in root.handlers):
        return
    root.addHandler(json_handler(sys.stderr))
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn: a line of the logger py.warnings

    def uncaught(kind, value, traceback):
        logging.getLogger("uncaught").critical("uncaught %s", kind.__name__, exc_info=(kind, value, traceback))

    sys.excepthook = uncaught
    threading.excepthook = lambda hook: uncaught(hook.exc_type, hook.exc_value, hook.exc_traceback)


class JsonLines:
    """A stand-in for sys.stdout or sys.stderr: what is written to it other
    than by a log handler (gunicorn's "Error: ..." when the app refuses to
    start, a print) becomes one JSON object a line too."""

    def __init__(self, stream, name, level):
        self.stream = stream
        self.name = name
        self.level = level
        self.pending = ""
        self.lock = threading.Lock()

    def write(self, text):
        with self.lock:
            *lines, self.pending = (self.pending + text).split("\n")
            for line in lines:
                if line.strip():
                    entry = {"time": rfc3339(time.time()), "level": self.level, "logger": self.name}
                    self.stream.write(json.dumps({**entry, "message": scrub(line)}) + "\n")
        return len(text)

    def flush(self):
        if self.pending:
            self.write("\n")
        self.stream.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding...: the stream's
        return getattr(self.stream, name)


# --- no token, no query string --------------------------------------------------------------

BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",;]+")
JWT = re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?")
QUERY = re.compile(r"(/[^\s'\"?]*)\?[^\s'\"]*")  # a path's query string
REDACTED = "[redacted]"


def scrub(text):
    """`text` without anything that looks like a bearer token or a query
    string; while a request is served, without its query's values either."""
    text = BEARER.sub(r"\1" + REDACTED, text)
    text = JWT.sub(REDACTED, text)
    text = QUERY.sub(r"\1", text)
    if has_request_context() and request.query_string:
        values = {request.query_string.decode("latin-1")}
        values |= {value for value in request.args.values() if len(value) >= 4}
        for value in sorted(values, key=len, reverse=True):
            text = text.replace(value, REDACTED)
    return text


class Scrub(logging.Filter):
    """Scrubs a record's message and traceback (see scrub) before any handler writes it."""

    def filter(self, record):
        record.msg, record.args = scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return True


SCRUB = Scrub()


# --- gunicorn ---------------------------------------------------------------------------------


class GunicornLogger(Logger):
    """gunicorn's logger, in LOG_FORMAT (read as the app will read it). In
    both formats it writes the access line (gunicorn calls `access` once a
    request is answered) and counts the requests gunicorn answered without the
    app (metrics.py counts the app's answers)."""

    def setup(self, cfg):
        if isinstance(sys.stderr, JsonLines):  # a configuration reload: gunicorn's handlers get the real streams
            sys.stdout, sys.stderr = sys.stdout.stream, sys.stderr.stream
        super().setup(cfg)
        self.json = log_format(server_setting("LOG_FORMAT")) == "json"
        for handler in self.error_log.handlers:
            handler.addFilter(SCRUB)
        if self.json:
            for handler in self.error_log.handlers + self.access_log.handlers:
                handler.setFormatter(JSON)
            json_root_logger()
            if not isinstance(sys.stderr, JsonLines):
                sys.stdout = JsonLines(sys.stdout, "stdout", "info")
                sys.stderr = JsonLines(sys.stderr, "stderr", "error")

    def access(self, resp, req, environ, request_time):
        described = environ.get(DESCRIBED)
        status = int(str(resp.status).split(None, 1)[0])
        if described is None and metrics.COUNTED not in environ:  # answered by gunicorn, not by the app
            metrics.count_request(environ.get("REQUEST_METHOD"), UNMATCHED, status, request_time.total_seconds())
        if not self.access_log_enabled:
            return
        described = described or {}
        if self.json:
            method = environ.get("REQUEST_METHOD")
            path = environ.get("PATH_INFO") or getattr(req, "path", None)  # gunicorn's own answer: no PATH_INFO
            fields = {
                "request_id": described.get("request_id"),
                "method": method,
                "route": described.get("route", UNMATCHED),
                "path": path,
                "status": status,
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "subject": described.get("subject"),
            }
            if described.get("trace_id"):
                fields["trace_id"] = described["trace_id"]
            self.access_log.info("%s %s %s", method, path, status, extra={"fields": fields})
        elif described.get("trace_id"):
            atoms = self.atoms(resp, req, environ, request_time)
            atoms["trace_id"] = described["trace_id"]
            line = self.cfg.access_log_format + " trace_id=%(trace_id)s"
            try:
                self.access_log.info(line, self.atoms_wrapper_class(atoms))
            except Exception:
                self.exception("the access line could not be written")
        else:
            super().access(resp, req, environ, request_time)

    def refused(self, status, request_time=None):
        """For a request gunicorn refused before it could read it (a request
        line or header over its limits, a malformed one: gunicorn writes no
        access line for those): count it, and in JSON, its access line."""
        seconds = request_time.total_seconds() if request_time else 0.0
        metrics.count_request(None, UNMATCHED, status, seconds)
        if self.json and self.access_log_enabled:
            fields = {"request_id": None, "method": None, "route": UNMATCHED, "path": None, "status": status}
            fields.update(duration_ms=round(seconds * 1000, 3), subject=None)
            self.access_log.info("refused %s", status, extra={"fields": fields})
