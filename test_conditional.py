"""Conditional requests (SPEC: "Conditional requests"): ETags on items, 304 for
If-None-Match, 412 for an If-Match that names none of the current ETags, its
place among the other errors, and the compare made in the write itself."""

from unittest import mock

from sqlalchemy import update

import resources
from models import Actor, AuditEvent, Movie, db
from testing import ApiTestCase

RESOURCES = [  # (plural, model, a row, a change)
    ("actors", Actor, {"name": "Viola Davis", "age": 61, "gender": "Female"}, {"age": 62}),
    ("movies", Movie, {"title": "Harbour Lights", "release_date": "2021-10-15"}, {"title": "Harbour Nights"}),
]


class ConditionalTestCase(ApiTestCase):
    def create(self, plural, row):
        response = self.call("POST", f"/{plural}", json=row)
        self.assertEqual(response.status_code, 201)
        return response.get_json()[plural[:-1]]["id"], response.headers["ETag"]

    def events(self):
        return len(self.rows(AuditEvent))


class ETagTest(ConditionalTestCase):
    def test_an_item_carries_a_strong_etag_that_moves_with_every_change_of_it(self):
        for plural, _model, row, change in RESOURCES:
            with self.subTest(plural):
                item_id, created = self.create(plural, row)
                self.assertRegex(created, r'^"[^"]+"$')  # strong: no W/
                read = self.call("GET", f"/{plural}/{item_id}")
                self.assertEqual(read.headers["ETag"], created)
                patched = self.call("PATCH", f"/{plural}/{item_id}", json=change)
                self.assertNotEqual(patched.headers["ETag"], created)
                self.assertEqual(self.call("GET", f"/{plural}/{item_id}").headers["ETag"], patched.headers["ETag"])
                # Setting what is there already changes nothing: the same ETag.
                again = self.call("PATCH", f"/{plural}/{item_id}", json=change)
                self.assertEqual((again.status_code, again.headers["ETag"]), (200, patched.headers["ETag"]))
                # Another item's ETag is another ETag.
                other_id, other = self.create(plural, row)
                self.assertNotEqual(other, created)

    def test_if_none_match_naming_the_current_etag_is_a_304_without_a_body(self):
        item_id, tag = self.create("actors", RESOURCES[0][2])
        stale = tag
        self.call("PATCH", f"/actors/{item_id}", json={"age": 70})
        tag = self.call("GET", f"/actors/{item_id}").headers["ETag"]
        cases = [  # (If-None-Match, status)
            (tag, 304),
            ("*", 304),
            (f"W/{tag}", 304),  # If-None-Match compares weakly (RFC 9110)
            (f'"other", {tag}', 304),
            (stale, 200),
            ('"1.999"', 200),
            ("garbage", 200),
            ('""', 200),
        ]
        for header, status in cases:
            with self.subTest(header):
                response = self.call("GET", f"/actors/{item_id}", headers={**self.headers(), "If-None-Match": header})
                self.assertEqual(response.status_code, status)
                self.assertEqual(response.headers["ETag"], tag)
                if status == 304:
                    self.assertEqual(response.data, b"")
                else:
                    self.assertEqual(response.get_json()["actor"]["age"], 70)


