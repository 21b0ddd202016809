"""The audit trail (SPEC: "Audit trail"): an event for every successful write
and none for a refused or failed one, written atomically with the write;
events that outlive what they describe; GET /audit with its filters, pages
and cursors; and the trail replayed gives back the tables."""

import concurrent.futures
import datetime
import random
from unittest import mock

from sqlalchemy import delete, insert

import writes
from models import Actor, AuditEvent, Casting, Movie, db
from testing import ACTOR, MOVIE, ApiTestCase, assert_flat_cost, copy_rows, read_by, replay


class AuditTestCase(ApiTestCase):
    def events(self, query="", role="Executive Producer"):
        response = self.call("GET", f"/audit{query}", role=role)
        self.assertEqual(response.status_code, 200, response.get_data(as_text=True))
        return response.get_json()["events"]

    def write(self, method, path, status, **kwargs):
        response = self.call(method, path, **kwargs)
        self.assertEqual(response.status_code, status, response.get_data(as_text=True))
        return response


class EventsTest(AuditTestCase):
    def test_every_successful_write_records_one_event_of_what_it_did(self):
        actor = self.write("POST", "/actors", 201, json={**ACTOR, "name": "  Viola Davis "}).get_json()["actor"]["id"]
        movie = self.write("POST", "/movies", 201, json={**MOVIE, "release_date": "10/15/2021"}).get_json()
        movie = movie["movie"]["id"]
        cast = f"/movies/{movie}/actors/{actor}"
        steps = [  # (method, path, body, status, the event: (action, resource, ids, changes), or None)
            (
                "PATCH",
                f"/actors/{actor}",
                {"age": 62},
                200,
                ("update", "actors", (actor, None, None), {"age": [61, 62]}),
            ),
            (
                "PATCH",
                f"/movies/{movie}",
                {"title": "Harbour Nights", "release_date": "2021-10-15"},
                200,
                ("update", "movies", (movie, None, None), {"title": ["Harbour Lights", "Harbour Nights"]}),
            ),
            ("PATCH", f"/actors/{actor}", {"age": 62, "name": "Viola Davis"}, 200, None),  # changes nothing
            ("PUT", cast, None, 201, ("cast", "castings", (None, movie, actor), {"character": [None, None]})),
            ("PUT", cast, None, 200, None),  # already cast
            (
                "PUT",
                cast,
                {"character": "Ruth"},
                200,
                ("cast", "castings", (None, movie, actor), {"character": [None, "Ruth"]}),
            ),
            ("PUT", cast, {"character": "Ruth"}, 200, None),
            (
                "DELETE",
                cast,
                None,
                200,
                (
                    "uncast",
                    "castings",
                    (None, movie, actor),
                    {"movie_id": movie, "actor_id": actor, "character": "Ruth"},
                ),
            ),
            (
                "PUT",
                cast,
                {"character": "Mei"},
                201,
                ("cast", "castings", (None, movie, actor), {"character": [None, "Mei"]}),
            ),
            (
                "DELETE",
                f"/actors/{actor}",
                None,
                200,
                (
                    "delete",
                    "actors",
                    (actor, None, None),
                    {
                        "id": actor,
                        "name": "Viola Davis",
                        "age": 62,
                        "gender": "Female",
                        "castings": [{"movie_id": movie, "character": "Mei"}],  # what the delete removed
                    },
                ),
            ),
        ]
        created = self.events()
        self.assertEqual(
            [(e["action"], e["resource"], e["resource_id"], e["changes"]) for e in created],
            [
                ("create", "movies", movie, {"title": "Harbour Lights", "release_date": "2021-10-15"}),
                ("create", "actors", actor, {"name": "Viola Davis", "age": 61, "gender": "Female"}),
            ],
        )
        for method, path, body, status, expected in steps:
            with self.subTest(method=method, path=path, body=body):
                before = self.events()
                started = datetime.datetime.now(datetime.UTC)
                # A client's own X-Request-ID is never what the event records (nor what the response carries).
                headers = {**self.headers(), "X-Request-ID": f"req-{random.randrange(10**9)}"}  # noqa: S311
                request_id = self.write(method, path, status, json=body, headers=headers).headers["X-Request-ID"]
                after = self.events()
                if expected is None:
                    self.assertEqual(after, before)
                    continue
                self.assertEqual(after[1:], before)  # one new event, newest first
                event = after[0]
                action, resource, (resource_id, movie_id, actor_id), changes = expected
                self.assertEqual(
                    {key: event[key] for key in ("action", "resource", "resource_id", "movie_id", "actor_id")},
                    {
                        "action": action,
                        "resource": resource,
                        "resource_id": resource_id,
                        "movie_id": movie_id,
                        "actor_id": actor_id,
                    },
                )
                self.assertEqual(event["changes"], changes)
                self.assertEqual((event["subject"], event["request_id"]), ("auth0|test", request_id))
                self.assertGreater(event["id"], before[0]["id"])
                at = datetime.datetime.fromisoformat(event["at"])
                self.assertTrue(event["at"].endswith("Z"))
                self.assertLessEqual(started - datetime.timedelta(seconds=1), at)
                self.assertLessEqual(at, datetime.datetime.now(datetime.UTC))

    def test_deleting_a_movie_records_one_event_that_lists_its_castings(self):
        movie = self.add(Movie, title="M", release_date=datetime.date(2020, 1, 1))["id"]
        actors = [self.add(Actor, name=f"A{i}", age=30, gender="F")["id"] for i in range(3)]
        for actor, character in zip(actors, ("Ruth", None, "Mei"), strict=True):
            self.add(Casting, movie_id=movie, actor_id=actor, character=character)
        other = self.add(Movie, title="N", release_date=datetime.date(2021, 1, 1))["id"]
        self.add(Casting, movie_id=other, actor_id=actors[0], character="Kept")
        self.write("DELETE", f"/movies/{movie}", 200)
        [event] = self.events()
        self.assertEqual((event["action"], event["resource"], event["resource_id"]), ("delete", "movies", movie))
        self.assertEqual(
            event["changes"],
            {
                "id": movie,
                "title": "M",
                "release_date": "2020-01-01",
                "castings": [
                    {"actor_id": actors[0], "character": "Ruth"},
                    {"actor_id": actors[1], "character": None},
                    {"actor_id": actors[2], "character": "Mei"},
                ],
            },
        )
        self.assertEqual(self.rows(Casting), [{"movie_id": other, "actor_id": actors[0], "character": "Kept"}])
        # Nothing cast: the list is there, and empty.
        self.write("DELETE", f"/actors/{actors[1]}", 200)
        self.assertEqual(self.events()[0]["changes"]["castings"], [])

    def test_a_refused_delete_removes_no_casting(self):
        actor = self.add(Actor, **ACTOR)["id"]
        movie = self.add(Movie, title="M", release_date=datetime.date(2020, 1, 1))["id"]
        self.add(Casting, movie_id=movie, actor_id=actor, character="Ruth")
        headers = {**self.headers(), "If-Match": f'"{actor}.9"'}
        self.assertError(self.call("DELETE", f"/actors/{actor}", headers=headers), 412)
        self.assertEqual(len(self.rows(Casting)), 1)
        self.assertEqual(self.rows(AuditEvent), [])

    def test_a_casting_added_while_its_actor_is_deleted_is_in_the_delete_event(self):
        """A cast that has inserted its casting but not committed yet, while
        the delete starts: the delete waits for it, removes the casting and
        lists it, so the trail still holds everything the delete removed."""
        actor = self.add(Actor, **ACTOR)["id"]
        movie = self.add(Movie, title="M", release_date=datetime.date(2020, 1, 1))["id"]
        with self.app.app_context():
            pending = db.engine.connect()
        self.addCleanup(pending.close)
        transaction = pending.begin()
        pending.execute(insert(Casting).values(movie_id=movie, actor_id=actor, character="Late"))
        deleting = concurrent.futures.ThreadPoolExecutor(1)
        self.addCleanup(deleting.shutdown)
        answer = deleting.submit(self.call, "DELETE", f"/actors/{actor}")
        # The delete waits for the pending casting's transaction, however long it takes.
        self.assertRaises(concurrent.futures.TimeoutError, answer.result, timeout=0.5)
        transaction.commit()
        self.assertEqual(answer.result(timeout=30).status_code, 200)
        [event] = self.events()
        self.assertEqual(event["changes"]["castings"], [{"movie_id": movie, "character": "Late"}])
        self.assertEqual(self.rows(Casting), [])

    def test_refused_and_failed_writes_record_nothing(self):
        actor = self.add(Actor, **ACTOR)["id"]
        movie = self.add(Movie, title="M", release_date=datetime.date(2020, 1, 1))["id"]
        cases = [  # (method, path, request arguments, status)
            ("POST", "/actors", {"json": {"name": "x"}}, 422),
            ("POST", "/actors", {"data": "{", "content_type": "application/json"}, 400),
            ("POST", "/actors", {"data": "x", "content_type": "text/plain"}, 415),
            ("POST", "/movies", {"json": MOVIE, "role": "Casting Director"}, 403),
            ("POST", "/actors", {"json": ACTOR, "role": None}, 401),
            ("PATCH", f"/actors/{actor}", {"json": {"age": 151}}, 422),
            (
                "PATCH",
                f"/actors/{actor}",
                {"json": {"age": 1}, "headers": {**self.headers(), "If-Match": '"0.0"'}},
                412,
            ),
            ("PATCH", "/actors/999999", {"json": {"age": 1}}, 404),
            ("DELETE", "/movies/999999", {}, 404),
            ("DELETE", f"/movies/{movie}/actors/{actor}", {}, 404),  # not cast
            ("PUT", f"/movies/{movie}/actors/999999", {}, 404),
            ("PUT", f"/movies/{movie}/actors/{actor}", {"json": {"character": ""}}, 422),
        ]
        for method, path, kwargs, status in cases:
            with self.subTest(method=method, path=path, status=status):
                self.assertError(self.call(method, path, **kwargs), status)
        self.assertEqual(self.rows(AuditEvent), [])

    def test_a_write_whose_event_cannot_be_recorded_does_not_happen(self):
        """Both or neither: the event's INSERT fails (a subject too long for its
        column, as a broken token might carry), so the write is undone too."""
        actor = self.add(Actor, **ACTOR)["id"]
        movie = self.add(Movie, title="M", release_date=datetime.date(2020, 1, 1))["id"]
        self.add(Casting, movie_id=movie, actor_id=actor, character="Ruth")
        before = {model: self.rows(model) for model in (Actor, Movie, Casting)}
        real_event = writes._event

        def unrecordable(by, action, table, row):
            return {**real_event(by, action, table, row), "subject": None}  # NOT NULL

        cases = [
            ("POST", "/actors", ACTOR),
            ("PATCH", f"/actors/{actor}", {"age": 1}),
            ("DELETE", f"/movies/{movie}/actors/{actor}", None),
            ("PUT", f"/movies/{movie}/actors/{actor}", {"character": "Mei"}),
            ("DELETE", f"/actors/{actor}", None),
        ]
        with mock.patch("writes._event", unrecordable):
            for method, path, body in cases:
                with self.subTest(method=method, path=path):
                    self.assertError(self.call(method, path, json=body), 500)
        self.assertEqual({model: self.rows(model) for model in before}, before)
        self.assertEqual(self.rows(AuditEvent), [])

    def test_events_outlive_what_they_describe(self):
        actor = self.write("POST", "/actors", 201, json=ACTOR).get_json()["actor"]["id"]
        self.write("PATCH", f"/actors/{actor}", 200, json={"age": 62})
        self.write("DELETE", f"/actors/{actor}", 200)
        self.assertEqual(self.rows(Actor), [])
        history = self.events(f"?resource=actors&resource_id={actor}")
        self.assertEqual([e["action"] for e in history], ["delete", "update", "create"])

    def test_only_the_executive_producer_reads_the_trail(self):
        for role, status in (("Casting Assistant", 403), ("Casting Director", 403), (None, 401)):
            with self.subTest(role):
                self.assertError(self.call("GET", "/audit", role=role), status)
        self.events(role="Executive Producer")

    def test_events_cannot_be_changed_or_deleted_through_the_api(self):
        self.write("POST", "/actors", 201, json=ACTOR)
        event = self.events()[0]["id"]
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            with self.subTest(method):
                self.assertIn(self.call(method, "/audit", json={}).status_code, (405,))
                self.assertEqual(self.call(method, f"/audit/{event}", json={}).status_code, 404)
        self.assertEqual(len(self.rows(AuditEvent)), 1)


