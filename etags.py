"""ETags and conditional requests (SPEC: "Conditional requests").

An item's ETag is its id and its version, a number that the database moves on
every change of a value (writes.py), so reading the ETag costs nothing more
than reading the row. `If-Match` on PATCH and DELETE names the versions a
client will accept; the write compares them in its own statement, so of two
writes sent with one ETag exactly one succeeds.

flask-smorest has ETags too (`Blueprint.etag`), but they do not fit here: its
`check_etag` compares before the write, not in it (a second writer slips in
between), it refuses every PATCH and DELETE without If-Match (428) where the
SPEC keeps them unconditional, and its tags are hashes of the dumped response,
which no statement can compare with a row.
"""

import functools
import re

from flask import Response, request
from werkzeug.exceptions import PreconditionFailed

PRECONDITION_FAILED = "the item has changed: If-Match names none of its current ETags"
# An If-Match of no ETag this item ever had has not seen the item change: it
# is the client's mistake, and says so (still a 412, as RFC 9110 wants).
MALFORMED_IF_MATCH = (
    "If-Match is malformed: it takes ETags in double quotes, as the ETag header of GET {path} gives them, "
    "or *; nothing changed"
)
FOREIGN_IF_MATCH = (
    'If-Match names no ETag of this item: its ETags are "{id}.<version>", as the ETag header of GET {path} '
    "gives them; nothing changed"
)
WEAK_IF_MATCH = (
    "If-Match compares ETags strongly: a weak one (W/...) never matches; send the ETag as the ETag header of "
    "GET {path} gives it; nothing changed"
)
# RFC 9110's entity-tag (section 8.8.3): optionally weak, then an opaque quoted string.
_ENTITY_TAG = re.compile(r'(?:W/)?"[^"\x00-\x20\x7f]*"')


def etag(row):
    """The item's strong ETag, unquoted."""
    return f"{row['id']}.{row['version']}"


def etag_header(row):
    return {"ETag": f'"{etag(row)}"'}


def not_modified(row):
    """The 304 for a GET whose If-None-Match names the item's ETag (or `*`), else None."""
    tags = request.if_none_match
    if tags and (tags.star_tag or tags.contains_weak(etag(row))):
        return Response(status=304, headers=etag_header(row))
    return None


def accepted_versions(row):
    """The versions of this item that If-Match names: None when the request
    has no If-Match or `*` (the write is unconditional), else a set, maybe empty
    (only strong ETags of this item count, RFC 9110's strong comparison)."""
    if "If-Match" not in request.headers or request.if_match.star_tag:
        return None
    versions = set()
    for tag in request.if_match.as_set():
        if not tag:  # `""`, which Werkzeug reads as a tag of None
            continue
        item_id, _, version = tag.partition(".")
        if item_id == str(row["id"]) and version.isdigit() and len(version) < 10:
            versions.add(int(version))
    return versions


def _why_not(row, versions):
    """Why an If-Match fails: it names older versions of the item (it has
    changed), or it is malformed, or it names no version of this item."""
    if versions:
        return PRECONDITION_FAILED
    tags = [tag.strip() for tag in request.headers["If-Match"].split(",") if tag.strip()]  # empty items are allowed
    if not tags or not all(map(_ENTITY_TAG.fullmatch, tags)):
        template = MALFORMED_IF_MATCH
    else:
        template = WEAK_IF_MATCH if any(tag.startswith("W/") for tag in tags) else FOREIGN_IF_MATCH
    return template.format(path=request.path, id=row["id"])


def precondition(name):
    """PATCH and DELETE: a 412 when If-Match names none of the current ETags of
    the item the view receives as `name`, before the body is read (a 412 comes
    before a 415, 400 or 422); the view receives `versions`, which its write
    compares again, atomically."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            versions = accepted_versions(kwargs[name])
            if versions is not None and kwargs[name]["version"] not in versions:
                raise PreconditionFailed(_why_not(kwargs[name], versions))
            return view(*args, versions=versions, **kwargs)

        return wrapper

    return decorator


IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": "Write only if the item's current ETag is one of these (or `*`); else 412, nothing changed.",
    "schema": {"type": "string"},
}
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "Answer 304, with no body, if the item's current ETag is one of these.",
    "schema": {"type": "string"},
}
ETAG_HEADER = {"description": "The item's strong ETag.", "schema": {"type": "string"}, "required": True}
