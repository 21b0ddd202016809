"""The Casting Agency API: the application factory and its routes.

Actors and movies are two instances of one resource implementation
(`resource_blueprint`); they differ in their model and schemas, not in code.
"""

import functools
import http
import json
import logging
import os
import re
import uuid
from inspect import iscoroutinefunction

from apispec.ext.marshmallow import MarshmallowPlugin, resolve_schema_cls
from dotenv import load_dotenv
from flask import Flask, Response, current_app, g, jsonify, request, url_for
from flask.helpers import get_load_dotenv
from flask.views import MethodView
from flask_cors import CORS
from flask_migrate import Migrate
from flask_smorest import Api, Blueprint
from flask_smorest.utils import (
    prepare_response,
    resolve_schema_instance,
    set_status_and_headers_in_response,
    unpack_tuple_response,
)
from flask_swagger_ui import get_swaggerui_blueprint
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    InternalServerError,
    NotFound,
    PreconditionFailed,
    RequestEntityTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from werkzeug.routing import BaseConverter

import etags
import schemas
import writes
from auth import init_auth, requires_auth, token_command
from database import engine_options, execute, init_database, row_or_404, unavailable
from lists import ACTOR_COLUMNS, AUDIT_COLUMNS, MOVIE_COLUMNS, Listing, init_lists, next_link
from models import MAX_ID, Actor, AuditEvent, Casting, Movie, db
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


def load_config(app, test_config):
    """The defaults, overridden by the environment, which wins over the .env
    file; or, given a test's config, the defaults and that config alone, so that
    no test depends on the machine's settings or on the checkout's .env. An
    empty variable counts as unset, as in .env-sample."""
    env = {}
    if test_config is None:
        if get_load_dotenv():  # FLASK_SKIP_DOTENV=1, Flask's own switch, skips .env here too
            load_dotenv(os.path.join(app.root_path, ".env"))
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
        "JWKS_TIMEOUT": float(env.get("JWKS_TIMEOUT", 5)),
        "JWKS_MIN_REFETCH_INTERVAL": float(env.get("JWKS_MIN_REFETCH_INTERVAL", 30)),
        "SECRET_KEY": env.get("SECRET_KEY"),  # signs list cursors: see lists.py
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
    pooler = config["DATABASE_CONNECTION_POOL_URL"]
    config["REQUESTS_DATABASE_URI"] = database_url(pooler) if pooler else url
    config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(url, config["DB_POOL_SIZE"])
    app.config.update(config)


# --- request parsing ----------------------------------------------------------


class IdConverter(BaseConverter):
    """A resource id in a path. Any run of digits matches, so an id too large for
    the database is a 404 from the handler (after authentication), whatever the
    method; Werkzeug's `int` would refuse it and the router would answer 405.
    The id stays the number sent, so that the 404 names it."""

    regex = r"[0-9]+"

    def to_python(self, value):
        try:
            return int(value)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits())
            return HugeId(value)

    def to_url(self, value):
        return str(value)


class HugeId(int):
    """An id of more digits than Python converts: past any row's, and printed
    as it was sent."""

    def __new__(cls, digits):
        huge = super().__new__(cls, MAX_ID + 1)
        huge.digits = digits
        return huge

    def __str__(self):
        return self.digits


def _not_json(constant):
    raise ValueError(f"{constant} is not JSON")


class BodyParser(FlaskParser):
    """Reads a JSON body with the README's statuses: no body 400, not JSON 415,
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
    """flask-smorest's Blueprint, its descriptions unchanged, with less work per
    request (README: "What each change bought")."""

    ARGUMENTS_PARSER = BodyParser()

    # flask-smorest's `doc` and `alt_response` describe an operation by wrapping
    # its view in a function that only passes the call on; these keep the
    # description and drop the wrapper.
    @staticmethod
    def doc(**kwargs):
        return _described_only(Blueprint.doc(**kwargs))

    def alt_response(self, *args, **kwargs):
        return _described_only(super().alt_response(*args, **kwargs))

    def response(self, status_code, schema=None, **kwargs):
        """flask-smorest's `response`, dumped by the schema's compiled dumper
        (schemas.dumper) instead of marshmallow's `dump`."""
        describe = super().response(status_code, schema, **kwargs)
        dump = schemas.dumper(resolve_schema_instance(schema))

        def decorator(view):
            @functools.wraps(view)
            def wrapper(*args, **kwargs):
                body, status, headers = unpack_tuple_response(view(*args, **kwargs))
                if not isinstance(body, Response):
                    body = jsonify(dump(body))
                    body.status_code = status_code
                set_status_and_headers_in_response(body, status, headers)
                return body

            wrapper._apidoc = describe(view)._apidoc
            return wrapper

        return decorator


