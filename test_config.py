"""config.py: every setting from the environment (and .env) to its effect in the app, and the
settings that stop a start."""

import json
import os
import re
import tempfile
import unittest
from unittest import mock

from flask import Flask

from app import create_app
from auth import LocalIssuer
from config import ConfigError, database_url, load_config
from models import db
from testing import ISSUER, app_config

AN_ISSUER = {"AUTH0_DOMAIN": "tenant.eu.auth0.com", "API_AUDIENCE": "casting-agency"}


A_POSTGRES_URL = "postgres://user:secret@db.example:5432/casting"


def deployed_app(**environment):
    """create_app() as a deploy or `flask run` calls it, seeing only these
    environment variables (FLASK_SKIP_DOTENV keeps the checkout's .env out)."""
    environment = {"FLASK_SKIP_DOTENV": "1", "SECRET_KEY": "a secret of the deploy", **environment}
    with mock.patch.dict(os.environ, environment, clear=True):
        return create_app()


def engines(app):
    with app.app_context():
        return [app.extensions["statements"], db.engine]


def pools(app):
    """(size, overflow allowed) of the app's two connection pools."""
    return [(engine.pool.size(), engine.pool._max_overflow) for engine in engines(app)]


def body_limit(app):
    """The answers to a POST of 100 and of 101 bytes (413 comes before authentication)."""
    client = app.test_client()
    return [client.post("/actors", data="x" * n, content_type="application/json").status_code for n in (100, 101)]


def cors(app):
    """Access-Control-Allow-Origin of a preflight from each of three origins."""
    headers = {"Access-Control-Request-Method": "POST"}
    return [
        app.test_client()
        .options("/actors", headers={**headers, "Origin": origin})
        .headers.get("Access-Control-Allow-Origin")
        for origin in ("https://a.example", "https://b.example", "https://c.example")
    ]


def sign_in(app):
    """The client id /docs signs in with, and where (None: bearer tokens only)."""
    schemes = app.test_client().get("/openapi.json").get_json()["components"]["securitySchemes"]
    if "oauth2" not in schemes:
        return None
    docs = app.test_client().get("/docs/").get_data(as_text=True)
    client_id = json.loads(re.search(r"var oauth_user_config = (\{.*?\});", docs, re.S)[1])["clientId"]
    return client_id, schemes["oauth2"]["flows"]["authorizationCode"]["authorizationUrl"]


def verifier(app):
    auth = app.extensions["auth"]
    return auth.issuer, auth.keys.url, auth.audience


def key_set(app):
    keys = app.extensions["auth"].keys
    return keys.timeout, keys.min_interval, keys.max_age


def rate_limits(app):
    """The two budgets (amount/multiples/granularity), and whether the counters are shared (Redis)."""
    limits = app.extensions["rate_limits"]
    budgets = [
        f"{b.item.amount}/{b.item.multiples}/{b.item.GRANULARITY.name}"
        for b in (limits.per_subject, limits.per_address)
    ]
    return (*budgets, limits.counters.shared is not None)


# Every configuration variable, from the environment to its effect in the app:
# (environment, what to read from the app, what it must be).
CONFIGURATION_CASES = [
    (
        {**AN_ISSUER, "DATABASE_URL": A_POSTGRES_URL},
        lambda app: {e.url.render_as_string(False) for e in engines(app)},
        {"postgresql+psycopg2://user:secret@db.example:5432/casting"},
    ),
    ({**AN_ISSUER, "DATABASE_URL": A_POSTGRES_URL}, pools, [(5, 0), (5, 0)]),
    ({**AN_ISSUER, "DATABASE_URL": A_POSTGRES_URL, "DB_POOL_SIZE": "3"}, pools, [(3, 0), (3, 0)]),
    ({**AN_ISSUER, "DATABASE_URL": A_POSTGRES_URL, "DB_POOL_SIZE": ""}, pools, [(5, 0), (5, 0)]),
    ({**AN_ISSUER, "MAX_CONTENT_LENGTH": "100"}, body_limit, [401, 413]),
    (
        {**AN_ISSUER, "CORS_ORIGINS": "https://a.example, https://b.example"},
        cors,
        ["https://a.example", "https://b.example", None],
    ),
    ({**AN_ISSUER, "CORS_ORIGINS": ""}, cors, [None, None, None]),
    (
        AN_ISSUER,
        verifier,
        ("https://tenant.eu.auth0.com/", "https://tenant.eu.auth0.com/.well-known/jwks.json", "casting-agency"),
    ),
    (
        {"AUTH0_ISSUER": "https://issuer.example/", "JWKS_URL": "https://keys.example/jwks", "API_AUDIENCE": "api"},
        verifier,
        ("https://issuer.example/", "https://keys.example/jwks", "api"),
    ),
    (
        {**AN_ISSUER, "JWKS_TIMEOUT": "2.5", "JWKS_MIN_REFETCH_INTERVAL": "7", "JWKS_CACHE_TTL": "90"},
        key_set,
        (2.5, 7.0, 90.0),
    ),
    (AN_ISSUER, key_set, (5.0, 30.0, 600.0)),
    (
        {**AN_ISSUER, "RATE_LIMIT": "5/second", "RATE_LIMIT_ANONYMOUS": "7/hour", "REDIS_URL": "redis://r.example:1"},
        rate_limits,
        ("5/1/second", "7/1/hour", True),
    ),
    (AN_ISSUER, rate_limits, ("600/1/minute", "60/1/minute", False)),
    ({**AN_ISSUER, "TRUSTED_PROXY_HOPS": "1"}, lambda app: type(app.wsgi_app).__name__, "ProxyFix"),
    ({**AN_ISSUER, "REQUIRE_ISSUER": "1"}, lambda app: type(app.extensions["auth"].keys).__name__, "JWKSKeys"),
    ({**AN_ISSUER, "AUTH0_CLIENT_ID": "spa-client"}, sign_in, ("spa-client", "https://tenant.eu.auth0.com/authorize")),
    ({**AN_ISSUER, "AUTH0_CLIENT_ID": ""}, sign_in, None),
]


