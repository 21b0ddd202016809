"""Test support: a token issuer on loopback and a base TestCase.

The suite makes its own RSA keys and publishes them as a JWKS over real HTTP on
127.0.0.1, so the app's real fetching and caching code (auth.JWKSKeys) is the
code under test. No test needs the internet.
"""

import contextlib
import datetime
import io
import os
import shutil
import tempfile
import unittest
import uuid
from unittest import mock

from flask_migrate import upgrade
from sqlalchemy import event, text

import database
from app import create_app
from loopback import Issuer
from models import Actor, Movie, columns, db

# Sample rows, as a client sends them (MOVIE) and as the database holds them (MOVIE_ROW).
ACTOR = {"name": "Viola Davis", "age": 61, "gender": "Female"}
MOVIE = {"title": "Harbour Lights", "release_date": "2021-10-15"}
MOVIE_ROW = {"title": "Harbour Lights", "release_date": datetime.date(2021, 10, 15)}

# What differs between the two resources; every test below runs for both.
RESOURCES = [
    {
        "plural": "actors",
        "singular": "actor",
        "model": Actor,
        "body": ACTOR,
        "row": ACTOR,
        "text": "name",
        "edit": {"age": 62},
    },
    {
        "plural": "movies",
        "singular": "movie",
        "model": Movie,
        "body": MOVIE,
        "row": MOVIE_ROW,
        "text": "title",
        "edit": {"release_date": "2022-01-31"},
    },
]

ISSUER = "https://issuer.test/"
AUDIENCE = "casting-agency-test"

ISSUER_ON_LOOPBACK = Issuer(ISSUER, AUDIENCE)


def folder_and_issuer(cls, name):
    """For a class of tests that start servers of their own: a folder, removed
    after the class, and an issuer of the suite's tokens on loopback, stopped
    after it."""
    folder = tempfile.mkdtemp(prefix=f"casting-agency-{name}-")
    cls.addClassCleanup(shutil.rmtree, folder, ignore_errors=True)
    issuer = Issuer(ISSUER, AUDIENCE)
    cls.addClassCleanup(issuer.stop)
    return folder, issuer


# No issuer configured: the app is its own (auth.LocalIssuer), its key in an
# instance folder of the test run's.
_instance_dir = tempfile.TemporaryDirectory(prefix="casting-agency-instance-")
LOCAL_ISSUER_CONFIG = {
    "AUTH0_ISSUER": None,
    "JWKS_URL": None,
    "API_AUDIENCE": None,
    "INSTANCE_PATH": _instance_dir.name,
}

_sqlite_dir = tempfile.TemporaryDirectory(prefix="casting-agency-tests-")
DATABASE_URL = os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{_sqlite_dir.name}/test.db"
_database_ready = False


def app_config(**overrides):
    return {
        "DATABASE_URL": DATABASE_URL,
        "AUTH0_DOMAIN": None,
        "AUTH0_ISSUER": ISSUER,
        "JWKS_URL": ISSUER_ON_LOOPBACK.jwks_url,
        "API_AUDIENCE": AUDIENCE,
        "REQUIRE_ISSUER": False,
        "SECRET_KEY": "a secret of the tests",
        "CORS_ORIGINS": "",
        "MAX_CONTENT_LENGTH": 1024 * 1024,
        "TESTING": True,
        # Limits out of the way, in each app's own memory, unless a test is about them.
        "REDIS_URL": None,
        "RATE_LIMIT": "1000000/second",
        "RATE_LIMIT_ANONYMOUS": "1000000/second",
        "TRUSTED_PROXY_HOPS": 0,
        **overrides,
    }


def dispose(app):
    """Close the app's pooled connections (both engines), so no test leaves
    connections open against the test database."""
    app.extensions["statements"].dispose()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@contextlib.contextmanager