def _described_only(decorator):
    def describe(view):
        view._apidoc = decorator(view)._apidoc
        return view

    return describe


class SchemaPlugin(MarshmallowPlugin):
    """Adds a schema's `openapi_extra` (e.g. PATCH's minProperties) to its
    description: rules marshmallow checks in code, stated in the description."""

    def schema_helper(self, name, _, schema=None, **kwargs):
        described = super().schema_helper(name, _, schema=schema, **kwargs)
        return {**described, **getattr(resolve_schema_cls(schema), "openapi_extra", {})}


class CastingApi(Api):
    ERROR_SCHEMA = schemas.ErrorSchema  # the error envelope, in the description too

    def _register_responses(self):
        """flask-smorest's error responses (one per status, and the default),
        each with an example of its own status: Swagger UI would show a made-up
        `"error": 0`."""
        for status in http.HTTPStatus:
            response = {"description": status.phrase}
            if status >= 400:
                response.update(schema=self.ERROR_SCHEMA, example=error_example(status))
            prepare_response(response, self.spec, self.DEFAULT_RESPONSE_CONTENT_TYPE)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Any other error", "schema": self.ERROR_SCHEMA, "example": error_example(500)}
        prepare_response(response, self.spec, self.DEFAULT_RESPONSE_CONTENT_TYPE)
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)

    def _register_pagination_header(self):
        """Nothing: the lists carry their pages in the body, not in flask-smorest's
        X-Pagination header, whose schema would only puzzle a reader of /docs."""


# What /docs shows for an error of each status: an answer the API gives.
ERROR_EXAMPLES = {
    400: {
        "message": "invalid query parameters: per_page: Must be greater than or equal to 1 and less than or "
        "equal to 100.",
        "errors": {"per_page": ["Must be greater than or equal to 1 and less than or equal to 100."]},
    },
    401: {"message": "authorization header is missing", "code": "authorization_header_missing"},
    412: {"message": etags.PRECONDITION_FAILED},
    413: {"message": "the body is larger than 1048576 bytes"},
    415: {"message": "the body must be sent as application/json"},
    422: {"message": "invalid fields: age: Not a whole number.", "errors": {"age": ["Not a whole number."]}},
    503: {"message": "the database is unavailable"},
}


def error_example(status, **fields):
    """An error envelope of this status, for the OpenAPI description."""
    message = MESSAGES.get(status) or http.HTTPStatus(status).phrase.lower()
    return {"success": False, "error": int(status), "message": message, **(fields or ERROR_EXAMPLES.get(status, {}))}


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
        forbidden = error_example(403, message=f"permission '{permission}' is required")
        documented = documented_errors(blp, 401, 403, 429, 503, examples={403: forbidden})(documented)
        return rate_limited(requires_auth(permission)(documented))

    return decorator


