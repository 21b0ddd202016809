"""The API's resources, endpoints, validation and errors, as the README's API
reference gives them, and the configuration. Authentication has its own
module, test_auth.py."""

import datetime
import os
import tempfile
import unittest
from unittest import mock

from flask import Flask
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

import resources
import schemas
import writes
from app import create_app
from auth import LocalIssuer
from config import ConfigError, database_url, load_config
from models import MAX_ID, Actor, Casting, Movie, db
from testing import ACTOR, ISSUER, MOVIE, MOVIE_ROW, ApiTestCase, app_config, dispose

# What differs between the two resources; every test below runs for both.
RESOURCES = [
    {
        "plural": "actors",
        "singular": "actor",
        "model": Actor,
        "body": ACTOR,
        "row": ACTOR,
        "text": "name",
        "edit": {"age": 62},
    },
    {
        "plural": "movies",
        "singular": "movie",
        "model": Movie,
        "body": MOVIE,
        "row": MOVIE_ROW,
        "text": "title",
        "edit": {"release_date": "2022-01-31"},
    },
]


class IndexAndHealthTest(ApiTestCase):
    def test_index_names_the_api_and_its_docs(self):
        response = self.client.get("/")
        self.assertEqual(response.status_code, 200)
        body = response.get_json()
        self.assertIs(body["success"], True)
        self.assertEqual(body["name"], "Casting Agency API")
        self.assertEqual(body["openapi"], "/openapi.json")
        self.assertEqual(self.client.get(body["docs"]).status_code, 200)
        self.assertEqual(self.client.get(body["openapi"]).status_code, 200)

    def test_docs_are_served_from_bundled_files(self):
        page = self.client.get("/docs/")
        self.assertEqual(page.status_code, 200)
        html = page.get_data(as_text=True)
        self.assertIn("/openapi.json", html)
        self.assertNotRegex(html, r"(src|href)=\"(https?:)?//")  # nothing from a CDN
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            with self.client.get(f"/docs/{asset}") as response:
                self.assertEqual(response.status_code, 200)
        self.assertError(self.client.get("/docs/../app.py"), 404)

    def test_health_is_200_when_the_database_answers(self):
        response = self.client.get("/health")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.get_json(), {"success": True, "database": "ok"})


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class HeadersTest(ApiTestCase):
    def test_security_headers_on_every_response(self):
        for method, path, role in (
            ("GET", "/actors", "Casting Assistant"),
            ("GET", "/actors", None),
            ("GET", "/nowhere", None),
            ("POST", "/actors", "Executive Producer"),
        ):
            with self.subTest(method, path=path, role=role):
                response = self.call(method, path, role=role, json=ACTOR if method == "POST" else None)
                self.assertEqual({name: response.headers.get(name) for name in SECURITY_HEADERS}, SECURITY_HEADERS)


class RequestIdTest(ApiTestCase):
    def test_every_response_carries_a_request_id(self):
        ids = {self.client.get("/nowhere").headers["X-Request-ID"] for _ in range(3)}
        self.assertEqual(len(ids), 3)
        self.assertTrue(all(len(i) == 32 for i in ids))

    def test_an_incoming_request_id_is_never_adopted(self):
        """The audit trail records a write's request id: were a client's
        X-Request-ID adopted, any writer could make an event name another
        request (Heroku's router passes a client's own X-Request-ID through)."""
        for given in ("0b7c4f0e-8d1a-4c3e-9f7a-2e1d5c6b7a89", "x" * 65, "a b", "id;forged=1", "<script>"):
            with self.subTest(given=given):
                response = self.call("GET", "/actors", headers={**self.headers(), "X-Request-ID": given})
                self.assertNotEqual(response.headers["X-Request-ID"], given)
                self.assertRegex(response.headers["X-Request-ID"], "^[0-9a-f]{32}$")

    def test_the_log_of_a_500_names_the_request_id(self):
        with (
            mock.patch("lists.Listing.page", side_effect=RuntimeError("boom")),
            self.assertLogs("app", "ERROR") as logs,
        ):
            response = self.call("GET", "/actors")
        self.assertIn(f"request_id={response.headers['X-Request-ID']}", logs.output[0])


