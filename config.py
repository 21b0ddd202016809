"""Configuration: the environment (and .env) read once into app.config.

Every setting the README lists is read here and nowhere else; the modules
that use one read it from app.config. A setting that would make the service
unsafe or broken stops the start with one line (ConfigError).
"""

import os
import secrets
import tempfile

import click
from dotenv import dotenv_values, load_dotenv
from flask.helpers import get_load_dotenv

MIB = 1024 * 1024


class ConfigError(click.ClickException, RuntimeError):
    """A setting that stops the start. `flask` (click) and gunicorn (which
    reports a RuntimeError raised while loading the app) both say it in one
    line, with no traceback."""


def database_url(url):
    """Normalise a database URL to the psycopg2 driver: Heroku hands out
    `postgres://`, which SQLAlchemy rejects, and SQLAlchemy 2.1 reads a bare
    `postgresql://` as psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def production_start(environ):
    """Whether this is a production start: REQUIRE_ISSUER, set by the
    Procfile's commands (gunicorn.conf.py, the release phase), with any value
    but 0. An empty value counts too: a deploy that blanks it must not fall back
    to the local issuer."""
    return environ.get("REQUIRE_ISSUER", "0") != "0"


def load_config(app, test_config):
    """The defaults, overridden by the environment, which wins over the .env
    file; or, given a test's config, the defaults and that config alone, so that
    no test depends on the machine's settings or on the checkout's .env. An
    empty value means the default, as in .env-sample; an empty variable in the
    environment wins over .env too (python-dotenv keeps a variable that is set),
    so `DATABASE_URL= flask run` uses the SQLite file whatever .env names."""
    env = {}
    production = False
    if test_config is None:
        if get_load_dotenv():  # FLASK_SKIP_DOTENV=1, Flask's own switch, skips .env here too
            load_dotenv(os.path.join(app.root_path, ".env"))
        production = production_start(os.environ)
        env = {name: value for name, value in os.environ.items() if value}
    config = {
        "DATABASE_URL": env.get("DATABASE_URL") or "sqlite:///" + os.path.join(app.instance_path, "casting_agency.db"),
        "DATABASE_CONNECTION_POOL_URL": env.get("DATABASE_CONNECTION_POOL_URL"),  # the requests' own: see database.py
        "DB_POOL_SIZE": int(env.get("DB_POOL_SIZE", 5)),
        "DB_STATEMENT_TIMEOUT": env.get("DB_STATEMENT_TIMEOUT", 5),  # seconds: see database.RequestSettings
        "DB_LOCK_TIMEOUT": env.get("DB_LOCK_TIMEOUT", 2),
        "MAX_CONTENT_LENGTH": int(env.get("MAX_CONTENT_LENGTH", MIB)),
        "CORS_ORIGINS": env.get("CORS_ORIGINS", ""),
        "AUTH0_DOMAIN": env.get("AUTH0_DOMAIN"),
        "API_AUDIENCE": env.get("API_AUDIENCE"),
        "AUTH0_ISSUER": env.get("AUTH0_ISSUER"),
        "JWKS_URL": env.get("JWKS_URL"),
        # An Auth0 Single Page Application (public: no secret), for signing in from /docs (api.py).
        "AUTH0_CLIENT_ID": env.get("AUTH0_CLIENT_ID"),
        "JWKS_TIMEOUT": float(env.get("JWKS_TIMEOUT", 5)),
        "JWKS_MIN_REFETCH_INTERVAL": float(env.get("JWKS_MIN_REFETCH_INTERVAL", 30)),
        "JWKS_CACHE_TTL": float(env.get("JWKS_CACHE_TTL", 600)),  # seconds before the key set is refetched
        "SECRET_KEY": env.get("SECRET_KEY"),  # signs list cursors: see secret_key()
        "REQUIRE_ISSUER": production,  # a production start refuses the local issuer (auth.py)
        # Rate limits (ratelimit.py checks the budgets' form).
        "REDIS_URL": env.get("REDIS_URL"),
        "RATE_LIMIT": env.get("RATE_LIMIT", "600/minute"),
        "RATE_LIMIT_ANONYMOUS": env.get("RATE_LIMIT_ANONYMOUS", "60/minute"),
        "TRUSTED_PROXY_HOPS": env.get("TRUSTED_PROXY_HOPS", "0"),
        # Monitoring (metrics.py, logs.py): /metrics is off without a token.
        "METRICS_TOKEN": env.get("METRICS_TOKEN"),
        "LOG_FORMAT": env.get("LOG_FORMAT", "text"),
        "API_TITLE": "Casting Agency API",
        "API_VERSION": "1.0",
        "OPENAPI_VERSION": "3.1.0",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
    }
    config.update(test_config or {})
    config["LOG_FORMAT"] = log_format(config["LOG_FORMAT"])
    config["SQLALCHEMY_DATABASE_URI"] = database_url(config["DATABASE_URL"])
    pooler = config["DATABASE_CONNECTION_POOL_URL"]
    config["REQUESTS_DATABASE_URI"] = database_url(pooler) if pooler else config["SQLALCHEMY_DATABASE_URI"]
    config["SECRET_KEY"] = secret_key(app, config)
    app.config.update(config)


LOG_FORMATS = ("text", "json")


def log_format(value):
    """LOG_FORMAT, checked: `text` (the default) or `json`, in any case; any
    other value stops the start, naming the setting."""
    chosen = (value or "text").strip().lower()
    if chosen not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT must be text or json, not {value!r}")
    return chosen


def server_setting(name):
    """A setting as the app will read it (the environment, else the checkout's
    .env unless FLASK_SKIP_DOTENV is set), for gunicorn's own set-up, which
    runs before the app is loaded and must agree with it."""
    value = os.environ.get(name)
    if not value and get_load_dotenv():
        value = dotenv_values(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".env")).get(name)
    return value or None


def secret_key(app, config):
    """SECRET_KEY, which signs cursors. Every instance of a deployment must
    share it, so a production start refuses to run without it; elsewhere a
    random key is made once and kept in the instance folder. Never derived from
    another setting: a key derived from the database URL made every cursor an
    offline oracle for the database password."""
    if config.get("SECRET_KEY"):
        return config["SECRET_KEY"]
    if config.get("REQUIRE_ISSUER"):
        raise ConfigError(
            "SECRET_KEY is not set: a production start needs a random secret shared by every instance "
            "(e.g. heroku config:set SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(32))'))"
        )
    path = os.path.join(app.instance_path, "secret-key")
    return instance_file(path, lambda: secrets.token_urlsafe(32).encode()).decode()


def instance_file(path, make):
    """The bytes of a file of per-install state in the instance folder (a key),
    made by `make()` the first time, readable by this user only. Of two
    processes starting at once, one links its file into place and the other
    reads that one: a file is never seen half written."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        pass
    content = make()
    fd, draft = tempfile.mkstemp(dir=folder)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
        os.link(draft, path)  # fails if another process got there first
    except FileExistsError:
        with open(path, "rb") as file:
            content = file.read()
    finally:
        os.unlink(draft)
    return content
