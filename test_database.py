"""database.py: the requests' connections (their pool, liveness, timeouts),
the selects' fast path and prepared statements, and which driver errors mean
the database is unavailable (503) rather than a bug (500)."""

import socket
import sqlite3
import tempfile
import threading
import time
from unittest import mock

import psycopg2
import psycopg2.errors
from sqlalchemy import func, literal_column, select, text
from sqlalchemy.exc import DBAPIError

import database
from app import create_app
from models import Actor, Casting, Movie, db
from testing import ACTOR, MOVIE, MOVIE_ROW, ApiTestCase, app_config, dispose


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
        engine = self.app.extensions["statements"]
        if engine.dialect.name != "postgresql":
            self.skipTest("SQLite has no server to close a connection")
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
        engine = self.app.extensions["statements"]
        if engine.dialect.name != "postgresql":
            self.skipTest("prepared statements are PostgreSQL's")
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


def sqlite_error(database, sql="SELECT 1"):
    """A real error of the sqlite3 module, with its error code."""
    try:
        sqlite3.connect(database).execute(sql)
    except sqlite3.Error as error:
        return error
    raise AssertionError(f"{sql} on {database} worked")


# A driver's error that a request meets: (what, the error, status). Only a
# refused or lost connection is a 503; the rest is a bug or a conflict, a 500.
DRIVER_ERRORS = [
    ("SQLite: no such table", sqlite_error(":memory:", "SELECT * FROM nope"), 500),
    ("SQLite: the file cannot be opened", sqlite_error("/no/such/folder/casting.db"), 503),
    ("psycopg2: refused", psycopg2.OperationalError('connection to server at "127.0.0.1" failed: refused'), 503),
    ("psycopg2: lost", psycopg2.OperationalError("server closed the connection unexpectedly"), 503),
    ("psycopg2: closed", psycopg2.InterfaceError("connection already closed"), 503),
    ("psycopg2: cancelled", psycopg2.errors.QueryCanceled("canceling statement due to statement timeout"), 500),
    ("psycopg2: serialization", psycopg2.errors.SerializationFailure("could not serialize access"), 500),
    ("psycopg2: deadlock", psycopg2.errors.DeadlockDetected("deadlock detected"), 500),
]

# What a PostgreSQL server answers, by SQLSTATE (on a PostgreSQL test run).
SERVER_ERRORS = [
    ("57014", 500),  # query_canceled
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

    def test_only_a_refused_or_lost_connection_is_503(self):
        for what, error, status in DRIVER_ERRORS:
            with self.subTest(what):
                base = psycopg2.Error if isinstance(error, psycopg2.Error) else sqlite3.Error
                self.assertAnswer(DBAPIError.instance("SELECT 1", {}, error, base), status)

    def test_a_connection_sqlalchemy_saw_lost_is_503(self):
        # psycopg2 reports some losses as a bare DatabaseError; SQLAlchemy knows them by their message.
        error = psycopg2.DatabaseError("SSL SYSCALL error: EOF detected")
        self.assertAnswer(DBAPIError.instance("SELECT 1", {}, error, psycopg2.Error, connection_invalidated=True), 503)

    def test_postgresql_server_errors_by_sqlstate(self):
        if self.app.extensions["statements"].dialect.name != "postgresql":
            self.skipTest("the SQLSTATEs of a PostgreSQL server; psycopg2's classes are tested on every run")
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
        if self.app.extensions["statements"].dialect.name != "postgresql":
            self.skipTest("the fast path is PostgreSQL's; SQLite's selects run through SQLAlchemy")
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
