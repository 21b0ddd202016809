"""Test support: a token issuer on loopback and a base TestCase.

The suite makes its own RSA keys and publishes them as a JWKS over real HTTP on
127.0.0.1, so the app's real fetching and caching code (auth.JWKSKeys) is the
code under test. No test needs the internet.
"""

import datetime
import os
import tempfile
import unittest

from flask_migrate import upgrade
from sqlalchemy import text

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
