"""Lists at scale (SPEC: "Lists at scale"): filters, sorting, cursors, the page
window and bounded totals, on every list: both collections and both cast
lists; searches ignoring case and accents, and their cost. Expected orders and
matches are computed here, in Python, from the rows the test wrote, with
models.fold (which the database's own fold must match: FoldTest)."""

import base64
import contextlib
import datetime
import hashlib
import hmac
import json
import random
import tempfile
import unicodedata
from unittest import mock
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from sqlalchemy import delete, insert, text

from app import create_app
from models import Actor, Casting, Movie, db, fold
from search import Shares, pieces_to_look_up
from testing import ApiTestCase, app_config, assert_flat_cost, copy_rows, dispose, read_by

# Names that differ only in case or accents, ages and genders with ties, so
# that sorting must ignore case and accents and break ties by id.
ACTORS = [
    ("alice", 30, "Female"),
    ("Bob", 25, "Male"),
    ("carol", 35, "female"),
    ("Dave", 30, "Male"),
    ("eve", 22, "Non-binary"),
    ("Frank", 35, "MALE"),
    ("grace", 29, "Female"),
    ("Heidi", 25, "FEMALE"),
    ("ALICE", 41, "Female"),
    ("bob", 30, "Male"),
    ("Zed Zeta", 150, "Female"),
    ("zed zeta", 0, "Male"),
    ("Zoë", 33, "Female"),
    ("Émilie", 28, "Féminine"),
    ("Elliot", 45, "Male"),
    ("Emilie", 52, "female"),
]
MOVIES = [
    ("the long rehearsal", datetime.date(2019, 3, 8)),
    ("Harbour Lights", datetime.date(2021, 10, 15)),
    ("a quiet frontier", datetime.date(2023, 6, 2)),
    ("Paper Kingdoms", datetime.date(2021, 10, 15)),
    ("THE LAST MATINEE", datetime.date(2026, 4, 17)),
    ("harbour lights", datetime.date(1999, 12, 31)),
    ("Zero Hour", datetime.date(2021, 10, 16)),
    ("Amélie", datetime.date(2001, 4, 25)),
    ("Der Himmel über Berlin", datetime.date(1987, 10, 29)),
]

ACTOR_SORTS = ["id", "-id", "name", "-name", "age", "-age"]
ACTOR_SORTS += ["age,name", "-age,-name", "age,-id", "-name,age", "name,-id"]
MOVIE_SORTS = ["id", "-id", "title", "-title", "release_date", "-release_date"]
MOVIE_SORTS += ["release_date,title", "title,-release_date", "-release_date,-id", "-title,release_date"]

ACTOR_FILTERS = [  # (query, which actors it keeps)
    ("gender=female", lambda a: fold(a["gender"]) == "female"),
    ("gender=MALE", lambda a: fold(a["gender"]) == "male"),
    ("gender=FEMININE", lambda a: fold(a["gender"]) == "feminine"),
    ("gender=unknown", lambda a: False),
    ("age_min=30", lambda a: a["age"] >= 30),
    ("age_max=29", lambda a: a["age"] <= 29),
    ("age_min=25&age_max=35", lambda a: 25 <= a["age"] <= 35),
    ("age_min=0&age_max=0", lambda a: a["age"] == 0),
    ("age_min=150", lambda a: a["age"] == 150),
    ("age_min=36&age_max=35", lambda a: False),  # a range that holds nothing
    ("gender=female&age_min=25&age_max=35", lambda a: fold(a["gender"]) == "female" and 25 <= a["age"] <= 35),
    ("q=ALI&gender=female", lambda a: "ali" in fold(a["name"]) and fold(a["gender"]) == "female"),
    ("q=zoe", lambda a: "zoe" in fold(a["name"])),
    (f"q={quote('ÉMILIE')}", lambda a: "emilie" in fold(a["name"])),
    (f"q={quote('émilie')}&gender=f%C3%A9minine", lambda a: "emilie" in fold(a["name"]) and a["age"] == 28),
]
MOVIE_FILTERS = [
    ("released_from=2021-10-15", lambda m: m["release_date"] >= "2021-10-15"),
    ("released_to=2021-10-15", lambda m: m["release_date"] <= "2021-10-15"),
    ("released_from=2021-10-15&released_to=2021-10-15", lambda m: m["release_date"] == "2021-10-15"),
    ("released_from=2030-01-01", lambda m: False),
    ("released_from=2022-01-01&released_to=2021-01-01", lambda m: False),
    ("q=harbour&released_from=2000-01-01", lambda m: "harbour" in fold(m["title"]) and m["release_date"] >= "2000"),
    ("q=AMELIE", lambda m: "amelie" in fold(m["title"])),
    (f"q={quote('ÜBER')}", lambda m: "uber" in fold(m["title"])),
]

SORT_KEYS = {"name": lambda item: fold(item["name"]), "title": lambda item: fold(item["title"])}


def expected_order(items, sort):
    """`items` in the order of a ?sort=: each key in its direction, text
    folded (ignoring case and accents, in code point order), ties by id
    ascending unless the keys say -id."""
    keys = sort.split(",")
    if not any(key.lstrip("-") == "id" for key in keys):
        keys.append("id")
    ordered = list(items)
    for key in reversed(keys):  # Python's sort is stable: the last key first
        name = key.lstrip("-")
        ordered.sort(key=SORT_KEYS.get(name, lambda item, name=name: item[name]), reverse=key.startswith("-"))
    return ordered


