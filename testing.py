"""Test support: a token issuer on loopback and a base TestCase.

The suite makes its own RSA keys and publishes them as a JWKS over real HTTP on
127.0.0.1, so the app's real fetching and caching code (auth.JWKSKeys) is the
code under test. No test needs the internet.
"""

import json
import os
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from flask_migrate import upgrade
from sqlalchemy import text

from app import create_app
from auth import ROLES
from models import columns, db

ISSUER = "https://issuer.test/"
AUDIENCE = "casting-agency-test"


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private_key, kid):
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


class Issuer:
    """Signs tokens and serves its JWKS on loopback, counting the fetches."""

    def __init__(self):
        self.key = rsa_key()
        self.kid = "test-key-1"
        self.published = {self.kid: self.key}
        self.fetches = 0
        self.failing = False  # answer 500 to every fetch
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                issuer.fetches += 1
                if issuer.failing or self.path != "/.well-known/jwks.json":
                    self.send_error(500 if issuer.failing else 404)
                    return
                keys = [public_jwk(key, kid) for kid, key in issuer.published.items()]
                body = json.dumps({"keys": keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.jwks_url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"

    def reset(self):
        self.published = {self.kid: self.key}
        self.fetches = 0
        self.failing = False

    def token(self, permissions=(), *, key=None, headers=None, algorithm="RS256", drop=(), **claims):
        """A token: valid by default; keyword arguments override claims, `drop`
        removes some, `headers` overrides header fields."""
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "auth0|test",
            "iat": now,
            "exp": now + 3600,
            "permissions": list(permissions) if isinstance(permissions, (list, tuple)) else permissions,
            **claims,
        }
        for claim in drop:
            payload.pop(claim)
        return jwt.encode(payload, key or self.key, algorithm=algorithm, headers={"kid": self.kid, **(headers or {})})

    def role_token(self, role):
        return self.token(ROLES[role])


ISSUER_ON_LOOPBACK = Issuer()

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
        self.issuer = ISSUER_ON_LOOPBACK
        self.app = create_app(app_config(**self.config))
        prepare_database(self.app)
        self.client = self.app.test_client()
        self.addCleanup(self._empty_database)

    def _empty_database(self):
        with self.app.app_context(), db.engine.begin() as connection:
            for table in ("castings", "movies", "actors"):
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
