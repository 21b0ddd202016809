"""One set of marshmallow schemas: request validation, response shapes and the
OpenAPI description all come from here, so they cannot drift apart."""

import difflib
import math
import re
from datetime import UTC, date, datetime, timedelta

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    missing,
    pre_load,
    validate,
    validates_schema,
)

from models import MAX_ID, db, shown

# --- fields -------------------------------------------------------------------


def example(value):
    """A field's example in the OpenAPI description, in the style of the sample
    data: what /docs shows, and what its "Try it out" sends."""
    return {"examples": [value]}


# Whitespace as JSON Schema's regular expressions (ECMA-262) define `\s`, spelled
# out so that Python and every validator of the description agree on it
# (Python's own `\s` and str.strip() also count U+001C..U+001F, not U+FEFF).
WHITESPACE = r"\t\n\x0b\x0c\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_WHITESPACE_CHARS = "".join(filter(re.compile(f"[{WHITESPACE}]").fullmatch, map(chr, range(0x10000))))


class Text(fields.String):
    """Text with a length limit (counted as sent), at least one non-whitespace
    character, stored trimmed. U+0000 and unpaired surrogates are refused: no
    database stores them."""

    def __init__(self, max_length, example_value, **kwargs):
        super().__init__(
            validate=validate.Length(min=1, max=max_length),
            # One non-whitespace character, and no U+0000 anywhere. The example,
            # or Swagger UI makes one up from the pattern.
            metadata={"pattern": f"^[^\\x00]*[^{WHITESPACE}\\x00][^\\x00]*$", **example(example_value)},
            **kwargs,
        )

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ValidationError("Must not contain U+0000.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("Must not contain an unpaired surrogate.") from None
        # The length limit applies to the text as sent, before trimming.
        for validator in self.validators:
            validator(text)
        trimmed = text.strip(_WHITESPACE_CHARS)
        if not trimmed:
            raise ValidationError("Must contain a non-whitespace character.")
        return trimmed


def whole_number(value):
    """34 and 34.0 are the whole number 34; booleans, strings, 34.5, NaN are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError("Not a whole number.")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValidationError("Not a whole number.")
        value = int(value)
    return value


class WholeNumber(fields.Integer):
    def _deserialize(self, value, attr, data, **kwargs):
        value = whole_number(value)
        for validator in self.validators:
            validator(value)
        return value


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIRST_DAY_SECONDS = -62135596800  # 0001-01-01T00:00:00Z
LAST_DAY_SECONDS = 253402300799  # 9999-12-31T23:59:59Z

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# RFC 3339's date-time (the profile of ISO 8601 that OpenAPI's `date-time` means),
# also with a space for the T and without seconds or offset.
_ISO_DATETIME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]+)?)?"
    r"(?:[Zz]|[+-]([0-9]{2}):?([0-9]{2}))?"
)


def _us_date_pattern():
    """M/D/YYYY, for real calendar dates only, as a regular expression, so the
    OpenAPI description is exactly as strict as the parser (2/30 is refused)."""
    year = "(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
    leap_year = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
    day_to_28 = "(?:0?[1-9]|1[0-9]|2[0-8])"
    months_31 = "(?:0?[13578]|1[02])"
    months_30 = "(?:0?[469]|11)"
    return (
        f"^(?:(?:{months_31}/(?:{day_to_28}|29|30|31)|{months_30}/(?:{day_to_28}|29|30)|0?2/{day_to_28})/{year}"
        f"|0?2/29/{leap_year})$"
    )


US_DATE_PATTERN = _us_date_pattern()
_US_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
# A whole number up to this reads as a year, not as seconds (1995 is not 1970-01-01).
LAST_YEAR_LIKE = 9999
RELEASE_DATE_FORMS = (
    "`YYYY-MM-DD`; an ISO 8601 date-time such as `2021-10-15T23:30:00-08:00` (the date as written, with no "
    "conversion to UTC; a space for the `T`, and no seconds or offset, are accepted too); `M/D/YYYY`; or a "
    "whole number of Unix epoch seconds, read in UTC, but not one from 0 to 9999, which reads as a year. "
    "From 0001-01-01 to 9999-12-31. Always returned as `YYYY-MM-DD`."
)
RELEASE_DATE_SCHEMA = {
    "anyOf": [
        {"type": "string", "format": "date"},
        {"type": "string", "format": "date-time"},
        {"type": "string", "pattern": US_DATE_PATTERN},
        {"type": "integer", "minimum": FIRST_DAY_SECONDS, "maximum": -1},
        {"type": "integer", "minimum": LAST_YEAR_LIKE + 1, "maximum": LAST_DAY_SECONDS},
    ],
    "description": RELEASE_DATE_FORMS,
}
# Every malformed date gets this one hint, whatever its form.
NOT_A_DATE = (
    "Not a valid date: use YYYY-MM-DD, an ISO 8601 date-time, M/D/YYYY or a whole number of Unix epoch seconds."
)


def _check_time(hour, minute, second, offset_hour, offset_minute):
    limits = ((hour, 23), (minute, 59), (second, 60), (offset_hour, 23), (offset_minute, 59))  # 60: leap second
    if any(value is not None and int(value) > limit for value, limit in limits):
        raise ValueError("not a valid time")


def parse_release_date(value):
    """Read a release date in any of the four accepted forms."""
    if isinstance(value, str):
        try:
            if _ISO_DATE.fullmatch(value):
                return date.fromisoformat(value)
            if match := _ISO_DATETIME.fullmatch(value):
                _check_time(*match.groups()[1:])
                return date.fromisoformat(match[1])
            if match := _US_DATE.fullmatch(value):
                month, day, year = map(int, match.groups())
                return date(year, month, day)
        except ValueError:
            pass  # the form, but no such day or time
        raise ValidationError(NOT_A_DATE)
    try:
        seconds = whole_number(value)
    except ValidationError:
        raise ValidationError(NOT_A_DATE) from None
    if 0 <= seconds <= LAST_YEAR_LIKE:
        raise ValidationError(f"{seconds} reads as a year, not as Unix epoch seconds: send the date, as YYYY-MM-DD.")
    if not FIRST_DAY_SECONDS <= seconds <= LAST_DAY_SECONDS:
        raise ValidationError("Epoch seconds outside 0001-01-01..9999-12-31.")
    return (EPOCH + timedelta(seconds=seconds)).date()


class ReleaseDate(fields.Field):
    """Read in any accepted form, written as `YYYY-MM-DD`; described as exactly
    the forms it accepts."""

    def __init__(self, **kwargs):
        super().__init__(metadata={**RELEASE_DATE_SCHEMA, **example("2021-10-15")}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        return parse_release_date(value)

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else value.isoformat()


# --- resources ----------------------------------------------------------------


class ResourceSchema(Schema):
    """A writable resource: `id` is assigned by the server, ignored in a body."""

    id = fields.Integer(dump_only=True, metadata=example(1))

    @pre_load
    def drop_id(self, data, **kwargs):
        if isinstance(data, dict):
            data = {key: value for key, value in data.items() if key != "id"}
        return data


class ActorSchema(ResourceSchema):
    name = Text(120, "Viola Davis", required=True)
    age = WholeNumber(required=True, validate=validate.Range(min=0, max=150), metadata=example(61))
    gender = Text(50, "Female", required=True)


class MovieSchema(ResourceSchema):
    title = Text(200, "Harbour Lights", required=True)
    release_date = ReleaseDate(required=True)


class PatchMixin:
    """PATCH takes any non-empty subset of the writable fields."""

    openapi_extra = {"minProperties": 1}  # see app.SchemaPlugin

    def __init__(self, **kwargs):
        super().__init__(partial=True, **kwargs)

    @validates_schema
    def not_empty(self, data, **kwargs):
        if not data:
            # Said of the body as a whole: errors.py shows it without a field's name.
            writable = [field.data_key or name for name, field in self.load_fields.items()]
            raise ValidationError(f"Send at least one field to change: {', '.join(writable)}.")


def patch_schema(schema):
    return type(schema.__name__.replace("Schema", "PatchSchema"), (PatchMixin, schema), {})


ActorPatchSchema = patch_schema(ActorSchema)
MoviePatchSchema = patch_schema(MovieSchema)


class CastingBodySchema(Schema):
    """The optional body of a casting PUT."""

    body_optional = True  # no body at all leaves the character as it is
    character = Text(120, "Captain Hale", allow_none=True)


class CastingSchema(Schema):
    movie_id = fields.Integer(metadata=example(2))
    actor_id = fields.Integer(metadata=example(1))
    character = fields.String(allow_none=True, metadata=example("Captain Hale"))


class CastActorSchema(ActorSchema):
    character = fields.String(allow_none=True, metadata=example("Director Ruth Bell"))


class CastMovieSchema(MovieSchema):
    character = fields.String(allow_none=True, metadata=example("Director Ruth Bell"))


# --- query parameters ---------------------------------------------------------


class QueryInteger(fields.Integer):
    """A whole number in a query string: ASCII digits, maybe after a minus sign
    (Python's int() would also take "1_000", " 7" and other digits). A negative
    one is a whole number: its range says what is wrong with it."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not re.fullmatch(r"-?[0-9]+", value):
            raise ValidationError("Not a whole number.")
        try:
            number = int(value)
        except ValueError:  # more digits than Python converts
            raise ValidationError("Too many digits.") from None
        for validator in self.validators:
            validator(number)
        return number


class QueryDate(fields.Date):
    """A day in a query string: `YYYY-MM-DD` exactly."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
            raise ValidationError("Not a date: use YYYY-MM-DD.")
        try:
            return date.fromisoformat(value)
        except ValueError:  # the form, but no such day (2021-02-30)
            raise ValidationError("Not a date: use YYYY-MM-DD.") from None


class SortKeys(fields.String):
    """?sort=: comma-separated keys, each optionally prefixed with `-` for
    descending; read as a tuple of (key, descending)."""

    def __init__(self, keys, **kwargs):
        self.keys = keys
        key = "-?(?:" + "|".join(keys) + ")"
        # No key twice: a negative lookahead, so the description is as strict as the parser.
        no_repeat = "(?!(?:.*,)?-?(" + "|".join(keys) + "),(?:.*,)?-?\\1(?:,|$))"
        super().__init__(
            metadata={
                "pattern": f"^{no_repeat}{key}(?:,{key})*$",
                "description": "Comma-separated keys, each optionally prefixed with `-` for descending: "
                + ", ".join(f"`{k}`" for k in keys)
                + ". Text compares ignoring case and accents (Émilie between Elliot and Eve); ties are ordered by "
                "`id` (ascending unless the keys say `-id`). "
                "Default `id`.",
                "example": f"-{keys[-1]}",
            },
            **kwargs,
        )

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        terms = []
        for part in text.split(","):
            key = part.removeprefix("-")
            if key not in self.keys:
                raise ValidationError(f"Unknown sort key {key!r}: use " + ", ".join(self.keys) + ".")
            if key in (k for k, _ in terms):
                raise ValidationError(f"Sort key {key!r} appears twice.")
            terms.append((key, part.startswith("-")))
        return tuple(terms)


# Names that other APIs give a parameter of ours, for the hint of an unknown one.
_OTHER_NAMES = {
    "limit": "per_page",
    "page_size": "per_page",
    "pagesize": "per_page",
    "size": "per_page",
    "offset": "page",
    "search": "q",
    "query": "q",
    "name": "q",
    "title": "q",
    "order": "sort",
    "order_by": "sort",
    "orderby": "sort",
    "sort_by": "sort",
}


def near_misses(name, known):
    """The parameters of `known` that `name` is a near miss of, best first: the
    same words in another order or run together (`min_age`, `agemin`:
    `age_min`), another API's name for it (`limit`: `per_page`), its first
    words (`actor`: `actor_id`; `age`: `age_min` or `age_max`), or a typo
    (`genre`: `gender`). At most two."""
    spelt = name.lower().replace("-", "_")
    if len(spelt) > 40:  # no parameter's name is that long
        return []
    words, joined = sorted(spelt.split("_")), spelt.replace("_", "")
    candidates = (
        [k for k in known if sorted(k.split("_")) == words or k.replace("_", "") == joined],
        [_OTHER_NAMES[spelt]] if _OTHER_NAMES.get(spelt) in known else [],
        [k for k in known if len(spelt) >= 3 and k.startswith(spelt)],
        difflib.get_close_matches(spelt, known, n=2, cutoff=0.6),
    )
    return next((found[:2] for found in candidates if found), [])


def unknown_parameter(name, known):
    """The message for an unknown query parameter: the one meant, for a near
    miss, else those there are."""
    if meant := near_misses(name, known):
        return f"Unknown parameter. Did you mean {' or '.join(meant)}?"
    if not known:
        return "Unknown parameter: this operation takes no query parameters."
    return f"Unknown parameter. Known: {', '.join(known)}."


# How many unknown parameters of a request get a hint (errors.py names at most 20 bad ones).
HINTED = 20


class QuerySchema(Schema):
    """Query parameters. An unknown one is a 400 that names it, and the one
    meant when it is a near miss (SPEC: "Errors"): a misspelt filter must never
    answer an unfiltered list. (marshmallow refuses unknown fields; the parser,
    api.BodyParser, leaves that to the schema for query strings too.)"""

    class Meta:
        unknown = RAISE

    def handle_error(self, error, data, **kwargs):
        known = [field.data_key or name for name, field in self.load_fields.items()]
        messages = error.normalized_messages()
        unknown = [name for name in data if name not in known]  # in the order sent
        if unknown:
            # A hint for the first few (errors.py lists no more), the messages in the order sent.
            hints = {name: [unknown_parameter(name, known)] for name in unknown[:HINTED]}
            messages = {name: hints.get(name) or messages[name] for name in data if name in messages}
            raise ValidationError(messages, data=data, valid_data=error.valid_data)


class NoQuerySchema(QuerySchema):
    """An operation that takes no query parameters: any is a 400."""


# A page number past this starts past 2**63 items, even 100 to a page: past any
# list, and past what a database's OFFSET holds (a 64-bit integer).
MAX_PAGE = 2**63 // 100


class PageQuerySchema(QuerySchema):
    """The query parameters every list takes (SPEC: "Lists at scale")."""

    page = QueryInteger(
        validate=validate.Range(min=1, max=MAX_PAGE, error="Pages start at 1 and go up to {max}."),
        metadata={
            "description": "The page, from 1 (default 1). Pages reach the first 10,000 items: beyond them, "
            "follow `next_cursor`. Not with `cursor`."
        },
    )
    per_page = QueryInteger(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(
        validate=[validate.Length(min=1, max=4096), validate.Regexp(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")],
        metadata={
            "description": "Continue a list after the page that gave this `next_cursor`, with that page's "
            "filters, search and sort (which may be left out, and must not differ). Not with `page`."
        },
    )


class ListQuerySchema(PageQuerySchema):
    """The actors' and movies' lists: pages, and a search."""

    q = fields.String(
        validate=[
            validate.Length(max=200),
            validate.Regexp(r"^[^\x00]*$", error="Must not contain U+0000."),
        ],
        metadata={
            "description": "Keep the items whose name or title contains this, ignoring case and accents "
            "(`zoe` finds Zoë, `ÉMILIE` finds Emilie)."
        },
    )


class ActorListQuerySchema(ListQuerySchema):
    gender = fields.String(
        validate=[validate.Length(min=1, max=50), validate.Regexp(r"^[^\x00]*$", error="Must not contain U+0000.")],
        metadata={"description": "Keep the actors of this gender, ignoring case and accents.", "example": "female"},
    )
    age_min = QueryInteger(
        validate=validate.Range(min=0, max=150), metadata={"description": "Keep the actors this old or older."}
    )
    age_max = QueryInteger(
        validate=validate.Range(min=0, max=150), metadata={"description": "Keep the actors this old or younger."}
    )
    sort = SortKeys(("id", "name", "age"))


class MovieListQuerySchema(ListQuerySchema):
    released_from = QueryDate(metadata={"description": "Keep the movies released on this day or later."})
    released_to = QueryDate(metadata={"description": "Keep the movies released on this day or earlier."})
    sort = SortKeys(("id", "title", "release_date"))


class QueryDateTime(fields.DateTime):
    """An instant in a query string: ISO 8601 with a zone (`Z` or an offset), read in UTC."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            instant = datetime.fromisoformat(value) if isinstance(value, str) and len(value) > 10 else None
        except ValueError:
            instant = None
        if instant is None or instant.tzinfo is None:
            raise ValidationError("Not a date-time with a zone: use e.g. 2026-11-29T10:00:00Z.")
        try:
            return instant.astimezone(UTC)
        except OverflowError:
            # In UTC it falls before year 1 or after 9999, where Python's dates
            # end; no event is beyond that edge, so the edge is the same bound.
            edge = datetime.min if instant.year == 1 else datetime.max
            return edge.replace(tzinfo=UTC)


AUDIT_ACTIONS = ("create", "update", "delete", "cast", "uncast")
AUDIT_RESOURCES = ("actors", "movies", "castings")


def _an_id(description):
    """An id in a query string: up to the largest an id can be (so every
    database binds it)."""
    return QueryInteger(validate=validate.Range(min=0, max=MAX_ID), metadata={"description": description})


class AuditQuerySchema(PageQuerySchema):
    resource = fields.String(validate=validate.OneOf(AUDIT_RESOURCES))
    resource_id = _an_id(
        "Keep the events whose `resource_id` is this (an actor's or a movie's own; castings have none)."
    )
    actor_id = _an_id("Keep the events that concern this actor: its own, and its castings'.")
    movie_id = _an_id("Keep the events that concern this movie: its own, and its castings'.")
    subject = fields.String(
        validate=validate.Length(min=1, max=255), metadata={"description": "Keep the events of this token `sub`."}
    )
    action = fields.String(validate=validate.OneOf(AUDIT_ACTIONS))
    since = QueryDateTime(metadata={"description": "Keep the events at or after this instant."})
    until = QueryDateTime(metadata={"description": "Keep the events before this instant."})


# --- the audit trail -----------------------------------------------------------


def _visible(row, resource):
    """A stored row as the API shows it: its columns in the table's order
    (PostgreSQL's jsonb keeps its own), without the version (the ETag's) or
    the folded copies of its text."""
    if row is None:
        return None
    return {c.name: row[c.name] for c in db.metadata.tables[resource].c if c.name in row and shown(c)}


def audit_changes(event):
    """An event's `changes`, from the rows it holds (SPEC: "Audit trail")."""
    before, after = _visible(event["before"], event["resource"]), _visible(event["after"], event["resource"])
    action = event["action"]
    if action == "create":
        return {name: value for name, value in after.items() if name != "id"}
    if action == "update":
        return {name: [before[name], value] for name, value in after.items() if before[name] != value}
    if action == "cast":
        return {"character": [before and before["character"], after["character"]]}
    if "castings" in event["before"]:  # a delete: the castings it removed (recorded since migration 0006)
        return {**before, "castings": event["before"]["castings"]}
    return before  # delete, uncast: the item as it was


class UtcInstant(fields.Field):
    """A stored instant as ISO 8601 in UTC with `Z` (SQLite returns it naive, in UTC)."""

    def _serialize(self, value, attr, obj, **kwargs):
        instant = value if value.tzinfo else value.replace(tzinfo=UTC)
        return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditEventSchema(Schema):
    id = fields.Integer(required=True, metadata=example(7))
    at = UtcInstant(
        required=True, metadata={"type": "string", "format": "date-time", **example("2026-11-29T10:15:02.394117Z")}
    )
    subject = fields.String(
        required=True, metadata={"description": "The token's `sub`.", **example("auth0|casting-director")}
    )
    action = fields.String(required=True, metadata={"enum": list(AUDIT_ACTIONS), **example("update")})
    resource = fields.String(required=True, metadata={"enum": list(AUDIT_RESOURCES), **example("actors")})
    resource_id = fields.Integer(required=True, allow_none=True, metadata=example(3))
    movie_id = fields.Integer(required=True, allow_none=True, metadata=example(None))
    actor_id = fields.Integer(required=True, allow_none=True, metadata=example(None))
    changes = fields.Function(
        audit_changes,
        required=True,
        metadata={
            "type": "object",
            "description": "An update: each changed field's `[old, new]`; a create: the fields written; a delete: "
            "the item as it was, and in `castings` the castings it removed (each one's `movie_id` or `actor_id`, "
            "and `character`); a cast: `character` as `[old, new]` (old null when newly cast); an uncast: the "
            "casting as it was.",
            **example({"age": [65, 66]}),
        },
    )
    request_id = fields.String(
        required=True,
        metadata={"description": "The X-Request-ID of the request.", **example("6f1c0c4f0d6d4a43b0d2b1f3c2a9e8d7")},
    )


# --- dumping responses --------------------------------------------------------

# Fields whose dump of a value the database has typed is the value itself:
# marshmallow would only call int(), str() or bool() on it again.
_AS_STORED = (fields.Integer, fields.String, fields.Boolean)


def dumper(schema):
    """A function that dumps as `schema.dump` does, compiled once from the
    schema's fields, for responses built from rows the database has typed.
    marshmallow's dump walks each field's machinery per value, which measured
    a sixth of a GET /actors/<id> (README: "What each change bought"); this
    keeps the schemas the one description of a response and costs a dict
    lookup per field. Fields that transform a value (dates, instants, computed
    ones) still run their own `serialize`; test_app.py holds the two equal."""
    steps = []
    for name, field in schema.dump_fields.items():
        key, attribute = field.data_key or name, field.attribute or name
        if isinstance(field, fields.Nested) and not field.many:
            steps.append((key, attribute, _nullable(dumper(field.schema))))
        elif isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):
            item = dumper(field.inner.schema)
            steps.append((key, attribute, _nullable(lambda items, item=item: [item(i) for i in items])))
        elif isinstance(field, _AS_STORED) and type(field)._serialize in (
            fields.Integer._serialize,
            fields.String._serialize,
            fields.Boolean._serialize,
        ):
            steps.append((key, attribute, None))
        else:
            steps.append((key, None, lambda obj, name=name, field=field: field.serialize(name, obj)))

    def dump(obj):
        out = {}
        for key, attribute, convert in steps:
            if attribute is None:  # the field reads the object itself
                value = convert(obj)
                if value is not missing:
                    out[key] = value
                continue
            value = obj.get(attribute, missing)
            if value is not missing:
                out[key] = value if convert is None else convert(value)
        return out

    return dump


def _nullable(convert):
    return lambda value: None if value is None else convert(value)


# --- envelopes ----------------------------------------------------------------


class ErrorSchema(Schema):
    success = fields.Boolean(required=True, metadata={"enum": [False], **example(False)})
    error = fields.Integer(required=True, metadata=example(404))
    message = fields.String(required=True, metadata=example("actor 99 not found"))
    code = fields.String(metadata={"description": "Machine-readable reason for a 401.", **example("token_expired")})
    errors = fields.Dict(
        metadata={"description": "Per-field messages of a 422.", **example({"age": ["Not a whole number."]})}
    )


def _schema_name(schema):
    return schema.__name__.removesuffix("Schema")


def item_envelope(item_schema, key):
    """{"success": true, <key>: item}"""
    return Schema.from_dict(
        {
            "success": fields.Boolean(required=True, metadata=example(True)),
            key: fields.Nested(item_schema, required=True),
        },
        name=f"{_schema_name(item_schema)}Envelope",
    )


def page_envelope(item_schema, key, owner_key=None):
    """{"success": true, [<owner_key>: id,] <key>: [...], "total_<key>": n, "total_exact": b,
    "page": p, "per_page": k, "next_cursor": c}"""
    owner = {owner_key: fields.Integer(required=True, metadata=example(1))} if owner_key else {}
    return Schema.from_dict(
        {
            "success": fields.Boolean(required=True, metadata=example(True)),
            **owner,
            key: fields.List(fields.Nested(item_schema), required=True),
            f"total_{key}": fields.Integer(
                required=True,
                metadata={
                    "description": "The items of the whole list; a lower bound when `total_exact` is false.",
                    **example(12),
                },
            ),
            "total_exact": fields.Boolean(
                required=True,
                metadata={
                    "description": "Whether the total is exact: always for a whole collection and for lists of "
                    "up to 1,000 items; a longer filtered list stops counting at 1,000.",
                    **example(True),
                },
            ),
            "page": fields.Integer(
                required=True, allow_none=True, metadata={"description": "Null on a cursor's page.", **example(1)}
            ),
            "per_page": fields.Integer(required=True, metadata=example(20)),
            "next_cursor": fields.String(
                required=True,
                allow_none=True,
                metadata={
                    "description": "Pass as `?cursor=` for the next page; null on the last page.",
                    **example(None),
                },
            ),
        },
        name=f"{_schema_name(item_schema)}PageEnvelope",
    )


class IndexSchema(Schema):
    success = fields.Boolean(required=True, metadata=example(True))
    name = fields.String(required=True, metadata=example("Casting Agency API"))
    docs = fields.String(required=True, metadata=example("/docs/"))
    openapi = fields.String(required=True, metadata=example("/openapi.json"))


class HealthSchema(Schema):
    success = fields.Boolean(required=True, metadata=example(True))
    database = fields.String(required=True, metadata=example("ok"))


class DeletedSchema(Schema):
    success = fields.Boolean(required=True, metadata=example(True))
    delete = fields.Integer(required=True, metadata=example(12))


class CastingEnvelopeSchema(Schema):
    success = fields.Boolean(required=True, metadata=example(True))
    casting = fields.Nested(CastingSchema, required=True)
