"""logs.py (and hooks.trace_id): the log lines.

In-process: the W3C traceparent rules, a record as one JSON object, what is
scrubbed, LOG_FORMAT's values, and gunicorn's logger for requests it answers
itself. Under gunicorn (the Procfile's web command on a SQLite file):
LOG_FORMAT=json from start-up to shutdown, every line of the run parsed (one
access line per request id, the 500's traceback in one error line with its
request id, no token, METRICS_TOKEN or query string anywhere); LOG_FORMAT
unset, today's access line, with the trace id of a valid traceparent;
LOG_FORMAT=bogus refuses to start, in one line.
"""

import collections
import json
import logging
import os
import re
import socket
import sqlite3
import sys
import tempfile
import time
import unittest
import uuid

from gunicorn.config import Config

import metrics
import testing
from app import create_app
from config import ConfigError
from hooks import trace_id
from logs import SCRUB, GunicornLogger, JsonFormatter, scrub
from loopback import HOST, Gunicorn, Issuer, call, on_sqlite, rsa_key, run_procfile, server_env
from testing import app_config

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
TRACED = {"traceparent": TRACEPARENT}
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


class TraceparentTest(unittest.TestCase):
    def test_a_valid_traceparent_gives_its_trace_id(self):
        for header in (TRACEPARENT, f"00-{TRACE}-00f067aa0ba902b7-00", f" {TRACEPARENT} "):
            with self.subTest(header):
                self.assertEqual(trace_id(header), TRACE)

    def test_an_invalid_one_gives_nothing(self):
        for header in (
            None,
            "",
            "garbage",
            TRACEPARENT.upper(),  # the ids are lower-case hex
            f"01-{TRACE}-00f067aa0ba902b7-01",  # not version 00
            f"ff-{TRACE}-00f067aa0ba902b7-01",
            f"00-{'0' * 32}-00f067aa0ba902b7-01",  # an all-zero trace id
            f"00-{TRACE}-{'0' * 16}-01",  # an all-zero parent id
            f"00-{TRACE[:-1]}-00f067aa0ba902b7-01",
            f"00-{TRACE}x-00f067aa0ba902b7-01",
            f"00-{TRACE}-00f067aa0ba902b7-1",
            f"00-{TRACE}-00f067aa0ba902b7-01-extra",
            f"00-{TRACE}-00f067aa0ba902b7-0g",
            f"00_{TRACE}_00f067aa0ba902b7_01",
        ):
            with self.subTest(header):
                self.assertIsNone(trace_id(header))


def record(message, *args, level=logging.INFO, exc_info=None, **extra):
    """A log record of the logger casting.test, as logging makes one."""
    return logging.getLogger("casting.test").makeRecord(
        "casting.test", level, __file__, 1, message, args, exc_info, extra=extra
    )


class FormatTest(unittest.TestCase):
    def test_a_record_is_one_json_object_with_time_level_logger_and_message(self):
        line = JsonFormatter().format(record("%s is %d", "answer", 42, level=logging.WARNING))
        self.assertNotIn("\n", line)
        entry = json.loads(line)
        self.assertEqual(
            {key: entry[key] for key in ("level", "logger", "message")},
            {"level": "warning", "logger": "casting.test", "message": "answer is 42"},
        )
        self.assertRegex(entry["time"], RFC3339_UTC)

    def test_an_error_is_one_line_with_its_traceback_and_the_request_id(self):
        app = create_app(app_config())
        try:
            raise ValueError("the cause")
        except ValueError:
            error = sys.exc_info()
        with app.test_request_context("/"):
            app.preprocess_request()  # assigns the request id
            from flask import g

            line = JsonFormatter().format(record("unexpected error", level=logging.ERROR, exc_info=error))
            request_id = g.request_id
        self.assertNotIn("\n", line)
        entry = json.loads(line)
        self.assertEqual((entry["level"], entry["request_id"]), ("error", request_id))
        self.assertIn("Traceback (most recent call last)", entry["traceback"])
        self.assertIn("ValueError: the cause", entry["traceback"])

    def test_access_fields_are_the_lines_own(self):
        fields = {"request_id": "abc", "status": 200, "duration_ms": 1.5, "subject": None}
        entry = json.loads(JsonFormatter().format(record("GET / 200", fields=fields)))
        self.assertEqual({key: entry[key] for key in fields}, fields)


