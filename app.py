"""The Casting Agency API: the application factory and its routes.

Actors and movies are two instances of one resource implementation
(`resource_blueprint`); they differ in their model and schemas, not in code.
"""

import functools
import json
import logging
import os
import re
import uuid
from select import POLLIN, poll

from apispec.ext.marshmallow import MarshmallowPlugin, resolve_schema_cls
from dotenv import load_dotenv
from flask import Flask, current_app, g, request, url_for
from flask.views import MethodView
from flask_cors import CORS
from flask_migrate import Migrate
from flask_smorest import Api, Blueprint
from flask_swagger_ui import get_swaggerui_blueprint
from sqlalchemy import bindparam, create_engine, delete, event, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, SQLAlchemyError
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    InternalServerError,
    NotFound,
    RequestEntityTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from werkzeug.routing import BaseConverter

import schemas
from auth import init_auth, requires_auth, token_command
from models import MAX_ID, Actor, Casting, Movie, RowCount, db
from ratelimit import HEADERS as RATE_LIMIT_HEADERS
from ratelimit import init_rate_limits, rate_limited, settings

MIB = 1024 * 1024
# An oversized body is read and discarded up to this bound before the 413, so
# the client sees the answer instead of a reset connection.
DRAIN_LIMIT = 64 * MIB


# --- configuration ------------------------------------------------------------


def database_url(url):
    """Normalise a database URL to the psycopg2 driver: Heroku hands out
    `postgres://`, which SQLAlchemy rejects, and SQLAlchemy 2.1 reads a bare
    `postgresql://` as psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def closed_by_the_server(dbapi_connection, connection_record, connection_proxy):
    """A pooled connection's check before each use, so that a restarted database
    costs no failed request. A connection the server has closed (a restart, a
    failover, an idle timeout) has a readable socket: its last message and then
    end of file; an idle live one has nothing to read. DisconnectionError makes
    the pool replace it. SQLAlchemy's pool_pre_ping asks the server instead
    (SELECT 1), a round trip that measured a fifth of a GET /actors/<id>."""
    fileno = getattr(dbapi_connection, "fileno", None)  # SQLite has no socket
    if fileno is None:
        return
    socket = poll()
    socket.register(fileno(), POLLIN)
    if socket.poll(0):
        raise DisconnectionError("the database closed this connection")


def engine_options(url, pool_size):
    if url.startswith("sqlite"):
        return {}
    return {
        "pool_size": pool_size,
        "max_overflow": 0,  # the pool size is a hard cap: see DB_POOL_SIZE in the README
        "pool_timeout": 10,
        "connect_args": {"connect_timeout": 5},  # a stopped database is a 503, not a hang
    }


def load_config(app, test_config):
    load_dotenv(os.path.join(app.root_path, ".env"))  # the environment wins over .env
    env = os.environ
    config = {
        "DATABASE_URL": env.get("DATABASE_URL") or "sqlite:///" + os.path.join(app.instance_path, "casting_agency.db"),
        "DB_POOL_SIZE": int(env.get("DB_POOL_SIZE", 5)),
        "MAX_CONTENT_LENGTH": int(env.get("MAX_CONTENT_LENGTH", MIB)),
        "CORS_ORIGINS": env.get("CORS_ORIGINS", ""),
        "AUTH0_DOMAIN": env.get("AUTH0_DOMAIN"),
        "API_AUDIENCE": env.get("API_AUDIENCE"),
        "AUTH0_ISSUER": env.get("AUTH0_ISSUER"),
        "JWKS_URL": env.get("JWKS_URL"),
        "JWKS_TIMEOUT": float(env.get("JWKS_TIMEOUT", 5)),
        "JWKS_MIN_REFETCH_INTERVAL": float(env.get("JWKS_MIN_REFETCH_INTERVAL", 30)),
        # Set by gunicorn.conf.py: a production start refuses the local issuer.
        "REQUIRE_ISSUER": env.get("REQUIRE_ISSUER", "") not in ("", "0"),
        **settings(env),  # REDIS_URL, RATE_LIMIT, RATE_LIMIT_ANONYMOUS, TRUSTED_PROXY_HOPS
        "API_TITLE": "Casting Agency API",
        "API_VERSION": "1.0",
        "OPENAPI_VERSION": "3.1.0",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
    }
    config.update(test_config or {})
    url = database_url(config["DATABASE_URL"])
    config["SQLALCHEMY_DATABASE_URI"] = url
    config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(url, config["DB_POOL_SIZE"])
    app.config.update(config)


# --- request parsing ----------------------------------------------------------


class IdConverter(BaseConverter):
    """A resource id in a path. Any run of digits matches, so an id too large for
    the database is a 404 from the handler (after authentication), whatever the
    method; Werkzeug's `int` would refuse it and the router would answer 405."""

    regex = r"[0-9]+"

    def to_python(self, value):
        return int(value) if len(value) <= 18 else MAX_ID + 1

    def to_url(self, value):
        return str(value)


