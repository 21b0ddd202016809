"""The database tier of a fleet (SPEC: "Behind a connection pooler", and the
503 of "Errors"): right answers through a pooler in transaction mode, across a
migration that changes a column's type, and while a table is locked.

Once for the module, it starts a PostgreSQL of its own (loopback.Postgres),
migrates it with the Procfile's release command, and puts PgBouncer in
transaction mode with two server connections in front of it
(loopback.PgBouncer, Debian's `pgbouncer`). Two production servers (the
Procfile's gunicorn, two workers each) serve that database: one connects to
PostgreSQL directly, the other has DATABASE_URL pointing at PgBouncer and no
other setting. The same requests sent to both, from 8 client threads at once,
must get the same answers, byte for byte. That PgBouncer is set up as an app
that sends the `options` startup parameter needs it
(`ignore_startup_parameters = options`), so that the code before this one
could connect through it; a second one, at PgBouncer's defaults (which refuse
that parameter), serves the in-process tests.

Everything is stopped and removed at the end, also when a test fails.
"""

import contextlib
import functools
import json
import os
import secrets
import unittest
import urllib.parse
import uuid
from unittest import mock

import psycopg2
from sqlalchemy import text

import database
import loopback
import testing
from app import create_app
from auth import ROLES
from loopback import (
    CAN_RUN_PGBOUNCER,
    Gunicorn,
    Issuer,
    PgBouncer,
    Postgres,
    call,
    clean_environment,
    free_port,
    needs_pgbouncer,
)

DATABASE = "casting_agency"
CLIENTS = 8  # client threads, as in the issue
SECRET_KEY = secrets.token_urlsafe()
PRODUCER = ROLES["Executive Producer"]
# The headers an answer is compared by, besides its status and body. Not
# X-Request-ID (each request's own), Date, or the rate limits' counts (each
# worker's own).
COMPARED_HEADERS = ("Content-Type", "ETag", "Link", "Location", "Cache-Control")

ACTORS = [
    ("Viola Davis", 61, "Female"),
    ("Zoë Kravitz", 35, "Female"),
    ("Émilie Dequenne", 43, "Female"),
    ("Elliot Page", 37, "Non-binary"),
    ("Eve Best", 59, "Female"),
    ("Denzel Washington", 71, "Male"),
    ("Tilda Swinton", 65, "Female"),
    ("Michelle Yeoh", 64, "Female"),
    ("Kunle Afolayan", 50, "Male"),
    ("Lupita Nyong'o", 43, "Female"),
    ("Mads Mikkelsen", 60, "Male"),
    ("Cate Blanchett", 57, "Female"),
]
MOVIES = [
    ("The Long Rehearsal", "2019-03-08"),
    ("Harbour Lights", "2021-10-15"),
    ("Quiet Frontier", "2012-06-01"),
    ("Paper Kingdoms", "2024-11-22"),
    ("The Last Matinée", "2026-04-17"),
    ("Silver River", "2016-09-30"),
]


def concurrently(calls):
    """The calls' results, sent from CLIENTS threads at once."""
    return loopback.concurrently(calls, workers=CLIENTS, timeout=120)


def answer(reply):
    """What a client can tell of an answer: status, the compared headers, body."""
    return (reply.status, {name: reply.headers.get(name) for name in COMPARED_HEADERS}, reply.raw)


def next_page(answer):
    """The path and query of the Link header's next page, or None."""
    link = answer[1]["Link"]
    return link and link.split(">")[0].removeprefix("<")


class Server:
    """The Procfile's gunicorn with two workers on `database_url`."""

    def __init__(self, issuer, database_url, folder, cleanup):
        env = clean_environment(
            DATABASE_URL=database_url,
            AUTH0_ISSUER=issuer.issuer,
            JWKS_URL=issuer.jwks_url,
            API_AUDIENCE=issuer.audience,
            SECRET_KEY=SECRET_KEY,  # one key for both servers: their cursors are the same
            RATE_LIMIT="1000000/second",
            RATE_LIMIT_ANONYMOUS="1000000/second",
            PORT=str(free_port()),
            WEB_CONCURRENCY="2",
            XDG_RUNTIME_DIR=folder,
            PYTHONUNBUFFERED="1",
        )
        os.makedirs(folder, exist_ok=True)
        self.gunicorn = Gunicorn(env, os.path.join(folder, "gunicorn.log"))
        cleanup(self.gunicorn.stop)
        self.gunicorn.wait_ready()
        self.token = issuer.token(PRODUCER, sub="auth0|producer")

    def call(self, method, path, body=None, token=..., **kwargs):
        token = self.token if token is ... else token
        return call(self.gunicorn.port, method, path, token=token, body=body, **kwargs)