def statements_run(app):
    """A list that collects the SQL, parameters inlined, of every statement the
    app's requests run on PostgreSQL meanwhile: through SQLAlchemy, and through
    the selects' fast path (database.rows), which SQLAlchemy's events never see."""
    statements = []

    def through_sqlalchemy(conn, cursor, statement, parameters, context, executemany):
        statements.append(cursor.mogrify(statement, parameters).decode())

    def fast_path(connection, statement, parameters):
        compiled = statement.compile(dialect=connection.dialect)
        with connection.connection.dbapi_connection.cursor() as cursor:
            statements.append(cursor.mogrify(compiled.string, compiled.construct_params(parameters)).decode())
        return run(connection, statement, parameters)

    run = database.rows
    engine = app.extensions["statements"]
    event.listen(engine, "before_cursor_execute", through_sqlalchemy)
    try:
        with mock.patch("database.rows", fast_path), mock.patch("lists.rows", fast_path):
            yield statements
    finally:
        event.remove(engine, "before_cursor_execute", through_sqlalchemy)


def prepare_database(app):
    """Once per test run: drop whatever is there and build the schema from the
    migrations, so every test runs on the schema a deploy gets."""
    global _database_ready
    if _database_ready:
        return
    with app.app_context():
        db.drop_all()
        with db.engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
        upgrade(directory=os.path.join(os.path.dirname(__file__), "migrations"))
    _database_ready = True


class ApiTestCase(unittest.TestCase):
    """Each test gets a new app on an empty database and a fresh issuer state."""

    config = {}

    def setUp(self):
        ISSUER_ON_LOOPBACK.reset()
        self.addCleanup(ISSUER_ON_LOOPBACK.reset)  # left as found, for the tests that are no ApiTestCase
        self.issuer = ISSUER_ON_LOOPBACK
        self.app = create_app(app_config(**self.config))
        prepare_database(self.app)
        self.client = self.app.test_client()
        self.addCleanup(self._empty_database)

    def requires_postgresql(self, why):
        """Skips the test, saying why, when the suite runs on SQLite."""
        if self.app.extensions["statements"].dialect.name != "postgresql":
            self.skipTest(why)

    def _empty_database(self):
        with self.app.app_context(), db.engine.begin() as connection:
            for table in ("castings", "movies", "actors", "audit_events", "authorization_codes"):
                connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608 (fixed names)
        dispose(self.app)

    # --- requests -----------------------------------------------------------

    def headers(self, role="Executive Producer", token=None):
        return {"Authorization": f"Bearer {token or self.issuer.role_token(role)}"}

    def call(self, method, path, role="Executive Producer", **kwargs):
        headers = kwargs.pop("headers", None) or (self.headers(role) if role else {})
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def assertError(self, response, status, message=None):
        """The JSON error envelope with this status (and message, if given)."""
        self.assertEqual(response.status_code, status, response.get_data(as_text=True))
        self.assertEqual(response.mimetype, "application/json")
        body = response.get_json()
        self.assertIs(body["success"], False)
        self.assertEqual(body["error"], status)
        self.assertIsInstance(body["message"], str)
        if message is not None:
            self.assertIn(message, body["message"])
        return body

    # --- the database, read and written outside any request -----------------

    def rows(self, model):
        with self.app.app_context():
            order = model.__table__.primary_key.columns
            return [columns(row) for row in db.session.scalars(db.select(model).order_by(*order))]

    def add(self, model, **values):
        with self.app.app_context():
            row = model(**values)
            db.session.add(row)
            db.session.commit()
            return columns(row)


def copy_rows(test, tables, *statements):
    """PostgreSQL: COPY rows into tables (each `(table, "(columns)", lines)`, a
    line a row of tab-separated values), run the `(statement, parameters)`
    after them, and ANALYZE the tables (fresh statistics, as autovacuum gives)."""
    with test.app.app_context():
        connection = db.engine.raw_connection()
        try:
            with connection.cursor() as cursor:
                for table, columns, lines in tables:
                    cursor.copy_expert(f"COPY {table} {columns} FROM STDIN", io.StringIO("".join(lines)))
                for statement, parameters in statements:
                    cursor.execute(statement, parameters)
                cursor.execute(f"ANALYZE {', '.join(table for table, _, _ in tables)}")
            connection.commit()
        finally:
            connection.close()