def _not_json(constant):
    raise ValueError(f"{constant} is not JSON")


class BodyParser(FlaskParser):
    """Reads a JSON body with the SPEC's statuses: no body 400, not JSON 415,
    malformed JSON (NaN and Infinity included) or not an object 400."""

    def load_json(self, req, schema):
        body = req.get_data(cache=True)
        if not body:
            if getattr(schema, "body_optional", False):
                return {}
            raise BadRequest("a JSON body is required")
        if not req.is_json:
            raise UnsupportedMediaType("the body must be sent as application/json")
        try:
            data = json.loads(body, parse_constant=_not_json)
        except (ValueError, RecursionError):
            raise BadRequest("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        return data


class ApiBlueprint(Blueprint):
    ARGUMENTS_PARSER = BodyParser()


class SchemaPlugin(MarshmallowPlugin):
    """Adds a schema's `openapi_extra` (e.g. PATCH's minProperties) to its
    description: rules marshmallow checks in code, stated in the description."""

    def schema_helper(self, name, _, schema=None, **kwargs):
        described = super().schema_helper(name, _, schema=schema, **kwargs)
        return {**described, **getattr(resolve_schema_cls(schema), "openapi_extra", {})}


class CastingApi(Api):
    ERROR_SCHEMA = schemas.ErrorSchema  # the SPEC's envelope, in the description too


def protected(blp, permission):
    """requires_auth(permission) after the rate limits, and the same facts in the
    OpenAPI description: the bearer scheme, the permission (in `x-permission`
    and in words) and the 401, 403, 429 and 503 (no keys from the issuer) answers."""

    def decorator(view):
        documented = blp.doc(
            security=[{"bearerAuth": []}],
            description=f"Needs a bearer token with the `{permission}` permission.",
            **{"x-permission": permission},
        )(view)
        documented = documented_errors(blp, 401, 403, 429, 503)(documented)
        return rate_limited(requires_auth(permission)(documented))

    return decorator


def fetch(blp, model, key):
    """Replace the id in the view's `key` argument by its row (a dict), or answer 404."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            kwargs[key] = row_or_404(model, kwargs[key])
            return view(*args, **kwargs)

        return documented_errors(blp, 404)(wrapper)

    return decorator


def documented_errors(blp, *statuses):
    """Document error answers of an operation, each in the error envelope."""

    def decorator(view):
        for status in statuses:
            view = blp.alt_response(status, schema=schemas.ErrorSchema)(view)
        return view

    return decorator


def json_body(blp, schema, **kwargs):
    """Validate the JSON body with `schema` (422), after BodyParser's checks."""

    def decorator(view):
        # An instance, not the class: webargs would build a schema per request.
        return documented_errors(blp, 400, 413, 415)(blp.arguments(schema(), **kwargs)(view))

    return decorator


def list_query(blp):
    """?page, ?per_page and ?q, malformed ones a 400."""
    return blp.arguments(schemas.SearchQuerySchema(), location="query", error_status_code=400)


# --- data access ----------------------------------------------------------------
#
# Requests run one SQL statement at a time on their own pool of connections in
# autocommit mode (the "statements" engine): a statement is atomic by itself,
# so there is no BEGIN or ROLLBACK round trip around it. The ORM session and
# its transactions (db.engine) serve the command line, the migrations and the
# tests. The README's benchmark section says what this bought.


def statement_engine(app):
    """The app's second engine: same database and pool settings as db.engine,
    but every connection in autocommit mode from the start. Switching a pooled
    connection's isolation level on each checkout costs more than the query."""
    with app.app_context():
        return create_engine(db.engine.url, isolation_level="AUTOCOMMIT", **app.config["SQLALCHEMY_ENGINE_OPTIONS"])


def run(statement, parameters=None):
    with current_app.extensions["statements"].connect() as connection:
        return connection.execute(statement, parameters)


# The hot statements are built once: building one costs about as much as
# running it (SQLAlchemy caches the compiled SQL, not the construction).
@functools.cache
def by_id(table):
    return select(table).where(table.c.id == bindparam("id"))


def row_or_404(model, id_):
    row = None
    if id_ <= MAX_ID:
        row = run(by_id(model.__table__), {"id": id_}).mappings().first()
    if row is None:
        raise NotFound(f"{model.__tablename__[:-1]} {id_} not found")
    return dict(row)


def one_or_404(statement, message="the resource was deleted meanwhile"):
    """Run an UPDATE with RETURNING; no row (another request deleted it first) is a 404."""
    row = run(statement).mappings().first()
    if row is None:
        raise NotFound(message)
    return dict(row)


def delete_or_404(statement, message="the resource was deleted meanwhile"):
    """Run a DELETE; no row deleted (another request was first) is a 404, so of
    two concurrent deletes of one row exactly one succeeds."""
    if run(statement).rowcount == 0:
        raise NotFound(message)


# --- lists --------------------------------------------------------------------

# OFFSET is a 64-bit integer in the databases; a page beyond it is empty anyway.
MAX_OFFSET = 2**62


def like_pattern(q):
    """?q= as an ILIKE pattern matching it anywhere, its wildcards escaped."""
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Listing:
    """A paginated list: one page of `rows` (a select of `model`'s table, maybe
    joined, with bind parameters) ordered by id, and the total, in one SQL
    statement built once. The whole table's total is its counter row (no count
    of the table), a filtered one a window count over the matches."""

    def __init__(self, rows, model, search_column, whole_table=False):
        def page(source, total):
            ordered = source.add_columns(total.label("total")).order_by(model.id)
            return ordered.limit(bindparam("limit")).offset(bindparam("offset"))

        def count(source):
            return select(func.count()).select_from(source.subquery())

        searched = rows.where(search_column.ilike(bindparam("pattern"), escape="\\"))
        if whole_table:
            counter = select(RowCount.n).where(RowCount.table_name == model.__tablename__)
            unfiltered = page(rows, counter.scalar_subquery()), counter
        else:
            unfiltered = page(rows, func.count().over()), count(rows)
        # searching? -> (the page with its total, the total alone for a page past the end)
        self.statements = {False: unfiltered, True: (page(searched, func.count().over()), count(searched))}

    def page(self, args, **parameters):
        """(rows, total) for the ?page, ?per_page and ?q in `args`."""
        if "q" in args:
            parameters["pattern"] = like_pattern(args["q"])
        page, count = self.statements["q" in args]
        offset = (args["page"] - 1) * args["per_page"]
        rows = []
        with current_app.extensions["statements"].connect() as connection:
            if offset < MAX_OFFSET:
                limits = {"limit": args["per_page"], "offset": offset}
                rows = connection.execute(page, {**parameters, **limits}).mappings().all()  # schemas ignore "total"
            if rows:
                return rows, rows[0]["total"]
            if offset == 0:
                return rows, 0
            return rows, connection.execute(count, parameters).scalar()  # past the end: count apart


# --- resources ----------------------------------------------------------------


class Resource:
    """What differs between actors and movies: the model, the schemas, the nouns."""

    def __init__(self, model, schema, patch_schema, cast_schema, singular, plural, search_column):
        self.model = model
        self.schema = schema
        self.patch_schema = patch_schema
        self.cast_schema = cast_schema
        self.singular = singular
        self.plural = plural
        self.search_column = search_column
        self.key = f"{singular}_id"
        self.item_envelope = schemas.item_envelope(schema, singular)
        self.page_envelope = schemas.page_envelope(schema, plural)


ACTORS = Resource(
    Actor, schemas.ActorSchema, schemas.ActorPatchSchema, schemas.CastActorSchema, "actor", "actors", Actor.name
)
MOVIES = Resource(
    Movie, schemas.MovieSchema, schemas.MoviePatchSchema, schemas.CastMovieSchema, "movie", "movies", Movie.title
)


LOCATION_HEADER = {"description": "The new resource's path.", "schema": {"type": "string"}, "required": True}


def service_blueprint():
    blp = ApiBlueprint("service", __name__, description="About the service.")

    @blp.route("/")
    class Index(MethodView):
        @blp.response(200, schemas.IndexSchema)
        def get(self):
            """Name the API and where its documentation is (no token needed)"""
            return {
                "success": True,
                "name": current_app.config["API_TITLE"],
                "docs": "/docs/",
                "openapi": "/openapi.json",
            }

    @blp.route("/health")
    class Health(MethodView):
        @blp.response(200, schemas.HealthSchema)
        @documented_errors(blp, 503)
        def get(self):
            """200 when the database answers, 503 when it does not (no token needed)"""
            try:
                run(text("SELECT 1"))
            except SQLAlchemyError:
                raise ServiceUnavailable("the database is unavailable") from None
            return {"success": True, "database": "ok"}

    return blp


def resource_blueprint(res):
    blp = ApiBlueprint(res.plural, __name__, url_prefix=f"/{res.plural}", description=f"The {res.plural}.")
    listing = Listing(select(res.model.__table__), res.model, res.search_column, whole_table=True)

    @blp.route("")
    class Collection(MethodView):
        @protected(blp, f"get:{res.plural}")
        @list_query(blp)
        @blp.response(200, res.page_envelope)
        def get(self, args):
            """List, paginated, optionally filtered by ?q="""
            rows, total = listing.page(args)
            return {
                "success": True,
                res.plural: rows,
                f"total_{res.plural}": total,
                "page": args["page"],
                "per_page": args["per_page"],
            }

        @protected(blp, f"add:{res.plural}")
        @json_body(blp, res.schema)
        @blp.response(201, res.item_envelope, headers={"Location": LOCATION_HEADER})
        def post(self, data):
            """Create"""
            row = dict(run(insert(res.model).values(**data).returning(*res.model.__table__.c)).mappings().one())
            location = url_for(f"{res.plural}.Item", **{res.key: row["id"]})
            return {"success": True, res.singular: row}, {"Location": location}

    @blp.route(f"/<id:{res.key}>")
    class Item(MethodView):
        @protected(blp, f"get:{res.plural}")
        @fetch(blp, res.model, res.key)
        @blp.response(200, res.item_envelope)
        def get(self, **row):
            """Get one"""
            return {"success": True, res.singular: row[res.key]}

        @protected(blp, f"edit:{res.plural}")
        @fetch(blp, res.model, res.key)
        @json_body(blp, res.patch_schema)
        @blp.response(200, res.item_envelope)
        def patch(self, data, **row):
            """Change any non-empty subset of the fields"""
            item_id = row[res.key]["id"]
            changed = update(res.model).where(res.model.id == item_id).values(**data)
            return {"success": True, res.singular: one_or_404(changed.returning(*res.model.__table__.c))}

        @protected(blp, f"delete:{res.plural}")
        @fetch(blp, res.model, res.key)
        @blp.response(200, schemas.DeletedSchema)
        def delete(self, **row):
            """Delete, with its castings"""
            item_id = row[res.key]["id"]
            delete_or_404(delete(res.model).where(res.model.id == item_id))
            return {"success": True, "delete": item_id}

    return blp


def cast_list(blp, owner, other, permission):
    """GET /<owner>/<id>/<other>: the other side of an owner's castings, each
    item with its `character`."""
    envelope = schemas.page_envelope(other.cast_schema, other.plural, owner_key=owner.key)
    owner_column = getattr(Casting, owner.key)
    other_column = getattr(Casting, other.key)
    listing = Listing(
        select(other.model.__table__, Casting.character)
        .join(Casting, other_column == other.model.id)
        .where(owner_column == bindparam("owner")),
        other.model,
        other.search_column,
    )

    @blp.route(f"/<id:{owner.key}>/{other.plural}")
    class CastList(MethodView):
        @protected(blp, permission)
        @fetch(blp, owner.model, owner.key)
        @list_query(blp)
        @blp.response(200, envelope)
        @blp.doc(summary=f"List the {other.plural} of one {owner.singular}, each with its character")
        def get(self, args, **row):
            owner_id = row[owner.key]["id"]
            rows, total = listing.page(args, owner=owner_id)
            return {
                "success": True,
                owner.key: owner_id,
                other.plural: rows,
                f"total_{other.plural}": total,
                "page": args["page"],
                "per_page": args["per_page"],
            }


def cast(movie, actor, data):
    """Cast `actor` in `movie`, `data` setting the character: (the casting, created?).
    Each step is one statement, so a concurrent PUT or DELETE can land between
    them; the loop takes the step that matches what it finds."""
    pair = (Casting.movie_id == movie) & (Casting.actor_id == actor)
    columns = Casting.__table__.c
    for _attempt in range(3):
        found = update(Casting).where(pair).values(**data).returning(*columns) if data else select(columns).where(pair)
        existing = run(found).mappings().first()
        if existing:
            return dict(existing), False
        try:
            created = run(insert(Casting).values(movie_id=movie, actor_id=actor, **data).returning(*columns))
            return dict(created.mappings().one()), True
        except IntegrityError:
            # Another request cast the same pair first (then this is an update:
            # go round again), or deleted the movie or the actor (then it is a 404).
            row_or_404(Movie, movie)
            row_or_404(Actor, actor)
    raise ServiceUnavailable("the casting is changing too fast; try again")


def casting_routes(blp):
    """PUT and DELETE /movies/<movie_id>/actors/<actor_id>."""

    @blp.route("/<id:movie_id>/actors/<id:actor_id>")
    class CastingItem(MethodView):
        @protected(blp, "edit:movies")
        @fetch(blp, Movie, "movie_id")
        @fetch(blp, Actor, "actor_id")
        @json_body(blp, schemas.CastingBodySchema, required=False)
        @blp.response(200, schemas.CastingEnvelopeSchema)
        @blp.alt_response(201, schema=schemas.CastingEnvelopeSchema, success=True)
        def put(self, data, movie_id, actor_id):
            """Cast an actor in a movie (idempotent); a body sets the character"""
            casting, created = cast(movie_id["id"], actor_id["id"], data)
            return {"success": True, "casting": casting}, 201 if created else 200

        @protected(blp, "edit:movies")
        @fetch(blp, Movie, "movie_id")
        @fetch(blp, Actor, "actor_id")
        @blp.response(200, schemas.DeletedSchema)
        def delete(self, movie_id, actor_id):
            """Remove an actor from a movie's cast"""
            movie, actor = movie_id["id"], actor_id["id"]
            statement = delete(Casting).where(Casting.movie_id == movie, Casting.actor_id == actor)
            delete_or_404(statement, f"actor {actor} is not cast in movie {movie}")
            return {"success": True, "delete": actor}


# --- errors -------------------------------------------------------------------

MESSAGES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "resource not found",
    405: "method not allowed",
    413: "request body too large",
    415: "unsupported media type",
    422: "unprocessable entity",
    500: "internal server error",
    503: "service unavailable",
}


