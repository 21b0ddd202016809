"""metrics.py: GET /metrics and its series.

In-process: the token rules (off, 401s, the constant-time compare, never
rate-limited, scrapes not counted), each kind of answer counted once under its
method, route and status, the refusals by code and scope, the JWKS fetches, and
series that stay bounded whatever the paths. Under gunicorn (the Procfile's
web command, several workers, on a SQLite file): totals exact whichever worker
answers the scrape, a killed worker replaced without a counter going
backwards, and a second instance beside it counting its own requests only.
"""

import glob
import hmac
import os
import signal
import socket
import time
import unittest
import uuid
from unittest import mock

from prometheus_client.parser import text_string_to_metric_families

import testing
from app import create_app
from loopback import Gunicorn, call, children, on_sqlite
from testing import ApiTestCase, app_config

TOKEN = "a-scrape-token-" + uuid.uuid4().hex
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}


def samples(text):
    """A scrape's samples: {(name, ((label, value), ...)): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def changes(before, after):
    """The samples that changed between two scrapes, by how much (a new one from 0)."""
    return {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}


def requests(method, route, status, times=1):
    key = ("http_requests_total", (("method", method), ("route", route), ("status", str(status))))
    return {key: times}


def durations(counted):
    """What the histogram's counts must have changed by, for these counted requests."""
    expected = {}
    for (_, labels), times in counted.items():
        by = dict(labels)
        key = ("http_request_duration_seconds_count", (("method", by["method"]), ("route", by["route"])))
        expected[key] = expected.get(key, 0) + times
    return expected


def of_series(delta, *names):
    return {key: value for key, value in delta.items() if key[0] in names}


class MetricsTestCase(ApiTestCase):
    config = {"METRICS_TOKEN": TOKEN}

    def scrape(self, client=None):
        reply = (client or self.client).get("/metrics", headers=SCRAPE)
        self.assertEqual(reply.status_code, 200, reply.get_data(as_text=True))
        return samples(reply.get_data(as_text=True))


class TokenTest(MetricsTestCase):
    def test_without_a_token_metrics_is_the_same_404_as_any_unknown_path(self):
        for setting in (None, ""):
            with self.subTest(METRICS_TOKEN=setting):
                client = create_app(app_config(METRICS_TOKEN=setting)).test_client()
                unknown = client.get("/no-such-path", headers=SCRAPE)
                scrape = client.get("/metrics", headers=SCRAPE)
                self.assertError(scrape, 404)
                self.assertEqual(scrape.get_json(), unknown.get_json())
                self.assertEqual(
                    {k: v for k, v in scrape.headers if k != "X-Request-ID"},
                    {k: v for k, v in unknown.headers if k != "X-Request-ID"},
                )

    def test_a_scrape_needs_the_bearer_token(self):
        refused = [
            {},
            {"Authorization": ""},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer not-the-token"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            {"Authorization": f"Bearer {TOKEN} {TOKEN}"},
            {"Authorization": f"Bearer {self.issuer.role_token('Executive Producer')}"},  # an API token is not it
        ]
        for headers in refused:
            with self.subTest(headers):
                body = self.assertError(self.client.get("/metrics", headers=headers), 401)
                self.assertEqual(body["code"], "invalid_metrics_token")
        for scheme in ("Bearer", "bearer", "BEARER"):
            with self.subTest(scheme):
                reply = self.client.get("/metrics", headers={"Authorization": f"{scheme} {TOKEN}"})
                self.assertEqual(reply.status_code, 200)
                self.assertEqual(reply.mimetype, "text/plain")
                self.assertIn("# TYPE http_requests_total counter", reply.get_data(as_text=True))

    def test_the_token_is_compared_in_constant_time(self):
        with mock.patch("metrics.hmac.compare_digest", wraps=hmac.compare_digest) as compare:
            self.assertEqual(self.client.get("/metrics", headers={"Authorization": "Bearer guess"}).status_code, 401)
            self.assertEqual(self.client.get("/metrics", headers=SCRAPE).status_code, 200)
        self.assertEqual(
            compare.call_args_list, [mock.call(b"guess", TOKEN.encode()), mock.call(*[TOKEN.encode()] * 2)]
        )

    def test_scrapes_are_never_rate_limited(self):
        app = create_app(app_config(METRICS_TOKEN=TOKEN, RATE_LIMIT_ANONYMOUS="2/minute", RATE_LIMIT="2/minute"))
        client = app.test_client()
        self.assertEqual([client.get("/actors").status_code for _ in range(3)], [401, 401, 429])  # the limits are on
        for _ in range(10):
            refused = client.get("/metrics", headers={"Authorization": "Bearer guess"})
            self.assertError(refused, 401)
            self.assertNotIn("X-RateLimit-Limit", refused.headers)
            scraped = client.get("/metrics", headers=SCRAPE)
            self.assertEqual(scraped.status_code, 200)
            self.assertNotIn("X-RateLimit-Limit", scraped.headers)

    def test_successful_scrapes_are_not_counted_and_refused_ones_are(self):
        before = self.scrape()
        for _ in range(3):
            self.scrape()
            self.client.get("/metrics", headers={"Authorization": "Bearer guess"})
        delta = changes(before, self.scrape())
        expected = requests("GET", "/metrics", 401, 3)
        expected[("auth_rejections_total", (("code", "invalid_metrics_token"),))] = 3
        self.assertEqual(of_series(delta, "http_requests_total", "auth_rejections_total"), expected)