def assert_flat_cost(test, small, large, pages_too=()):
    """A flat-cost test: what `test.measure()` counts ((rows, pages) read, by
    path) after `test.grow_to(small)` grows by at most half, plus a little,
    after `test.grow_to(large)`: the rows always, the pages for `pages_too`
    (an index's pages grow with the table even when the rows do not)."""
    test.grow_to(small)
    before = test.measure()
    test.grow_to(large)
    after = test.measure()
    for path in before:
        (small_rows, small_pages), (large_rows, large_pages) = before[path], after[path]
        with test.subTest(path, small=before[path], large=after[path]):
            test.assertLessEqual(large_rows, 1.5 * small_rows + 100)
            if path in pages_too:
                test.assertLessEqual(large_pages, 1.5 * small_pages + 20)


def read_by(test, path):
    """(rows, pages) that the statements of a GET of `path` read on PostgreSQL:
    rows by their scans, pages of tables and indexes (from memory or disk),
    from the plans of the very statements (EXPLAIN ANALYZE, BUFFERS)."""
    with statements_run(test.app) as statements:
        test.assertEqual(test.call("GET", path).status_code, 200)
    test.assertTrue(statements)
    read_rows = read_pages = 0
    with test.app.app_context():
        connection = db.engine.raw_connection()  # no parameters: the % of a LIKE stays as it is
        try:
            with connection.cursor() as cursor:
                for sql in statements:
                    cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
                    plan = cursor.fetchone()[0][0]["Plan"]
                    read_rows += _scanned(plan)
                    read_pages += plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]  # with its children's
        finally:
            connection.close()
    return read_rows, read_pages


def _scanned(node):
    """Rows a plan node's scans read (kept or filtered out), with its children's."""
    rows = 0
    if "Scan" in node["Node Type"]:
        kept = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
        rows = (kept + node.get("Rows Removed by Index Recheck", 0)) * node.get("Actual Loops", 1)
    return rows + sum(_scanned(child) for child in node.get("Plans", []))


# --- rows for the tests of deployed servers, which share a database ---------------


def tag():
    """A unique word, so that tests sharing a database find their own rows."""
    return "t" + uuid.uuid4().hex[:10]


def actor(name, age=40, gender="Female"):
    return {"name": name, "age": age, "gender": gender}


def movie(title, release_date="2021-10-15"):
    return {"title": title, "release_date": release_date}


def replay(events):
    """The tables that these events, applied in order to empty ones, leave."""
    tables = {"actors": {}, "movies": {}, "castings": {}}
    for recorded in events:
        table = tables[recorded["resource"]]
        if recorded["resource"] == "castings":
            key = (recorded["movie_id"], recorded["actor_id"])
            if recorded["action"] == "cast":
                table[key] = {"movie_id": key[0], "actor_id": key[1], "character": recorded["changes"]["character"][1]}
            else:
                del table[key]
            continue
        key = (recorded["resource_id"],)
        if recorded["action"] == "create":
            table[key] = {"id": key[0], **recorded["changes"]}
        elif recorded["action"] == "update":
            table[key].update({name: new for name, (_old, new) in recorded["changes"].items()})
        else:
            del table[key]
            # The castings that went with it are not recorded one by one: the
            # delete lists them, each by its other side.
            side, other = ("movie_id", "actor_id") if recorded["resource"] == "movies" else ("actor_id", "movie_id")
            gone = sorted(pair for pair, casting in tables["castings"].items() if casting[side] == key[0])
            removed = sorted(
                (
                    {other: tables["castings"][pair][other], "character": tables["castings"][pair]["character"]}
                    for pair in gone
                ),
                key=lambda casting: casting[other],
            )
            if recorded["changes"]["castings"] != removed:
                raise AssertionError(f"the delete lists {event['changes']['castings']}, it removed {removed}")
            for pair in gone:
                del tables["castings"][pair]
    return tables