def _field_errors(messages):
    """{"json": {"name": [...]}} -> ({"name": [...]}, "name: ...; age: ...")."""
    fields = {}
    for location_errors in (messages or {}).values():
        fields.update(location_errors)
    summary = "; ".join(
        f"{field}: {' '.join(map(str, errors)) if isinstance(errors, list) else errors}"
        for field, errors in fields.items()
    )
    return fields, summary


def error_response(e):
    """Every HTTP error, from every layer, in one JSON envelope. Starts from the
    exception's own response so headers such as a 405's Allow survive."""
    response = e.get_response()
    body = {"success": False, "error": e.code, "message": MESSAGES.get(e.code, e.name.lower())}
    if "description" in vars(e):  # a message we wrote, not Werkzeug's default
        body["message"] = e.description
    fields, summary = _field_errors(getattr(e, "data", {}).get("messages"))
    if fields:
        body["message"] = f"invalid {'fields' if e.code == 422 else 'query parameters'}: {summary}"
        body["errors"] = fields
    if hasattr(e, "error_code"):
        body["code"] = e.error_code
    response.data = json.dumps(body, separators=(",", ":")) + "\n"  # as jsonify does
    response.content_type = "application/json"
    return response


def register_error_handlers(app):
    app.register_error_handler(HTTPException, error_response)

    @app.errorhandler(DBAPIError)
    def database_error(e):
        if e.connection_invalidated or isinstance(e.orig, _unreachable_errors()):
            app.logger.warning("database unavailable: %s", e.orig)
            return error_response(ServiceUnavailable("the database is unavailable"))
        app.logger.exception("database error, request_id=%s", g.get("request_id"))
        return error_response(InternalServerError())

    @app.errorhandler(Exception)
    def unexpected(e):
        # The traceback stays in the server's log; the client gets the request id.
        app.logger.exception("unexpected error, request_id=%s", g.get("request_id"))
        return error_response(InternalServerError())


