"""schemas.py: what a body may hold (fields, text, whole numbers, the release date's four
forms) and the compiled dumpers that write the answers."""

import datetime
import unittest

import resources
import schemas
from models import Actor, Movie
from testing import MOVIE, MOVIE_ROW, RESOURCES, ApiTestCase

# (field, value, whether valid, the stored value when valid)
ACTOR_FIELD_CASES = [
    ("name", "A", True, "A"),
    ("name", "x" * 120, True, "x" * 120),
    ("name", "x" * 121, False, None),
    ("name", " " + "x" * 119 + " ", False, None),  # the limit counts the string as sent
    ("name", "", False, None),
    ("name", "   \t\n", False, None),
    ("name", "Zoë Saldaña 周迅", True, "Zoë Saldaña 周迅"),
    ("name", "nul\x00here", False, None),
    # Whitespace is JSON Schema's (ECMA-262) \s, exactly as the description says:
    ("name", "\u3000Zoë\ufeff\u00a0", True, "Zoë"),
    ("name", "\ufeff\u2028", False, None),
    ("name", "\x1c\x1c", True, "\x1c\x1c"),
    ("name", "lone \ud800 surrogate", False, None),
    ("name", 42, False, None),
    ("name", None, False, None),
    ("name", ["Viola"], False, None),
    ("age", 0, True, 0),
    ("age", 150, True, 150),
    ("age", 34.0, True, 34),
    ("age", -1, False, None),
    ("age", 151, False, None),
    ("age", 34.5, False, None),
    ("age", "34", False, None),
    ("age", True, False, None),
    ("age", None, False, None),
    ("age", 1e300, False, None),
    ("gender", "x" * 50, True, "x" * 50),
    ("gender", "x" * 51, False, None),
    ("gender", " ", False, None),
]


# (field, value, whether valid, the stored value when valid), by resource;
# release_date has its own table below.
FIELD_CASES = {
    "actors": ACTOR_FIELD_CASES,
    "movies": [
        ("title", "t" * 200, True, "t" * 200),
        ("title", "t" * 201, False, None),
        ("title", " Harbour Lights\n", True, "Harbour Lights"),
        ("title", "\t", False, None),
        ("title", 2021, False, None),
    ],
}


# (release_date as sent, the date stored, or None when it is a 422)
RELEASE_DATE_CASES = [
    ("2021-10-15", datetime.date(2021, 10, 15)),
    ("0001-01-01", datetime.date(1, 1, 1)),
    ("9999-12-31", datetime.date(9999, 12, 31)),
    ("2021-10-15T23:30:00", datetime.date(2021, 10, 15)),
    ("2021-10-15T23:30:00-08:00", datetime.date(2021, 10, 15)),  # as written, not converted to UTC
    ("2021-10-15T00:30:00+09:00", datetime.date(2021, 10, 15)),
    ("2021-10-15T23:30:00.123Z", datetime.date(2021, 10, 15)),
    ("1987-11-19 14:40:44", datetime.date(1987, 11, 19)),
    ("2/26/1996", datetime.date(1996, 2, 26)),
    ("12/31/1999", datetime.date(1999, 12, 31)),
    ("02/06/2004", datetime.date(2004, 2, 6)),
    (1095641244, datetime.date(2004, 9, 20)),
    (1095641244.0, datetime.date(2004, 9, 20)),
    (1041244, datetime.date(1970, 1, 13)),
    (10000, datetime.date(1970, 1, 1)),
    (-1, datetime.date(1969, 12, 31)),
    (-86400, datetime.date(1969, 12, 31)),
    (0, None),  # 0 to 9999 read as years, not as seconds
    (1995, None),
    (1995.0, None),
    (9999, None),
    (-62135596800, datetime.date(1, 1, 1)),
    (253402300799, datetime.date(9999, 12, 31)),
    (253402300800, None),
    (-62135596801, None),
    (1e20, None),
    (1095641244.5, None),
    (True, None),
    (None, None),
    ("", None),
    ("2021-02-30", None),
    ("2021-13-01", None),
    ("0000-01-01", None),
    ("10000-01-01", None),
    ("2021-10-15T25:00:00", None),
    ("2021-10-15T", None),
    ("13/1/2020", None),
    ("2/30/2020", None),
    ("15 October 2021", None),
    ("1095641244", None),
    ({"date": "2021-10-15"}, None),
]