class CorsTest(ApiTestCase):
    config = {"CORS_ORIGINS": "https://app.example, https://admin.example"}

    def preflight(self, origin):
        return self.client.options(
            "/actors",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization, Content-Type",
            },
        )

    def test_listed_origins_may_send_authorization(self):
        response = self.preflight("https://admin.example")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.headers["Access-Control-Allow-Origin"], "https://admin.example")
        self.assertIn("authorization", response.headers["Access-Control-Allow-Headers"].lower())
        self.assertIn("POST", response.headers["Access-Control-Allow-Methods"])
        created = self.call("POST", "/actors", json=ACTOR, headers={**self.headers(), "Origin": "https://app.example"})
        self.assertEqual(created.headers["Access-Control-Allow-Origin"], "https://app.example")
        self.assertIn("Location", created.headers["Access-Control-Expose-Headers"])

    def test_other_origins_get_no_cors_headers(self):
        self.assertNotIn("Access-Control-Allow-Origin", self.preflight("https://evil.example").headers)


class AsyncCheckTest(unittest.TestCase):
    def test_the_app_tells_async_functions_from_plain_ones_and_remembers(self):
        app = create_app(app_config())
        self.addCleanup(dispose, app)

        def plain():
            return 1

        async def coroutine():
            return 1

        class View:
            def get(self):
                return 2

        for _ in range(2):  # asked, then remembered
            self.assertIs(app.ensure_sync(plain), plain)
            method = View().get
            self.assertIs(app.ensure_sync(method), method)
            # Flask wraps an async function, which needs Flask's async extra (not installed).
            with self.assertRaisesRegex(RuntimeError, "async"):
                app.ensure_sync(coroutine)


class CollectionTest(ApiTestCase):
    def test_list_is_ordered_by_id_with_total_page_and_per_page(self):
        for res in RESOURCES:
            with self.subTest(res["plural"]):
                ids = [self.add(res["model"], **res["row"])["id"] for _ in range(3)]
                response = self.call("GET", f"/{res['plural']}", role="Casting Assistant")
                self.assertEqual(response.status_code, 200)
                body = response.get_json()
                self.assertEqual(
                    list(body),
                    [
                        "success",
                        res["plural"],
                        f"total_{res['plural']}",
                        "total_exact",
                        "page",
                        "per_page",
                        "next_cursor",
                    ],
                )
                self.assertEqual([item["id"] for item in body[res["plural"]]], ids)
                self.assertEqual(body[f"total_{res['plural']}"], 3)
                self.assertEqual((body["page"], body["per_page"]), (1, 20))

    def test_items_are_returned_with_every_field(self):
        self.add(Actor, **ACTOR)
        self.add(Movie, **MOVIE_ROW)
        actor = self.call("GET", "/actors").get_json()["actors"][0]
        self.assertEqual(actor, {"id": actor["id"], **ACTOR})
        movie = self.call("GET", "/movies").get_json()["movies"][0]
        self.assertEqual(movie, {"id": movie["id"], **MOVIE})

    def test_pagination(self):
        ids = [self.add(Actor, **{**ACTOR, "name": f"Actor {i}"})["id"] for i in range(25)]
        cases = [  # (query, expected ids, page, per_page)
            ("", ids[:20], 1, 20),
            ("?page=2", ids[20:], 2, 20),
            ("?page=3", [], 3, 20),
            ("?page=999999999999999999", [], 999999999999999999, 20),
            ("?per_page=5&page=3", ids[10:15], 3, 5),
            ("?per_page=100", ids, 1, 100),
            ("?per_page=1", ids[:1], 1, 1),
            ("?page=2&page=1", ids[20:], 2, 20),  # of a repeated parameter, the first counts
            ("?order=name&foo", ids[:20], 1, 20),  # unknown parameters are ignored
        ]
        for query, expected, page, per_page in cases:
            with self.subTest(query):
                body = self.call("GET", f"/actors{query}").get_json()
                self.assertEqual([a["id"] for a in body["actors"]], expected)
                self.assertEqual((body["total_actors"], body["page"], body["per_page"]), (25, page, per_page))

    def test_search_ignores_case_and_counts_matches(self):
        names = ["Denzel Washington", "Viola Davis", "Davide Rossi", "Tilda Swinton", "100% Real_Name"]
        for name in names:
            self.add(Actor, **{**ACTOR, "name": name})
        self.add(Movie, title="The DAVIS Affair", release_date=datetime.date(2020, 1, 1))
        cases = [
            ("davi", ["Viola Davis", "Davide Rossi"]),
            ("WASHINGTON", ["Denzel Washington"]),
            ("%", ["100% Real_Name"]),  # % and _ are literal, not wildcards
            ("_", ["100% Real_Name"]),
            ("l_N", ["100% Real_Name"]),
            ("nobody", []),
            ("", names),
        ]
        for q, expected in cases:
            with self.subTest(q=q):
                body = self.call("GET", "/actors", query_string={"q": q}).get_json()
                self.assertEqual([a["name"] for a in body["actors"]], expected)
                self.assertEqual(body["total_actors"], len(expected))
        movies = self.call("GET", "/movies?q=davis").get_json()
        self.assertEqual([m["title"] for m in movies["movies"]], ["The DAVIS Affair"])

    def test_malformed_query_parameters_are_400(self):
        cases = [
            "page=0",
            "page=-1",
            "page=x",
            "page=1.5",
            "page=",
            "page=1_0",
            "page=%201",
            "per_page=0",
            "per_page=101",
            "per_page=abc",
            "q=" + "x" * 201,
            "q=a%00b",
        ]
        for res in RESOURCES:
            for query in cases:
                with self.subTest(res["plural"], query=query):
                    body = self.assertError(self.call("GET", f"/{res['plural']}?{query}"), 400)
                    self.assertIn(query.split("=")[0], body["errors"])

    def test_q_of_200_characters_is_accepted(self):
        self.assertEqual(self.call("GET", "/actors", query_string={"q": "x" * 200}).status_code, 200)