class Stack:
    """A PostgreSQL with the sample rows; in front of it, a PgBouncer set up
    as for an app that sends `options` (`bouncer`) and one at PgBouncer's
    defaults (`strict`); and two servers: `direct` and `pooled` (through
    `bouncer`). Built once for the module: everything it starts is stopped by
    `close`, also when a later step fails."""

    def __init__(self):
        self.cleanups = contextlib.ExitStack()
        try:
            self._start(self.cleanups.callback)
        except BaseException:
            self.cleanups.close()
            raise

    def _start(self, cleanup):
        self.pg = Postgres.fresh(cleanup)
        self.pg.create_database(DATABASE)
        loopback.release(testing.ISSUER_ON_LOOPBACK, self.pg.url(DATABASE))
        self.bouncer = PgBouncer.fresh(self.pg.port, cleanup, ignore_startup_parameters="options")
        self.strict = PgBouncer.fresh(self.pg.port, cleanup)
        self.issuer = Issuer(testing.ISSUER, testing.AUDIENCE)
        cleanup(self.issuer.stop)
        self.direct = Server(self.issuer, self.pg.url(DATABASE), os.path.join(self.pg.dir, "direct"), cleanup)
        self.pooled = Server(self.issuer, self.bouncer.url(DATABASE), os.path.join(self.pg.dir, "pooled"), cleanup)
        self.seed()

    def seed(self):
        """The sample rows, written through the direct server, so that the audit
        trail holds every kind of event (and two subjects)."""
        director = self.issuer.token(ROLES["Casting Director"], sub="auth0|director")

        def write(method, path, body=None, token=...):
            reply = self.direct.call(method, path, body, token=token)
            if reply.status >= 300:
                raise RuntimeError(f"{method} {path}: {reply}")
            return reply.json()

        self.actors = [
            write("POST", "/actors", {"name": n, "age": a, "gender": g}, token=director)["actor"]["id"]
            for n, a, g in ACTORS
        ]
        self.movies = [write("POST", "/movies", {"title": t, "release_date": d})["movie"]["id"] for t, d in MOVIES]
        for i, movie in enumerate(self.movies):
            for j, actor in enumerate(self.actors):
                if (i + j) % 3 == 0:
                    character = None if j % 4 == 0 else f"Part {i}.{j}"
                    write("PUT", f"/movies/{movie}/actors/{actor}", {"character": character}, token=director)
        write("PATCH", f"/actors/{self.actors[0]}", {"age": 62}, token=director)
        write("PATCH", f"/movies/{self.movies[1]}", {"title": "Harbour Nights"})
        write("DELETE", f"/movies/{self.movies[0]}/actors/{self.actors[0]}", token=director)
        doomed = write("POST", "/actors", {"name": "Gone Soon", "age": 30, "gender": "Male"})["actor"]["id"]
        write("PUT", f"/movies/{self.movies[2]}/actors/{doomed}")
        write("DELETE", f"/actors/{doomed}")

    def close(self):
        self.cleanups.close()


_stack = None


def setUpModule():
    global _stack
    if CAN_RUN_PGBOUNCER:
        _stack = Stack()


def tearDownModule():
    global _stack
    if _stack is not None:
        _stack.close()
        _stack = None


@needs_pgbouncer
class PoolerTestCase(unittest.TestCase):
    """The module's stack: its database, poolers and servers."""

    @classmethod
    def setUpClass(cls):
        for name in ("pg", "bouncer", "strict", "issuer", "direct", "pooled", "actors", "movies"):
            setattr(cls, name, getattr(_stack, name))

    def assertSameAnswers(self, paths, rounds=3):
        """Each path, `rounds` times to each server, all at once from 8
        threads: every answer of either server is the direct server's first."""
        calls = [(server, path) for _ in range(rounds) for path in paths for server in (self.direct, self.pooled)]
        replies = concurrently([lambda s=s, p=p: answer(s.call("GET", p)) for s, p in calls])
        expected = {}
        for (server, path), reply in zip(calls, replies, strict=True):
            if server is self.direct:
                expected.setdefault(path, reply)
        failures = [
            (path, "pooled" if server is self.pooled else "direct", reply, expected[path])
            for (server, path), reply in zip(calls, replies, strict=True)
            if reply != expected[path]
        ]
        self.assertEqual(failures[:5], [], f"{len(failures)} of {len(calls)} answers differ")
        self.assertNotIn(500, {reply[0] for reply in replies})
        return expected