class AuditListTest(AuditTestCase):
    def setUp(self):
        super().setUp()
        # Two subjects' writes, with instants between them to filter on.
        self.marks = [datetime.datetime.now(datetime.UTC)]
        producer = self.issuer.token(["add:actors", "edit:actors", "delete:actors", "add:movies", "edit:movies"])
        director = self.issuer.token(["add:actors", "edit:actors"], sub="auth0|director")
        self.actor = self.write("POST", "/actors", 201, json=ACTOR, headers=self.headers(token=producer))
        self.actor = self.actor.get_json()["actor"]["id"]
        self.write("PATCH", f"/actors/{self.actor}", 200, json={"age": 62}, headers=self.headers(token=director))
        self.marks.append(datetime.datetime.now(datetime.UTC))
        self.movie = self.write("POST", "/movies", 201, json=MOVIE, headers=self.headers(token=producer))
        self.movie = self.movie.get_json()["movie"]["id"]
        other = self.write("POST", "/actors", 201, json=ACTOR, headers=self.headers(token=director))
        self.other = other.get_json()["actor"]["id"]
        path = f"/movies/{self.movie}/actors/{self.actor}"
        self.write("PUT", path, 201, json={"character": "Ruth"}, headers=self.headers(token=producer))
        self.marks.append(datetime.datetime.now(datetime.UTC))
        self.write("DELETE", f"/actors/{self.other}", 200, headers=self.headers(token=producer))
        self.marks.append(datetime.datetime.now(datetime.UTC))

    @staticmethod
    def own(event, resource):
        """The id of the actor or movie whose own event this is, if it is one of `resource`'s."""
        return event["resource_id"] if event["resource"] == resource else None

    def at(self, i):
        """Mark i as the events spell an instant, so that strings compare as instants."""
        return self.marks[i].strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def test_every_filter(self):
        every = self.events()
        self.assertEqual(len(every), 6)
        self.assertEqual([e["id"] for e in every], sorted((e["id"] for e in every), reverse=True))  # newest first
        cases = [  # (query, which events it keeps)
            ("resource=actors", lambda e: e["resource"] == "actors"),
            ("resource=castings", lambda e: e["resource"] == "castings"),
            (f"resource_id={self.actor}", lambda e: e["resource_id"] == self.actor),
            (f"resource=movies&resource_id={self.movie}", lambda e: e["resource"] == "movies"),
            ("subject=auth0|director", lambda e: e["subject"] == "auth0|director"),
            ("subject=nobody", lambda e: False),
            ("action=create", lambda e: e["action"] == "create"),
            ("action=delete&resource=actors", lambda e: e["action"] == "delete"),
            (f"since={self.at(1)}", lambda e: e["at"] >= self.at(1)),
            (f"until={self.at(1)}", lambda e: e["at"] < self.at(1)),
            (f"since={self.at(1)}&until={self.at(2)}", lambda e: self.at(1) <= e["at"] < self.at(2)),
            (f"since={self.at(3)}", lambda e: False),
            ("since=2000-01-01T00:00:00%2B05:00", lambda e: True),  # any zone
            # An actor's or a movie's events: its own, and its castings'.
            (f"actor_id={self.actor}", lambda e: self.actor in (e["actor_id"], self.own(e, "actors"))),
            (f"actor_id={self.other}", lambda e: self.other in (e["actor_id"], self.own(e, "actors"))),
            (f"movie_id={self.movie}", lambda e: self.movie in (e["movie_id"], self.own(e, "movies"))),
            (f"actor_id={self.actor}&resource=castings", lambda e: e["actor_id"] == self.actor),
            (f"actor_id={self.actor}&movie_id={self.movie}", lambda e: e["resource"] == "castings"),
            (f"movie_id={self.actor}", lambda e: e["movie_id"] == self.actor or self.own(e, "movies") == self.actor),
            ("actor_id=2147483647", lambda e: False),
        ]
        for query, keep in cases:
            with self.subTest(query):
                expected = [e["id"] for e in every if keep(e)]
                body = self.call("GET", f"/audit?{query}").get_json()
                self.assertEqual([e["id"] for e in body["events"]], expected)
                self.assertEqual((body["total_events"], body["total_exact"]), (len(expected), True))
        self.assertEqual(len(self.events(f"?since={self.at(1)}&until={self.at(2)}")), 3)

    def test_an_until_is_exclusive_and_a_since_inclusive(self):
        event = self.events()[2]
        self.assertIn(event["id"], [e["id"] for e in self.events(f"?since={event['at']}")])
        self.assertNotIn(event["id"], [e["id"] for e in self.events(f"?until={event['at']}")])

    def test_malformed_filters_are_400(self):
        cases = [
            ("resource=actor", "resource"),
            ("action=edit", "action"),
            ("resource_id=-1", "resource_id"),
            ("resource_id=x", "resource_id"),
            ("since=2026-11-29", "since"),  # a day is not an instant
            ("since=2026-11-29T10:00:00", "since"),  # no zone
            ("until=yesterday", "until"),
            ("subject=", "subject"),
            ("page=0", "page"),
            ("actor_id=-1", "actor_id"),
            ("movie_id=x", "movie_id"),
            ("actor_id=2147483648", "actor_id"),  # past any id
            ("resource_id=9223372036854775808", "resource_id"),  # past 64 bits (SQLite could not bind it)
            ("movie_id=" + "9" * 5000, "movie_id"),  # more digits than Python converts
            ("actor=7", "actor: Unknown parameter. Did you mean actor_id?"),
            ("resource_type=actors", "resource_type: Unknown parameter. Did you mean resource"),
        ]
        for query, named in cases:
            with self.subTest(query):
                self.assertError(self.call("GET", f"/audit?{query}"), 400, named)

    def test_any_instant_from_year_1_to_9999_is_a_bound(self):
        """Instants whose UTC falls before year 1 or after 9999 (where Python's
        dates end) are bounds like any other: every event, or none."""
        every = [e["id"] for e in self.events()]
        cases = [
            ("since=0001-01-01T00:00:00%2B01:00", every),
            ("since=0001-01-01T00:00:00Z", every),
            ("until=9999-12-31T23:00:00-02:00", every),
            ("until=9999-12-31T23:59:59.999999Z", every),
            ("since=9999-12-31T23:59:59-14:00", []),
            ("until=0001-01-01T00:00:00%2B14:00", []),
            ("since=0001-01-01T00:00:00%2B01:00&until=9999-12-31T23:00:00-02:00", every),
        ]
        for query, expected in cases:
            with self.subTest(query):
                self.assertEqual([e["id"] for e in self.events(f"?{query}")], expected)
        # A cursor carries such a bound too.
        first = self.call("GET", "/audit?since=0001-01-01T00:00:00%2B01:00&per_page=2").get_json()
        rest = self.events(f"?cursor={first['next_cursor']}&per_page=100&since=0001-01-01T00:00:00%2B01:00")
        self.assertEqual([e["id"] for e in first["events"] + rest], every)

    def test_a_walk_by_cursor_sees_every_event_once_newest_first(self):
        every = [e["id"] for e in self.events()]
        seen, path = [], "/audit?per_page=4"
        while path:
            response = self.call("GET", path)
            body = response.get_json()
            seen += [e["id"] for e in body["events"]]
            path = response.headers["Link"][1 : -len('>; rel="next"')] if body["next_cursor"] else None
            # A write during the walk: newer than the cursor, so not in this walk.
            self.write("POST", "/movies", 201, json=MOVIE)
        self.assertEqual(seen, every)
        filtered = [e["id"] for e in self.events("?resource=actors")]
        first = self.call("GET", "/audit?resource=actors&per_page=1").get_json()
        rest = self.call("GET", f"/audit?cursor={first['next_cursor']}&per_page=10").get_json()
        self.assertEqual([e["id"] for e in first["events"] + rest["events"]], filtered)


