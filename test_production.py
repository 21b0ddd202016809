"""Production readiness: the Procfile's gunicorn, on a PostgreSQL the test starts
for itself, over real HTTP on 127.0.0.1.

* The database going away: a stopped PostgreSQL is a quick JSON 503 (and
  /health says so), and the same gunicorn serves again once it is back.
* Concurrent writers: racing PATCHes, deletes among reads and writes, the same
  casting PUT many times at once, many POSTs at once; no 5xx, and the database
  holds what the answers said.
* The access log: one line per request with its method, path, status and the
  request id of the X-Request-ID header, and never a bearer token.

The module makes one PostgreSQL cluster with `initdb` in a temporary folder
(as the `postgres` user when the tests run as root), creates a database and
runs the release phase's `flask db upgrade` on it, and stops it. Each stack
copies that folder and runs it with `pg_ctl` on a free port of 127.0.0.1: a
PostgreSQL of its own. On it, `gunicorn 'app:create_app()'` starts from the
repo folder as the Procfile says (so ./gunicorn.conf.py applies), in its own
process group, with tokens from a `testing.Issuer` on loopback. Everything is
stopped and removed by cleanups, also when a test fails.
"""

import concurrent.futures
import contextlib
import glob
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

import psycopg2

import testing

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
HOST = "127.0.0.1"
PRODUCER = "Executive Producer"

# Settings of the machine or of a developer that must not reach the server.
SCRUBBED = (
    "AUTH0_DOMAIN",
    "AUTH0_ISSUER",
    "JWKS_URL",
    "API_AUDIENCE",
    "REQUIRE_ISSUER",
    "DATABASE_URL",
    "TEST_DATABASE_URL",
    "CORS_ORIGINS",
    "MAX_CONTENT_LENGTH",
    "DB_POOL_SIZE",
    "JWKS_TIMEOUT",
    "JWKS_MIN_REFETCH_INTERVAL",
    "REDIS_URL",
    "RATE_LIMIT",
    "RATE_LIMIT_ANONYMOUS",
    "TRUSTED_PROXY_HOPS",
    "PORT",
    "WEB_CONCURRENCY",
    "FLASK_APP",
    "GUNICORN_CMD_ARGS",
)


def _postgres_bin():
    """The newest PostgreSQL's binaries folder, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        newest = max(found, key=lambda path: int(re.sub(r"\D", "", path.split("/")[4]) or 0))
        return os.path.dirname(newest)
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _postgres_user():
    """(uid, gid) of the `postgres` user, or None."""
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


PG_BIN = _postgres_bin()
AS_ROOT = os.geteuid() == 0
CAN_RUN_POSTGRES = bool(PG_BIN) and (not AS_ROOT or _postgres_user() is not None and shutil.which("runuser"))
# A developer without PostgreSQL's server binaries skips these; CI (CI=true) never does.
needs_postgres = unittest.skipUnless(
    CAN_RUN_POSTGRES or os.environ.get("CI"), "needs PostgreSQL's initdb and pg_ctl (and, as root, runuser)"
)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tag():
    """A unique word, so that tests sharing a database find their own rows."""
    return "t" + uuid.uuid4().hex[:10]


# --- HTTP ---------------------------------------------------------------------


class Reply:
    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers  # case-insensitive
        self.raw = raw

    def json(self):
        return json.loads(self.raw)

    def __repr__(self):
        return f"<{self.status} {self.raw[:300]!r}>"


def call(port, method, path, token=None, body=None, headers=None, timeout=20, source=None):
    """One request on its own connection, read to the end and closed; `source`,
    another loopback address (127.0.0.2, ...), makes it come from another client."""
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout, source_address=source and (source, 0))
    try:
        connection.request(method, path, body=data, headers=headers)
        with connection.getresponse() as response:
            return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def concurrently(calls, workers=24, timeout=60):
    """Run the zero-argument callables on a pool of threads; their results in order."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(c) for c in calls]
        _done, pending = concurrent.futures.wait(futures, timeout=timeout)
        for future in pending:
            future.cancel()
        if pending:
            raise AssertionError(f"{len(pending)} of {len(futures)} requests did not finish in {timeout} s")
        return [future.result() for future in futures]


# --- PostgreSQL -----------------------------------------------------------------