class PooledAnswersTest(PoolerTestCase):
    def test_every_read_answers_as_on_a_direct_connection(self):
        actor, other = self.actors[0], self.actors[5]
        movie, cast = self.movies[1], self.movies[3]
        paths = [
            "/",
            "/health",
            *[f"/actors/{a}" for a in self.actors],
            *[f"/movies/{m}" for m in self.movies],
            "/actors/999999",
            "/movies/99999999999999999999999",
            "/actors",
            "/actors?per_page=3",
            "/actors?page=2&per_page=3",
            "/actors?page=99",
            "/actors?q=zoe",
            "/actors?q=" + urllib.parse.quote("ÉMILIE"),
            "/actors?gender=female",
            "/actors?age_min=40&age_max=60",
            "/actors?sort=name",
            "/actors?sort=-age,name&per_page=4",
            "/actors?sort=-id&per_page=4",
            "/actors?gender=female&age_min=30&sort=-age&per_page=2",
            "/actors?min_age=30",  # a 400 that names age_min
            "/actors?per_page=0",
            "/movies",
            "/movies?per_page=2",
            "/movies?sort=-release_date",
            "/movies?sort=title&per_page=2",
            "/movies?released_from=2015-01-01&released_to=2022-12-31",
            "/movies?q=harbour",
            f"/movies/{movie}/actors",
            f"/movies/{movie}/actors?per_page=1",
            f"/movies/{cast}/actors?gender=female",
            f"/movies/{cast}/actors?sort=-age",
            f"/movies/{movie}/actors?age_min=50",
            "/movies/999999/actors",
            f"/actors/{actor}/movies",
            f"/actors/{other}/movies?per_page=1",
            f"/actors/{other}/movies?sort=title",
            f"/actors/{other}/movies?released_from=2016-01-01",
            "/actors/999999/movies",
            "/audit",
            "/audit?per_page=3",
            "/audit?resource=castings",
            "/audit?action=update",
            f"/audit?resource=actors&resource_id={actor}",
            f"/audit?resource=movies&resource_id={movie}",
            "/audit?subject=" + urllib.parse.quote("auth0|director"),
            "/audit?since=2000-01-01T00:00:00Z",
        ]
        answers = self.assertSameAnswers(paths)
        # Every list's next pages, by cursor, as a client follows the Link header.
        walked = 0
        while following := [path for path in map(next_page, answers.values()) if path]:
            answers = self.assertSameAnswers(following)
            self.assertEqual({reply[0] for reply in answers.values()}, {200})
            walked += len(following)
        self.assertGreater(walked, 20)

    def test_conditional_requests_answer_as_on_a_direct_connection(self):
        path = f"/actors/{self.actors[3]}"
        etag = self.direct.call("GET", path).headers["ETag"]
        for server in (self.direct, self.pooled):
            with self.subTest(server=server is self.pooled and "pooled" or "direct"):
                reply = server.call("GET", path, headers={"If-None-Match": etag})
                self.assertEqual((reply.status, reply.headers["ETag"], reply.raw), (304, etag, b""))
                stale = server.call("PATCH", path, {"age": 1}, headers={"If-Match": '"0.0"'})
                self.assertEqual(stale.status, 412, stale)
        self.assertEqual(json.loads(self.direct.call("GET", path).raw)["actor"]["age"], 37)

    def test_racing_conditional_writes_one_wins_one_gets_412(self):
        """Two PATCHes with one If-Match, ten pairs at once: in each pair exactly
        one is a 200 and the other a 412, and the trail has the winner's event."""
        targets = [
            self.pooled.call("POST", "/actors", {"name": f"Racer {i}", "age": 20, "gender": "X"}) for i in range(10)
        ]
        pairs = []
        for reply in targets:
            self.assertEqual(reply.status, 201, reply)
            path, etag = reply.headers["Location"], reply.headers["ETag"]
            pairs += [(path, etag, {"age": 30}), (path, etag, {"age": 40})]
        replies = concurrently(
            [lambda p=p, e=e, b=b: self.pooled.call("PATCH", p, b, headers={"If-Match": e}) for p, e, b in pairs]
        )
        for i in range(0, len(pairs), 2):
            path = pairs[i][0]
            outcome = sorted((replies[i].status, replies[i + 1].status))
            self.assertEqual(outcome, [200, 412], (path, replies[i], replies[i + 1]))
            winner = replies[i] if replies[i].status == 200 else replies[i + 1]
            self.assertEqual(json.loads(self.direct.call("GET", path).raw), winner.json())
            actor_id = winner.json()["actor"]["id"]
            events = self.direct.call("GET", f"/audit?resource=actors&resource_id={actor_id}&action=update").json()
            self.assertEqual([e["request_id"] for e in events["events"]], [winner.headers["X-Request-ID"]])

    def test_writes_and_their_events_as_on_a_direct_connection(self):
        """The same writes through each server: the same answers (but the new
        rows' ids), and each write's event, with its request id, in the trail."""
        seen = {}
        for server in (self.direct, self.pooled):
            name = "pooled" if server is self.pooled else "direct"
            tag = uuid.uuid4().hex[:8]
            steps = []

            def write(method, path, body=None, server=server, steps=steps):
                reply = server.call(method, path, body)
                steps.append(reply)
                return reply

            actor = write("POST", "/actors", {"name": f"Writer {tag}", "age": 44, "gender": "Female"}).json()
            actor = actor["actor"]["id"]
            movie = write("POST", "/movies", {"title": f"Written {tag}", "release_date": "1/2/2003"}).json()
            movie = movie["movie"]["id"]
            write("PATCH", f"/actors/{actor}", {"age": 45})
            write("PATCH", f"/actors/{actor}", {"age": 45})  # changes nothing, records nothing
            write("PUT", f"/movies/{movie}/actors/{actor}", {"character": "Lead"})
            write("PUT", f"/movies/{movie}/actors/{actor}", {"character": "Lead"})
            write("DELETE", f"/movies/{movie}/actors/{actor}")
            write("DELETE", f"/movies/{movie}/actors/{actor}")  # a 404
            write("DELETE", f"/movies/{movie}")
            write("PATCH", f"/actors/{actor}", {"age": "old"})  # a 422
            write("DELETE", f"/actors/{actor}")
            ids = {actor: "<actor>", movie: "<movie>"}
            words = {tag: "<tag>", f"actor {actor} ": "actor <actor> ", f"movie {movie}": "movie <movie>"}
            seen[name] = [(r.status, _normalized(r.json(), ids, words)) for r in steps]
            # Each event is the one its request made, read through the direct server.
            trail = [
                event
                for query in (f"resource=actors&resource_id={actor}", f"resource=movies&resource_id={movie}")
                for event in self.direct.call("GET", f"/audit?{query}").json()["events"]
            ]
            castings = self.direct.call("GET", "/audit?resource=castings&per_page=100").json()["events"]
            trail += [event for event in castings if event["actor_id"] == actor]
            made = {r.headers["X-Request-ID"] for r in steps if r.status in (200, 201)}
            nothing = {steps[3].headers["X-Request-ID"], steps[5].headers["X-Request-ID"]}
            self.assertEqual({event["request_id"] for event in trail}, made - nothing, name)
            events = [{k: v for k, v in event.items() if k not in ("id", "at", "request_id")} for event in trail]
            seen[name].append(sorted(json.dumps(_normalized(event, ids, words)) for event in events))
        self.assertEqual(seen["pooled"], seen["direct"])


