"""Production readiness: the Procfile's gunicorn, on a PostgreSQL the test starts
for itself, over real HTTP on 127.0.0.1.

* The database going away: a stopped PostgreSQL is a quick JSON 503 (and
  /health says so), and the same gunicorn serves again once it is back.
* Concurrent writers: racing PATCHes, deletes among reads and writes, the same
  casting PUT many times at once, many POSTs at once; no 5xx, and the database
  holds what the answers said.
* The access log: one line per request with its method, path, status and the
  request id of the X-Request-ID header, and never a query string or a token.
* The limits of a request: gunicorn lets every request the API allows through
  (a long search, a token of many kilobytes), and a body over the limit is a
  JSON 413 the client reads.
* DB_POOL_SIZE: a hard cap on a worker's connections, however many requests wait.

The module makes one PostgreSQL cluster with `initdb` in a temporary folder
(as the `postgres` user when the tests run as root), creates a database and
runs the Procfile's release command on it, and stops it. Each stack
copies that folder and runs it with `pg_ctl` on a free port of 127.0.0.1: a
PostgreSQL of its own. On it, `gunicorn 'app:create_app()'` starts from the
repo folder as the Procfile says (so ./gunicorn.conf.py applies), in its own
process group, with tokens from an issuer on loopback. The harness is
loopback.py's, shared with the benchmark. Everything is stopped and removed by
cleanups, also when a test fails.
"""

import concurrent.futures
import json
import os
import re
import socket
import time
import unittest
import urllib.parse
import uuid

import testing
from app import create_app
from auth import ROLES
from loopback import (
    CAN_RUN_POSTGRES,
    Gunicorn,
    Issuer,
    Postgres,
    call,
    concurrently,
    free_port,
    migrated_cluster,
    needs_postgres,
    rsa_key,
    server_env,
)
from testing import actor, movie, replay, tag

PRODUCER = "Executive Producer"
JSON = {"Content-Type": "application/json"}
DATABASE = "casting_agency"


_template = None


def setUpModule():
    global _template
    if CAN_RUN_POSTGRES:
        _template = migrated_cluster(testing.ISSUER_ON_LOOPBACK, DATABASE)


def tearDownModule():
    global _template
    if _template is not None:
        _template.close()
        _template = None


class Stack:
    """A token issuer, a migrated PostgreSQL of its own (a copy of the module's
    template cluster, on its own port) and the Procfile's gunicorn on it.
    `cleanup` is addCleanup or addClassCleanup: whatever was started is stopped
    and removed, even when a later step fails."""

    def __init__(self, cleanup):
        self.issuer = Issuer(testing.ISSUER, testing.AUDIENCE)
        cleanup(self.issuer.stop)
        self.pg = Postgres()
        cleanup(self.pg.close)
        self.pg.copy_of(_template)
        self.pg.start()
        self.database_url = self.pg.url(DATABASE)
        env = server_env(
            self.issuer,
            self.database_url,
            PORT=str(free_port()),
            WEB_CONCURRENCY="2",
            # gunicorn's control socket goes to $XDG_RUNTIME_DIR (else ~/.gunicorn/): each its own.
            XDG_RUNTIME_DIR=self.pg.dir,
        )
        self.server = Gunicorn(env, os.path.join(self.pg.dir, "gunicorn.log"))
        cleanup(self.server.stop)
        self.server.wait_ready()
        self.token = self.issuer.role_token(PRODUCER)

    def call(self, method, path, body=None, token=..., **kwargs):
        return call(self.server.port, method, path, token=self.token if token is ... else token, body=body, **kwargs)

    def query(self, sql, params=()):
        return self.pg.query(DATABASE, sql, params)