class IfMatchTest(ConditionalTestCase):
    def test_if_match_lets_the_write_through_only_when_it_names_the_current_etag(self):
        for plural, model, row, change in RESOURCES:
            item_id, tag = self.create(plural, row)
            self.call("PATCH", f"/{plural}/{item_id}", json=change)  # the first ETag is now stale
            stale, tag = tag, self.call("GET", f"/{plural}/{item_id}").headers["ETag"]
            item_id_other, other = self.create(plural, row)
            changed = "the item has changed: If-Match names none of its current ETags"
            foreign = f'If-Match names no ETag of this item: its ETags are "{item_id}.<version>", as the ETag header'
            malformed = "If-Match is malformed: it takes ETags in double quotes, as the ETag header of GET"
            weak = "If-Match compares ETags strongly: a weak one (W/...) never matches"
            cases = [  # (If-Match, status, what the 412 says: only a stale ETag says the item has changed)
                (stale, 412, changed),
                (other, 412, foreign),  # another item's current ETag
                (f"W/{tag}", 412, weak),  # If-Match compares strongly
                ('"garbage"', 412, foreign),
                ("garbage", 412, malformed),  # not quoted
                ("", 412, malformed),
                ('""', 412, foreign),  # an empty tag (Werkzeug parses it as None)
                ('W/"", ""', 412, weak),
                (f'{stale}, "x"', 412, changed),
                (f"{tag}x", 412, malformed),
                (tag, 200, None),
                (f"{stale}, {tag}", 200, None),
                (f", {tag},", 200, None),  # empty list items are allowed (RFC 9110)
                ("*", 200, None),
            ]
            for header, status, message in cases:
                with self.subTest(plural, header=header):
                    before, events = self.rows(model), self.events()
                    headers = {**self.headers(), "If-Match": header}
                    response = self.call("PATCH", f"/{plural}/{item_id}", json={**row, **change}, headers=headers)
                    self.assertEqual(response.status_code, status, response.get_data(as_text=True))
                    if status == 412:
                        self.assertError(response, 412, message)
                    self.assertEqual(self.rows(model), before)  # the same values: nothing changed either way
                    self.assertEqual(self.events(), events)
                    self.assertEqual(self.call("GET", f"/{plural}/{item_id}").headers["ETag"], tag)

    def test_a_conditional_patch_wins_once_and_then_the_same_etag_is_412(self):
        for plural, model, row, change in RESOURCES:
            with self.subTest(plural):
                item_id, tag = self.create(plural, row)
                headers = {**self.headers(), "If-Match": tag}
                first = self.call("PATCH", f"/{plural}/{item_id}", json=change, headers=headers)
                self.assertEqual(first.status_code, 200)
                after_first = self.rows(model)
                second = self.call("PATCH", f"/{plural}/{item_id}", json=row, headers=headers)
                self.assertError(second, 412)
                self.assertEqual(self.rows(model), after_first)
                # Without If-Match a write is unconditional, as before.
                self.assertEqual(self.call("PATCH", f"/{plural}/{item_id}", json=row).status_code, 200)

    def test_a_conditional_delete(self):
        for plural, model, row, change in RESOURCES:
            with self.subTest(plural):
                item_id, tag = self.create(plural, row)
                self.call("PATCH", f"/{plural}/{item_id}", json=change)
                stale = {**self.headers(), "If-Match": tag}
                self.assertError(self.call("DELETE", f"/{plural}/{item_id}", headers=stale), 412)
                self.assertEqual(len(self.rows(model)), 1)
                current = {**self.headers(), "If-Match": self.call("GET", f"/{plural}/{item_id}").headers["ETag"]}
                self.assertEqual(self.call("DELETE", f"/{plural}/{item_id}", headers=current).status_code, 200)
                self.assertEqual(self.rows(model), [])
                self.assertError(self.call("DELETE", f"/{plural}/{item_id}", headers=current), 404)

    def test_the_compare_is_in_the_write_not_only_before_it(self):
        """Another request changes the row after this one read it (and checked
        its If-Match against what it read), before this one writes: the write's
        own compare refuses it, and nothing of either request is lost."""
        for plural, model, row, change in RESOURCES:
            for method, body in (("PATCH", change), ("DELETE", None)):
                with self.subTest(plural, method=method):
                    item_id, tag = self.create(plural, row)
                    with self.changed_right_after_the_read(model, item_id):
                        response = self.call(method, f"/{plural}/{item_id}", json=body, headers=self.matching(tag))
                    self.assertError(response, 412)
                    with self.app.app_context():
                        version = db.session.get(model, item_id).version
                    self.assertEqual(version, 2)  # the other request's write, and no more

    def matching(self, tag):
        return {**self.headers(), "If-Match": tag}

    def changed_right_after_the_read(self, model, item_id):
        real_lookup = resources.row_or_404
        changes = []

        def lookup_then_change(lookup_model, key):
            found = real_lookup(lookup_model, key)
            if not changes:  # once: the other request's one write
                with self.app.app_context(), db.engine.begin() as connection:
                    connection.execute(update(model).where(model.id == item_id).values(version=model.version + 1))
                changes.append(key)
            return found

        return mock.patch("resources.row_or_404", lookup_then_change)


class PrecedenceTest(ConditionalTestCase):
    """404 and 403 come before a 412; a 412 comes before 415, 400 and 422."""

    def test_the_412_takes_its_place_among_the_errors(self):
        item_id, tag = self.create("actors", RESOURCES[0][2])
        self.call("PATCH", f"/actors/{item_id}", json={"age": 1})
        stale, current = {"If-Match": tag}, {"If-Match": self.call("GET", f"/actors/{item_id}").headers["ETag"]}
        path = f"/actors/{item_id}"
        cases = [  # (method, path, role, If-Match, other request arguments, status)
            ("PATCH", "/actors/999999", "Executive Producer", stale, {"json": {"age": 2}}, 404),
            ("DELETE", "/actors/999999", "Executive Producer", stale, {}, 404),
            ("PATCH", path, "Casting Assistant", stale, {"json": {"age": 2}}, 403),
            ("DELETE", path, "Casting Assistant", stale, {}, 403),
            ("PATCH", path, None, stale, {"json": {"age": 2}}, 401),
            ("PATCH", path, "Executive Producer", stale, {"data": "age=2", "content_type": "text/plain"}, 412),
            ("PATCH", path, "Executive Producer", stale, {"data": "{", "content_type": "application/json"}, 412),
            ("PATCH", path, "Executive Producer", stale, {}, 412),  # no body
            ("PATCH", path, "Executive Producer", stale, {"json": {"age": "old"}}, 412),
            ("PATCH", path, "Executive Producer", current, {"data": "age=2", "content_type": "text/plain"}, 415),
            ("PATCH", path, "Executive Producer", current, {"data": "{", "content_type": "application/json"}, 400),
            ("PATCH", path, "Executive Producer", current, {"json": {"age": "old"}}, 422),
        ]
        for method, target, role, condition, kwargs, status in cases:
            with self.subTest(method=method, role=role, status=status, kwargs=kwargs):
                headers = {**(self.headers(role) if role else {}), **condition}
                self.assertError(self.client.open(target, method=method, headers=headers, **kwargs), status)
        self.assertEqual(self.rows(Actor)[0]["age"], 1)