class CreateTest(ApiTestCase):
    def test_create_returns_201_with_location_and_stores_the_row(self):
        for res in RESOURCES:
            with self.subTest(res["plural"]):
                response = self.call("POST", f"/{res['plural']}", json={**res["body"], "id": 12345})
                self.assertEqual(response.status_code, 201)
                item = response.get_json()[res["singular"]]
                self.assertNotEqual(item["id"], 12345)  # id in a body is ignored
                self.assertEqual(item, {"id": item["id"], **res["body"]})
                self.assertEqual(response.headers["Location"], f"/{res['plural']}/{item['id']}")
                self.assertEqual(self.call("GET", response.headers["Location"]).get_json()[res["singular"]], item)
                self.assertEqual(self.rows(res["model"]), [{"id": item["id"], **res["row"]}])

    def test_text_is_stored_trimmed(self):
        response = self.call("POST", "/actors", json={**ACTOR, "name": "  Viola Davis \n", "gender": "\tF "})
        self.assertEqual(response.status_code, 201)
        self.assertEqual(self.rows(Actor)[0]["name"], "Viola Davis")
        self.assertEqual(self.rows(Actor)[0]["gender"], "F")

    def test_ids_of_deleted_rows_are_never_reused(self):
        for res in RESOURCES:
            with self.subTest(res["plural"]):
                first = self.call("POST", f"/{res['plural']}", json=res["body"]).get_json()[res["singular"]]["id"]
                self.call("DELETE", f"/{res['plural']}/{first}")
                second = self.call("POST", f"/{res['plural']}", json=res["body"]).get_json()[res["singular"]]["id"]
                self.assertGreater(second, first)


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

    def test_a_422_is_bounded_whatever_the_body(self):
        many = {**ACTOR, **{f"unknown{i:05}": 1 for i in range(20_000)}}  # 418 KB: under the body limit
        long_name = {**ACTOR, "x" * 200_000: 1}
        for body, listed, more in ((many, 20, "and 19,980 more"), (long_name, 1, None)):
            with self.subTest(fields=len(body)):
                response = self.call("POST", "/actors", json=body)
                error = self.assertError(response, 422)
                self.assertLess(len(response.data), 8192)
                self.assertEqual(len(error["errors"]), listed)
                for name in error["errors"]:
                    self.assertLessEqual(len(name), 100)
                    self.assertEqual(error["message"].count(name + ":"), 1)  # each named once
                if more:
                    self.assertTrue(error["message"].endswith(more), error["message"][-80:])
        self.assertEqual(self.rows(Actor), [])

    def test_patch_needs_at_least_one_field(self):
        for res in RESOURCES:
            item_id = self.add(res["model"], **res["row"])["id"]
            for body in ({}, {"id": 99}):
                with self.subTest(res["plural"], body=body):
                    self.assertError(self.call("PATCH", f"/{res['plural']}/{item_id}", json=body), 422, "at least one")