class ValidationTest(ApiTestCase):
    def check_field(self, path, body, field, valid):
        """POST to a collection or PATCH an item; a 422 must name the field and
        leave the collection as it was."""
        collection = "/" + path.split("/")[1]
        method = "POST" if path == collection else "PATCH"
        before = self.call("GET", collection).get_json()
        response = self.call(method, path, json=body)
        if valid:
            self.assertEqual(response.status_code, 201 if method == "POST" else 200, response.get_data(as_text=True))
            return response.get_json()
        error = self.assertError(response, 422, field)
        self.assertIn(field, error["errors"])
        self.assertEqual(self.call("GET", collection).get_json(), before)
        return None

    def test_fields_on_create_and_update(self):
        for res in RESOURCES:
            item_id = self.add(res["model"], **res["row"])["id"]
            collection = f"/{res['plural']}"
            for field, value, valid, stored in FIELD_CASES[res["plural"]]:
                for path, body in (
                    (collection, {**res["body"], field: value}),
                    (f"{collection}/{item_id}", {field: value}),
                ):
                    with self.subTest(path, field=field, value=value):
                        result = self.check_field(path, body, field, valid)
                        if valid:
                            item = result[res["singular"]]
                            self.assertEqual(item[field], stored)
                            row = next(r for r in self.rows(res["model"]) if r["id"] == item["id"])
                            self.assertEqual(row[field], stored)

    def test_release_date_forms(self):
        movie_id = self.add(Movie, **MOVIE_ROW)["id"]
        for value, stored in RELEASE_DATE_CASES:
            for path, body in (
                ("/movies", {**MOVIE, "release_date": value}),
                (f"/movies/{movie_id}", {"release_date": value}),
            ):
                with self.subTest(path, value=value):
                    result = self.check_field(path, body, "release_date", stored is not None)
                    if stored is not None:
                        self.assertEqual(result["movie"]["release_date"], stored.isoformat())
                        row = next(r for r in self.rows(Movie) if r["id"] == result["movie"]["id"])
                        self.assertEqual(row["release_date"], stored)

    def test_every_malformed_date_gets_the_same_hint(self):
        hint = (
            "Not a valid date: use YYYY-MM-DD, an ISO 8601 date-time, M/D/YYYY or a whole number of Unix epoch seconds."
        )
        cases = [  # (release_date as sent, the message)
            *((value, hint) for value in ("15/10/2021", "Oct 15, 2021", "2021-02-30", "2021-10-15T25:00:00", "")),
            *((value, hint) for value in ("1095641244", 1095641244.5, True, [2021, 10, 15], {"date": "2021-10-15"})),
            (1995, "1995 reads as a year, not as Unix epoch seconds: send the date, as YYYY-MM-DD."),
            (0, "0 reads as a year, not as Unix epoch seconds: send the date, as YYYY-MM-DD."),
            (253402300800, "Epoch seconds outside 0001-01-01..9999-12-31."),
        ]
        for value, message in cases:
            with self.subTest(value=value):
                error = self.assertError(self.call("POST", "/movies", json={**MOVIE, "release_date": value}), 422)
                self.assertEqual(error["errors"], {"release_date": [message]})
        self.assertEqual(self.rows(Movie), [])

    def test_every_required_field_is_named_when_missing(self):
        for res in RESOURCES:
            for field in res["body"]:
                with self.subTest(res["plural"], missing=field):
                    body = {k: v for k, v in res["body"].items() if k != field}
                    error = self.assertError(self.call("POST", f"/{res['plural']}", json=body), 422, field)
                    self.assertEqual(list(error["errors"]), [field])
        self.assertEqual(self.rows(Actor) + self.rows(Movie), [])

    def test_unknown_fields_are_named(self):
        for res in RESOURCES:
            with self.subTest(res["plural"]):
                error = self.assertError(self.call("POST", f"/{res['plural']}", json={**res["body"], "rating": 5}), 422)
                self.assertIn("rating", error["message"])
                self.assertEqual(error["errors"], {"rating": ["Unknown field."]})
        self.assertEqual(self.rows(Actor) + self.rows(Movie), [])

    def test_patch_needs_at_least_one_field(self):
        for res in RESOURCES:
            item_id = self.add(res["model"], **res["row"])["id"]
            for body in ({}, {"id": 99}):
                with self.subTest(res["plural"], body=body):
                    self.assertError(self.call("PATCH", f"/{res['plural']}/{item_id}", json=body), 422, "at least one")