class WhatHappenedToThisActorTest(AuditTestCase):
    """The README's example: an actor cast as "Projectionist", then deleted."""

    def test_an_actors_history_and_what_its_delete_removed(self):
        actor = self.write("POST", "/actors", 201, json=ACTOR).get_json()["actor"]["id"]
        movie = self.write("POST", "/movies", 201, json=MOVIE).get_json()["movie"]["id"]
        other = self.write("POST", "/actors", 201, json={**ACTOR, "name": "Someone Else"}).get_json()["actor"]["id"]
        self.write("PUT", f"/movies/{movie}/actors/{actor}", 201, json={"character": "Projectionist"})
        self.write("PUT", f"/movies/{movie}/actors/{other}", 201)
        self.write("DELETE", f"/actors/{actor}", 200)
        self.assertEqual(self.call("GET", f"/movies/{movie}/actors").get_json()["total_actors"], 1)

        history = self.events(f"?actor_id={actor}")
        self.assertEqual(
            [(e["action"], e["resource"], e["resource_id"], e["movie_id"], e["actor_id"]) for e in history],
            [
                ("delete", "actors", actor, None, None),
                ("cast", "castings", None, movie, actor),
                ("create", "actors", actor, None, None),
            ],
        )
        self.assertEqual(
            history[0]["changes"],
            {**ACTOR, "id": actor, "castings": [{"movie_id": movie, "character": "Projectionist"}]},
        )
        # The movie's: its own and its castings' (the actor's delete is the actor's own event).
        movie_history = self.events(f"?movie_id={movie}")
        self.assertEqual(
            [(e["action"], e["resource"], e["actor_id"]) for e in movie_history],
            [("cast", "castings", other), ("cast", "castings", actor), ("create", "movies", None)],
        )