class StackTestCase(unittest.TestCase):
    stack = None

    def call(self, method, path, body=None, **kwargs):
        return self.stack.call(method, path, body, **kwargs)

    def assertStatus(self, reply, status):
        self.assertEqual(reply.status, status, reply)
        return reply.json()

    def assertEnvelope(self, reply, status):
        """The JSON error envelope with this status."""
        self.assertEqual(reply.status, status, reply)
        self.assertEqual(reply.headers.get_content_type(), "application/json", reply)
        body = reply.json()
        self.assertIs(body["success"], False, body)
        self.assertEqual(body["error"], status, body)
        self.assertIsInstance(body["message"], str, body)
        return body

    def create(self, plural, body):
        return self.assertStatus(self.call("POST", f"/{plural}", body), 201)[plural[:-1]]


# --- 1. the database going away -------------------------------------------------


@needs_postgres
class DatabaseOutageTest(StackTestCase):
    def setUp(self):
        self.stack = Stack(self.addCleanup)

    def warm_up(self):
        """Requests on both workers, so that each has pooled connections to lose."""
        replies = concurrently([lambda: self.call("GET", "/actors") for _ in range(8)], workers=4)
        self.assertEqual({r.status for r in replies}, {200}, replies)

    def test_a_stopped_database_is_a_quick_503_and_the_same_server_recovers(self):
        self.warm_up()
        before = self.create("actors", actor(f"{tag()} before"))
        self.assertStatus(self.call("GET", "/health", token=None), 200)

        self.stack.pg.stop("fast")

        for method, path, body in [
            ("GET", "/actors", None),
            ("GET", f"/actors/{before['id']}", None),
            ("POST", "/actors", actor(f"{tag()} during")),
            ("GET", "/actors", None),
            ("GET", "/actors", None),
        ]:
            with self.subTest(method, path=path):
                started = time.monotonic()
                reply = self.call(method, path, body)
                elapsed = time.monotonic() - started
                self.assertEnvelope(reply, 503)
                self.assertLess(elapsed, 10)
        started = time.monotonic()
        health = self.call("GET", "/health", token=None)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEnvelope(health, 503)

        self.stack.pg.start()

        started = time.monotonic()
        deadline = started + 15
        reply = None
        while time.monotonic() < deadline:
            reply = self.call("GET", "/actors")
            if reply.status == 200:
                break
            self.assertEnvelope(reply, 503)  # nothing but a 503 while it comes back
            time.sleep(0.2)
        self.assertEqual(reply.status, 200, f"no 200 within 15 s of the restart: {reply}")
        # Both workers are back, not only the one that answered.
        replies = concurrently([lambda: self.call("GET", "/actors") for _ in range(8)], workers=4)
        self.assertEqual([r.status for r in replies], [200] * 8, replies)
        self.assertEqual(self.call("GET", "/health", token=None).json(), {"success": True, "database": "ok"})

        # Writes reach the database again, and nothing was lost.
        after = self.create("actors", actor(f"{tag()} after", age=33))
        self.assertEqual(self.assertStatus(self.call("GET", f"/actors/{after['id']}"), 200)["actor"], after)
        self.assertEqual(
            self.stack.query("SELECT id, name, age, gender FROM actors WHERE id = %s", (after["id"],)),
            [(after["id"], after["name"], 33, "Female")],
        )
        self.assertEqual(self.assertStatus(self.call("GET", f"/actors/{before['id']}"), 200)["actor"], before)
        self.assertEqual(self.stack.query("SELECT count(*) FROM actors WHERE name LIKE '%%during'"), [(0,)])

    def test_a_database_restart_between_requests_costs_no_failed_request(self):
        # The pools hold connections to the old server; the check before each
        # use (app.closed_by_the_server) must replace them, however it stopped.
        for mode in ("fast", "immediate"):
            with self.subTest(mode):
                self.warm_up()
                self.stack.pg.stop(mode)
                self.stack.pg.start()
                replies = concurrently([lambda: self.call("GET", "/actors") for _ in range(8)], workers=4)
                self.assertEqual([r.status for r in replies], [200] * 8, replies)
                created = self.create("actors", actor(f"{tag()} restart"))
                reply = self.call("GET", f"/actors/{created['id']}")
                self.assertEqual(self.assertStatus(reply, 200)["actor"], created)


# --- 2. concurrent writers --------------------------------------------------------


