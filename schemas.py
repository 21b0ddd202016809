"""One set of marshmallow schemas: request validation, response shapes and the
OpenAPI description all come from here, so they cannot drift apart."""

import math
import re
from datetime import UTC, date, datetime, timedelta

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

# --- fields -------------------------------------------------------------------


class Text(fields.String):
    """Text with a length limit (counted as sent), at least one non-whitespace
    character, stored trimmed. U+0000 and unpaired surrogates are refused: no
    database stores them."""

    def __init__(self, max_length, **kwargs):
        super().__init__(
            validate=validate.Length(min=1, max=max_length),
            metadata={"pattern": r"\S"},
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
        if not text.strip():
            raise ValidationError("Must contain a non-whitespace character.")
        return text.strip()


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
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_DATETIME = re.compile(r"(\d{4}-\d{2}-\d{2})[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?", re.ASCII)
_US_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})", re.ASCII)
RELEASE_DATE_FORMS = (
    "`YYYY-MM-DD`; an ISO 8601 date-time (the date as written, no conversion to UTC); "
    "`M/D/YYYY`; or a whole number of Unix epoch seconds, read in UTC. "
    "From 0001-01-01 to 9999-12-31. Always returned as `YYYY-MM-DD`."
)


def parse_release_date(value):
    """Read a release date in any of the four accepted forms."""
    if isinstance(value, str):
        try:
            if _ISO_DATE.fullmatch(value):
                return date.fromisoformat(value)
            if match := _ISO_DATETIME.fullmatch(value):
                datetime.fromisoformat(value)  # the time must be valid too
                return date.fromisoformat(match[1])
            if match := _US_DATE.fullmatch(value):
                month, day, year = map(int, match.groups())
                return date(year, month, day)
        except ValueError:
            raise ValidationError("Not a valid date.") from None
        raise ValidationError("Not a valid date: use one of " + RELEASE_DATE_FORMS)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError("Not a valid date: use one of " + RELEASE_DATE_FORMS)
    seconds = whole_number(value)
    try:
        return (EPOCH + timedelta(seconds=seconds)).date()
    except OverflowError:
        raise ValidationError("Epoch seconds outside 0001-01-01..9999-12-31.") from None


class ReleaseDate(fields.Date):
    def _deserialize(self, value, attr, data, **kwargs):
        return parse_release_date(value)


# --- resources ----------------------------------------------------------------


class ResourceSchema(Schema):
    """A writable resource: `id` is assigned by the server, ignored in a body."""

    id = fields.Integer(dump_only=True)

    @pre_load
    def drop_id(self, data, **kwargs):
        if isinstance(data, dict):
            data = {key: value for key, value in data.items() if key != "id"}
        return data


class ActorSchema(ResourceSchema):
    name = Text(120, required=True)
    age = WholeNumber(required=True, validate=validate.Range(min=0, max=150))
    gender = Text(50, required=True)


class MovieSchema(ResourceSchema):
    title = Text(200, required=True)
    release_date = ReleaseDate(
        required=True,
        metadata={
            "description": RELEASE_DATE_FORMS,
        },
    )


class PatchMixin:
    """PATCH takes any non-empty subset of the writable fields."""

    def __init__(self, **kwargs):
        super().__init__(partial=True, **kwargs)

    @validates_schema
    def not_empty(self, data, **kwargs):
        if not data:
            raise ValidationError("Give at least one field to change.", "_schema")


def patch_schema(schema):
    return type(schema.__name__.replace("Schema", "PatchSchema"), (PatchMixin, schema), {})


ActorPatchSchema = patch_schema(ActorSchema)
MoviePatchSchema = patch_schema(MovieSchema)


class CastingBodySchema(Schema):
    """The optional body of a casting PUT."""

    body_optional = True  # no body at all leaves the character as it is
    character = Text(120, allow_none=True)


class CastingSchema(Schema):
    movie_id = fields.Integer()
    actor_id = fields.Integer()
    character = fields.String(allow_none=True)


class CastActorSchema(ActorSchema):
    character = fields.String(allow_none=True)


class CastMovieSchema(MovieSchema):
    character = fields.String(allow_none=True)


# --- query parameters ---------------------------------------------------------


class QueryInteger(fields.Integer):
    """A whole number in a query string: ASCII digits only (Python's int() would
    also take "1_000", " 7" and other digits)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,18}", value):
            raise ValidationError("Not a whole number.")
        return super()._deserialize(value, attr, data, **kwargs)


class ListQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE  # unknown query parameters are ignored

    page = QueryInteger(load_default=1, validate=validate.Range(min=1))
    per_page = QueryInteger(load_default=20, validate=validate.Range(min=1, max=100))


class SearchQuerySchema(ListQuerySchema):
    q = fields.String(
        validate=[
            validate.Length(max=200),
            validate.Regexp(r"^[^\x00]*$", error="Must not contain U+0000."),
        ],
        metadata={"description": "Keep the items whose name or title contains this, ignoring case."},
    )


# --- envelopes ----------------------------------------------------------------


class ErrorSchema(Schema):
    success = fields.Boolean(required=True, metadata={"enum": [False]})
    error = fields.Integer(required=True)
    message = fields.String(required=True)
    code = fields.String(metadata={"description": "Machine-readable reason for a 401."})
    errors = fields.Dict(metadata={"description": "Per-field messages of a 422."})


def _schema_name(schema):
    return schema.__name__.removesuffix("Schema")


def item_envelope(item_schema, key):
    """{"success": true, <key>: item}"""
    return Schema.from_dict(
        {"success": fields.Boolean(required=True), key: fields.Nested(item_schema, required=True)},
        name=f"{_schema_name(item_schema)}Envelope",
    )


def page_envelope(item_schema, key, owner_key=None):
    """{"success": true, [<owner_key>: id,] <key>: [...], "total_<key>": n, "page": p, "per_page": k}"""
    owner = {owner_key: fields.Integer(required=True)} if owner_key else {}
    return Schema.from_dict(
        {
            "success": fields.Boolean(required=True),
            **owner,
            key: fields.List(fields.Nested(item_schema), required=True),
            f"total_{key}": fields.Integer(required=True),
            "page": fields.Integer(required=True),
            "per_page": fields.Integer(required=True),
        },
        name=f"{_schema_name(item_schema)}PageEnvelope",
    )


class DeletedSchema(Schema):
    success = fields.Boolean(required=True)
    delete = fields.Integer(required=True)


class CastingEnvelopeSchema(Schema):
    success = fields.Boolean(required=True)
    casting = fields.Nested(CastingSchema, required=True)
