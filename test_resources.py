"""resources.py: the routes of actors, movies and castings, as the README's API reference
gives them, run for both resources wherever they share the code; the index and health check."""

import datetime
from unittest import mock

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

import resources
import writes
from models import MAX_ID, Actor, Casting, Movie, db
from testing import ACTOR, MOVIE, MOVIE_ROW, RESOURCES, ApiTestCase


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
            ("?page=92233720368547758", [], 92233720368547758, 20),  # the last page there is: past any list
            ("?per_page=5&page=3", ids[10:15], 3, 5),
            ("?per_page=100", ids, 1, 100),
            ("?per_page=1", ids[:1], 1, 1),
            ("?page=2&page=1", ids[20:], 2, 20),  # of a repeated parameter, the first counts
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