@needs_postgres
class ConcurrentWritersTest(StackTestCase):
    @classmethod
    def setUpClass(cls):
        cls.stack = Stack(cls.addClassCleanup)

    def assertNoServerErrors(self, replies):
        errors = [r for r in replies if r.status >= 500]
        self.assertEqual(errors, [], f"{len(errors)} of {len(replies)} answers were 5xx")

    def assertTotalsAgree(self):
        """The unfiltered totals of the lists are the tables' row counts (the tests
        of this class run one at a time, so nothing writes meanwhile)."""
        for plural in ("actors", "movies"):
            listed = self.assertStatus(self.call("GET", f"/{plural}?per_page=1"), 200)
            rows = self.stack.query(f"SELECT count(*) FROM {plural}")  # noqa: S608 (fixed names)
            self.assertEqual(listed[f"total_{plural}"], rows[0][0], plural)

    def test_racing_patches_of_one_actor(self):
        name = tag()
        target = self.create("actors", actor(f"{name} original"))
        path = f"/actors/{target['id']}"
        values = [{"name": f"{name} v{i}", "age": i, "gender": f"g{i}"} for i in range(64)]

        replies = concurrently([lambda v=v: self.call("PATCH", path, v) for v in values])

        self.assertNoServerErrors(replies)
        self.assertEqual([r.status for r in replies], [200] * len(values), replies)
        for value, reply in zip(values, replies, strict=True):
            self.assertEqual(reply.json()["actor"], {"id": target["id"], **value})  # each answer shows its own write
        final = self.assertStatus(self.call("GET", path), 200)["actor"]
        written = [{"id": target["id"], **v} for v in values]
        self.assertIn(final, written)  # one whole write won: no mix of two
        row = self.stack.query("SELECT id, name, age, gender FROM actors WHERE id = %s", (target["id"],))
        self.assertEqual(row, [(final["id"], final["name"], final["age"], final["gender"])])

    def test_deletes_while_others_read_and_write_the_same_rows(self):
        name = tag()
        actors = [self.create("actors", actor(f"{name} a{i}", age=20 + i))["id"] for i in range(12)]
        movies = [self.create("movies", movie(f"{name} m{i}"))["id"] for i in range(2)]
        kept_movie, doomed_movie = movies
        casts = [
            lambda m=m, a=a: self.call("PUT", f"/movies/{m}/actors/{a}", {"character": "before"})
            for m in movies
            for a in actors
        ]
        self.assertEqual({r.status for r in concurrently(casts)}, {201})
        doomed_actors, kept_actors = actors[::2], actors[1::2]

        def burst(a):
            """Requests on one actor, next to each other in the queue, so that the
            two workers serve them at the same time: the deletes race the others."""
            delete = [lambda: self.call("DELETE", f"/actors/{a}")] if a in doomed_actors else []
            return [
                lambda: self.call("PATCH", f"/actors/{a}", {"age": 50}),
                *delete,
                lambda: self.call("PATCH", f"/actors/{a}", {"age": 51}),
                lambda: self.call("PUT", f"/movies/{kept_movie}/actors/{a}", {"character": "during"}),
                *delete,
                lambda: self.call("GET", f"/actors/{a}/movies"),
                lambda: self.call("PUT", f"/movies/{doomed_movie}/actors/{a}"),
                lambda: self.call("GET", f"/actors/{a}"),
                lambda: self.call("PATCH", f"/actors/{a}", {"age": 52}),
            ]

        movie_burst = [
            lambda: self.call("PATCH", f"/movies/{doomed_movie}", {"title": f"{name} doomed"}),
            lambda: self.call("DELETE", f"/movies/{doomed_movie}"),
            lambda: self.call("PUT", f"/movies/{doomed_movie}/actors/{actors[0]}", {"character": "late"}),
            lambda: self.call("GET", f"/movies/{doomed_movie}/actors"),
            lambda: self.call("DELETE", f"/movies/{doomed_movie}"),
            lambda: self.call("PATCH", f"/movies/{doomed_movie}", {"title": f"{name} late"}),
            lambda: self.call("GET", f"/movies/{kept_movie}/actors"),
        ]
        calls = [c for a in actors[:6] for c in burst(a)] + movie_burst + [c for a in actors[6:] for c in burst(a)]

        replies = concurrently(calls)

        self.assertNoServerErrors(replies)
        self.assertEqual({r.status for r in replies} - {200, 404}, set(), [r for r in replies if r.status != 200])
        for reply in replies:
            if reply.status == 404:
                self.assertEnvelope(reply, 404)
        # The deleted rows are gone, through the API and in the database.
        for a in doomed_actors:
            self.assertEnvelope(self.call("GET", f"/actors/{a}"), 404)
        self.assertEnvelope(self.call("GET", f"/movies/{doomed_movie}"), 404)
        self.assertEqual(self.stack.query("SELECT id FROM actors WHERE id = ANY(%s)", (doomed_actors,)), [])
        self.assertEqual(self.stack.query("SELECT id FROM movies WHERE id = %s", (doomed_movie,)), [])
        # Their castings are gone; the others' are intact.
        castings = self.stack.query(
            "SELECT movie_id, actor_id FROM castings WHERE movie_id = ANY(%s) OR actor_id = ANY(%s) "
            "ORDER BY movie_id, actor_id",
            (movies, actors),
        )
        self.assertEqual(castings, [(kept_movie, a) for a in kept_actors])
        cast = self.assertStatus(self.call("GET", f"/movies/{kept_movie}/actors"), 200)
        self.assertEqual(cast["total_actors"], len(kept_actors))
        self.assertEqual([item["id"] for item in cast["actors"]], kept_actors)
        for a in kept_actors:
            self.assertIn(self.assertStatus(self.call("GET", f"/actors/{a}"), 200)["actor"]["age"], (50, 51, 52))
            movies_of = self.assertStatus(self.call("GET", f"/actors/{a}/movies"), 200)
            self.assertEqual([item["id"] for item in movies_of["movies"]], [kept_movie])
        self.assertTotalsAgree()

    def test_the_same_casting_put_by_many_at_once(self):
        name = tag()
        pairs = [
            (self.create("movies", movie(f"{name} m{i}"))["id"], self.create("actors", actor(f"{name} a{i}"))["id"])
            for i in range(6)
        ]
        per_pair = 16
        characters = [f"Role {i}" for i in range(per_pair)]
        # Grouped by pair, so that the workers take the same pair at the same time.
        calls = [
            lambda m=m, a=a, c=c: self.call("PUT", f"/movies/{m}/actors/{a}", {"character": c})
            for m, a in pairs
            for c in characters
        ]

        replies = concurrently(calls, workers=32)

        self.assertNoServerErrors(replies)
        for index, (m, a) in enumerate(pairs):
            with self.subTest(movie=m, actor=a):
                mine = replies[index * per_pair : (index + 1) * per_pair]
                statuses = sorted(r.status for r in mine)
                self.assertEqual(statuses, [200] * (per_pair - 1) + [201], mine)
                for reply in mine:
                    self.assertEqual(reply.json()["casting"]["movie_id"], m)
                    self.assertEqual(reply.json()["casting"]["actor_id"], a)
                cast = self.assertStatus(self.call("GET", f"/movies/{m}/actors"), 200)
                self.assertEqual(cast["total_actors"], 1)
                self.assertEqual(cast["actors"][0]["id"], a)
                self.assertIn(cast["actors"][0]["character"], characters)
                rows = self.stack.query("SELECT actor_id, character FROM castings WHERE movie_id = %s", (m,))
                self.assertEqual(rows, [(a, cast["actors"][0]["character"])])

    def test_many_posts_at_once(self):
        name = tag()
        bodies = [actor(f"{name} a{i:03}", age=i % 100) for i in range(64)]
        movie_bodies = [movie(f"{name} m{i:03}") for i in range(16)]
        calls = [lambda b=b: self.call("POST", "/actors", b) for b in bodies]
        calls += [lambda b=b: self.call("POST", "/movies", b) for b in movie_bodies]

        replies = concurrently(calls, workers=32)

        self.assertNoServerErrors(replies)
        self.assertEqual([r.status for r in replies], [201] * len(calls), replies)
        for plural, sent, answers in (
            ("actors", bodies, replies[: len(bodies)]),
            ("movies", movie_bodies, replies[len(bodies) :]),
        ):
            with self.subTest(plural):
                items = [r.json()[plural[:-1]] for r in answers]
                ids = [item["id"] for item in items]
                self.assertEqual(len(set(ids)), len(sent))
                for body, item, reply in zip(sent, items, answers, strict=True):
                    self.assertEqual({k: item[k] for k in body}, body)
                    self.assertEqual(reply.headers["Location"], f"/{plural}/{item['id']}")
                listed = self.assertStatus(self.call("GET", f"/{plural}?q={name}&per_page=100"), 200)
                self.assertEqual(listed[f"total_{plural}"], len(sent))
                self.assertEqual(sorted(item["id"] for item in listed[plural]), sorted(ids))
                column = "name" if plural == "actors" else "title"
                count = self.stack.query(
                    f"SELECT count(*), count(DISTINCT id) FROM {plural} WHERE {column} LIKE %s",  # noqa: S608 (fixed names)
                    (f"{name} %",),
                )
                self.assertEqual(count, [(len(sent), len(sent))])
        self.assertTotalsAgree()

    def test_conditional_patches_with_one_etag_one_wins_each_round(self):
        target = self.create("actors", actor(tag()))
        path = f"/actors/{target['id']}"
        etag = self.call("GET", path).headers["ETag"]
        for round_ in range(6):
            values = [{"age": round_ * 10 + i, "name": f"round {round_} writer {i}"} for i in range(8)]
            calls = [lambda v=v, etag=etag: self.call("PATCH", path, v, headers={"If-Match": etag}) for v in values]

            replies = concurrently(calls, workers=8)

            self.assertNoServerErrors(replies)
            self.assertEqual(sorted(r.status for r in replies), [200] + [412] * 7, replies)
            winner = next(r for r in replies if r.status == 200)
            current = self.call("GET", path)
            self.assertEqual(current.json()["actor"], winner.json()["actor"])  # nothing lost, nothing mixed
            self.assertEqual(winner.headers["ETag"], current.headers["ETag"])
            etag = current.headers["ETag"]
        events = self.assertStatus(self.call("GET", f"/audit?resource=actors&resource_id={target['id']}"), 200)
        self.assertEqual([e["action"] for e in events["events"]], ["update"] * 6 + ["create"])

    def test_a_burst_of_mixed_writes_leaves_what_the_audit_trail_replays(self):
        started = self.assertStatus(self.call("GET", "/audit?per_page=1"), 200)["events"]
        since = started[0]["id"] if started else 0
        name = tag()
        actors = [self.create("actors", actor(f"{name} a{i}"))["id"] for i in range(6)]
        movies = [self.create("movies", movie(f"{name} m{i}"))["id"] for i in range(3)]
        calls = []
        for i in range(96):
            a, m = actors[i % 6], movies[i % 3]
            calls += [
                lambda a=a, i=i: self.call("PATCH", f"/actors/{a}", {"age": i % 7}),
                lambda a=a, m=m, i=i: self.call("PUT", f"/movies/{m}/actors/{a}", {"character": f"c{i % 3}"}),
                lambda a=a, m=m: self.call("DELETE", f"/movies/{m}/actors/{a}"),
                lambda m=m, i=i: self.call("PATCH", f"/movies/{m}", {"title": f"{name} m{i % 4}"}),
            ]
        calls += [lambda a=a: self.call("DELETE", f"/actors/{a}") for a in actors[:2]]

        replies = concurrently(calls, workers=24)

        self.assertNoServerErrors(replies)
        events, path = [], "/audit?per_page=100"
        while path:
            body = self.assertStatus(self.call("GET", path), 200)
            events += [e for e in body["events"] if e["id"] > since]
            older = body["events"] and body["events"][-1]["id"] <= since
            path = None if older or not body["next_cursor"] else f"/audit?cursor={body['next_cursor']}&per_page=100"
        replayed = replay(list(reversed(events)))
        self.assertEqual(
            replayed["actors"],
            {(a,): self.row("actors", a) for a in actors if self.row("actors", a)},
        )
        self.assertEqual(replayed["movies"], {(m,): self.row("movies", m) for m in movies})
        castings = self.stack.query(
            "SELECT movie_id, actor_id, character FROM castings WHERE movie_id = ANY(%s)", (movies,)
        )
        self.assertEqual(
            replayed["castings"],
            {(m, a): {"movie_id": m, "actor_id": a, "character": c} for m, a, c in castings},
        )

    def row(self, plural, item_id):
        reply = self.call("GET", f"/{plural}/{item_id}")
        return reply.json()[plural[:-1]] if reply.status == 200 else None


