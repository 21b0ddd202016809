"""errors.py: every error in one JSON envelope, in the SPEC's order of precedence, bounded,
and never leaking a traceback or SQL."""

import datetime
from unittest import mock

from werkzeug.test import EnvironBuilder

from models import MAX_ID, Actor, AuditEvent, Movie
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


class RoutingHintTest(ApiTestCase):
    """A 404 or a 405 of the router names the route that was likely meant."""

    def test_a_trailing_slash_is_named_with_the_path_without_it(self):
        actor = self.add(Actor, **ACTOR)["id"]
        for method, path, bare in (
            ("GET", "/actors/", "/actors"),
            ("POST", "/movies/", "/movies"),
            ("GET", f"/actors/{actor}/", f"/actors/{actor}"),
            ("DELETE", f"/movies/2/actors/{actor}/", f"/movies/2/actors/{actor}"),
            ("GET", "/audit//", "/audit"),
        ):
            with self.subTest(method, path=path):
                message = f"resource not found: {path} ends with a slash; the path is {bare}"
                self.assertEqual(self.assertError(self.call(method, path), 404)["message"], message)
        self.assertEqual(self.assertError(self.call("GET", "/directors/"), 404)["message"], "resource not found")
        self.assertEqual(len(self.rows(Actor)), 1)

    def test_a_doubled_slash_is_a_404_naming_the_path_meant_not_an_html_redirect(self):
        actor = self.add(Actor, **ACTOR)["id"]
        for method, path, meant in (
            ("GET", f"/actors//{actor}", f"/actors/{actor}"),
            ("DELETE", f"/actors//{actor}", f"/actors/{actor}"),
            ("GET", "/movies//2/actors", "/movies/2/actors"),
            ("PUT", f"/movies/2//actors/{actor}/", f"/movies/2/actors/{actor}"),
        ):
            with self.subTest(method, path=path):
                environ = EnvironBuilder(method=method, path="/", headers=self.headers()).get_environ()
                environ["PATH_INFO"] = path  # as a server passes it (the test client reads // as a host)
                response = self.app.response_class.from_app(self.app, environ)
                message = f"resource not found: {path} has //; the path is {meant}"
                self.assertEqual(self.assertError(response, 404)["message"], message)
        self.assertEqual(len(self.rows(Actor)), 1)

    def test_a_method_the_path_does_not_take_names_the_route_that_does(self):
        cases = [  # (method, path, the message)
            (
                "POST",
                "/movies/7/actors",
                "method not allowed: /movies/7/actors takes GET, not POST; "
                "did you mean PUT /movies/7/actors/{actor_id}?",
            ),
            (
                "DELETE",
                "/actors",
                "method not allowed: /actors takes GET, POST, not DELETE; did you mean DELETE /actors/{actor_id}?",
            ),
            (
                "PUT",
                "/actors/1",
                "method not allowed: /actors/1 takes GET, PATCH, DELETE, not PUT; did you mean PATCH /actors/1?",
            ),
            ("POST", "/audit", "method not allowed: /audit takes GET, not POST"),
            ("POST", "/actors/1", "method not allowed: /actors/1 takes GET, PATCH, DELETE, not POST"),
        ]
        for method, path, message in cases:
            with self.subTest(method, path=path):
                response = self.call(method, path)
                self.assertEqual(self.assertError(response, 405)["message"], message)
                self.assertIn("GET", response.headers["Allow"])


class UnknownQueryParameterTest(ApiTestCase):
    """Every operation refuses a query parameter it does not take (a 400 that
    names it), after authentication and the resource's 404, and changes nothing."""

    def test_operations_that_take_none_refuse_any(self):
        actor = self.add(Actor, **ACTOR)["id"]
        movie = self.add(Movie, title="M", release_date=datetime.date(2020, 1, 1))["id"]
        cases = [  # (method, path, body)
            ("GET", "/", None),
            ("GET", "/health", None),
            ("GET", f"/actors/{actor}", None),
            ("POST", "/actors", ACTOR),
            ("PATCH", f"/actors/{actor}", {"age": 1}),
            ("DELETE", f"/actors/{actor}", None),
            ("PUT", f"/movies/{movie}/actors/{actor}", {"character": "Ruth"}),
            ("DELETE", f"/movies/{movie}/actors/{actor}", None),
            ("DELETE", f"/movies/{movie}", None),
        ]
        for method, path, body in cases:
            with self.subTest(method, path=path):
                response = self.call(method, f"{path}?dry_run=1", json=body)
                error = self.assertError(response, 400)
                self.assertEqual(
                    error["errors"], {"dry_run": ["Unknown parameter: this operation takes no query parameters."]}
                )
        self.assertEqual([a["age"] for a in self.rows(Actor)], [ACTOR["age"]])
        self.assertEqual(len(self.rows(Movie)), 1)
        self.assertEqual(self.rows(AuditEvent), [])

    def test_the_400_comes_after_authentication_and_the_resource(self):
        self.assertError(self.call("GET", "/actors/1?x=1", role=None), 401)
        self.assertError(self.call("DELETE", "/actors/1?x=1", role="Casting Assistant"), 403)
        self.assertError(self.call("GET", "/actors/424242?x=1"), 404)


class WholeBodyErrorTest(ApiTestCase):
    def test_an_empty_patch_says_what_to_send_and_names_no_internal_field(self):
        actor = self.add(Actor, **ACTOR)["id"]
        movie = self.add(Movie, title="M", release_date=datetime.date(2020, 1, 1))["id"]
        for path, fields in ((f"/actors/{actor}", "name, age, gender"), (f"/movies/{movie}", "title, release_date")):
            with self.subTest(path):
                error = self.assertError(self.call("PATCH", path, json={}), 422)
                self.assertEqual(error["message"], f"Send at least one field to change: {fields}.")
                self.assertNotIn("_schema", str(error))


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