def fetch(blp, model, key, name):
    """Load the row whose id is in the path's `key` and pass it to the view as
    `name` (a dict), or answer 404."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            kwargs[name] = row_or_404(model, kwargs.pop(key))
            return view(*args, **kwargs)

        return documented_errors(blp, 404)(wrapper)

    return decorator


def listed_under(blp, model, key):
    """For a list under a row of `model` (a movie's actors) whose id is the
    path's `key`: a 404 when there is no such row, before any 400. The list's
    rows name their owner, so only an empty page, or a refused request, costs a
    look for the owner (README: "What each change bought"): the view looks
    when its page is empty, this wrapper when the request is refused."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if kwargs[key] > MAX_ID:  # no such row, and no statement can bind it
                row_or_404(model, kwargs[key])
            try:
                return view(*args, **kwargs)
            except BadRequest:
                row_or_404(model, kwargs[key])
                raise

        return documented_errors(blp, 404)(wrapper)

    return decorator


def documented_errors(blp, *statuses, examples=None):
    """Document error answers of an operation, each in the error envelope, with
    an example (`examples` by status, else error_example's)."""

    def decorator(view):
        for status in statuses:
            example = (examples or {}).get(status) or error_example(status)
            view = blp.alt_response(status, schema=schemas.ErrorSchema, example=example)(view)
        return view

    return decorator


def conditional(blp):
    """PATCH and DELETE honour If-Match (etags.precondition, for the row the
    view receives as `item`), and the description says so."""

    def decorator(view):
        view = blp.doc(parameters=[etags.IF_MATCH])(etags.precondition("item")(view))
        return documented_errors(blp, 412)(view)

    return decorator


def json_body(blp, schema, **kwargs):
    """Validate the JSON body with `schema` (422), after BodyParser's checks."""

    def decorator(view):
        # An instance, not the class: webargs would build a schema per request.
        not_json = error_example(400, message="the body is not valid JSON")
        return documented_errors(blp, 400, 413, 415, examples={400: not_json})(blp.arguments(schema(), **kwargs)(view))

    return decorator


def list_query(blp, schema):
    """A list's query parameters (pages, cursor, search, filters, sort), malformed ones a 400."""
    return blp.arguments(schema(), location="query", error_status_code=400)


NEXT_LINK_HEADER = {
    "description": 'RFC 8288 `<path?cursor=...&per_page=k>; rel="next"`, when more items follow.',
    "schema": {"type": "string"},
}


def list_response(plural, page, args, path, **owner):
    """A list's body, and its Link header when more items follow."""
    body = {
        "success": True,
        **owner,
        plural: page.rows,
        f"total_{plural}": page.total,
        "total_exact": page.total_exact,
        "page": None if "cursor" in args else args.get("page", 1),
        "per_page": args["per_page"],
        "next_cursor": page.next_cursor,
    }
    headers = {"Link": next_link(path, page.next_cursor, args["per_page"])} if page.next_cursor else {}
    return body, headers


# --- resources ----------------------------------------------------------------


class Resource:
    """What differs between actors and movies: the model, the schemas, the nouns,
    and what their lists search, filter and sort by."""

    def __init__(self, model, schema, patch_schema, cast_schema, list_query_schema, columns, singular, plural):
        self.model = model
        self.schema = schema
        self.patch_schema = patch_schema
        self.cast_schema = cast_schema
        self.list_query_schema = list_query_schema
        self.columns = columns
        self.singular = singular
        self.plural = plural
        self.key = f"{singular}_id"
        self.item_envelope = schemas.item_envelope(schema, singular)
        self.page_envelope = schemas.page_envelope(schema, plural)


ACTORS = Resource(
    Actor,
    schemas.ActorSchema,
    schemas.ActorPatchSchema,
    schemas.CastActorSchema,
    schemas.ActorListQuerySchema,
    ACTOR_COLUMNS,
    "actor",
    "actors",
)
MOVIES = Resource(
    Movie,
    schemas.MovieSchema,
    schemas.MoviePatchSchema,
    schemas.CastMovieSchema,
    schemas.MovieListQuerySchema,
    MOVIE_COLUMNS,
    "movie",
    "movies",
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
                execute(text("SELECT 1"))
            except SQLAlchemyError:
                raise ServiceUnavailable("the database is unavailable") from None
            return {"success": True, "database": "ok"}

    return blp


def resource_blueprint(res):
    blp = ApiBlueprint(res.plural, __name__, url_prefix=f"/{res.plural}", description=f"The {res.plural}.")
    table = res.model.__table__
    listing = Listing(select(table), res.model, res.columns, res.list_query_schema(), whole_table=True)

    @blp.route("")
    class Collection(MethodView):
        @protected(blp, f"get:{res.plural}")
        @list_query(blp, res.list_query_schema)
        @blp.response(200, res.page_envelope, headers={"Link": NEXT_LINK_HEADER})
        def get(self, args):
            """List: filter, search, sort, and page by number or by cursor"""
            page = listing.page(args, res.plural)
            return list_response(res.plural, page, args, request.path)

        @protected(blp, f"add:{res.plural}")
        @json_body(blp, res.schema)
        @blp.response(201, res.item_envelope, headers={"Location": LOCATION_HEADER, "ETag": etags.ETAG_HEADER})
        def post(self, data):
            """Create"""
            row = writes.create(table, data)
            location = url_for(f"{res.plural}.Item", **{res.key: row["id"]})
            return {"success": True, res.singular: row}, {"Location": location, **etags.etag_header(row)}

    @blp.route(f"/<id:{res.key}>")
    class Item(MethodView):
        @protected(blp, f"get:{res.plural}")
        @fetch(blp, res.model, res.key, "item")
        @blp.response(200, res.item_envelope, headers={"ETag": etags.ETAG_HEADER})
        @blp.alt_response(304, description="Not modified: If-None-Match names the current ETag.")
        @blp.doc(parameters=[etags.IF_NONE_MATCH])
        def get(self, item):
            """Get one, with its ETag"""
            return etags.not_modified(item) or ({"success": True, res.singular: item}, etags.etag_header(item))

        @protected(blp, f"edit:{res.plural}")
        @fetch(blp, res.model, res.key, "item")
        @conditional(blp)
        @json_body(blp, res.patch_schema)
        @blp.response(200, res.item_envelope, headers={"ETag": etags.ETAG_HEADER})
        def patch(self, data, item, versions):
            """Change any non-empty subset of the fields (conditionally, with If-Match)"""
            change = writes.change(table, {"id": item["id"]}, data, versions)
            if change is None:
                gone_or_changed(res.model, item["id"], versions)
            return {"success": True, res.singular: change.after}, etags.etag_header(change.after)

        @protected(blp, f"delete:{res.plural}")
        @fetch(blp, res.model, res.key, "item")
        @conditional(blp)
        @blp.response(200, schemas.DeletedSchema)
        def delete(self, item, versions):
            """Delete, with its castings (conditionally, with If-Match)"""
            if writes.remove(table, {"id": item["id"]}, versions) is None:
                gone_or_changed(res.model, item["id"], versions)
            return {"success": True, "delete": item["id"]}

    return blp


def gone_or_changed(model, item_id, versions):
    """After a write found no row: 412 when the row is there but If-Match
    names none of its versions, else 404 (another request deleted it first)."""
    if versions is not None:
        row_or_404(model, item_id)
        raise PreconditionFailed(etags.PRECONDITION_FAILED)
    raise NotFound("the resource was deleted meanwhile")


def audit_blueprint():
    blp = ApiBlueprint("audit", __name__, url_prefix="/audit", description="The audit trail: every write.")
    listing = Listing(select(AuditEvent.__table__), AuditEvent, AUDIT_COLUMNS, schemas.AuditQuerySchema())
    envelope = schemas.page_envelope(schemas.AuditEventSchema, "events")

    @blp.route("")
    class Events(MethodView):
        @protected(blp, "get:audit")
        @list_query(blp, schemas.AuditQuerySchema)
        @blp.response(200, envelope, headers={"Link": NEXT_LINK_HEADER})
        def get(self, args):
            """List the events, newest first: filter, and page by number or by cursor"""
            return list_response("events", listing.page(args, "audit"), args, request.path)

    return blp


def cast_list(blp, owner, other, permission):
    """GET /<owner>/<id>/<other>: the other side of an owner's castings, each
    item with its `character`, listed like a collection."""
    envelope = schemas.page_envelope(other.cast_schema, other.plural, owner_key=owner.key)
    owner_column = getattr(Casting, owner.key)
    other_column = getattr(Casting, other.key)
    listing = Listing(
        select(other.model.__table__, Casting.character)
        .join(Casting, other_column == other.model.id)
        .where(owner_column == bindparam("owner")),
        other.model,
        other.columns,
        other.list_query_schema(),
    )

    @blp.route(f"/<id:{owner.key}>/{other.plural}")
    class CastList(MethodView):
        @protected(blp, permission)
        @listed_under(blp, owner.model, owner.key)
        @list_query(blp, other.list_query_schema)
        @blp.response(200, envelope, headers={"Link": NEXT_LINK_HEADER})
        @blp.doc(summary=f"List the {other.plural} of one {owner.singular}, each with its character")
        def get(self, args, **path):
            owner_id = path[owner.key]
            page = listing.page(args, f"{owner.plural}/{owner_id}/{other.plural}", owner=owner_id)
            if not page.rows:  # none cast, or past the end: of a row that exists?
                row_or_404(owner.model, owner_id)
            return list_response(other.plural, page, args, request.path, **{owner.key: owner_id})


def casting_routes(blp):
    """PUT and DELETE /movies/<movie_id>/actors/<actor_id>."""

    @blp.route("/<id:movie_id>/actors/<id:actor_id>")
    class CastingItem(MethodView):
        @protected(blp, "edit:movies")
        @fetch(blp, Movie, "movie_id", "movie")
        @fetch(blp, Actor, "actor_id", "actor")
        @json_body(blp, schemas.CastingBodySchema, required=False)
        @blp.response(200, schemas.CastingEnvelopeSchema)
        @blp.alt_response(201, schema=schemas.CastingEnvelopeSchema, success=True)
        def put(self, data, movie, actor):
            """Cast an actor in a movie (idempotent); a body sets the character"""
            casting, created = writes.cast(movie["id"], actor["id"], data)
            return {"success": True, "casting": casting}, 201 if created else 200

        @protected(blp, "edit:movies")
        @fetch(blp, Movie, "movie_id", "movie")
        @fetch(blp, Actor, "actor_id", "actor")
        @blp.response(200, schemas.DeletedSchema)
        def delete(self, movie, actor):
            """Remove an actor from a movie's cast"""
            writes.uncast(movie["id"], actor["id"])
            return {"success": True, "delete": actor["id"]}


# --- errors -------------------------------------------------------------------

MESSAGES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "resource not found",
    405: "method not allowed",
    412: "precondition failed",
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
        if unavailable(e):
            # No bug to trace: the service recovers when the database is back.
            app.logger.warning("database unavailable: %s", e.orig)
            return error_response(ServiceUnavailable("the database is unavailable"))
        app.logger.exception("database error, request_id=%s", g.get("request_id"))
        return error_response(InternalServerError())

    @app.errorhandler(Exception)
    def unexpected(e):
        # The traceback stays in the server's log; the client gets the request id.
        app.logger.exception("unexpected error, request_id=%s", g.get("request_id"))
        return error_response(InternalServerError())


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


# Added to every response; nothing else sets them. (Werkzeug's setdefault looks
# through the headers once per name: four of them measured 30 us a request.)
SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]


def security_headers(response):
    response.headers.add("X-Request-ID", g.get("request_id", ""))
    response.headers.extend(SECURITY_HEADERS)
    # Responses to bearer tokens must stay out of shared caches (the docs page's files set their own).
    response.headers.setdefault("Cache-Control", "no-store")
    return response


class CastingFlask(Flask):
    """Flask, remembering which functions are async. Flask asks of every hook
    and view layer, a dozen times a request, whether it is a coroutine
    function (inspect unwraps it each time: 10 us a request); the answer for
    a function never changes. Bound methods (a MethodView's, new each request)
    are remembered by their function."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._is_async = {}

    def ensure_sync(self, func):
        key = getattr(func, "__func__", func)
        is_async = self._is_async.get(key)
        if is_async is None:
            is_async = self._is_async[key] = iscoroutinefunction(func)
        return self.async_to_sync(func) if is_async else func


# --- the factory --------------------------------------------------------------


def create_app(test_config=None):
    # Tests may put the instance folder (SQLite file, local issuer key) elsewhere.
    app = CastingFlask(__name__, static_folder=None, instance_path=(test_config or {}).get("INSTANCE_PATH"))
    load_config(app, test_config)
    app.json.sort_keys = False  # keep "success" first and fields in schema order
    logging.basicConfig(level=logging.INFO)

    init_database(app)
    init_lists(app)
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
    api.register_blueprint(audit_blueprint())
    register_error_handlers(app)
    app.before_request(assign_request_id)
    app.before_request(refuse_oversized_body)
    app.after_request(security_headers)
    init_rate_limits(app)

    from seed import seed_command

    app.cli.add_command(token_command)
    app.cli.add_command(seed_command)
    return app