class Postgres:
    """A PostgreSQL cluster of its own in a temporary folder, on a free port."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="casting-agency-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgres.log")
        self.port = free_port()
        self.running = False
        if AS_ROOT:  # initdb and pg_ctl refuse root: they run as postgres, who must write here
            os.chown(self.dir, *_postgres_user())

    def _run(self, tool, *args, check=True, timeout=60):
        command = [os.path.join(PG_BIN, tool), *args]
        if AS_ROOT:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(  # noqa: S603 (fixed programs, our arguments)
            command,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stdout}{result.stderr}{self.log_text()}")
        return result

    def log_text(self):
        try:
            with open(self.log) as file:
                return file.read()[-3000:]
        except OSError:
            return ""

    def init(self):
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")

    def copy_of(self, template):
        """Another cluster's (stopped) data folder as this one's, owners kept."""
        subprocess.run(["cp", "-a", template.data, self.data], check=True, timeout=60)  # noqa: S603, S607

    def start(self):
        options = (
            f"-k {self.dir} -c listen_addresses={HOST} -p {self.port} -c max_connections=50 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self.running = True  # from here on, the cleanup stops it
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "30", "start")

    def stop(self, mode="fast"):
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")
        self.running = False

    def close(self):
        if self.running:
            result = self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop", check=False)
            if result.returncode != 0:
                self._kill_postmaster()
            self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_postmaster(self):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(os.path.join(self.data, "postmaster.pid")) as file:
                pid = int(file.readline())
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown of the postmaster we started

    def url(self, database):
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def connect(self, database="postgres"):
        return contextlib.closing(psycopg2.connect(host=HOST, port=self.port, user="postgres", dbname=database))

    def create_database(self, name):
        with self.connect() as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')

    def query(self, database, sql, params=()):
        with self.connect(database) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            connection.rollback()
            return rows


# --- the production stack -------------------------------------------------------


def procfile_web():
    with open(os.path.join(HERE, "Procfile")) as file:
        lines = dict(line.split(": ", 1) for line in file.read().splitlines() if line.strip())
    return shlex.split(lines["web"])


def server_env(issuer, database_url, **more):
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.update(
        DATABASE_URL=database_url,
        AUTH0_ISSUER=testing.ISSUER,
        JWKS_URL=issuer.jwks_url,
        API_AUDIENCE=testing.AUDIENCE,
        PYTHONUNBUFFERED="1",
        # Rate limits out of the way, unless a test is about them (test_fleet.py).
        RATE_LIMIT="1000000/second",
        RATE_LIMIT_ANONYMOUS="1000000/second",
    )
    env.update(more)
    return env


class Gunicorn:
    """The Procfile's web command, in its own process group, its output in a file."""

    def __init__(self, env, log_path):
        self.port = int(env["PORT"])
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 (the Procfile's own command)
                procfile_web(),
                cwd=HERE,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if call(self.port, "GET", "/health", timeout=5).status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer within {timeout} s:\n{self.log()}")

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return file.read()

    def stop(self):
        group = self.process.pid  # start_new_session: the master leads its own group
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)  # any worker the master left behind


def close_issuer(issuer):
    issuer.server.shutdown()
    issuer.server.server_close()


DATABASE = "casting_agency"


def migrated_cluster():
    """initdb, a database, and the release phase's `flask db upgrade` on it; then
    stopped, to be copied by each stack (which saves seconds per stack)."""
    pg = Postgres()
    try:
        pg.init()
        pg.start()
        pg.create_database(DATABASE)
        result = subprocess.run(  # noqa: S603 (the release phase's command)
            [os.path.join(BIN, "flask"), "db", "upgrade"],
            cwd=HERE,
            env=server_env(testing.ISSUER_ON_LOOPBACK, pg.url(DATABASE)),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"flask db upgrade failed: {result.stdout}{result.stderr}")
        tables = {row[0] for row in pg.query(DATABASE, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        if not {"actors", "movies", "castings", "alembic_version"} <= tables:
            raise RuntimeError(f"the migrations made only {sorted(tables)}")
        pg.stop()
    except BaseException:
        pg.close()
        raise
    return pg


_template = None


def setUpModule():
    global _template
    if CAN_RUN_POSTGRES:
        _template = migrated_cluster()


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
        self.issuer = testing.Issuer()
        cleanup(close_issuer, self.issuer)
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


def actor(name, age=40, gender="Female"):
    return {"name": name, "age": age, "gender": gender}


def movie(title, release_date="2021-10-15"):
    return {"title": title, "release_date": release_date}


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
                self.assertRegex(line, rf"(?<![^\s\"'=]){re.escape(path)}(?![^\s\"'?])")
                self.assertRegex(line, rf"(?<!\d){status}(?!\d)")

    def test_no_bearer_token_reaches_the_log(self):
        issuer = self.stack.issuer
        permissions = testing.ROLES[PRODUCER]
        good = issuer.role_token(PRODUCER)
        signature = good.rsplit(".", 1)[1]
        tampered = good.rsplit(".", 1)[0] + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
        tokens = {
            "valid": good,
            "tampered": tampered,
            "forged": issuer.token(permissions, key=testing.rsa_key()),
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


if __name__ == "__main__":
    unittest.main()
