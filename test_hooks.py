"""hooks.py: what every request goes through: its request id, the body's size limit, the
headers of every response."""

from unittest import mock

from models import Actor
from testing import ACTOR, ApiTestCase

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


class BodyLimitTest(ApiTestCase):
    def test_a_body_over_the_limit_is_413(self):
        big = {**ACTOR, "name": "x" * (1024 * 1024)}
        self.assertError(self.call("POST", "/actors", json=big), 413, "larger than 1048576 bytes")
        self.assertEqual(self.rows(Actor), [])
