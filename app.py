"""The Casting Agency API: the application factory.

`create_app()` reads the configuration and wires the modules, each of which
owns one concern:

- config.py: the settings, from the environment and .env;
- database.py, lists.py, writes.py: data access (one statement per read, a
  write and its audit event atomically, lists that stay flat at scale);
- auth.py, ratelimit.py: bearer tokens, permissions and the request budgets;
- api.py: flask-smorest (validation, answers, the OpenAPI description, /docs);
- local_signin.py: signing in from /docs while the app is its own issuer;
- resources.py: the routes;
- errors.py: the JSON error envelope; hooks.py: what every request goes through;
- metrics.py, logs.py: what an operator sees (/metrics, the log lines).
"""

import weakref
from inspect import iscoroutinefunction

from flask import Flask
from flask.sessions import SessionInterface
from flask_cors import CORS
from flask_migrate import Migrate

import errors
import hooks
from api import init_api
from auth import init_auth, token_command
from config import load_config
from database import init_database
from lists import init_lists
from local_signin import init_local_signin
from logs import init_logs
from metrics import init_metrics
from models import db
from ratelimit import HEADERS as RATE_LIMIT_HEADERS
from ratelimit import init_rate_limits
from resources import BLUEPRINTS
from seed import seed_command


def create_app(test_config=None):
    # Tests may put the instance folder (SQLite file, local issuer key) elsewhere.
    app = CastingFlask(__name__, static_folder=None, instance_path=(test_config or {}).get("INSTANCE_PATH"))
    load_config(app, test_config)
    app.json.sort_keys = False  # keep "success" first and fields in schema order
    init_logs(app)

    init_database(app)
    init_lists(app)
    Migrate(app, db, render_as_batch=True)  # batch mode: SQLite cannot ALTER most things
    init_auth(app)
    init_local_signin(app)
    init_cors(app)

    api = init_api(app)
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint)
    errors.register_error_handlers(app)
    hooks.init_hooks(app)
    init_rate_limits(app)
    init_metrics(app)

    app.cli.add_command(token_command)
    app.cli.add_command(seed_command)
    return app


def init_cors(app):
    """Cross-origin browsers, for the origins CORS_ORIGINS lists (none by
    default): a front-end there can do what curl does, conditional requests
    included (If-Match, If-None-Match, and the ETag they name)."""
    origins = [o.strip() for o in app.config["CORS_ORIGINS"].split(",") if o.strip()]
    if origins:
        CORS(app, origins=origins, allow_headers=CORS_REQUEST_HEADERS, expose_headers=CORS_EXPOSED_HEADERS)


CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "If-Match", "If-None-Match"]
# A browser lets a page read only the CORS-safelisted response headers and these.
CORS_EXPOSED_HEADERS = ["ETag", "Link", "Location", "X-Request-ID", *RATE_LIMIT_HEADERS]


class NoSessions(SessionInterface):
    """The API keeps no cookie session: every request carries its bearer
    token. Flask's own opens one whenever SECRET_KEY is set (which signs the
    cursors), building a signing serializer per request (20 us); this one
    opens none, so every request has Flask's null session."""

    def open_session(self, app, request):
        return None

    def save_session(self, app, session, response):
        pass


class CastingFlask(Flask):
    """Flask, remembering which functions are async. Flask asks of every hook
    and view layer, a dozen times a request, whether it is a coroutine
    function (inspect unwraps it each time: 10 us a request); the answer for
    a function never changes. Bound methods (a MethodView's, new each request)
    are remembered by their function. Held weakly: a closure made per request
    (after_this_request) is forgotten with the request. No cookie sessions, no
    merged slashes."""

    session_interface = NoSessions()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._is_async = weakref.WeakKeyDictionary()
        # A path with // inside is a 404 in the envelope naming the path meant
        # (errors.routing_error), as a trailing slash is, not Werkzeug's 308
        # with an HTML body.
        self.url_map.merge_slashes = False

    def ensure_sync(self, func):
        key = getattr(func, "__func__", func)
        try:
            is_async = self._is_async[key]
        except KeyError:
            is_async = iscoroutinefunction(func)
            self._is_async[key] = is_async
        except TypeError:  # a callable that cannot be weakly referenced: ask each time
            is_async = iscoroutinefunction(func)
        return self.async_to_sync(func) if is_async else func