class DumperTest(unittest.TestCase):
    """Responses are dumped by schemas.dumper, compiled from the schemas:
    it must give what marshmallow's own dump gives, for every response schema."""

    def test_the_compiled_dumper_dumps_as_marshmallow_does(self):
        actor = {"id": 3, "name": "Zoë Kravitz", "age": 35, "gender": "Female", "version": 2, "_k0": 3, "_total": 9}
        movie = {"id": 4, "title": "Harbour Lights", "release_date": datetime.date(2021, 10, 15), "version": 1}
        instant = datetime.datetime(2026, 11, 29, 10, 15, 2, 394117, tzinfo=datetime.UTC)
        event = {
            "id": 7,
            "at": instant,
            "subject": "auth0|director",
            "action": "update",
            "resource": "actors",
            "resource_id": 3,
            "movie_id": None,
            "actor_id": None,
            "before": {**actor, "age": 34},
            "after": actor,
            "request_id": "abc",
        }
        page = {"total_exact": True, "page": None, "per_page": 20, "next_cursor": "eyJ.abc"}
        cases = [  # (schema, data)
            (schemas.IndexSchema, {"success": True, "name": "Casting Agency API", "docs": "/docs/", "openapi": "/x"}),
            (schemas.HealthSchema, {"success": True, "database": "ok"}),
            (schemas.DeletedSchema, {"success": True, "delete": 12}),
            (resources.ACTORS.item_envelope, {"success": True, "actor": actor}),
            (resources.MOVIES.item_envelope, {"success": True, "movie": movie}),
            (resources.MOVIES.item_envelope, {"success": True, "movie": {**movie, "release_date": None}}),
            (resources.ACTORS.page_envelope, {"success": True, "actors": [actor, actor], "total_actors": 2, **page}),
            (resources.MOVIES.page_envelope, {"success": True, "movies": [], "total_movies": 0, **page}),
            (
                schemas.page_envelope(schemas.CastActorSchema, "actors", owner_key="movie_id"),
                {"success": True, "movie_id": 4, "actors": [{**actor, "character": None}], "total_actors": 1, **page},
            ),
            (
                schemas.page_envelope(schemas.CastMovieSchema, "movies", owner_key="actor_id"),
                {"success": True, "actor_id": 3, "movies": [{**movie, "character": "Hale"}], "total_movies": 1, **page},
            ),
            (schemas.page_envelope(schemas.AuditEventSchema, "events"), {"success": True, "events": [event], **page}),
            (
                schemas.CastingEnvelopeSchema,
                {"success": True, "casting": {"movie_id": 4, "actor_id": 3, "character": None}},
            ),
            (schemas.ActorSchema, {"name": "Ada"}),  # a missing field is left out by both
        ]
        for schema, data in cases:
            with self.subTest(schema.__name__):
                expected = schema().dump(data)
                self.assertEqual(schemas.dumper(schema())(data), expected)
                self.assertNotIn("version", str(expected))  # the ETag's, never in a body