class ReplayTest(AuditTestCase):
    def test_the_trail_replayed_gives_back_the_tables(self):
        """Random writes, then the events, oldest first, applied to empty tables:
        the tables the API holds."""
        rng = random.Random(11)  # noqa: S311 (test data)
        actors, movies = [], []
        for _ in range(80):
            choice = rng.randrange(8)
            if choice == 0 or not actors:
                actors.append(self.call("POST", "/actors", json={**ACTOR, "age": rng.randrange(151)}).get_json())
                actors[-1] = actors[-1]["actor"]["id"]
            elif choice == 1 or not movies:
                movies.append(self.call("POST", "/movies", json=MOVIE).get_json()["movie"]["id"])
            elif choice == 2:
                self.call("PATCH", f"/actors/{rng.choice(actors)}", json={"age": rng.randrange(3), "name": "N"})
            elif choice == 3:
                self.call(
                    "PATCH",
                    f"/movies/{rng.choice(movies)}",
                    json={"release_date": rng.choice(["2020-01-01", "2021-02-02"])},
                )
            elif choice in (4, 5):
                body = rng.choice([None, {"character": None}, {"character": rng.choice("ABC")}])
                self.call("PUT", f"/movies/{rng.choice(movies)}/actors/{rng.choice(actors)}", json=body)
            elif choice == 6:
                self.call("DELETE", f"/movies/{rng.choice(movies)}/actors/{rng.choice(actors)}")
            else:
                victim = rng.choice(actors + movies)
                self.call("DELETE", f"/{'actors' if victim in actors else 'movies'}/{victim}")
        self.assertEqual(replay(walk(self)), self.tables())

    def tables(self):
        def key(model, row):
            return tuple(row[c.name] for c in model.__table__.primary_key)

        return {
            model.__tablename__: {key(model, row): _dated(row) for row in self.rows(model)}
            for model in (Actor, Movie, Casting)
        }


