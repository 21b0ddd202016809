"""app.py: the factory's wiring: CORS for the configured origins, no cookie sessions, and the app's memory of
which functions are async."""

import unittest

import flask
from flask.sessions import NullSession

from app import create_app
from models import Actor
from testing import ACTOR, ApiTestCase, app_config, dispose


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

    def test_a_front_end_can_do_what_curl_does_conditional_requests_included(self):
        """A browser sends If-Match only if the preflight allows it ("Failed to
        fetch" otherwise), and lets a page read only the headers exposed to it
        (an ETag read as null)."""
        actor = self.add(Actor, **ACTOR)["id"]
        wanted = ["Authorization", "Content-Type", "If-Match", "If-None-Match"]
        preflight = self.client.options(
            f"/actors/{actor}",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": ", ".join(header.lower() for header in wanted),
            },
        )
        allowed = {header.strip().lower() for header in preflight.headers["Access-Control-Allow-Headers"].split(",")}
        self.assertLessEqual({header.lower() for header in wanted}, allowed)
        self.assertIn("PATCH", preflight.headers["Access-Control-Allow-Methods"])

        origin = {**self.headers(), "Origin": "https://app.example"}
        read = self.call("GET", f"/actors/{actor}", headers=origin)
        patched = self.call(
            "PATCH", f"/actors/{actor}", json={"age": 62}, headers={**origin, "If-Match": read.headers["ETag"]}
        )
        self.assertEqual(patched.status_code, 200)
        listed = self.call("GET", "/actors?per_page=1", headers=origin)
        for response, present in ((read, "ETag"), (patched, "ETag"), (listed, "X-RateLimit-Remaining")):
            exposed = {header.strip() for header in response.headers["Access-Control-Expose-Headers"].split(",")}
            self.assertIn(present, response.headers)
            expected = {"ETag", "Link", "Location", "Retry-After", "X-Request-ID"}
            self.assertLessEqual(
                expected | {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}, exposed
            )

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


class NoSessionsTest(ApiTestCase):
    def test_a_request_opens_no_cookie_session_and_sets_no_cookie(self):
        # SECRET_KEY is set (it signs cursors); Flask would open a signed cookie session with it.
        self.assertTrue(self.app.config["SECRET_KEY"])
        with self.app.test_request_context("/", headers={"Cookie": "session=eyJ4IjoxfQ.forged"}):
            self.app.preprocess_request()
            self.assertIsInstance(flask.session._get_current_object(), NullSession)
        response = self.client.get("/", headers={"Cookie": "session=eyJ4IjoxfQ.forged"})
        self.assertEqual(response.status_code, 200)
        self.assertNotIn("Set-Cookie", response.headers)