class ScrubTest(unittest.TestCase):
    def test_tokens_and_query_strings_are_scrubbed(self):
        jwt = Issuer.token(testing.ISSUER_ON_LOOPBACK)
        cases = [
            (f"Authorization: Bearer {jwt}", jwt),
            ("authorization: bearer opaque-secret-value", "opaque-secret-value"),
            (f"a token {jwt} in a message", jwt.split(".")[1]),
            ("Invalid HTTP request line: '/actors?q=hidden-word x'", "hidden-word"),
            ("GET /movies/1/actors?per_page=2&q=hidden HTTP/1.1", "hidden"),
        ]
        for text, secret in cases:
            with self.subTest(text):
                self.assertIn(secret, text)
                self.assertNotIn(secret, scrub(text))
        self.assertEqual(scrub("Booting worker with pid: 42"), "Booting worker with pid: 42")

    def test_while_a_request_is_served_its_query_values_are_scrubbed(self):
        app = create_app(app_config())
        with app.test_request_context("/actors?q=needle-in-sql&per_page=20"):
            text = scrub("LINE 1: ... WHERE name ILIKE '%needle-in-sql%' LIMIT 20 (line 20)")
        self.assertNotIn("needle-in-sql", text)
        self.assertIn("(line 20)", text)  # short values (a page size) are left alone

    def test_a_scrubbed_record_keeps_its_traceback_scrubbed(self):
        try:
            raise RuntimeError("Bearer leaked-credential")
        except RuntimeError:
            failed = record("failed: %s", "Bearer other-credential", exc_info=sys.exc_info())
        SCRUB.filter(failed)
        text = logging.Formatter().format(failed)
        self.assertIn("RuntimeError", text)
        self.assertNotIn("leaked-credential", text)
        self.assertNotIn("other-credential", text)


class LogFormatTest(unittest.TestCase):
    def test_text_and_json_in_any_case(self):
        for value, chosen in ((None, "text"), ("", "text"), ("text", "text"), ("json", "json"), (" JSON ", "json")):
            with self.subTest(value):
                self.assertEqual(create_app(app_config(LOG_FORMAT=value)).config["LOG_FORMAT"], chosen)

    def test_any_other_value_stops_the_start_naming_log_format(self):
        for value in ("bogus", "jsonl", "logfmt"):
            with self.subTest(value), self.assertRaisesRegex(ConfigError, f"^LOG_FORMAT .*'{value}'"):
                create_app(app_config(LOG_FORMAT=value))

    def test_gunicorn_refuses_to_start_in_one_line(self):
        with tempfile.TemporaryDirectory() as folder:
            env = on_sqlite(folder, testing.ISSUER_ON_LOOPBACK, TMPDIR=folder)
            result = run_procfile("web", {**env, "LOG_FORMAT": "bogus"}, timeout=60)
            self.assertEqual(os.listdir(folder), ["casting.db"])  # the metrics' directory went with it
        self.assertNotEqual(result.returncode, 0)
        [line] = (result.stdout + result.stderr).strip().splitlines()
        self.assertRegex(line, r"^Error: LOG_FORMAT must be text or json, not 'bogus'$")

    def test_with_json_a_refused_start_is_json_too(self):
        with tempfile.TemporaryDirectory() as folder:
            env = on_sqlite(folder, testing.ISSUER_ON_LOOPBACK, TMPDIR=folder)
            result = run_procfile("web", {**env, "LOG_FORMAT": "json", "SECRET_KEY": ""}, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        entries = [json.loads(line) for line in (result.stdout + result.stderr).splitlines()]  # each line JSON
        [refusal] = [entry for entry in entries if entry["level"] == "error"]
        self.assertRegex(refusal["message"], "^Error: SECRET_KEY is not set")

    def test_the_release_phase_in_json_is_json_too(self):
        with tempfile.TemporaryDirectory() as folder:
            env = server_env(testing.ISSUER_ON_LOOPBACK, f"sqlite:///{os.path.join(folder, 'casting.db')}")
            result = run_procfile("release", {**env, "LOG_FORMAT": "json"})
        self.assertEqual(result.returncode, 0, result.stderr)
        entries = [json.loads(line) for line in (result.stdout + result.stderr).splitlines()]  # each line JSON
        migrations = [entry["message"] for entry in entries if entry["logger"] == "alembic.runtime.migration"]
        self.assertIn("Running upgrade  -> 0001, actors, movies and castings", migrations)


class GunicornLoggerTest(unittest.TestCase):
    """What gunicorn answers without the app: counted, and in JSON an access line."""

    def test_a_refusal_is_counted_and_has_its_access_line(self):
        cfg = Config()
        cfg.set("accesslog", "-")
        logger = GunicornLogger(cfg)
        logger.json = True
        key = ("http_requests_total", (("method", "other"), ("route", "unmatched"), ("status", "431")))
        before = metric(key)
        with self.assertLogs("gunicorn.access") as logged:
            logger.refused(431)
        self.assertEqual(metric(key), before + 1)
        [record] = logged.records
        entry = json.loads(JsonFormatter().format(record))
        self.assertEqual((entry["status"], entry["route"], entry["request_id"]), (431, "unmatched", None))


def metric(key):
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics.generate_latest(metrics.REGISTRY).decode()):
        for sample in family.samples:
            if (sample.name, tuple(sorted(sample.labels.items()))) == key:
                return sample.value
    return 0