class ItemTest(ApiTestCase):
    def test_get_one(self):
        for res in RESOURCES:
            with self.subTest(res["plural"]):
                item_id = self.add(res["model"], **res["row"])["id"]
                response = self.call("GET", f"/{res['plural']}/{item_id}", role="Casting Assistant")
                self.assertEqual(response.status_code, 200)
                self.assertEqual(
                    response.get_json(), {"success": True, res["singular"]: {"id": item_id, **res["body"]}}
                )

    def test_patch_changes_only_the_fields_given(self):
        for res in RESOURCES:
            with self.subTest(res["plural"]):
                item_id = self.add(res["model"], **res["row"])["id"]
                response = self.call("PATCH", f"/{res['plural']}/{item_id}", json={**res["edit"], "id": 777})
                self.assertEqual(response.status_code, 200)
                expected = {"id": item_id, **res["body"], **res["edit"]}
                self.assertEqual(response.get_json(), {"success": True, res["singular"]: expected})
                self.assertEqual(self.call("GET", f"/{res['plural']}/{item_id}").get_json()[res["singular"]], expected)

    def test_delete_removes_the_row_and_its_castings_but_not_the_other_side(self):
        for res in RESOURCES:
            with self.subTest(res["plural"]):
                actor = self.add(Actor, **ACTOR)["id"]
                movie = self.add(Movie, **MOVIE_ROW)["id"]
                self.add(Casting, movie_id=movie, actor_id=actor, character="Ruth")
                item_id = actor if res["model"] is Actor else movie
                response = self.call("DELETE", f"/{res['plural']}/{item_id}")
                self.assertEqual(response.status_code, 200)
                self.assertEqual(response.get_json(), {"success": True, "delete": item_id})
                self.assertError(self.call("GET", f"/{res['plural']}/{item_id}"), 404)
                self.assertEqual(self.rows(Casting), [])
                other = Movie if res["model"] is Actor else Actor
                self.assertEqual(len(self.rows(other)), 1)
                self._empty_database()

    def losing_a_race(self):
        """Patch the lookup of a row so that, right after it, another request
        deletes that row: the view then loses the race."""
        real_lookup = resources.row_or_404

        def lookup_then_lose(model, key):
            row = real_lookup(model, key)
            with self.app.app_context(), db.engine.begin() as connection:
                connection.execute(delete(model).where(model.id == key))
            return row

        return mock.patch("resources.row_or_404", lookup_then_lose)

    def test_of_two_concurrent_deletes_one_wins_and_the_other_is_404(self):
        for res in RESOURCES:
            with self.subTest(res["plural"]):
                item_id = self.add(res["model"], **res["row"])["id"]
                with self.losing_a_race():
                    self.assertError(self.call("DELETE", f"/{res['plural']}/{item_id}"), 404, "deleted meanwhile")
                self.assertEqual(self.rows(res["model"]), [])

    def test_a_patch_of_a_row_deleted_meanwhile_is_404(self):
        for res in RESOURCES:
            with self.subTest(res["plural"]):
                item_id = self.add(res["model"], **res["row"])["id"]
                with self.losing_a_race():
                    response = self.call("PATCH", f"/{res['plural']}/{item_id}", json=res["edit"])
                self.assertError(response, 404, "deleted meanwhile")
                self.assertEqual(self.rows(res["model"]), [])

    def test_missing_and_impossible_ids_are_404_for_every_method(self):
        ids = [  # (as sent, as the 404 names it)
            *((str(n), str(n)) for n in (0, 424242, MAX_ID, MAX_ID + 1, 2**63, 99999999999999999999, 10**40)),
            ("00000000000000000000000000001234", "1234"),
            ("9" * 5000, "9" * 5000),  # more digits than Python's int() takes
        ]
        for res in RESOURCES:
            for sent, named in ids:
                for method, body in (("GET", None), ("PATCH", res["edit"]), ("DELETE", None)):
                    with self.subTest(res["plural"], id=sent[:30], method=method):
                        response = self.call(method, f"/{res['plural']}/{sent}", json=body)
                        error = self.assertError(response, 404)
                        self.assertEqual(error["message"], f"{res['singular']} {named} not found")
        huge = "9" * 20
        for method, path, message in (
            ("GET", f"/movies/{huge}/actors", f"movie {huge} not found"),
            ("GET", f"/actors/{huge}/movies", f"actor {huge} not found"),
            ("PUT", f"/movies/{huge}/actors/{huge}", f"movie {huge} not found"),
        ):
            with self.subTest(method, path=path):
                self.assertEqual(self.assertError(self.call(method, path), 404)["message"], message)

    def test_non_numeric_ids_are_404(self):
        for path in ("/actors/abc", "/actors/-1", "/actors/1.5", "/movies/1e3", "/movies/%201"):
            with self.subTest(path):
                self.assertError(self.call("GET", path), 404, "not found")