def _unreachable_errors():
    import sqlite3

    errors = (sqlite3.OperationalError,)
    try:
        import psycopg2

        errors += (psycopg2.OperationalError, psycopg2.InterfaceError)
    except ImportError:  # pragma: no cover
        pass
    return errors


def refuse_oversized_body():
    """413 before authentication; routing errors (404, 405) come first."""
    if request.routing_exception is not None:
        return
    length = request.content_length
    if length is not None and length > request.max_content_length:
        stream = request.environ["wsgi.input"]
        remaining = min(length, DRAIN_LIMIT)
        while remaining > 0:
            chunk = stream.read(min(remaining, MIB))
            if not chunk:
                break
            remaining -= len(chunk)
        raise RequestEntityTooLarge(f"the body is larger than {request.max_content_length} bytes")


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def assign_request_id():
    """Heroku's router sends an X-Request-ID; keep it (when sane) so the router's
    log and ours name the same request, or make one."""
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def security_headers(response):
    response.headers["X-Request-ID"] = g.get("request_id", "")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    # Responses to bearer tokens must stay out of shared caches.
    response.headers.setdefault("Cache-Control", "no-store")
    return response


# --- the factory --------------------------------------------------------------


def create_app(test_config=None):
    # Tests may put the instance folder (SQLite file, local issuer key) elsewhere.
    app = Flask(__name__, static_folder=None, instance_path=(test_config or {}).get("INSTANCE_PATH"))
    load_config(app, test_config)
    app.json.sort_keys = False  # keep "success" first and fields in schema order
    logging.basicConfig(level=logging.INFO)

    db.init_app(app)
    app.extensions["statements"] = statement_engine(app)
    with app.app_context():
        for engine in (db.engine, app.extensions["statements"]):
            event.listen(engine, "checkout", closed_by_the_server)
    Migrate(app, db, render_as_batch=True)  # batch mode: SQLite cannot ALTER most things
    init_auth(app)
    origins = [o.strip() for o in app.config["CORS_ORIGINS"].split(",") if o.strip()]
    if origins:
        exposed = ["Location", *RATE_LIMIT_HEADERS]
        CORS(app, origins=origins, allow_headers=["Authorization", "Content-Type"], expose_headers=exposed)

    app.url_map.converters["id"] = IdConverter
    api = CastingApi(app, spec_kwargs={"marshmallow_plugin": SchemaPlugin()})
    api.register_converter(IdConverter, lambda converter: {"type": "integer", "minimum": 0})
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    app.register_blueprint(
        get_swaggerui_blueprint("/docs", "/openapi.json", config={"app_name": app.config["API_TITLE"]})
    )
    api.register_blueprint(service_blueprint())
    for res, other in ((ACTORS, MOVIES), (MOVIES, ACTORS)):
        blp = resource_blueprint(res)
        cast_list(blp, res, other, f"get:{res.plural}")
        if res is MOVIES:
            casting_routes(blp)
        api.register_blueprint(blp)
    register_error_handlers(app)
    app.before_request(assign_request_id)
    app.before_request(refuse_oversized_body)
    app.after_request(security_headers)
    init_rate_limits(app)

    from seed import seed_command

    app.cli.add_command(token_command)
    app.cli.add_command(seed_command)
    return app
