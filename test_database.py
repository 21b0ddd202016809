"""database.py: the requests' connections (their pool, liveness, timeouts,
settings), the selects' fast path and prepared statements (their names, and
their recovery where a server connection lacks one or a migration changed its
table), and which driver errors mean the database is unavailable (503) rather
than a bug (500). Through a pooler: test_pooler.py."""

import hashlib
import re
import socket
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from unittest import mock

import psycopg2
import psycopg2.errors
from sqlalchemy import func, literal_column, select, text
from sqlalchemy.exc import DBAPIError

import database
from app import create_app
from config import ConfigError
from models import Actor, Casting, Movie, db
from testing import ACTOR, DATABASE_URL, MOVIE, MOVIE_ROW, ApiTestCase, app_config, dispose


class DatabaseDownTest(ApiTestCase):
    """The database cannot be reached: every request is a JSON 503, soon."""

    def down_client(self, url):
        app = create_app(app_config(DATABASE_URL=url))
        self.addCleanup(dispose, app)
        return app.test_client()

    def test_a_refused_connection_is_503(self):
        client = self.down_client("postgresql://nobody@127.0.0.1:1/none")  # nothing listens on port 1
        self.assertError(client.get("/health"), 503, "database is unavailable")
        with self.assertLogs("app", "WARNING"):  # one line, no traceback: a 503 is no bug
            self.assertError(client.get("/actors", headers=self.headers()), 503, "database is unavailable")

    def test_a_database_that_never_answers_is_503_after_5_seconds(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # the kernel accepts connections; nothing ever answers them
        self.addCleanup(listener.close)
        client = self.down_client(f"postgresql://nobody@127.0.0.1:{listener.getsockname()[1]}/none")
        answers = []
        started = time.monotonic()
        # In a thread: without the timeout the request would wait for ever.
        headers = self.headers()
        request = threading.Thread(target=lambda: answers.append(client.get("/actors", headers=headers)), daemon=True)
        with self.assertLogs("app", "WARNING"):
            request.start()
            request.join(timeout=15)
        elapsed = time.monotonic() - started
        self.assertEqual(len(answers), 1, f"no answer within {elapsed:.0f} s")
        self.assertError(answers[0], 503, "database is unavailable")
        self.assertGreater(elapsed, 4.5)  # the connect timeout, not a refusal, answered
        self.assertLess(elapsed, 10)


class ConnectionPoolTest(ApiTestCase):
    def test_requests_use_only_the_autocommit_pool(self):
        # The README sizes DB_POOL_SIZE on this: a web worker's connections
        # all come from the statements engine, none from db.engine.
        app = create_app(app_config())
        client = app.test_client()
        created = client.post("/actors", json=ACTOR, headers=self.headers()).get_json()["actor"]
        movie = client.post("/movies", json=MOVIE, headers=self.headers()).get_json()["movie"]
        for method, path, body in (
            ("GET", "/actors", None),
            ("GET", f"/actors/{created['id']}", None),
            ("PATCH", f"/actors/{created['id']}", {"age": 30}),
            ("PUT", f"/movies/{movie['id']}/actors/{created['id']}", {"character": "Mei"}),
            ("GET", f"/movies/{movie['id']}/actors", None),
            ("DELETE", f"/movies/{movie['id']}/actors/{created['id']}", None),
            ("GET", "/health", None),
        ):
            response = client.open(path, method=method, json=body, headers=self.headers())
            self.assertLess(response.status_code, 300, (method, path, response.get_json()))
        with app.app_context():
            self.assertEqual(db.engine.pool.checkedin() + db.engine.pool.checkedout(), 0)
        self.assertGreater(app.extensions["statements"].pool.checkedin(), 0)
        dispose(app)


class StaleConnectionTest(ApiTestCase):
    def test_a_connection_the_server_closed_is_replaced_before_use(self):
        self.requires_postgresql("SQLite has no server to close a connection")
        engine = self.app.extensions["statements"]
        with engine.connect() as connection:  # the pool's one connection, back in the pool after
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with self.app.app_context(), db.engine.begin() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
        # The server has closed it, as in a restart; the request must not fail on it.
        response = self.call("GET", "/actors")
        self.assertEqual(response.status_code, 200, response.get_json())
        with engine.connect() as connection:
            self.assertNotEqual(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar(), pid)


class PreparedStatementTest(ApiTestCase):
    def test_reads_by_id_and_lists_in_id_order_are_prepared_searches_filters_and_sorts_are_not(self):
        """database.prepared: PostgreSQL keeps one plan for a prepared select,
        so only the selects whose best plan suits every value may be one."""
        self.requires_postgresql("prepared statements are PostgreSQL's")
        engine = self.app.extensions["statements"]
        actor = self.add(Actor, **ACTOR)["id"]
        movie = self.add(Movie, **MOVIE_ROW)["id"]
        self.add(Casting, movie_id=movie, actor_id=actor)
        prepared = [f"/actors/{actor}", "/actors", "/actors?sort=-id", f"/movies/{movie}/actors"]
        for path in [*prepared, "/actors?q=vi", "/actors?gender=female", "/actors?sort=name"]:
            response = self.call("GET", path, role="Casting Assistant")
            self.assertEqual(response.status_code, 200, (path, response.get_json()))
            self.assertIn("Viola Davis", response.get_data(as_text=True), path)
        # The requests ran one after another on the pool's one connection.
        with engine.connect() as connection:
            self.assertEqual(connection.exec_driver_sql("SHOW plan_cache_mode").scalar(), "force_generic_plan")
            statements = connection.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
        self.assertEqual(len(statements), len(prepared), statements)
        self.assertTrue(any("WHERE actors.id = $1" in statement for statement in statements), statements)
        # Neither the search (ILIKE) nor the filter or the sort by name (lower(...)) is prepared.
        self.assertFalse(any("ILIKE" in statement or "lower(" in statement for statement in statements), statements)


class PreparedStatementRecoveryTest(ApiTestCase):
    """A prepared select answers what it answers as text whatever the server
    connection holds: a name that means its SQL, prepared again where it is
    missing, planned again where a migration changed the table under it."""

    def setUp(self):
        super().setUp()
        self.requires_postgresql("prepared statements are PostgreSQL's")
        actor = self.add(Actor, **ACTOR)["id"]
        movie = self.add(Movie, **MOVIE_ROW)["id"]
        self.add(Casting, movie_id=movie, actor_id=actor, character="Ruth")
        self.paths = [f"/actors/{actor}", "/actors", f"/movies/{movie}/actors"]
        self.answers = self.read()

    def read(self):
        answers = [self.call("GET", path, role="Casting Assistant") for path in self.paths]
        for path, response in zip(self.paths, answers, strict=True):
            self.assertEqual(response.status_code, 200, (path, response.get_json()))
        return [response.get_data() for response in answers]

    def on_the_requests_connection(self, sql):
        with self.app.extensions["statements"].connect() as connection:  # the pool's one connection
            result = connection.exec_driver_sql(sql)
            return result.all() if result.returns_rows else None

    def test_a_statements_name_is_a_digest_of_its_sql(self):
        prepared = self.on_the_requests_connection("SELECT name, statement FROM pg_prepared_statements")
        self.assertEqual(len(prepared), len(self.paths))
        for name, statement in prepared:
            sql = re.fullmatch(r"PREPARE (\w+) AS (.*); EXECUTE \1 .*", statement, re.DOTALL).group(2)
            self.assertEqual(name, "casting_" + hashlib.blake2b(sql.encode(), digest_size=16).hexdigest())

    def test_a_server_connection_that_lost_them_prepares_them_again(self):
        # As a pooler's server connection that never saw them, or one reset by DISCARD ALL.
        self.on_the_requests_connection("DEALLOCATE ALL")
        self.assertEqual(self.read(), self.answers)
        self.assertEqual(len(self.on_the_requests_connection("SELECT name FROM pg_prepared_statements")), 3)

    def test_a_column_whose_type_a_migration_changed(self):
        """PostgreSQL refuses to run a prepared select whose columns changed type
        ("cached plan must not change result type"): the old release still
        serving while a deploy's release phase migrates."""
        with self.app.app_context(), db.engine.begin() as connection:
            connection.execute(text("ALTER TABLE actors ALTER COLUMN age TYPE bigint"))
        self.addCleanup(self.restore_age)
        for _ in range(2):
            self.assertEqual(self.read(), self.answers)

    def test_a_server_connection_that_never_keeps_it_gets_the_select_as_text(self):
        """Through a busy pooler each attempt may land on another server
        connection; after a few misses in a row the select goes as text."""
        actor = self.paths[0].rsplit("/", 1)[1]
        with self.app.app_context(), database.connect() as connection, connection.connection.cursor() as cursor:
            with self.assertRaises(psycopg2.Error) as missing:
                cursor.execute("EXECUTE casting_missing")  # a real "does not exist" of the server's
            sent = []

            class Pooled:
                """The connection's cursor, on which every prepared statement is missing."""

                def execute(self, sql, arguments):
                    sent.append(sql)
                    if "EXECUTE casting_" in sql:
                        raise missing.exception
                    cursor.execute(sql, arguments)

            statement = database.by_id(Actor.__table__)
            compiled = statement.compile(dialect=connection.dialect)
            database._execute_prepared({}, Pooled(), compiled, {"id": int(actor)})
            self.assertEqual(cursor.fetchall()[0][:2], (int(actor), ACTOR["name"]))
        self.assertEqual([sql.split()[0] for sql in sent], ["PREPARE"] * 4 + ["SELECT"])

    def restore_age(self):
        with self.app.app_context(), db.engine.begin() as connection:
            connection.execute(text("ALTER TABLE actors ALTER COLUMN age TYPE integer"))


class RequestSettingsTest(ApiTestCase):
    """What every statement of a request runs under (database.RequestSettings)."""

    def test_the_timeouts_must_be_seconds(self):
        for name in ("DB_STATEMENT_TIMEOUT", "DB_LOCK_TIMEOUT"):
            for value in ("soon", "-1", "nan", None):
                with self.subTest(name, value=value), self.assertRaisesRegex(ConfigError, name):
                    create_app(app_config(**{name: value}))

    def test_the_settings_an_operators_options_name(self):
        self.assertEqual(
            database.named_in_options("-c search_path=x,y  --lock-timeout=5 -cwork_mem=1MB"),
            {"search_path", "lock_timeout", "work_mem"},
        )
        self.assertEqual(database.named_in_options(("-c a=1", "-c b=2")), {"b"})  # given twice: the last
        self.assertEqual(database.named_in_options(""), set())

    def test_the_requests_connections_keep_the_operators_options(self):
        self.requires_postgresql("PostgreSQL's settings")
        options = urllib.parse.quote("-c search_path=public,pg_catalog --lock-timeout=1234")
        app = create_app(app_config(DATABASE_URL=f"{DATABASE_URL}?options={options}", DB_STATEMENT_TIMEOUT=7))
        self.addCleanup(dispose, app)
        response = app.test_client().get("/actors", headers=self.headers())
        self.assertEqual(response.status_code, 200, response.get_json())
        with app.extensions["statements"].connect() as connection:
            names = ("search_path", "lock_timeout", "statement_timeout", "plan_cache_mode")
            settings = [connection.exec_driver_sql(f"SHOW {name}").scalar() for name in names]
        # The operator's search path and lock timeout; the app's statement timeout and plan cache mode.
        self.assertEqual(settings, ["public,pg_catalog", "1234ms", "7s", "force_generic_plan"])


class TimeoutTest(ApiTestCase):
    """A statement over DB_STATEMENT_TIMEOUT, a lock held past DB_LOCK_TIMEOUT:
    a JSON 503, logged in one line, and the next request answers."""

    config = {"DB_STATEMENT_TIMEOUT": 0.5, "DB_LOCK_TIMEOUT": 0.2}

    def setUp(self):
        super().setUp()
        self.requires_postgresql("SQLite has no timeouts: a writer waits for the file's lock")

    def assertUnavailable(self, method, path, because, **kwargs):
        """The request answers a 503 within 10 s: in a thread, since without
        a timeout it would wait for as long as the lock is held."""
        answers = []
        request = threading.Thread(target=lambda: answers.append(self.call(method, path, **kwargs)), daemon=True)
        with self.assertLogs("app", "WARNING") as logs:
            request.start()
            request.join(timeout=10)
            self.assertEqual(len(answers), 1, f"{method} {path}: no answer within 10 s")
        self.assertError(answers[0], 503, "the database is unavailable")
        self.assertEqual([record.levelname for record in logs.records], ["WARNING"])
        self.assertIn(because, logs.output[0])

    def test_a_statement_over_its_timeout_is_503(self):
        def slow(*args, **kwargs):
            with self.app.app_context():
                database.execute(text("SELECT pg_sleep(10)"))

        with mock.patch("lists.Listing.page", side_effect=slow):
            self.assertUnavailable("GET", "/actors", "canceling statement due to statement timeout")
        self.assertEqual(self.call("GET", "/actors").status_code, 200)

    def test_a_locked_table_is_503_until_the_lock_is_gone(self):
        actor = self.add(Actor, **ACTOR)["id"]
        holder = psycopg2.connect(DATABASE_URL)
        self.addCleanup(holder.close)
        with holder.cursor() as cursor:
            cursor.execute("LOCK TABLE actors IN ACCESS EXCLUSIVE MODE")  # a migration's, until the rollback
        because = "canceling statement due to lock timeout"
        self.assertUnavailable("GET", f"/actors/{actor}", because)
        self.assertUnavailable("PATCH", f"/actors/{actor}", because, json={"age": 30})
        self.assertEqual(self.call("GET", "/movies").status_code, 200)  # another table answers
        holder.rollback()
        response = self.call("GET", f"/actors/{actor}")
        self.assertEqual(response.get_json()["actor"], {"id": actor, **ACTOR})


def sqlite_error(database, sql="SELECT 1"):
    """A real error of the sqlite3 module, with its error code."""
    try:
        sqlite3.connect(database).execute(sql)
    except sqlite3.Error as error:
        return error
    raise AssertionError(f"{sql} on {database} worked")


# A driver's error that a request meets: (what, the error, status). A refused
# or lost connection, a lock waited for too long and a statement over its
# timeout are a 503; the rest is a bug or a conflict, a 500.
DRIVER_ERRORS = [
    ("SQLite: no such table", sqlite_error(":memory:", "SELECT * FROM nope"), 500),
    ("SQLite: the file cannot be opened", sqlite_error("/no/such/folder/casting.db"), 503),
    ("psycopg2: refused", psycopg2.OperationalError('connection to server at "127.0.0.1" failed: refused'), 503),
    ("psycopg2: lost", psycopg2.OperationalError("server closed the connection unexpectedly"), 503),
    ("psycopg2: closed", psycopg2.InterfaceError("connection already closed"), 503),
    ("psycopg2: timed out", psycopg2.errors.QueryCanceled("canceling statement due to statement timeout"), 503),
    ("psycopg2: cancelled", psycopg2.errors.QueryCanceled("canceling statement due to user request"), 500),
    ("psycopg2: locked", psycopg2.errors.LockNotAvailable("canceling statement due to lock timeout"), 503),
    ("psycopg2: serialization", psycopg2.errors.SerializationFailure("could not serialize access"), 500),
    ("psycopg2: deadlock", psycopg2.errors.DeadlockDetected("deadlock detected"), 500),
]

# What a PostgreSQL server answers, by SQLSTATE (on a PostgreSQL test run).
SERVER_ERRORS = [
    ("57014", 500),  # query_canceled, by a cancel request (pg_cancel_backend)
    ("55P03", 503),  # lock_not_available: lock_timeout
    ("40001", 500),  # serialization_failure
    ("40P01", 500),  # deadlock_detected
    ("42P01", 500),  # undefined_table
    ("57P01", 503),  # admin_shutdown: the server ends the connection
    ("57P03", 503),  # cannot_connect_now: starting up or shutting down
    ("08006", 503),  # connection_failure
    ("53300", 503),  # too_many_connections
]


class DatabaseErrorTest(ApiTestCase):
    def assertAnswer(self, error, status):
        """A request meeting `error` answers `status`: a 503 logged in one line,
        a 500 with its traceback."""
        with mock.patch("lists.Listing.page", side_effect=error), self.assertLogs("app", "WARNING") as logs:
            response = self.call("GET", "/actors")
        log = "\n".join(logs.output)
        if status == 503:
            self.assertError(response, 503, "the database is unavailable")
            self.assertEqual([record.levelname for record in logs.records], ["WARNING"])
            self.assertNotIn("Traceback", log)
        else:
            self.assertError(response, 500, "internal server error")
            self.assertIn("Traceback", log)

    def test_which_driver_errors_are_503(self):
        for what, error, status in DRIVER_ERRORS:
            with self.subTest(what):
                base = psycopg2.Error if isinstance(error, psycopg2.Error) else sqlite3.Error
                self.assertAnswer(DBAPIError.instance("SELECT 1", {}, error, base), status)

    def test_a_connection_sqlalchemy_saw_lost_is_503(self):
        # psycopg2 reports some losses as a bare DatabaseError; SQLAlchemy knows them by their message.
        error = psycopg2.DatabaseError("SSL SYSCALL error: EOF detected")
        self.assertAnswer(DBAPIError.instance("SELECT 1", {}, error, psycopg2.Error, connection_invalidated=True), 503)

    def test_postgresql_server_errors_by_sqlstate(self):
        self.requires_postgresql("the SQLSTATEs of a PostgreSQL server; psycopg2's classes are tested on every run")
        for sqlstate, status in SERVER_ERRORS:
            with self.subTest(sqlstate):
                statement = text(f"DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{sqlstate}'; END $$")

                def fail(*args, statement=statement, **kwargs):
                    with self.app.app_context():
                        database.execute(statement)  # a real error of the server, through SQLAlchemy

                self.assertAnswer(fail, status)

    def test_the_selects_fast_path_raises_what_sqlalchemy_would(self):
        """database.rows runs a request's selects on psycopg2's cursor: its
        errors must reach the handlers as SQLAlchemy's DBAPIError, and a lost
        connection must be invalidated, as on SQLAlchemy's own path."""
        self.requires_postgresql("the fast path is PostgreSQL's; SQLite's selects run through SQLAlchemy")
        cases = [  # (select, SQLSTATE, the connection was lost)
            (select(literal_column("1/0")), "22012", False),
            (select(func.pg_terminate_backend(func.pg_backend_pid())), "57P01", True),
        ]
        with self.app.app_context():
            for statement, sqlstate, lost in cases:
                with self.subTest(sqlstate), database.connect() as connection:
                    with self.assertRaises(DBAPIError) as raised:
                        database.rows(connection, statement, {})
                    self.assertEqual(raised.exception.connection_invalidated, lost)
                    if not lost:
                        self.assertEqual(raised.exception.orig.pgcode, sqlstate)
                    self.assertEqual(connection.invalidated, lost)
                with database.connect() as connection:  # the pool serves a working connection after either
                    self.assertEqual(database.rows(connection, select(literal_column("2").label("n")), {}), [{"n": 2}])

    def test_a_database_without_tables_is_500(self):
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        app = create_app(app_config(DATABASE_URL=f"sqlite:///{folder.name}/empty.db"))
        self.addCleanup(dispose, app)
        with self.assertLogs("app", "ERROR") as logs:
            response = app.test_client().get("/actors", headers=self.headers())
        self.assertError(response, 500)
        self.assertIn("no such table", "\n".join(logs.output))