class SeriesTest(MetricsTestCase):
    def test_every_answer_is_counted_once_by_method_route_and_status(self):
        actor = self.add(testing.Actor, **testing.ACTOR)
        movie = self.add(testing.Movie, **testing.MOVIE_ROW)
        sent = [  # (method, path, role, body, status, route)
            ("GET", "/", None, None, 200, "/"),
            ("GET", "/health", None, None, 200, "/health"),
            ("GET", f"/actors/{actor['id']}", "Casting Assistant", None, 200, "/actors/{actor_id}"),
            ("GET", f"/actors/{actor['id']}", "Casting Assistant", None, 200, "/actors/{actor_id}"),
            ("GET", "/actors?per_page=2&q=viola", "Casting Assistant", None, 200, "/actors"),
            ("POST", "/actors", "Casting Director", testing.ACTOR, 201, "/actors"),
            ("POST", "/actors", "Casting Director", {"name": "x"}, 422, "/actors"),
            ("PUT", f"/movies/{movie['id']}/actors/{actor['id']}", "Casting Director", None, 201, None),
            ("GET", "/actors/999999", "Casting Assistant", None, 404, "/actors/{actor_id}"),
            ("GET", "/actors/abc", "Casting Assistant", None, 404, "unmatched"),
            ("GET", "/no/such/path", None, None, 404, "unmatched"),
            ("DELETE", "/health", None, None, 405, "unmatched"),
            ("BREW", "/actors", None, None, 405, "unmatched"),  # an unknown method is "other"
            ("GET", "/movies", None, None, 401, "/movies"),
            ("POST", "/movies", "Casting Assistant", testing.MOVIE, 403, "/movies"),
            ("GET", "/actors?per_page=0", "Casting Assistant", None, 400, "/actors"),
        ]
        before = self.scrape()
        expected = {}
        for method, path, role, body, status, route in sent:
            with self.subTest(method, path=path):
                reply = self.call(method, path, role=role, json=body)
                self.assertEqual(reply.status_code, status, reply.get_data(as_text=True))
                route = route or "/movies/{movie_id}/actors/{actor_id}"
                for key, times in requests("other" if method == "BREW" else method, route, status).items():
                    expected[key] = expected.get(key, 0) + times
        with mock.patch("lists.Listing.page", side_effect=RuntimeError("a bug")):
            self.assertError(self.call("GET", "/actors"), 500)
        expected.update(requests("GET", "/actors", 500))
        delta = changes(before, self.scrape())
        self.assertEqual(of_series(delta, "http_requests_total"), expected)
        self.assertEqual(of_series(delta, "http_request_duration_seconds_count"), durations(expected))

    def test_the_histogram_runs_from_a_millisecond_to_ten_seconds(self):
        self.client.get("/")
        bounds = [
            float(dict(labels)["le"])
            for (name, labels) in self.scrape()
            if name == "http_request_duration_seconds_bucket" and dict(labels)["route"] == "/"
        ]
        self.assertLessEqual(min(bounds), 0.001)
        self.assertGreaterEqual(max(b for b in bounds if b != float("inf")), 10)

    def test_refusals_are_counted_by_code_and_by_budget(self):
        app = create_app(app_config(METRICS_TOKEN=TOKEN, RATE_LIMIT="2/minute", RATE_LIMIT_ANONYMOUS="4/minute"))
        client = app.test_client()
        before = self.scrape(client)
        expired = self.issuer.token(["get:actors"], exp=int(time.time()) - 60)
        sent = [  # (headers, status)
            (self.headers(token=self.issuer.token(["get:movies"], sub="auth0|a")), 403),
            (self.headers(token=self.issuer.token(["get:actors"], sub="auth0|b")), 200),
            (self.headers(token=self.issuer.token(["get:actors"], sub="auth0|b")), 200),
            (self.headers(token=self.issuer.token(["get:actors"], sub="auth0|b")), 429),  # the subject's budget
            ({}, 401),
            ({"Authorization": "Token abc"}, 401),
            ({"Authorization": "Bearer not.a.jwt"}, 401),
            ({"Authorization": f"Bearer {expired}"}, 401),
            ({}, 429),  # the address's budget
        ]
        for headers, status in sent:
            self.assertEqual(client.get("/actors", headers=headers).status_code, status)
        delta = changes(before, self.scrape(client))
        self.assertEqual(
            of_series(delta, "auth_rejections_total", "rate_limit_rejections_total"),
            {
                ("auth_rejections_total", (("code", "authorization_header_missing"),)): 1,
                ("auth_rejections_total", (("code", "invalid_header"),)): 1,
                ("auth_rejections_total", (("code", "malformed_token"),)): 1,
                ("auth_rejections_total", (("code", "token_expired"),)): 1,
                ("auth_rejections_total", (("code", "forbidden"),)): 1,
                ("rate_limit_rejections_total", (("scope", "address"),)): 1,
                ("rate_limit_rejections_total", (("scope", "subject"),)): 1,
            },
        )

    def test_jwks_fetches_are_counted_by_outcome(self):
        before = self.scrape()
        self.assertEqual(self.call("GET", "/actors").status_code, 200)  # the first token: a fetch
        self.issuer.failing = True
        client = create_app(app_config(METRICS_TOKEN=TOKEN)).test_client()  # no keys yet: fetches, and fails
        self.assertEqual(client.get("/actors", headers=self.headers()).status_code, 503)
        self.assertEqual(
            of_series(changes(before, self.scrape()), "jwks_fetches_total"),
            {
                ("jwks_fetches_total", (("outcome", "success"),)): 1,
                ("jwks_fetches_total", (("outcome", "failure"),)): 1,
            },
        )

    def test_series_stay_bounded_whatever_the_paths_ids_and_queries(self):
        self.call("GET", "/actors/1")
        self.call("GET", "/nowhere")
        before = self.scrape()
        sent = []
        for n in range(300):
            word = uuid.uuid4().hex
            sent += [f"/actors/{10**6 + n}", f"/movies/{n}/actors?q={word}", f"/{word}", f"/actors/{word}"]
        for path in sent:
            self.assertLess(self.call("GET", path).status_code, 500)
        after = self.scrape()
        self.assertLessEqual(len(after) - len(before), 2 * 16)  # a new route and status or two, never one per path
        described = set(self.client.get("/openapi.json").get_json()["paths"])
        for name, labels in after:
            for label, value in labels:
                with self.subTest(name, label=label, value=value):
                    if label == "route":
                        self.assertIn(value, described | {"unmatched", "/metrics"})
                    self.assertFalse(any(part in value for path in sent[-8:] for part in path.split("/")[2:]))