class ConfigTest(unittest.TestCase):
    def test_each_variable_reaches_the_app(self):
        for environment, read, expected in CONFIGURATION_CASES:
            with self.subTest(environment):
                self.assertEqual(read(deployed_app(**environment)), expected)

    def test_without_database_url_the_database_is_a_file_in_the_instance_folder(self):
        app = deployed_app(**AN_ISSUER)
        for engine in engines(app):
            self.assertEqual(engine.url.database, os.path.join(app.instance_path, "casting_agency.db"))

    def test_a_production_start_without_an_issuer_refuses(self):
        # Any REQUIRE_ISSUER but 0 is a production start: an empty one too, which
        # must not fall back to an issuer that mints its own tokens.
        for environment in (
            {"REQUIRE_ISSUER": "1"},
            {"REQUIRE_ISSUER": "1", "AUTH0_DOMAIN": ""},
            {"REQUIRE_ISSUER": ""},
        ):
            with self.subTest(environment), self.assertRaisesRegex(ConfigError, "no token issuer configured"):
                deployed_app(**environment)
        self.assertIsInstance(deployed_app(REQUIRE_ISSUER="0").extensions["auth"].keys, LocalIssuer)

    def test_a_production_start_without_a_secret_key_refuses(self):
        with self.assertRaisesRegex(ConfigError, "SECRET_KEY is not set"):
            deployed_app(**AN_ISSUER, REQUIRE_ISSUER="1", SECRET_KEY="")

    def test_elsewhere_a_random_secret_key_is_kept_in_the_instance_folder(self):
        with tempfile.TemporaryDirectory() as instance:
            keys = [create_app(app_config(SECRET_KEY=None, INSTANCE_PATH=instance)).config["SECRET_KEY"] for _ in "ab"]
            with open(os.path.join(instance, "secret-key")) as file:
                self.assertEqual(keys, [file.read()] * 2)  # made once, then read
            self.assertEqual(os.stat(os.path.join(instance, "secret-key")).st_mode & 0o777, 0o600)
        self.assertGreaterEqual(len(keys[0]), 40)
        with tempfile.TemporaryDirectory() as another:
            self.assertNotEqual(
                create_app(app_config(SECRET_KEY=None, INSTANCE_PATH=another)).config["SECRET_KEY"], keys[0]
            )

    def test_a_tests_config_alone_counts(self):
        # Whatever the machine's environment holds, an app made from a test's
        # config has that config and the defaults.
        machine = {"DB_POOL_SIZE": "1", "JWKS_MIN_REFETCH_INTERVAL": "0", "CORS_ORIGINS": "https://a.example"}
        with mock.patch.dict(os.environ, {**machine, "MAX_CONTENT_LENGTH": "100", **AN_ISSUER}):
            app = create_app(app_config(DATABASE_URL=A_POSTGRES_URL))
        self.assertEqual(pools(app), [(5, 0), (5, 0)])
        self.assertEqual(app.extensions["auth"].keys.min_interval, 30)
        self.assertEqual(cors(app), [None, None, None])
        self.assertEqual(app.config["MAX_CONTENT_LENGTH"], 1024 * 1024)
        self.assertEqual(app.extensions["auth"].issuer, ISSUER)

    def test_the_env_file_is_read_and_the_environment_wins(self):
        cases = [  # (environment, CORS_ORIGINS, DB_POOL_SIZE, DATABASE_URL)
            ({"DB_POOL_SIZE": "7"}, "https://from-dotenv.example", 7, "postgresql+psycopg2://u@from-dotenv/d"),
            ({}, "https://from-dotenv.example", 3, "postgresql+psycopg2://u@from-dotenv/d"),
            ({"FLASK_SKIP_DOTENV": "1"}, "", 5, None),
            # An empty variable is the default, .env's value or not: `DATABASE_URL= flask run` is on SQLite.
            ({"DATABASE_URL": ""}, "https://from-dotenv.example", 3, None),
            ({"DB_POOL_SIZE": "", "CORS_ORIGINS": ""}, "", 5, "postgresql+psycopg2://u@from-dotenv/d"),
        ]
        with tempfile.TemporaryDirectory() as root:
            with open(os.path.join(root, ".env"), "w") as env_file:
                env_file.write(
                    "CORS_ORIGINS=https://from-dotenv.example\nDB_POOL_SIZE=3\nDATABASE_URL=postgres://u@from-dotenv/d\n"
                )
            for environment, origins, pool_size, url in cases:
                with self.subTest(environment), mock.patch.dict(os.environ, environment, clear=True):
                    app = Flask("probe", root_path=root)
                    load_config(app, None)
                    self.assertEqual(app.config["CORS_ORIGINS"], origins)
                    self.assertEqual(app.config["DB_POOL_SIZE"], pool_size)
                    default = "sqlite:///" + os.path.join(app.instance_path, "casting_agency.db")
                    self.assertEqual(app.config["SQLALCHEMY_DATABASE_URI"], url or default)

    def test_database_urls_are_normalised_to_psycopg2(self):
        cases = [
            ("postgres://u:p@h:5432/d", "postgresql+psycopg2://u:p@h:5432/d"),
            ("postgresql://u@h/d", "postgresql+psycopg2://u@h/d"),
            ("postgresql+psycopg2://u@h/d", "postgresql+psycopg2://u@h/d"),
            ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ]
        for given, expected in cases:
            with self.subTest(given):
                self.assertEqual(database_url(given), expected)