IDS = ("id", "actor_id", "movie_id", "resource_id", "delete")


def _normalized(value, ids, words):
    """A JSON value with the ids in `ids` (under the keys that hold ids) and
    the `words` in its text replaced: what two runs of the same writes share."""
    if isinstance(value, dict):
        return {k: ids.get(v, v) if k in IDS else _normalized(v, ids, words) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(item, ids, words) for item in value]
    if isinstance(value, str):
        for old, new in words.items():
            value = value.replace(old, new)
    return value


class MigrationUnderTrafficTest(PoolerTestCase):
    """What a deploy's release phase does while the previous release serves."""

    def test_a_column_type_changed_under_running_servers(self):
        actor, movie = self.actors[1], self.movies[3]
        paths = [f"/actors/{actor}", "/actors", f"/movies/{movie}/actors", f"/actors/{actor}/movies"]
        before = self.assertSameAnswers(paths, rounds=4)  # every worker has prepared them
        # (age: the text columns feed the generated folded ones, whose types a migration changes with them)
        self.addCleanup(self.pg.execute, DATABASE, "ALTER TABLE actors ALTER COLUMN age TYPE integer")
        self.pg.execute(DATABASE, "ALTER TABLE actors ALTER COLUMN age TYPE bigint")
        after = self.assertSameAnswers(paths, rounds=5)  # 40 reads of each server
        self.assertEqual(after, before)

    def test_a_locked_table_is_a_quick_503_and_the_others_keep_answering(self):
        """A migration's ACCESS EXCLUSIVE lock on movies: reads and writes of
        movies answer a JSON 503 within 10 s (the client gives up after 10),
        actors keep answering meanwhile, no worker is killed, and movies answer
        again once the lock is gone."""
        movie, actor = f"/movies/{self.movies[2]}", f"/actors/{self.actors[2]}"
        expected = {path: self.direct.call("GET", path).raw for path in (movie, actor)}
        for server in (self.direct, self.pooled):
            name = "pooled" if server is self.pooled else "direct"
            with self.subTest(name), self.pg.connect(DATABASE) as holder:
                with holder.cursor() as cursor:
                    cursor.execute("LOCK TABLE movies IN ACCESS EXCLUSIVE MODE")  # held until the rollback
                calls = [("GET", movie, None), ("PATCH", movie, {"title": "Locked"}), ("GET", actor, None)] * 3
                replies = concurrently([functools.partial(server.call, m, p, b, timeout=10) for m, p, b in calls])
                for (method, path, _body), reply in zip(calls, replies, strict=True):
                    if path == actor:
                        self.assertEqual((reply.status, reply.raw), (200, expected[actor]), (method, path))
                    else:
                        self.assertEqual(reply.status, 503, (method, path, reply))
                        self.assertEqual(
                            reply.json(), {"success": False, "error": 503, "message": "the database is unavailable"}
                        )
                holder.rollback()
                replies = concurrently([functools.partial(server.call, "GET", movie, timeout=10)] * 8)
                self.assertEqual({(r.status, r.raw) for r in replies}, {(200, expected[movie])})
                log = server.gunicorn.log()
                self.assertIn("database unavailable: canceling statement due to lock timeout", log)
                self.assertNotIn("WORKER TIMEOUT", log)
                self.assertNotIn("Traceback", log)
        self.assertEqual(self.pg.query(DATABASE, "SELECT count(*) FROM movies WHERE title = 'Locked'"), [(0,)])