# --- under gunicorn: several workers, a killed one, a second instance -------------------------------


def scrape(server, headers=SCRAPE):
    reply = call(server.port, "GET", "/metrics", headers=headers)
    if reply.status != 200:
        raise AssertionError(f"scrape: {reply}")
    return samples(reply.raw.decode())


def counted(snapshot, name="http_requests_total"):
    return {key: value for key, value in snapshot.items() if key[0] == name}


class WorkersTest(unittest.TestCase):
    """Two instances of the Procfile's web command side by side, each on its own
    database and with its own workers."""

    @classmethod
    def setUpClass(cls):
        cls.folder, cls.issuer = testing.folder_and_issuer(cls, "metrics")
        cls.token = cls.issuer.role_token("Executive Producer")
        cls.a = cls.instance("a", WEB_CONCURRENCY="3")
        cls.b = cls.instance("b", WEB_CONCURRENCY="2")

    @classmethod
    def instance(cls, name, **settings):
        return start(os.path.join(cls.folder, name), cls.issuer, cls.addClassCleanup, **settings)

    def send(self, server, kinds, times):
        """`times` requests of each kind, each on a connection of its own (so
        that every worker gets some); the requests_total they must add."""
        expected = {}
        for _ in range(times):
            for method, path, token, status, route in kinds:
                reply = call(server.port, method, path, token=token)
                self.assertEqual(reply.status, status, reply)
                for key, n in requests(method, route, status).items():
                    expected[key] = expected.get(key, 0) + n
        return expected

    def kinds(self):
        return [
            ("GET", "/", None, 200, "/"),
            ("GET", "/actors?per_page=1", self.token, 200, "/actors"),
            ("GET", "/actors/123456", self.token, 404, "/actors/{actor_id}"),
            ("GET", "/actors/abc", self.token, 404, "unmatched"),
            ("GET", "/movies", None, 401, "/movies"),
            ("GET", "/metrics", "not-the-token", 401, "/metrics"),
            ("POST", "/health", None, 405, "unmatched"),
        ]

    def test_totals_are_exact_whichever_worker_answers_the_scrape(self):
        before = scrape(self.a)
        expected = self.send(self.a, self.kinds(), times=10)
        directory = metrics_directory(self.a)
        served_by = {name.rsplit("_", 1)[1] for name in os.listdir(directory) if name.startswith("counter_")}
        self.assertGreater(len(served_by), 1, "one worker served every request: nothing to add up")
        for _ in range(12):  # each on its own connection: by different workers
            after = scrape(self.a)
            self.assertEqual(counted(changes(before, after)), expected)
            self.assertEqual(
                counted(changes(before, after), "http_request_duration_seconds_count"), durations(expected)
            )

    def test_gunicorns_own_refusals_are_counted_too(self):
        before = scrape(self.a)
        for request in (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"G@T / HTTP/1.1\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", self.a.port), timeout=10) as client:
                client.sendall(request)
                while client.recv(65536):
                    pass
        delta = of_series(changes(before, scrape(self.a)), "http_requests_total")
        self.assertEqual(delta, {**requests("other", "unmatched", 414), **requests("other", "unmatched", 400)})

    def test_a_killed_worker_is_replaced_and_no_counter_goes_backwards(self):
        self.send(self.a, self.kinds(), times=4)
        before = scrape(self.a)
        workers = children(self.a.process.pid)
        self.assertEqual(len(workers), 3)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while victim in children(self.a.process.pid) or len(children(self.a.process.pid)) < 3:
            self.assertLess(time.monotonic(), deadline, "the killed worker was not replaced")
            time.sleep(0.1)
        for _ in range(6):
            self.assertEqual(scrape(self.a), before)  # nothing lost, nothing added: scrapes are not counted
        expected = self.send(self.a, self.kinds(), times=3)
        after = scrape(self.a)
        self.assertEqual(counted(changes(before, after)), expected)
        self.assertTrue(all(after[key] >= value for key, value in before.items()))

    def test_a_reload_keeps_the_counts(self):
        """HUP: gunicorn runs gunicorn.conf.py again and replaces every worker;
        the instance keeps its metrics' directory, so its counts."""
        server = start(os.path.join(self.folder, f"h-{uuid.uuid4().hex[:6]}"), self.issuer, self.addCleanup)
        self.send(server, self.kinds(), times=2)
        before = scrape(server)
        workers = children(server.process.pid)
        os.kill(server.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while children(server.process.pid) & workers or len(children(server.process.pid)) < 2:
            self.assertLess(time.monotonic(), deadline, "the workers were not replaced")
            time.sleep(0.1)
        self.assertEqual(scrape(server), before)
        expected = self.send(server, self.kinds()[:2], times=2)
        self.assertEqual(counted(changes(before, scrape(server))), expected)
        self.assertEqual(len(glob.glob(os.path.join(os.path.dirname(server.log_path), "casting-metrics-*"))), 1)

    def test_a_second_instance_counts_its_own_requests_only(self):
        a_before = scrape(self.a)
        b_before = scrape(self.b)
        sent_to_b = self.send(self.b, self.kinds()[:3], times=5)
        self.assertEqual(counted(changes(b_before, scrape(self.b))), sent_to_b)
        self.assertEqual(scrape(self.a), a_before)
        self.assertNotEqual(metrics_directory(self.a), metrics_directory(self.b))

    def test_series_stay_bounded_under_gunicorn(self):
        before = scrape(self.a)
        for n in range(150):
            call(self.a.port, "GET", f"/actors/{10**6 + n}", token=self.token)
            call(self.a.port, "GET", f"/{uuid.uuid4().hex}?q={n}")
        after = scrape(self.a)
        self.assertLessEqual(len(after) - len(before), 2 * 16)
        self.assertEqual(
            counted(changes(before, after)),
            {**requests("GET", "/actors/{actor_id}", 404, 150), **requests("GET", "unmatched", 404, 150)},
        )

    def test_the_directory_goes_with_the_instance(self):
        server = start(os.path.join(self.folder, f"c-{uuid.uuid4().hex[:6]}"), self.issuer, self.addCleanup)
        directory = metrics_directory(server)
        self.assertTrue(os.listdir(directory))  # wait_ready's request was counted there
        server.stop()
        self.assertFalse(os.path.exists(directory))


def start(folder, issuer, cleanup, **settings):
    """The Procfile's web command with metrics on, its temporary files (the
    metrics' directory) in `folder`."""
    os.mkdir(folder)
    env = on_sqlite(folder, issuer, METRICS_TOKEN=TOKEN, TMPDIR=folder, **settings)
    server = Gunicorn(env, f"{folder}/gunicorn.log")
    cleanup(server.stop)
    server.wait_ready()
    return server


def metrics_directory(server):
    """The directory gunicorn.conf.py made for the instance's metrics (in its TMPDIR)."""
    [directory] = glob.glob(os.path.join(os.path.dirname(server.log_path), "casting-metrics-*"))
    return directory