class CastingTest(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.actor = self.add(Actor, **ACTOR)["id"]
        self.movie = self.add(Movie, **MOVIE_ROW)["id"]
        self.path = f"/movies/{self.movie}/actors/{self.actor}"

    def test_put_casts_once_and_is_idempotent(self):
        first = self.call("PUT", self.path, role="Casting Director")
        self.assertEqual(first.status_code, 201)
        casting = {"movie_id": self.movie, "actor_id": self.actor, "character": None}
        self.assertEqual(first.get_json(), {"success": True, "casting": casting})
        again = self.call("PUT", self.path)
        self.assertEqual(again.status_code, 200)
        self.assertEqual(again.get_json(), {"success": True, "casting": casting})
        self.assertEqual(self.rows(Casting), [casting])

    def test_character_is_set_changed_kept_and_cleared(self):
        steps = [  # (body, status, character afterwards)
            ({"character": "  Captain Hale "}, 201, "Captain Hale"),
            (None, 200, "Captain Hale"),  # no body leaves it as it is
            ({}, 200, "Captain Hale"),
            ({"character": "Mei"}, 200, "Mei"),
            ({"character": None}, 200, None),
        ]
        for body, status, character in steps:
            with self.subTest(body=body):
                response = self.call("PUT", self.path, json=body)
                self.assertEqual(response.status_code, status)
                self.assertEqual(response.get_json()["casting"]["character"], character)
                self.assertEqual(self.rows(Casting)[0]["character"], character)

    def test_bad_bodies_are_refused_and_change_nothing(self):
        self.call("PUT", self.path, json={"character": "Mei"})
        cases = [  # (kwargs, status)
            ({"json": {"character": "x" * 121}}, 422),
            ({"json": {"character": " "}}, 422),
            ({"json": {"character": 5}}, 422),
            ({"json": {"role": "lead"}}, 422),
            ({"json": ["Mei"]}, 400),
            ({"data": "{", "content_type": "application/json"}, 400),
            ({"data": "character=Mei", "content_type": "application/x-www-form-urlencoded"}, 415),
        ]
        for kwargs, status in cases:
            with self.subTest(kwargs):
                self.assertError(self.call("PUT", self.path, **kwargs), status)
                self.assertEqual(self.rows(Casting)[0]["character"], "Mei")

    def racing(self, meanwhile):
        """Patch the writes so that `meanwhile` (another request's commit) runs
        just before the PUT's INSERT of the casting, after it found none."""
        real_create = writes.create
        raced = []

        def create(table, values, by, action="create"):
            if table.name == "castings" and not raced:
                raced.append(values)
                meanwhile()
            return real_create(table, values, by, action)

        return mock.patch("writes.create", create)

    def test_put_racing_another_put_of_the_same_pair_is_an_update(self):
        with self.racing(lambda: self.add(Casting, movie_id=self.movie, actor_id=self.actor, character="A")):
            response = self.call("PUT", self.path, json={"character": "B"})
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.get_json()["casting"]["character"], "B")
        self.assertEqual(self.rows(Casting), [{"movie_id": self.movie, "actor_id": self.actor, "character": "B"}])

    def test_put_racing_a_delete_of_the_actor_is_404(self):
        def delete_actor():
            with self.app.app_context(), db.engine.begin() as connection:
                connection.execute(delete(Actor).where(Actor.id == self.actor))

        with self.racing(delete_actor):
            self.assertError(self.call("PUT", self.path), 404, f"actor {self.actor} not found")
        self.assertEqual(self.rows(Casting), [])

    def test_put_gives_up_with_503_when_the_pair_keeps_changing(self):
        # Every INSERT finds the pair cast, every look finds it gone: as if other
        # requests cast and removed it between each of this PUT's statements.
        def create(table, values, by, action="create"):
            raise IntegrityError("INSERT INTO castings", {}, Exception("duplicate key"))

        with mock.patch("writes.create", create):
            self.assertError(self.call("PUT", self.path, json={"character": "Mei"}), 503, "changing too fast")
        self.assertEqual(self.rows(Casting), [])

    def test_put_needs_both_sides_to_exist(self):
        for path in (f"/movies/999999/actors/{self.actor}", f"/movies/{self.movie}/actors/999999"):
            with self.subTest(path):
                self.assertError(self.call("PUT", path), 404)
        self.assertEqual(self.rows(Casting), [])

    def test_delete_removes_the_actor_from_the_cast(self):
        self.call("PUT", self.path)
        response = self.call("DELETE", self.path)
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.get_json(), {"success": True, "delete": self.actor})
        self.assertEqual(self.rows(Casting), [])
        self.assertEqual(len(self.rows(Actor)), 1)
        self.assertError(self.call("DELETE", self.path), 404, "not cast")

    def test_cast_lists_in_both_directions(self):
        other_actor = self.add(Actor, name="Riz Ahmed", age=44, gender="Male")["id"]
        other_movie = self.add(Movie, title="Paper Kingdoms", release_date=datetime.date(2024, 11, 22))["id"]
        self.call("PUT", self.path, json={"character": "Ruth"})
        self.call("PUT", f"/movies/{self.movie}/actors/{other_actor}")
        self.call("PUT", f"/movies/{other_movie}/actors/{self.actor}", json={"character": "Ada"})

        cast = self.call("GET", f"/movies/{self.movie}/actors", role="Casting Assistant")
        self.assertEqual(cast.status_code, 200)
        self.assertEqual(
            cast.get_json(),
            {
                "success": True,
                "movie_id": self.movie,
                "actors": [
                    {"id": self.actor, **ACTOR, "character": "Ruth"},
                    {"id": other_actor, "name": "Riz Ahmed", "age": 44, "gender": "Male", "character": None},
                ],
                "total_actors": 2,
                "total_exact": True,
                "page": 1,
                "per_page": 20,
                "next_cursor": None,
            },
        )
        movies = self.call("GET", f"/actors/{self.actor}/movies", role="Casting Assistant")
        self.assertEqual(
            movies.get_json(),
            {
                "success": True,
                "actor_id": self.actor,
                "movies": [
                    {"id": self.movie, **MOVIE, "character": "Ruth"},
                    {"id": other_movie, "title": "Paper Kingdoms", "release_date": "2024-11-22", "character": "Ada"},
                ],
                "total_movies": 2,
                "total_exact": True,
                "page": 1,
                "per_page": 20,
                "next_cursor": None,
            },
        )
        page = self.call("GET", f"/movies/{self.movie}/actors?per_page=1&page=2&q=RIZ").get_json()
        self.assertEqual(([a["id"] for a in page["actors"]], page["total_actors"]), ([], 1))
        page = self.call("GET", f"/movies/{self.movie}/actors?per_page=1&page=2").get_json()
        self.assertEqual(([a["id"] for a in page["actors"]], page["total_actors"]), ([other_actor], 2))

    def test_cast_lists_of_missing_owners_are_404(self):
        for path in ("/movies/999999/actors", "/actors/999999/movies", f"/movies/{MAX_ID + 1}/actors"):
            with self.subTest(path):
                self.assertError(self.call("GET", path), 404)

    def test_cast_list_query_parameters_are_validated(self):
        self.assertError(self.call("GET", f"/movies/{self.movie}/actors?per_page=0"), 400, "per_page")