# --- under gunicorn ----------------------------------------------------------------------------


def raw_request(port, data):
    """Bytes sent as they are (what no HTTP client sends); the status line of the answer."""
    with socket.create_connection((HOST, port), timeout=10) as connection:
        connection.sendall(data)
        return connection.makefile("rb").readline().decode("latin-1")


class ServerTestCase(unittest.TestCase):
    settings = {}

    @classmethod
    def setUpClass(cls):
        cls.folder, cls.issuer = testing.folder_and_issuer(cls, "logs")
        cls.env = on_sqlite(cls.folder, cls.issuer, TMPDIR=cls.folder, WEB_CONCURRENCY="2", **cls.settings)
        cls.server = Gunicorn(cls.env, os.path.join(cls.folder, "gunicorn.log"))
        cls.addClassCleanup(cls.server.stop)
        cls.server.wait_ready()

    @classmethod
    def call(cls, method, path, token=None, headers=None, body=None):
        return call(cls.server.port, method, path, token=token, headers=headers, body=body)


SECRET_WORD = "zq" + uuid.uuid4().hex  # sent in query strings only: never in a line
METRICS_TOKEN = "metrics-" + uuid.uuid4().hex


Sent = collections.namedtuple("Sent", "method path token body headers status route subject")


class JsonLogsTest(ServerTestCase):
    """One run of the server with LOG_FORMAT=json, from start-up to shutdown:
    requests of every kind, a 500, then a graceful stop; every line is read."""

    settings = {"LOG_FORMAT": "json", "METRICS_TOKEN": METRICS_TOKEN}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        issuer = cls.issuer
        cls.producer = issuer.role_token("Executive Producer")
        cls.tokens = [cls.producer, issuer.token(["get:actors"], key=rsa_key()), issuer.role_token("Casting Assistant")]
        forged, assistant = cls.tokens[1:]
        cls.invalid_trace = uuid.uuid4().hex
        q = f"q={SECRET_WORD}"
        sub = "auth0|test"  # the subject of the issuer's tokens
        invalid = {"traceparent": f"00-{cls.invalid_trace}-0000000000000000-01"}
        actor = {"name": "Logged", "age": 40, "gender": "Female"}
        movie = {"title": "Logged", "release_date": "2020-01-01"}
        cls.sent = [
            Sent("GET", "/", None, None, {}, 200, "/", None),
            Sent("GET", f"/actors?{q}&per_page=3", cls.producer, None, TRACED, 200, "/actors", sub),
            Sent("POST", "/actors", cls.producer, actor, {}, 201, "/actors", sub),
            Sent("GET", f"/actors/987654?{q}", cls.producer, None, {}, 404, "/actors/{actor_id}", sub),
            Sent("GET", f"/actors/abc?{q}", None, None, {}, 404, "unmatched", None),
            Sent("GET", f"/movies?{q}", forged, None, invalid, 401, "/movies", None),
            Sent("POST", "/movies", assistant, movie, {}, 403, "/movies", sub),
            Sent("DELETE", "/health", None, None, {}, 405, "unmatched", None),
            Sent("GET", f"/metrics?{q}", METRICS_TOKEN, None, {}, 200, "/metrics", None),
            Sent("GET", "/metrics", "not-the-metrics-token", None, {}, 401, "/metrics", None),
        ]
        cls.replies = [cls.call(s.method, s.path, token=s.token, headers=s.headers, body=s.body) for s in cls.sent]
        # A 500: the table of movies gone from under the running server.
        with sqlite3.connect(os.path.join(cls.folder, "casting.db")) as database:
            database.execute("DROP TABLE castings")
            database.execute("DROP TABLE movies")
        cls.failing = Sent("GET", f"/movies?{q}", cls.producer, None, {}, 500, "/movies", sub)
        cls.failed = cls.call("GET", cls.failing.path, token=cls.producer)
        # gunicorn's own answer (a malformed Content-Length), which the app never sees.
        cls.refused = raw_request(cls.server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        cls.server.stop()
        cls.lines = cls.server.log().splitlines()
        cls.entries = [json.loads(line) for line in cls.lines if line.strip()]

    def test_the_requests_were_answered_as_expected(self):
        for sent, reply in zip([*self.sent, self.failing], [*self.replies, self.failed], strict=True):
            with self.subTest(sent.method, path=sent.path):
                self.assertEqual(reply.status, sent.status, reply)
        self.assertRegex(self.refused, r"^HTTP/1\.[01] 400 ")

    def test_every_line_from_start_up_to_shutdown_is_one_json_object(self):
        self.assertGreater(len(self.lines), len(self.sent))
        for line in self.lines:
            with self.subTest(line):
                entry = json.loads(line)  # a line that is no JSON fails here
                self.assertIsInstance(entry, dict)
                self.assertRegex(entry["time"], RFC3339_UTC)
                self.assertIn(entry["level"], ("debug", "info", "warning", "error", "critical"))
                self.assertIsInstance(entry["logger"], str)
                self.assertIsInstance(entry["message"], str)
        messages = [entry["message"] for entry in self.entries]
        self.assertTrue(any(message.startswith("Starting gunicorn") for message in messages), messages[:5])
        self.assertIn("Shutting down: Master", messages)

    def test_one_access_line_per_request_with_its_fields(self):
        access = [entry for entry in self.entries if entry["logger"] == "gunicorn.access"]
        by_id = {}
        for entry in access:
            by_id.setdefault(entry["request_id"], []).append(entry)
        for sent, reply in zip([*self.sent, self.failing], [*self.replies, self.failed], strict=True):
            with self.subTest(sent.method, path=sent.path):
                [entry] = by_id.pop(reply.headers["X-Request-ID"])
                fields = ("method", "route", "path", "status", "subject")
                self.assertEqual(
                    {field: entry[field] for field in fields},
                    {**{field: getattr(sent, field) for field in fields}, "path": sent.path.split("?")[0]},
                )
                self.assertIsInstance(entry["duration_ms"], (int, float))
                self.assertEqual(entry.get("trace_id"), TRACE if sent.headers is TRACED else None)
        [refused] = by_id.pop(None)  # gunicorn's own answer: no request id
        self.assertEqual((refused["status"], refused["route"], refused["path"]), (400, "unmatched", "/health"))
        for [readiness] in by_id.values():  # the rest: wait_ready's
            self.assertEqual((readiness["path"], readiness["status"]), ("/health", 200))

    def test_the_500_is_one_error_line_with_its_traceback_and_request_id(self):
        request_id = self.failed.headers["X-Request-ID"]
        lines = [entry for entry in self.entries if entry.get("request_id") == request_id]
        [error] = [entry for entry in lines if entry["logger"] != "gunicorn.access"]
        self.assertEqual(error["level"], "error")
        self.assertIn("Traceback (most recent call last)", error["traceback"])
        self.assertIn("no such table: movies", error["traceback"])

    def test_no_token_metrics_token_or_query_string_in_any_line(self):
        log = "\n".join(self.lines)
        for secret in (*self.tokens, METRICS_TOKEN, SECRET_WORD, self.invalid_trace):
            self.assertNotIn(secret, log)
        for token in self.tokens:
            self.assertNotIn(token.split(".")[2], log)
        self.assertNotIn("eyJ", log)
        self.assertNotIn("?q=", log)
        self.assertIsNone(re.search(r"(?i)bearer\s+\w", log))


class TextLogsTest(ServerTestCase):
    """LOG_FORMAT unset: today's access line, and the trace id of a valid traceparent."""

    LINE = re.compile(r'^\S+ "(\S+) (\S+)" (\d{3}) \d+ \d+ms request_id=([0-9a-f]{32})( trace_id=([0-9a-f]{32}))?$')

    def access_line(self, reply):
        request_id = reply.headers["X-Request-ID"]
        deadline = time.monotonic() + 10
        while True:
            lines = [line for line in self.server.log().splitlines() if request_id in line]
            if lines or time.monotonic() > deadline:
                [line] = lines
                return line
            time.sleep(0.05)

    def test_todays_line_and_the_trace_id_of_a_valid_traceparent(self):
        invalid = uuid.uuid4().hex
        cases = [  # (headers, trace id on the line)
            ({}, None),
            ({"traceparent": TRACEPARENT}, TRACE),
            ({"traceparent": f"00-{invalid}-{'0' * 16}-01"}, None),
            ({"traceparent": f"00-{invalid.upper()}-00f067aa0ba902b7-01"}, None),
        ]
        for headers, trace in cases:
            with self.subTest(headers):
                token = self.issuer.role_token("Casting Assistant")
                reply = self.call("GET", f"/actors?q={SECRET_WORD}", token=token, headers=headers)
                match = self.LINE.fullmatch(self.access_line(reply))
                self.assertIsNotNone(match, self.access_line(reply))
                self.assertEqual(
                    match.group(1, 2, 3, 4, 6), ("GET", "/actors", "200", reply.headers["X-Request-ID"], trace)
                )
        log = self.server.log()
        self.assertNotIn(invalid, log)
        self.assertNotIn(invalid.upper(), log)
        self.assertNotIn(SECRET_WORD, log)
        for line in log.splitlines():
            with self.subTest(line):
                self.assertRaises(json.JSONDecodeError, json.loads, line)  # text, as before