class PooledInProcessTest(PoolerTestCase):
    """The app in-process behind the PgBouncer at its defaults (which refuse
    the `options` startup parameter), for what needs no server: the settings
    that must reach every statement, and DATABASE_CONNECTION_POOL_URL."""

    def app(self, **config):
        app = create_app(testing.app_config(DATABASE_URL=self.strict.url(DATABASE), **config))
        self.addCleanup(testing.dispose, app)
        return app

    def headers(self):
        return {"Authorization": f"Bearer {testing.ISSUER_ON_LOOPBACK.role_token('Executive Producer')}"}

    def test_reads_and_writes_through_a_pooler_that_refuses_startup_options(self):
        client = self.app().test_client()
        created = client.post("/actors", json=testing.ACTOR, headers=self.headers())
        self.assertEqual(created.status_code, 201, created.get_json())
        path = created.headers["Location"]
        for _ in range(3):  # prepared, then executed
            self.assertEqual(client.get(path, headers=self.headers()).get_json(), created.get_json())
        listed = client.get("/actors?sort=-id", headers=self.headers()).get_json()
        self.assertEqual(listed["actors"][0], created.get_json()["actor"])
        self.assertEqual(client.get("/health").get_json(), {"success": True, "database": "ok"})
        # Nothing the requests set outlived their transactions on the server connections.
        for _ in range(4):
            with psycopg2.connect(self.strict.url(DATABASE)) as other, other.cursor() as cursor:
                cursor.execute("SELECT current_setting('statement_timeout'), current_setting('plan_cache_mode')")
                self.assertEqual(cursor.fetchone(), ("0", "auto"))

    def test_a_statement_over_its_timeout_is_503_through_the_pooler(self):
        app = self.app(DB_STATEMENT_TIMEOUT=0.2)

        def slow(*args, **kwargs):
            database.execute(text("SELECT pg_sleep(3)"))

        with mock.patch("lists.Listing.page", side_effect=slow), self.assertLogs("app", "WARNING") as logs:
            response = app.test_client().get("/actors", headers=self.headers())
        self.assertEqual(response.status_code, 503, response.get_data(as_text=True))
        self.assertEqual(response.get_json()["message"], "the database is unavailable")
        self.assertIn("statement timeout", "\n".join(logs.output))
        self.assertNotIn("Traceback", "\n".join(logs.output))

    def test_the_requests_take_database_connection_pool_url_the_rest_database_url(self):
        app = create_app(
            testing.app_config(
                DATABASE_URL=self.pg.url(DATABASE), DATABASE_CONNECTION_POOL_URL=self.strict.url(DATABASE)
            )
        )
        self.addCleanup(testing.dispose, app)
        self.assertEqual(app.extensions["statements"].url.port, self.strict.port)
        with app.app_context():
            self.assertEqual(database.db.engine.url.port, self.pg.port)  # migrations, flask seed
        response = app.test_client().get("/actors", headers=self.headers())
        self.assertEqual(response.status_code, 200, response.get_json())