class ListTestCase(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.actors = [self.add(Actor, name=n, age=a, gender=g) for n, a, g in ACTORS]
        self.movies = [self.add(Movie, title=t, release_date=d) for t, d in MOVIES]
        for movie in self.movies:
            movie["release_date"] = movie["release_date"].isoformat()
        # One movie with every actor in its cast, one actor in every movie.
        self.movie, self.actor = self.movies[0]["id"], self.actors[0]["id"]
        pairs = {(self.movie, a["id"]) for a in self.actors} | {(m["id"], self.actor) for m in self.movies}
        with self.app.app_context():
            db.session.execute(insert(Casting), [{"movie_id": m, "actor_id": a, "character": None} for m, a in pairs])
            db.session.commit()

    def lists(self):
        """(path, the key of its items, every item it lists, its filters, its sorts)"""
        return [
            ("/actors", "actors", self.actors, ACTOR_FILTERS, ACTOR_SORTS),
            (f"/movies/{self.movie}/actors", "actors", self.actors, ACTOR_FILTERS, ACTOR_SORTS),
            ("/movies", "movies", self.movies, MOVIE_FILTERS, MOVIE_SORTS),
            (f"/actors/{self.actor}/movies", "movies", self.movies, MOVIE_FILTERS, MOVIE_SORTS),
        ]

    def get(self, path, role="Casting Assistant"):
        response = self.call("GET", path, role=role)
        self.assertEqual(response.status_code, 200, response.get_data(as_text=True))
        return response

    def ids(self, path, key):
        return [item["id"] for item in self.get(path).get_json()[key]]

    def walk(self, path, key, meanwhile=None):
        """Follow next_cursor from `path` to the end: (the ids seen, the pages)."""
        seen, pages = [], 0
        while path:
            response = self.get(path)
            body = response.get_json()
            seen += [item["id"] for item in body[key]]
            pages += 1
            if pages > 1:
                self.assertIsNone(body["page"])
            if body["next_cursor"] is None:
                self.assertNotIn("Link", response.headers)
                break
            # The Link header's URL is the next page: path and query, used as is.
            link = response.headers["Link"]
            self.assertTrue(link.startswith("</") and link.endswith('>; rel="next"'), link)
            path = link[1 : -len('>; rel="next"')]
            self.assertEqual(parse_qs(urlsplit(path).query)["cursor"], [body["next_cursor"]])
            if meanwhile:
                meanwhile(pages)
        return seen, pages


class FilterAndSortTest(ListTestCase):
    def test_every_filter_keeps_what_it_names(self):
        for path, key, items, filters, _ in self.lists():
            for query, keep in filters:
                with self.subTest(path=path, query=query):
                    body = self.get(f"{path}?{query}").get_json()
                    expected = [item["id"] for item in items if keep(item)]
                    self.assertEqual([item["id"] for item in body[key]], expected)
                    self.assertEqual((body[f"total_{key}"], body["total_exact"]), (len(expected), True))

    def test_every_sort_key_in_both_directions_ignores_case_and_breaks_ties_by_id(self):
        for path, key, items, _, sorts in self.lists():
            for sort in sorts:
                with self.subTest(path=path, sort=sort):
                    expected = [item["id"] for item in expected_order(items, sort)]
                    self.assertEqual(self.ids(f"{path}?sort={sort}&per_page=100", key), expected)

    def test_accented_names_sort_among_the_others(self):
        names = [a["name"] for a in self.get("/actors?sort=name&per_page=100").get_json()["actors"]]
        self.assertEqual(names[names.index("Elliot") : names.index("eve") + 1], ["Elliot", "Émilie", "Emilie", "eve"])
        self.assertEqual(names[-3:], ["Zed Zeta", "zed zeta", "Zoë"])
        titles = [m["title"] for m in self.get("/movies?sort=title&per_page=100").get_json()["movies"]]
        self.assertEqual(titles[:2], ["a quiet frontier", "Amélie"])

    def test_filters_search_and_sort_combine(self):
        path = "/actors?gender=female&age_min=25&age_max=35&sort=-age"
        female = [a for a in self.actors if fold(a["gender"]) == "female" and 25 <= a["age"] <= 35]
        self.assertEqual(self.ids(path, "actors"), [a["id"] for a in expected_order(female, "-age")])
        path = "/movies?q=HARBOUR&sort=-release_date"
        harbours = [m for m in self.movies if "harbour" in fold(m["title"])]
        self.assertEqual(self.ids(path, "movies"), [m["id"] for m in expected_order(harbours, "-release_date")])

    def test_malformed_filters_and_sorts_are_400_naming_the_parameter(self):
        cases = [  # (list, query, parameter named in the message)
            ("/actors", "age_min=-1", "age_min"),
            ("/actors", "age_max=151", "age_max"),
            ("/actors", "age_min=abc", "age_min"),
            ("/actors", "age_min=2.5", "age_min"),
            ("/actors", "age_max=", "age_max"),
            ("/actors", "gender=", "gender"),
            ("/actors", "gender=" + "x" * 51, "gender"),
            ("/actors", "gender=a%00b", "gender"),
            ("/movies", "released_from=2021-13-01", "released_from"),
            ("/movies", "released_to=15/10/2021", "released_to"),
            ("/movies", "released_to=2021-1-1", "released_to"),
            ("/movies", "released_from=2021-02-30", "released_from"),
            ("/actors", "sort=", "sort"),
            ("/actors", "sort=height", "sort"),
            ("/actors", "sort=title", "sort"),  # a movie's key
            ("/movies", "sort=age", "sort"),
            ("/actors", "sort=name,name", "sort"),
            ("/actors", "sort=age,-age", "sort"),
            ("/actors", "sort=name,", "sort"),
            ("/actors", "sort=-", "sort"),
            ("/actors", "sort=--name", "sort"),
            ("/actors", "sort=%20name", "sort"),
            (f"/movies/{self.movie}/actors", "sort=release_date", "sort"),
            (f"/actors/{self.actor}/movies", "released_from=x", "released_from"),
        ]
        for path, query, parameter in cases:
            with self.subTest(path=path, query=query):
                body = self.assertError(self.call("GET", f"{path}?{query}"), 400, parameter)
                self.assertIn(parameter, body["errors"])

    def test_messages_say_what_to_send(self):
        cases = [  # (query, the message)
            ("page=-1", "page: Pages start at 1 and go up to 92233720368547758."),
            ("page=0", "page: Pages start at 1 and go up to 92233720368547758."),
            ("released_from=2021-02-30", "released_from: Not a date: use YYYY-MM-DD."),  # as any malformed date
            ("released_to=2021-13-01", "released_to: Not a date: use YYYY-MM-DD."),
            ("released_to=15/10/2021", "released_to: Not a date: use YYYY-MM-DD."),
        ]
        for query, message in cases:
            with self.subTest(query):
                self.assertEqual(
                    self.assertError(self.call("GET", f"/movies?{query}"), 400)["message"],
                    f"invalid query parameters: {message}",
                )

    def test_an_unknown_parameter_is_a_400_naming_it_and_the_one_meant(self):
        """A misspelt filter never answers an unfiltered list."""
        known = {
            "actors": "page, per_page, cursor, q, gender, age_min, age_max, sort",
            "movies": "page, per_page, cursor, q, released_from, released_to, sort",
        }
        cases = [  # (list, query, {parameter: its message})
            (
                "/actors",
                "min_age=25&max_age=35",
                {"min_age": "Did you mean age_min?", "max_age": "Did you mean age_max?"},
            ),
            ("/actors", "genre=female", {"genre": "Did you mean gender?"}),
            ("/actors", "Gender=female", {"Gender": "Did you mean gender?"}),
            ("/actors", "age-min=3", {"age-min": "Did you mean age_min?"}),
            ("/actors", "age=30", {"age": "Did you mean age_min or age_max?"}),
            ("/actors", "limit=5", {"limit": "Did you mean per_page?"}),
            ("/actors", "name=Viola", {"name": "Did you mean q?"}),
            ("/actors", "order_by=name", {"order_by": "Did you mean sort?"}),
            ("/movies", "release_date=2021-10-15", {"release_date": "Did you mean released_to or released_from?"}),
            ("/movies", "gender=female&age_min=99", {"gender": f"Known: {known['movies']}.", "age_min": "Known"}),
            ("/actors", "released_from=2030-01-01", {"released_from": f"Known: {known['actors']}."}),
            (f"/movies/{self.movie}/actors", "min_age=3", {"min_age": "Did you mean age_min?"}),
            (f"/actors/{self.actor}/movies", "from=2000-01-01", {"from": f"Known: {known['movies']}."}),
            (
                "/actors",
                "x=1&per_page=0&y=2",
                {"x": "Known", "per_page": "less than or equal to 100", "y": "Known"},
            ),  # in the order sent
            ("/actors", "cursor=x&min_age=1", {"cursor": "String does not match", "min_age": "Did you mean age_min?"}),
        ]
        for path, query, named in cases:
            with self.subTest(path=path, query=query):
                body = self.assertError(self.call("GET", f"{path}?{query}"), 400)
                self.assertEqual(list(body["errors"]), list(named))
                for parameter, message in named.items():
                    self.assertIn(message, " ".join(body["errors"][parameter]))
                    self.assertIn(f"{parameter}: ", body["message"])
                for parameter in named:
                    if named[parameter].startswith(("Did", "Known")):
                        self.assertTrue(body["errors"][parameter][0].startswith("Unknown parameter"))

    def test_a_cursor_page_takes_per_page_and_the_lists_own_parameters_only(self):
        first = self.get("/actors?per_page=2&gender=female").get_json()
        self.get(f"/actors?cursor={first['next_cursor']}&per_page=3&gender=female")
        body = self.assertError(self.call("GET", f"/actors?cursor={first['next_cursor']}&perpage=3"), 400)
        self.assertEqual(body["errors"], {"perpage": ["Unknown parameter. Did you mean per_page?"]})


class CursorTest(ListTestCase):
    def test_a_walk_by_cursor_sees_every_item_once_in_order_for_every_sort(self):
        for path, key, items, _, sorts in self.lists():
            for sort in sorts:
                with self.subTest(path=path, sort=sort):
                    seen, pages = self.walk(f"{path}?sort={sort}&per_page=5", key)
                    self.assertEqual(seen, [item["id"] for item in expected_order(items, sort)])
                    self.assertEqual(pages, -(-len(items) // 5))

    def test_a_walk_with_filters_and_search_keeps_them(self):
        seen, _ = self.walk("/actors?gender=female&sort=-age&per_page=2", "actors")
        female = [a for a in self.actors if fold(a["gender"]) == "female"]
        self.assertEqual(seen, [a["id"] for a in expected_order(female, "-age")])
        seen, _ = self.walk("/movies?q=harbour&released_to=2025-01-01&per_page=1", "movies")
        self.assertEqual(seen, [m["id"] for m in self.movies if "harbour" in fold(m["title"])])
        seen, _ = self.walk(f"/actors?q={quote('ÉMILIE')}&sort=-name&per_page=1", "actors")
        emilies = [a for a in self.actors if "emilie" in fold(a["name"])]
        self.assertEqual(seen, [a["id"] for a in expected_order(emilies, "-name")])

    def test_a_cursor_page_says_page_null_and_keeps_the_whole_lists_total(self):
        first = self.get("/actors?per_page=5&gender=female").get_json()
        body = self.get(f"/actors?cursor={first['next_cursor']}").get_json()
        female = [a["id"] for a in self.actors if fold(a["gender"]) == "female"]
        self.assertEqual((body["page"], body["per_page"], body["total_actors"]), (None, 20, len(female)))
        self.assertEqual([a["id"] for a in body["actors"]], female[5:])  # per_page as sent, else the default
        body = self.get(f"/actors?cursor={first['next_cursor']}&per_page=1&gender=FEMALE").get_json()
        self.assertEqual([a["id"] for a in body["actors"]], female[5:6])  # per_page may change

    def test_a_page_by_number_also_gives_the_cursor_to_the_next(self):
        body = self.get("/actors?page=2&per_page=4&sort=name").get_json()
        rest = self.get(f"/actors?cursor={body['next_cursor']}&per_page=100").get_json()
        names = [a["id"] for a in expected_order(self.actors, "name")]
        self.assertEqual([a["id"] for a in rest["actors"]], names[8:])

    def test_a_walk_under_inserts_and_deletes_sees_each_surviving_item_exactly_once(self):
        rng = random.Random(7)  # noqa: S311 (test data)
        for sort in ("id", "-id", "name", "-age", "age,-name"):
            with self.subTest(sort=sort):
                before = {a["id"] for a in self.rows(Actor)}
                seen, deleted, added = self.walk_while_writing(f"/actors?sort={sort}&per_page=3", before, rng)
                self.assertEqual(len(seen), len(set(seen)), "an item was seen twice")
                self.assertLessEqual(before - deleted, set(seen), "an item that existed throughout was missed")
                self.assertLessEqual(set(seen), before | added)

    def walk_while_writing(self, path, before, rng):
        """Walk, and between every two pages add two actors and delete one that
        was there before: (the ids seen, those deleted, those added)."""
        deleted, added = set(), set()

        def meanwhile(page):
            for _ in range(2):
                name = rng.choice(["Aaron", "mia", "Zoe", "bob", "Carl"]) + str(rng.randrange(100))
                added.add(self.add(Actor, name=name, age=rng.randrange(151), gender="Female")["id"])
            victim = rng.choice(sorted(before - deleted))
            with self.app.app_context(), db.engine.begin() as connection:
                connection.execute(delete(Actor).where(Actor.id == victim))
            deleted.add(victim)

        seen, _ = self.walk(path, "actors", meanwhile)
        return seen, deleted, added

    def cursor_of(self, path):
        return self.get(path).get_json()["next_cursor"]

    def test_a_cursor_is_signed_with_the_secret_key_alone(self):
        """Cursors were once signed with a key derived from the database URL
        when SECRET_KEY was unset: predictable on SQLite (forged cursors were
        accepted), an offline oracle for the password on PostgreSQL."""
        instance = tempfile.TemporaryDirectory()
        self.addCleanup(instance.cleanup)
        unset = create_app(app_config(SECRET_KEY=None, INSTANCE_PATH=instance.name))  # as ./setup.sh serve runs
        self.addCleanup(dispose, unset)
        client = unset.test_client()
        cursor = client.get("/actors?per_page=2", headers=self.headers()).get_json()["next_cursor"]
        payload = cursor.split(".")[0]
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        derived = hashlib.sha256(("cursor key from " + unset.config["SQLALCHEMY_DATABASE_URI"]).encode()).digest()
        forged = base64.urlsafe_b64encode(hmac.new(derived, raw, hashlib.sha256).digest()[:16]).rstrip(b"=").decode()
        self.assertError(client.get(f"/actors?cursor={payload}.{forged}", headers=self.headers()), 400, "cursor")
        self.assertEqual(client.get(f"/actors?cursor={cursor}", headers=self.headers()).status_code, 200)
        # Every instance of a deployment shares SECRET_KEY, so each takes the others' cursors.
        cursor = self.cursor_of("/actors?per_page=2")
        for secret, status in ((self.app.config["SECRET_KEY"], 200), ("another deployment's secret", 400)):
            with self.subTest(secret=secret):
                other = create_app(app_config(SECRET_KEY=secret))
                self.addCleanup(dispose, other)
                response = other.test_client().get(f"/actors?cursor={cursor}", headers=self.headers())
                self.assertEqual(response.status_code, status, response.get_json())

    def test_malformed_tampered_and_contradicting_cursors_are_400(self):
        cursor = self.cursor_of("/actors?per_page=2&gender=female&sort=-age")
        payload, mac = cursor.split(".")
        content = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))

        def signed_as(change):
            edited = json.loads(json.dumps(content))
            change(edited)
            payload_text = json.dumps(edited, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(payload_text).rstrip(b"=").decode() + "." + mac

        flipped = payload[:10] + ("A" if payload[10] != "A" else "B") + payload[11:]
        cases = [  # (query, what the message names)
            ("cursor=garbage", "cursor"),
            ("cursor=", "cursor"),
            ("cursor=a.b.c", "cursor"),
            ("cursor=%C3%A9.x", "cursor"),
            ("cursor=" + "A" * 5000 + ".x", "cursor"),
            (f"cursor={payload}", "cursor"),  # the signature cut off
            (f"cursor={payload}.", "cursor"),
            (f"cursor={flipped}.{mac}", "cursor"),  # one character changed
            (f"cursor={payload[:-4]}.{mac}", "cursor"),  # truncated
            (f"cursor={payload}.{mac[:-2]}", "cursor"),
            (f"cursor={signed_as(lambda c: c['after'].__setitem__(1, -1))}", "cursor"),  # moved on
            (f"cursor={signed_as(lambda c: c['criteria'].pop('gender'))}", "cursor"),  # filter removed
            (f"cursor={cursor}&page=2", "page"),
            (f"cursor={cursor}&page=1", "page"),
            (f"cursor={cursor}&gender=male", "gender"),
            (f"cursor={cursor}&sort=age", "sort"),
            (f"cursor={cursor}&sort=-age,-id", "sort"),
            (f"cursor={cursor}&q=a", "q"),
            (f"cursor={cursor}&age_min=3", "age_min"),
            (f"cursor={cursor}&per_page=0", "per_page"),
        ]
        for query, named in cases:
            with self.subTest(query=query[:80]):
                error = self.assertError(
                    self.call("GET", f"/actors?{query}"), 400, f"invalid query parameters: {named}"
                )
                self.assertIn(named, error["errors"])  # as the query schema's own 400s name their parameters

    def test_a_cursor_belongs_to_its_own_list(self):
        other_movie = self.movies[1]["id"]
        self.add(Casting, movie_id=other_movie, actor_id=self.actors[1]["id"])
        cases = [  # (where the cursor came from, where it is sent)
            ("/actors?per_page=2", "/movies"),
            ("/actors?per_page=2", f"/movies/{self.movie}/actors"),
            (f"/movies/{self.movie}/actors?per_page=2", f"/movies/{other_movie}/actors"),
            (f"/movies/{self.movie}/actors?per_page=2", "/actors"),
            (f"/actors/{self.actor}/movies?per_page=2", "/movies"),
        ]
        for source, target in cases:
            with self.subTest(source=source, target=target):
                cursor = self.cursor_of(source)
                self.assertError(self.call("GET", f"{target}?cursor={cursor}"), 400, "another list")

    def test_the_same_criteria_sent_again_with_the_cursor_are_no_contradiction(self):
        cursor = self.cursor_of("/actors?per_page=2&gender=female&q=A&sort=-age")
        for query in ("gender=female", "gender=FEMALE&q=a", "q=%C3%81", "sort=-age", "sort=-age,id", "per_page=3"):
            with self.subTest(query=query):
                self.get(f"/actors?cursor={cursor}&{query}")
        cursor = self.cursor_of("/movies?per_page=2")
        self.get(f"/movies?cursor={cursor}&sort=id")  # the default, named

    def test_a_cursor_after_the_last_items_were_deleted_is_an_empty_last_page(self):
        body = self.get("/actors?per_page=10").get_json()
        with self.app.app_context(), db.engine.begin() as connection:
            connection.execute(delete(Actor).where(Actor.id > body["actors"][-1]["id"]))
        body = self.get(f"/actors?cursor={body['next_cursor']}").get_json()
        self.assertEqual((body["actors"], body["next_cursor"], body["total_actors"]), ([], None, 10))


class CastListOwnerTest(ListTestCase):
    """A list under a movie or an actor looks for its owner only when its page
    is empty or the request is refused: the answers must not show it."""

    def test_a_missing_owner_is_404_before_any_400(self):
        cursor = self.get(f"/movies/{self.movie}/actors?per_page=2").get_json()["next_cursor"]
        queries = ["", "?per_page=0", "?sort=nope", "?age_min=x", f"?cursor={cursor}", "?cursor=x.y", "?page=3"]
        queries.append("?page=101&per_page=100")  # past the window
        for path, named in (("/movies/424242/actors", "movie 424242"), ("/actors/434343/movies", "actor 434343")):
            for query in queries:
                with self.subTest(path=path, query=query):
                    self.assertError(self.call("GET", path + query), 404, f"{named} not found")

    def test_an_owner_with_nothing_cast_or_a_page_past_the_end_is_an_empty_page(self):
        lonely = self.add(Movie, title="Nobody Came", release_date=datetime.date(2030, 1, 1))["id"]
        for path, total in (
            (f"/movies/{lonely}/actors", 0),
            (f"/movies/{self.movie}/actors?page=99", len(self.actors)),
        ):
            with self.subTest(path):
                body = self.get(path).get_json()
                self.assertEqual((body["actors"], body["total_actors"], body["next_cursor"]), ([], total, None))

    def test_a_refused_request_for_an_owner_that_exists_is_the_400(self):
        for query, named in (("?per_page=0", "per_page"), ("?sort=nope", "sort"), ("?cursor=x.y", "cursor")):
            with self.subTest(query):
                self.assertError(self.call("GET", f"/movies/{self.movie}/actors{query}"), 400, named)


# Names a search must tell apart, or not: case, accents (composed or not),
# letters that Unicode does not decompose, compatibility forms, wildcards and
# backslashes (literal), spaces, and words that many names share.
SEARCHED_NAMES = [
    "Zoë Saldaña",
    "ZOE KRAVITZ",
    "zoe",
    "Zoe\u0308 Decomposed",
    "Émilie",
    "Emilie",
    "EMILIE",
    "Søren Kierkegaard",
    "Ørsted",
    "Straße",
    "STRASSE",
    "Łukasz Żuławski",
    "İlker",
    "ΟΔΥΣΣΕΑΣ",
    "ﬁnn ﬂoyd",
    "Ａｌｉ",
    "Ǆemal",
    "100% Pure",
    "50 % off",
    "under_score",
    "under score",
    "back\\slash",
    "per%cent_and\\all",
    "spaced  out",
    "Seed actor 1",
    "Seed actor 7",
    "Seed actor 77",
    "Seed actor 777",
    "Seed actor 7770",
]
SEARCHES = ["zoe", "ZOË", "zoë", "Zoe\u0308", "o", "e", "é", "e\u0301", "EMILIE", "émilie", "MIL"]
SEARCHES += ["soren", "ørsted", "ø", "strasse", "ß", "ẞ", "ss", "lukasz zulawski", "ł", "ilker", "i", "İ"]
SEARCHES += ["οδυσσεας", "ς", "finn", "fi", "ali", "ａｌｉ", "dz", "ǆ"]
SEARCHES += ["%", "_", "\\", "0%", "% o", "r_s", "r s", "\\s", "%c", "_and\\", " ", "  ", "d  o"]
SEARCHES += ["seed actor", "seed actor 7", "seed actor 77", "SEED ACTOR 777", "actor 7770", "x", "qz", "", "z" * 200]


class SearchTest(ApiTestCase):
    """?q= finds exactly what a scan with the SPEC's rule finds (the folded name
    holds the folded search), whichever way the list finds it: the search index
    looking up few or many pieces, or each row checked."""

    def setUp(self):
        super().setUp()
        self.actors = [self.add(Actor, name=name, age=30, gender="Female") for name in SEARCHED_NAMES]

    def found(self, q):
        body = self.call("GET", "/actors?" + urlencode({"q": q, "per_page": 100})).get_json()
        return [a["id"] for a in body["actors"]], body["total_actors"]

    def test_a_search_finds_what_a_scan_finds(self):
        statistics = {  # what the search index's statistics say about every piece (PostgreSQL)
            "as read": None,
            "every piece rare": Shares({}, 0.000_01),
            "every piece common": Shares({}, 0.9),
            "one piece rare": Shares({piece: 0.000_01 for piece in ("7", "77", "777", "ss", "i")}, 0.9),
        }
        for said, shares in statistics.items():
            with mock.patch("lists.shares", return_value=shares) if shares else contextlib.nullcontext():
                for q in SEARCHES:
                    with self.subTest(q=q, statistics=said):
                        expected = [a["id"] for a in self.actors if fold(q) in fold(a["name"])]
                        self.assertEqual(self.found(q), (expected, len(expected)))

    def test_among_pieces_the_statistics_do_not_list_the_ones_made_of_rarer_parts_go_first(self):
        # A tenth of the names are "Seed actor <id in 7 digits>": the words' pieces are listed, and
        # "00" is common, so "000" is likely common too, though the statistics do not list it.
        words = "seed actor "
        shares = {words[i : i + n]: 0.1 for n in (1, 2, 3) for i in range(len(words) - n + 1)}
        shares = Shares({**shares, "0": 0.6, "00": 0.4, "07": 0.01}, 0.000_1)
        self.assertEqual(pieces_to_look_up("seed actor 0000771", shares), ("771", "077"))

    def test_the_specs_examples(self):
        zoe, emilie = self.actors[0]["id"], self.actors[5]["id"]
        self.assertIn(zoe, self.found("zoe")[0])
        self.assertIn(emilie, self.found("ÉMILIE")[0])
        self.assertEqual(self.found("ZOË"), self.found("zoe"))

    def test_a_changed_name_is_found_by_its_new_name_and_its_folded_form_never_shows(self):
        actor = self.actors[0]["id"]
        response = self.call("PATCH", f"/actors/{actor}", json={"name": "Ångström"})
        self.assertEqual(response.get_json()["actor"], {"id": actor, "name": "Ångström", "age": 30, "gender": "Female"})
        self.assertEqual(self.found("ANGSTROM"), ([actor], 1))
        self.assertEqual(self.found("saldana"), ([], 0))
        events = self.call("GET", "/audit?resource=actors&action=update").get_json()["events"]
        self.assertEqual(events[0]["changes"], {"name": ["Zoë Saldaña", "Ångström"]})
        self.assertEqual(self.rows(Actor)[0], {"id": actor, "name": "Ångström", "age": 30, "gender": "Female"})


class FoldTest(ApiTestCase):
    """PostgreSQL's casting_fold (migration 0005), which fills the folded
    columns, folds as models.fold does, which folds ?q= and ?gender=."""

    TEXTS = ["ΟΔΟΣ ΣΑΣ", "Σ", "İSTANBUL", "e\u0301\u0323", "Ǆ ǅ ǆ", "ﬃ", "Ⅻ", "①", "㎧", "ẞ", "Ⱥ", "ᾼ", "ǰ"]

    def test_the_databases_fold_is_pythons_on_every_assigned_code_point(self):
        self.requires_postgresql("SQLite's casting_fold is models.fold itself")
        with self.app.app_context(), db.engine.connect() as connection:
            characters = [chr(c) for c in range(1, 0x110000) if unicodedata.category(chr(c)) not in ("Cs", "Co", "Cn")]
            texts = [f"A{c}a" for c in characters] + self.TEXTS  # within a word: the final sigma's case
            folded = connection.execute(
                text(
                    "SELECT casting_fold(t) FROM unnest(CAST(:texts AS text[])) WITH ORDINALITY AS u(t, n) ORDER BY n"
                ),
                {"texts": texts},
            ).scalars()
            differences = [(t, f, fold(t)) for t, f in zip(texts, folded, strict=True) if f != fold(t)]
        self.assertEqual(differences[:20], [])
        self.assertEqual(len(texts), len(characters) + len(self.TEXTS))


class WindowAndTotalTest(ApiTestCase):
    """The first 10,000 items by page, every item by cursor; exact totals up to
    the bound (1,000), then a lower bound that says so."""

    def add_actors(self, count):
        rows = [{"name": f"Actor {i}", "age": 30, "gender": "Female" if i % 2 else "Male"} for i in range(count)]
        with self.app.app_context():
            db.session.execute(insert(Actor), rows)
            db.session.commit()

    def page(self, query, status=200):
        response = self.call("GET", f"/actors?{query}")
        self.assertEqual(response.status_code, status, response.get_data(as_text=True))
        return response.get_json()

    def test_pages_reach_the_first_10000_items_and_cursors_the_rest(self):
        self.add_actors(10_050)
        last = self.page("page=100&per_page=100")  # items 9,901..10,000: served whole
        self.assertEqual((len(last["actors"]), last["total_actors"], last["total_exact"]), (100, 10_050, True))
        for query in ("page=101&per_page=100", "page=501", "page=10001&per_page=1", "page=502&per_page=20"):
            with self.subTest(query):
                self.assertError(self.call("GET", f"/actors?{query}"), 400, "cursor")
        # Past the end of a list is an empty page, not an error, past the window too.
        past_the_end = ("page=999999999999", "q=Actor 1&page=101&per_page=100", "gender=female&page=101&per_page=100")
        for query in (*past_the_end, "q=zzz&page=999"):
            with self.subTest(query):
                self.assertEqual(self.page(query)["actors"], [])
        self.assertError(self.call("GET", "/actors?q=Actor&page=101&per_page=100"), 400, "cursor")
        rest = self.page(f"cursor={last['next_cursor']}&per_page=100")
        self.assertEqual(len(rest["actors"]), 50)
        self.assertIsNone(rest["next_cursor"])

    def test_totals_are_exact_up_to_the_bound_then_a_lower_bound(self):
        self.add_actors(2_001)  # 1,000 female, 1,001 male
        cases = [  # (query, total, exact)
            ("", 2_001, True),  # the whole table: its counter, always exact
            ("gender=female", 1_000, True),
            ("gender=male", 1_000, False),  # 1,001: the count stopped at the bound
            ("q=Actor", 1_000, False),
            ("q=Actor 1999", 1, True),
            ("gender=male&page=500", 1_000, False),  # a page past the end counts the same way
            ("gender=female&page=500", 1_000, True),
        ]
        for query, total, exact in cases:
            with self.subTest(query):
                body = self.page(query)
                self.assertEqual((body["total_actors"], body["total_exact"]), (total, exact))

    def test_a_page_past_the_window_is_refused_or_found_empty_without_reading_that_far(self):
        self.add_actors(10_050)  # 5,025 female
        with self.app.app_context():
            db.session.execute(insert(Actor), [{"name": "Someone", "age": 40, "gender": "Male"}] * 100)
            db.session.commit()
        cases = [  # (query, status)
            ("gender=female&page=92233720368547758", 200),  # the last page allowed: past any list of 10,150 actors
            ("q=actor&page=10151&per_page=1", 200),
            ("gender=female&page=101&per_page=100", 200),  # the list ends before the window does
            ("page=10151&per_page=1", 200),  # the whole table: its counter says where it ends
            ("page=10150&per_page=1", 400),
            ("q=actor&page=101&per_page=100", 400),  # longer than the window
            # Longer than the window (10,050 items): refused, though this page is past its
            # end, since telling would mean reading the list up to it.
            ("q=actor&page=10100&per_page=1", 400),
        ]
        for query, status in cases:
            with self.subTest(query):
                if status == 400:
                    self.assertError(self.call("GET", f"/actors?{query}"), 400, "cursor")
                else:
                    self.assertEqual(self.page(query)["actors"], [])

    def test_a_page_that_ends_its_list_knows_its_total_without_counting(self):
        self.add_actors(2_001)  # 1,000 female, 1,001 male
        cases = [  # (query, total, exact)
            ("gender=male&per_page=100&page=11", 1_001, True),  # the last page: 1,000 before it, and 1
            ("gender=male&per_page=100&page=10", 1_000, False),  # not the last: the count stops at its bound
            ("q=Actor 2000", 1, True),
        ]
        for query, total, exact in cases:
            with self.subTest(query):
                body = self.page(query)
                self.assertEqual((body["total_actors"], body["total_exact"]), (total, exact))


class LoweredBoundTest(ApiTestCase):
    config = {"LIST_COUNT_BOUND": 3, "LIST_WINDOW": 4}

    def test_the_bound_and_the_window_are_settings(self):
        for i in range(6):
            self.add(Actor, name=f"A{i}", age=20 + i, gender="Female")
        self.add(Movie, title="M", release_date=datetime.date(2020, 1, 1))
        cases = [  # (path, total, exact, status)
            ("/actors?age_min=22&per_page=2", 3, False, 200),  # 4 match: the count stops at 3
            ("/actors?age_min=22", 4, True, 200),  # a page that shows the whole list knows its total
            ("/actors?age_min=23", 3, True, 200),
            ("/actors", 6, True, 200),
            ("/actors?page=2&per_page=4", None, None, 400),  # starts at the 5th item: past the window
            ("/actors?page=3&per_page=2", None, None, 400),
            ("/actors?page=2&per_page=3&age_min=25", 1, True, 200),  # past the end: empty
        ]
        for path, total, exact, status in cases:
            with self.subTest(path):
                response = self.call("GET", path)
                self.assertEqual(response.status_code, status)
                if status == 200:
                    body = response.get_json()
                    self.assertEqual((body["total_actors"], body["total_exact"]), (total, exact))

    def test_a_page_past_any_list_is_a_400_or_an_empty_page_never_a_500(self):
        """Past the count's bound, a page past the window is looked for in the
        database: at an offset that must fit in 64 bits."""
        for i in range(6):
            self.add(Actor, name=f"A{i}", age=20 + i, gender="Female")
        last = 2**63 // 100  # the last page whose items a 64-bit offset reaches, 100 to a page
        body = self.call("GET", f"/actors?gender=female&page={last}&per_page=100").get_json()
        self.assertEqual((body["actors"], body["total_exact"]), ([], False))
        for page in (last + 1, 99999999999999999999, "9" * 5000):
            with self.subTest(page=str(page)[:30]):
                self.assertError(self.call("GET", f"/actors?gender=female&page={page}"), 400, "page")


def _bulk_name(i):
    """A name of the bulk rows: a word every one shares, and 32 hex digits."""
    return f"Bulk {hashlib.md5(str(i).encode()).hexdigest()}"  # noqa: S324 (test data, not a secret)


class FlatCostTest(ApiTestCase):
    """On PostgreSQL each list reads about as many rows at 160,000 actors as at
    40,000: its cost is bounded, whatever the table size (the indexes of
    migrations 0003 and 0005, the bounded totals, the search's rarest pieces).
    Rows read are counted from the plans of the very statements the requests
    run (EXPLAIN ANALYZE), and so are the pages of tables and indexes they
    read (BUFFERS) for the searches and pages whose words or numbers a client
    chooses. The count stops at 100 here, not 1,000, so that even the rarer
    filters (1 actor in 73 is 90) reach the bound at both sizes: below it a
    count grows with the matches, by design."""

    config = {"LIST_COUNT_BOUND": 100}
    # What a client can choose: a whole name among rows that share a word; a
    # word every row shares and a rare one; one or two letters that no name
    # holds; the longest search; a page past the end of a long list.
    HARD = [
        "/actors?" + urlencode({"q": _bulk_name(20_000).upper()}),
        "/actors?q=seed+actor+33333",
        "/actors?q=x",
        "/actors?q=qz",
        "/actors?"
        + urlencode({"q": "".join(random.Random(5).choices("abcdefghijklmnopqrstuvwxyz0123456789 %_", k=200))}),  # noqa: S311
        "/actors?gender=female&page=1000000000000",
        "/actors?q=son&page=1000000000000",
        "/movies?q=movie&page=1000000000000",
    ]
    PATHS = [
        "/actors",
        "/actors?q=son",
        "/actors?q=quill",
        "/actors?gender=female&age_min=25&age_max=35&sort=-age",
        "/actors?gender=unknown",
        "/actors?sort=name",
        "/actors?sort=-age&per_page=100",
        "/actors?age_min=90&age_max=90",
        "/movies?sort=-release_date",
        "/movies?released_from=2000-01-01&released_to=2009-12-31&sort=title",
        "/movies/7/actors?gender=female",
        "/actors/7/movies",
        "{deep cursor}",
        *HARD,
    ]

    def setUp(self):
        super().setUp()
        self.requires_postgresql("the indexes that bound the cost exist on PostgreSQL only")
        self.rng = random.Random(3)  # noqa: S311 (test data)
        self.actors = 0

    def name(self, i):
        """Most names end in ...son; one is 'Ada Quill'; a quarter are bulk rows, a
        quarter 'Seed actor <i>'."""
        if i == 5_000:
            return "Ada Quill"
        if i % 4 == 0:
            return _bulk_name(i)
        if i % 4 == 1:
            return f"Seed actor {i}"
        last = self.rng.choice(["Berg", "Ova"]) if i % 3 == 0 else "Hanson"
        return f"{self.rng.choice(['Ada', 'Bo', 'Cy'])} {last}{i % 97}"

    def grow_to(self, actors):
        """Add actors (see name), a movie per 10 and a casting per actor."""
        first, movies = self.actors + 1, actors // 10
        rows = []
        for i in range(first, actors + 1):
            gender = self.rng.choice(["Female", "Male", "Other"])
            rows.append(f"{i}\t{self.name(i)}\t{self.rng.randint(18, 90)}\t{gender}\n")
        movie_rows = [
            f"{m}\tMovie {m}\t{datetime.date(1950, 1, 1) + datetime.timedelta(days=self.rng.randrange(28000))}\n"
            for m in range(self.actors // 10 + 1, movies + 1)
        ]
        castings = [f"{self.rng.randrange(movies) + 1}\t{i}\n" for i in range(first, actors + 1)]
        copy_rows(
            self,
            [
                ("actors", "(id, name, age, gender)", rows),
                ("movies", "(id, title, release_date)", movie_rows),
                ("castings", "(movie_id, actor_id)", castings),
            ],
            ("SELECT setval(pg_get_serial_sequence('actors', 'id'), %s)", (actors,)),
            ("SELECT setval(pg_get_serial_sequence('movies', 'id'), %s)", (movies,)),
            # The search indexes' pending entries merged, as autovacuum does.
            ("SELECT gin_clean_pending_list(%s::regclass)", ("ix_actors_name_grams",)),
            ("SELECT gin_clean_pending_list(%s::regclass)", ("ix_movies_title_grams",)),
        )
        self.actors = actors

    def deep_cursor(self):
        path = "/actors?sort=-age&per_page=100"
        for _ in range(60):
            path = f"/actors?cursor={self.call('GET', path).get_json()['next_cursor']}&per_page=100"
        return path

    def measure(self):
        deep = self.deep_cursor()
        read_by(self, "/actors?q=any")  # the search index's statistics, read once a minute, are not a list's cost
        return {path: read_by(self, deep if path == "{deep cursor}" else path) for path in self.PATHS}

    def test_lists_read_as_many_rows_at_160000_actors_as_at_40000(self):
        assert_flat_cost(self, 40_000, 160_000, pages_too=self.HARD)


class DescriptionAgreesTest(ApiTestCase):
    def test_each_lists_query_schema_names_exactly_what_its_listing_filters_and_sorts_by(self):
        from lists import AUDIT_COLUMNS
        from resources import ACTORS, MOVIES
        from schemas import AuditQuerySchema

        paging = {"page", "per_page", "cursor"}
        for schema, columns in (
            (ACTORS.list_query_schema(), ACTORS.columns),
            (MOVIES.list_query_schema(), MOVIES.columns),
            (AuditQuerySchema(), AUDIT_COLUMNS),
        ):
            with self.subTest(type(schema).__name__):
                searchable = {"q"} if columns.search is not None else set()
                sortable = {"sort"} if len(columns.sort_keys) > 1 else set()
                self.assertEqual(set(schema.fields), paging | searchable | sortable | set(columns.filters))
                if sortable:
                    self.assertEqual(set(schema.fields["sort"].keys), set(columns.sort_keys))
