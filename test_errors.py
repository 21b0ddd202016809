"""errors.py: every error in one JSON envelope, in the SPEC's order of precedence, bounded,
and never leaking a traceback or SQL."""

from unittest import mock

from models import MAX_ID, Actor
from testing import ACTOR, ApiTestCase


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


class BoundedErrorTest(ApiTestCase):
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