# --- 3. the access log --------------------------------------------------------------


@needs_postgres
class AccessLogTest(StackTestCase):
    @classmethod
    def setUpClass(cls):
        cls.stack = Stack(cls.addClassCleanup)

    def lines_with(self, request_id, timeout=5):
        """The log lines naming this request id, once at least one is written."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.stack.server.log().splitlines() if request_id in line]
            if lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def test_one_line_per_request_with_method_path_status_and_the_request_id(self):
        created = self.create("actors", actor(f"{tag()} logged"))
        cases = [
            ("GET", "/actors", "/actors?per_page=2", None, {}, 200),
            ("GET", "/health", "/health", None, {}, 200),
            ("POST", "/actors", "/actors", actor(f"{tag()} posted"), {}, 201),
            ("PATCH", f"/actors/{created['id']}", f"/actors/{created['id']}", {"age": 41}, {}, 200),
            ("GET", "/actors/999999", "/actors/999999", None, {}, 404),
            ("DELETE", "/health", "/health", None, {}, 405),
            ("GET", "/movies", "/movies", None, {"token": "not-a-token"}, 401),
            ("GET", "/movies", "/movies", None, {"headers": {"X-Request-ID": f"client-{uuid.uuid4().hex}"}}, 200),
        ]
        seen = set()
        for method, path, target, body, extra, status in cases:
            with self.subTest(method, path=target, status=status):
                reply = self.call(method, target, body, **extra)
                self.assertEqual(reply.status, status, reply)
                request_id = reply.headers.get("X-Request-ID")
                self.assertTrue(request_id, f"no X-Request-ID header in the response: {dict(reply.headers)}")
                self.assertNotIn(request_id, seen)
                seen.add(request_id)
                lines = self.lines_with(request_id)
                self.assertEqual(len(lines), 1, f"lines naming {request_id}: {lines}")
                line = lines[0]
                self.assertRegex(line, rf"(?<![A-Za-z]){method}(?![A-Za-z])")
                self.assertRegex(line, rf"(?<![^\s\"'=]){re.escape(path)}(?![^\s\"'])")
                self.assertRegex(line, rf"(?<!\d){status}(?!\d)")
                self.assertNotIn("?", line)  # never the query string: it may hold what a user searched for
                self.assertNotIn("per_page", line)

    def test_no_bearer_token_reaches_the_log(self):
        issuer = self.stack.issuer
        permissions = ROLES[PRODUCER]
        good = issuer.role_token(PRODUCER)
        signature = good.rsplit(".", 1)[1]
        tampered = good.rsplit(".", 1)[0] + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
        tokens = {
            "valid": good,
            "tampered": tampered,
            "forged": issuer.token(permissions, key=rsa_key()),
            "expired": issuer.token(permissions, exp=int(time.time()) - 120),
            "wrong audience": issuer.token(permissions, aud="someone-else"),
            "HS256": issuer.token(permissions, key="a-shared-secret-of-32-bytes-or-more!", algorithm="HS256"),
            "unknown kid": issuer.token(permissions, headers={"kid": "no-such-key"}),
            "no permission": issuer.token([]),
            "not a JWT": f"not-a-jwt-{uuid.uuid4().hex}",
        }
        last = None
        for label, token in tokens.items():
            for method, path, body in (
                ("GET", "/actors", None),
                ("POST", "/actors", actor(f"{tag()} token")),
                ("DELETE", "/movies/1", None),
            ):
                with self.subTest(label, method=method):
                    reply = self.call(method, path, body, token=token)
                    self.assertLess(reply.status, 500, reply)
                    if label != "valid":
                        self.assertIn(reply.status, (401, 403), reply)
                    last = reply
        # Other spellings of the header: the scheme in lower case, another scheme, two tokens.
        last = self.call("GET", "/actors", token=None, headers={"Authorization": f"bearer {good}"})
        self.assertStatus(last, 200)
        for header in (f"Token {good}", f"Bearer {good} {good}", f"Basic {good}"):
            last = self.call("GET", "/actors", token=None, headers={"Authorization": header})
            self.assertEnvelope(last, 401)
        # Let the last line reach the file (its request id tells when; without one, a pause does).
        if last.headers.get("X-Request-ID"):
            self.lines_with(last.headers["X-Request-ID"])
        else:
            time.sleep(1)

        log = self.stack.server.log()
        for label, token in tokens.items():
            with self.subTest(label):
                self.assertFalse(token in log, f"the {label} token is in the log")
                if token.count(".") == 2:
                    header, claims, signature = token.split(".")
                    self.assertFalse(signature in log, f"the {label} token's signature is in the log")
                    self.assertFalse(claims in log, f"the {label} token's claims are in the log")
        self.assertFalse("eyJ" in log, "something like a JWT (eyJ...) is in the log")  # how every JWT header starts
        self.assertIsNone(re.search(r"(?i)bearer\s+\S", log), "a bearer credential is in the log")


# --- 4. the limits of a request ---------------------------------------------------------


@needs_postgres
class RequestLimitsTest(StackTestCase):
    """gunicorn's own limits (gunicorn.conf.py) let every request through that
    the API allows, and the app's 413 reaches the client through gunicorn."""

    @classmethod
    def setUpClass(cls):
        cls.stack = Stack(cls.addClassCleanup)

    def test_gunicorns_limits_let_the_apis_requests_through(self):
        searched = urllib.parse.quote("\U0001f3ac" * 200)  # 200 characters of 4 bytes: 2,400 bytes encoded
        self.assertEqual(len(searched), 2400)
        # Many permissions and claims: 12 kB, over gunicorn's default of 8,190 bytes a header.
        big_token = self.stack.issuer.token(ROLES[PRODUCER], metadata="x" * 8500)
        self.assertGreater(len(big_token), 12000)
        huge_token = self.stack.issuer.token(ROLES[PRODUCER], metadata="x" * 13000)  # over 16,384 bytes
        # Of a repeated parameter the first counts, and the others are ignored: they fill a request line
        # to a length (an unknown parameter would be a 400).
        padded = "/actors?per_page=100&q=" + searched + "&q="
        cases = [  # (path, token, status, who answers)
            ("/actors?per_page=100&q=" + searched, self.stack.token, 200, "the API"),
            (padded + "x" * (8000 - len(padded)), self.stack.token, 200, "the API"),  # over gunicorn's default 4,094
            (padded + "x" * (8200 - len(padded)), self.stack.token, 414, "gunicorn"),  # over gunicorn.conf.py's 8,190
            ("/actors", big_token, 200, "the API"),
            ("/actors", huge_token, 431, "gunicorn"),
        ]
        for path, token, status, answering in cases:
            with self.subTest(path=len(path), token=len(token)):
                reply = self.call("GET", path, token=token)
                self.assertEqual(reply.status, status, reply)
                self.assertEqual(reply.headers.get_content_type(), "application/json", reply)
                # gunicorn's refusals (in the envelope too, test_worker.py) carry no request id: the app never saw them.
                self.assertEqual("X-Request-ID" in reply.headers, answering == "the API", reply)

    def test_a_body_over_the_limit_is_a_json_413_the_client_reads(self):
        # 32 MiB: more than the sockets buffer, so the client only sees the answer if the app reads the body.
        body = json.dumps(actor("x" * (32 * 1024 * 1024))).encode()
        reply = self.call("POST", "/actors", body, headers={"Content-Type": "application/json"})
        self.assertIn("larger than 1048576 bytes", self.assertEnvelope(reply, 413)["message"])
        self.assertEqual(self.stack.query("SELECT count(*) FROM actors WHERE length(name) > 1000"), [(0,)])

    def test_a_malformed_chunked_body_is_a_400(self):
        target = self.create("actors", actor(f"{tag()} chunked"))
        request = (
            f"PATCH /actors/{target['id']} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.stack.token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", self.stack.server.port), timeout=10) as client:
            client.sendall(request.encode())
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 400"), answer)
        self.assertEqual(json.loads(body)["message"], "the body's chunked encoding is malformed")

    def test_a_chunked_body_is_held_to_the_limit_too(self):
        """Transfer-Encoding: chunked gives no length up front: such a body was
        cut at the limit and the rest ignored, so a valid object followed by
        3 MiB of spaces was applied (200)."""
        target = self.create("actors", actor(f"{tag()} chunked"))
        path = f"/actors/{target['id']}"
        oversized = b'{"age": 44}' + b" " * (3 * 1024 * 1024)
        for token in (self.stack.token, None):  # 413 comes before authentication
            with self.subTest(token=token is not None):
                reply = self.call("PATCH", path, oversized, token=token, chunked=True, headers=JSON)
                self.assertIn("larger than 1048576 bytes", self.assertEnvelope(reply, 413)["message"])
        self.assertEqual(self.stack.query("SELECT age FROM actors WHERE id = %s", (target["id"],)), [(target["age"],)])
        # Within the limit, a chunked body is read whole.
        within = b'{"age": 45}' + b" " * (1024 * 1024 - 11)
        reply = self.call("PATCH", path, within, chunked=True, headers=JSON)
        self.assertEqual(self.assertStatus(reply, 200)["actor"]["age"], 45)


