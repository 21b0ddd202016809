"""The API's routes: actors and movies (one implementation, two instances),
the castings between them, the audit trail, and the service's own index and
health check.

Actors and movies differ in their model, schemas and list columns (a
`Resource`), not in code. Each view is a few lines: fetch or 404, write,
answer; the decorators (api.py) validate, authenticate and describe.
The blueprints are built once, when the module is imported, and registered on
every app the factory makes.
"""

import functools

from flask import current_app, g, request, url_for
from flask.views import MethodView
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import BadRequest, NotFound, PreconditionFailed, ServiceUnavailable

import etags
import schemas
import writes
from api import NEXT_LINK_HEADER, ApiBlueprint, documented_errors, json_body, list_query, no_query, protected
from database import execute, row_or_404
from lists import ACTOR_COLUMNS, AUDIT_COLUMNS, MOVIE_COLUMNS, Listing, next_link
from models import MAX_ID, Actor, AuditEvent, Casting, Movie


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


def conditional(blp):
    """PATCH and DELETE honour If-Match (etags.precondition, for the row the
    view receives as `item`), and the description says so."""

    def decorator(view):
        view = blp.doc(parameters=[etags.IF_MATCH])(etags.precondition("item")(view))
        return documented_errors(blp, 412)(view)

    return decorator


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
        @no_query(blp)
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
        @no_query(blp)
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
        @no_query(blp, body=True)
        @json_body(blp, res.schema)
        @blp.response(201, res.item_envelope, headers={"Location": LOCATION_HEADER, "ETag": etags.ETAG_HEADER})
        def post(self, data):
            """Create"""
            row = writes.create(table, data, author())
            location = url_for(f"{res.plural}.Item", **{res.key: row["id"]})
            return {"success": True, res.singular: row}, {"Location": location, **etags.etag_header(row)}

    @blp.route(f"/<id:{res.key}>")
    class Item(MethodView):
        @protected(blp, f"get:{res.plural}")
        @fetch(blp, res.model, res.key, "item")
        @no_query(blp)
        @blp.response(200, res.item_envelope, headers={"ETag": etags.ETAG_HEADER})
        @blp.alt_response(304, description="Not modified: If-None-Match names the current ETag.")
        @blp.doc(parameters=[etags.IF_NONE_MATCH])
        def get(self, item):
            """Get one, with its ETag"""
            return etags.not_modified(item) or ({"success": True, res.singular: item}, etags.etag_header(item))

        @protected(blp, f"edit:{res.plural}")
        @fetch(blp, res.model, res.key, "item")
        @conditional(blp)
        @no_query(blp, body=True)
        @json_body(blp, res.patch_schema)
        @blp.response(200, res.item_envelope, headers={"ETag": etags.ETAG_HEADER})
        def patch(self, data, item, versions):
            """Change any non-empty subset of the fields (conditionally, with If-Match)"""
            change = writes.change(table, {"id": item["id"]}, data, author(), versions)
            if change is None:
                gone_or_changed(res.model, item["id"], versions)
            return {"success": True, res.singular: change.after}, etags.etag_header(change.after)

        @protected(blp, f"delete:{res.plural}")
        @fetch(blp, res.model, res.key, "item")
        @conditional(blp)
        @no_query(blp)
        @blp.response(200, schemas.DeletedSchema)
        def delete(self, item, versions):
            """Delete, with its castings (conditionally, with If-Match)"""
            if writes.remove(table, {"id": item["id"]}, author(), versions) is None:
                gone_or_changed(res.model, item["id"], versions)
            return {"success": True, "delete": item["id"]}

    return blp


def author():
    """Who writes, and in which request: what the write's audit event records."""
    return writes.Author(g.claims["sub"], g.request_id)


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
        @no_query(blp, body=True)
        @json_body(blp, schemas.CastingBodySchema, required=False)
        @blp.response(200, schemas.CastingEnvelopeSchema)
        @blp.alt_response(201, schema=schemas.CastingEnvelopeSchema, success=True)
        def put(self, data, movie, actor):
            """Cast an actor in a movie (idempotent); a body sets the character"""
            casting, created = writes.cast(movie["id"], actor["id"], data, author())
            return {"success": True, "casting": casting}, 201 if created else 200

        @protected(blp, "edit:movies")
        @fetch(blp, Movie, "movie_id", "movie")
        @fetch(blp, Actor, "actor_id", "actor")
        @no_query(blp)
        @blp.response(200, schemas.DeletedSchema)
        def delete(self, movie, actor):
            """Remove an actor from a movie's cast"""
            writes.uncast(movie["id"], actor["id"], author())
            return {"success": True, "delete": actor["id"]}


# --- errors -------------------------------------------------------------------


def blueprints():
    """The blueprints of every route, built once per process."""
    built = [service_blueprint()]
    for res, other in ((ACTORS, MOVIES), (MOVIES, ACTORS)):
        blp = resource_blueprint(res)
        cast_list(blp, res, other, f"get:{res.plural}")
        if res is MOVIES:
            casting_routes(blp)
        built.append(blp)
    built.append(audit_blueprint())
    return built


BLUEPRINTS = blueprints()