def walk(test):
    """Every event, oldest first, through the API (by cursor)."""
    events, path = [], "/audit?per_page=100"
    while path:
        body = test.call("GET", path).get_json()
        events += body["events"]
        path = f"/audit?cursor={body['next_cursor']}&per_page=100" if body["next_cursor"] else None
    return list(reversed(events))


def _dated(row):
    return {name: value.isoformat() if isinstance(value, datetime.date) else value for name, value in row.items()}


class DeletedRowsTest(AuditTestCase):
    def test_rows_deleted_outside_the_api_leave_their_events(self):
        actor = self.write("POST", "/actors", 201, json=ACTOR).get_json()["actor"]["id"]
        with self.app.app_context(), db.engine.begin() as connection:
            connection.execute(delete(Actor))
        self.assertEqual(len(self.events(f"?resource_id={actor}")), 1)


class FlatCostTest(AuditTestCase):
    """On PostgreSQL /audit?actor_id= and ?movie_id= read about as many rows at
    120,000 events as at 30,000 (migration 0006's indexes), counted from the
    plans of the very statements the requests run. Actor 7 and movie 7 have
    events among the oldest 30,000 only, so that a scan of the newest first
    would read every later one. The count stops at 100, which their events
    pass: below the bound a count grows with the matches, by design."""

    config = {"LIST_COUNT_BOUND": 100}
    PATHS = [
        "/audit?actor_id=7",
        "/audit?movie_id=7",
        "/audit?actor_id=7&per_page=100",
        "/audit?actor_id=7&action=cast",
        "/audit?movie_id=7&resource=movies",
        "{deep cursor}",
    ]

    def setUp(self):
        super().setUp()
        self.requires_postgresql("the indexes that bound the cost exist on PostgreSQL only")
        self.events_made = 0

    def grow_to(self, count):
        """Events of 20 actors and 20 movies, their own and their castings', a
        third each: ids 1 to 20 in the first 30,000, then 8 to 27."""
        lines = []
        for i in range(self.events_made + 1, count + 1):
            first = 1 if i <= 30_000 else 8
            resource = ("actors", "movies", "castings")[i % 3]
            own = "\\N" if resource == "castings" else i % 20 + first
            movie, actor = (i % 20 + first, (i // 3) % 20 + first) if resource == "castings" else ("\\N", "\\N")
            action = "uncast" if resource == "castings" else "delete"  # whose changes are the row before: {}
            at = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=i)
            row = (i, at.isoformat(), "auth0|test", action, resource, own, movie, actor, "{}", f"r{i}")
            lines.append("\t".join(map(str, row)) + "\n")
        columns = "(id, at, subject, action, resource, resource_id, movie_id, actor_id, before, request_id)"
        copy_rows(self, [("audit_events", columns, lines)])
        self.events_made = count

    def measure(self):
        path = "/audit?actor_id=7&per_page=100"
        for _ in range(3):
            path = f"/audit?cursor={self.call('GET', path).get_json()['next_cursor']}&per_page=100"
        return {p: read_by(self, path if p == "{deep cursor}" else p) for p in self.PATHS}

    def test_an_actors_or_a_movies_events_read_as_many_rows_at_120000_events_as_at_30000(self):
        assert_flat_cost(self, 30_000, 120_000)