class BodyErrorTest(ApiTestCase):
    def test_bodies_that_are_not_json_objects(self):
        actor_id = self.add(Actor, **ACTOR)["id"]
        cases = [  # (kwargs, status, message)
            ({}, 400, "body is required"),
            ({"data": "", "content_type": "application/json"}, 400, "body is required"),
            ({"data": "{not json", "content_type": "application/json"}, 400, "not valid JSON"),
            (
                {"data": '{"age": NaN, "name": "x", "gender": "y"}', "content_type": "application/json"},
                400,
                "not valid JSON",
            ),
            ({"data": '{"age": Infinity}', "content_type": "application/json"}, 400, "not valid JSON"),
            ({"data": b"\xff\xfe{", "content_type": "application/json"}, 400, "not valid JSON"),
            ({"data": "[" * 100000 + "]" * 100000, "content_type": "application/json"}, 400, "not valid JSON"),
            ({"json": [ACTOR]}, 400, "JSON object"),
            ({"json": "Viola"}, 400, "JSON object"),
            ({"data": "null", "content_type": "application/json"}, 400, "JSON object"),
            ({"data": '{"name": "x"}', "content_type": "text/plain"}, 415, "application/json"),
            ({"data": "name=x", "content_type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ]
        for method, path in (("POST", "/actors"), ("PATCH", f"/actors/{actor_id}")):
            for kwargs, status, message in cases:
                with self.subTest(method, kwargs=str(kwargs)[:60]):
                    self.assertError(self.call(method, path, **kwargs), status, message)
        self.assertEqual(self.rows(Actor), [{"id": actor_id, **ACTOR}])

    def test_a_body_over_the_limit_is_413(self):
        big = {**ACTOR, "name": "x" * (1024 * 1024)}
        self.assertError(self.call("POST", "/actors", json=big), 413, "larger than 1048576 bytes")
        self.assertEqual(self.rows(Actor), [])


class ErrorOrderTest(ApiTestCase):
    """When several things are wrong, the first in the README's order answers (API reference)."""

    def test_unknown_routes_are_404_and_wrong_methods_405_with_allow(self):
        self.assertError(self.client.get("/directors"), 404, "resource not found")
        self.assertError(self.client.get("/actors/1/agents"), 404)
        response = self.client.post("/actors/1", headers=self.headers())
        self.assertError(response, 405, "method not allowed")
        self.assertEqual(set(response.headers["Allow"].split(", ")), {"GET", "HEAD", "PATCH", "DELETE", "OPTIONS"})
        response = self.client.put("/actors", json=ACTOR)
        self.assertError(response, 405)
        self.assertIn("POST", response.headers["Allow"])

    def test_routing_before_size_before_auth_before_resource_before_body(self):
        big = "x" * (2 * 1024 * 1024)
        cases = [  # (method, path, role, kwargs, status)
            ("POST", "/actors/1", None, {"data": big}, 405),
            ("POST", "/actors", None, {"data": big, "content_type": "application/json"}, 413),
            ("PATCH", "/actors/424242", None, {"data": "{", "content_type": "application/json"}, 401),
            ("PATCH", "/actors/424242", "Casting Assistant", {"data": "{"}, 403),
            ("PATCH", "/actors/424242", "Executive Producer", {"data": "{", "content_type": "text/plain"}, 404),
            ("PATCH", f"/actors/{MAX_ID + 1}", None, {}, 401),
            ("POST", "/actors", "Executive Producer", {"data": "{", "content_type": "text/plain"}, 415),
            ("POST", "/actors", "Executive Producer", {"data": "{", "content_type": "application/json"}, 400),
        ]
        for method, path, role, kwargs, status in cases:
            with self.subTest(method, path=path, role=role, status=status):
                self.assertError(self.call(method, path, role=role, **kwargs), status)


class UnexpectedErrorTest(ApiTestCase):
    def test_500_leaks_no_traceback_or_sql(self):
        boom = RuntimeError("SELECT secret FROM passwords -- Traceback")
        with mock.patch("lists.Listing.page", side_effect=boom), self.assertLogs("app", "ERROR") as logs:
            body = self.assertError(self.call("GET", "/actors"), 500, "internal server error")
        self.assertNotIn("SELECT", str(body))
        self.assertIn("Traceback", "\n".join(logs.output))  # the server log keeps it


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


def verifier(app):
    auth = app.extensions["auth"]
    return auth.issuer, auth.keys.url, auth.audience


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
        {**AN_ISSUER, "JWKS_TIMEOUT": "2.5", "JWKS_MIN_REFETCH_INTERVAL": "7"},
        lambda app: (app.extensions["auth"].keys.timeout, app.extensions["auth"].keys.min_interval),
        (2.5, 7.0),
    ),
    (
        AN_ISSUER,
        lambda app: (app.extensions["auth"].keys.timeout, app.extensions["auth"].keys.min_interval),
        (5.0, 30.0),
    ),
    ({**AN_ISSUER, "REQUIRE_ISSUER": "1"}, lambda app: type(app.extensions["auth"].keys).__name__, "JWKSKeys"),
]


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