# --- 5. the connection pool --------------------------------------------------------------


@needs_postgres
class PoolCapTest(unittest.TestCase):
    def test_db_pool_size_is_a_hard_cap_under_concurrent_requests(self):
        # A worker (here, the app in this process) serving many requests at
        # once never opens more than DB_POOL_SIZE connections: the others wait.
        pg = Postgres()
        self.addCleanup(pg.close)
        pg.copy_of(_template)
        pg.start()
        # No lock timeout: the requests wait for the lock below for as long as it is held.
        app = create_app(testing.app_config(DATABASE_URL=pg.url(DATABASE), DB_POOL_SIZE=2, DB_LOCK_TIMEOUT=0))
        self.addCleanup(testing.dispose, app)
        headers = {"Authorization": f"Bearer {testing.ISSUER_ON_LOOPBACK.role_token(PRODUCER)}"}

        def connections(locker_pid):
            """The app's connections to the database now."""
            sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid NOT IN (pg_backend_pid(), %s)"
            return pg.query(DATABASE, sql, (DATABASE, locker_pid))[0][0]

        with pg.connect(DATABASE) as locker, locker.cursor() as cursor:
            # Every request's SELECT waits for this lock, holding its connection.
            cursor.execute("SELECT pg_backend_pid()")
            locker_pid = cursor.fetchone()[0]
            cursor.execute("LOCK TABLE actors IN ACCESS EXCLUSIVE MODE")
            with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
                replies = [pool.submit(lambda: app.test_client().get("/actors", headers=headers)) for _ in range(8)]
                seen = []
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    seen.append(connections(locker_pid))
                    time.sleep(0.1)
                locker.rollback()  # the lock goes: every request is served, in turn
                statuses = [reply.result(timeout=30).status_code for reply in replies]
        self.assertEqual(max(seen), 2, seen)
        self.assertEqual(statuses, [200] * 8)


if __name__ == "__main__":
    unittest.main()
