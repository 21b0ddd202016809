"""Rate limits in-process (SPEC: Rate limits; Errors, the order of answers):
budgets per token subject and per client address, the 429 and its headers,
what is not limited, where the 429 stands among the other answers, the client
address behind proxies, Redis unreachable, and the configuration.
test_fleet.py runs the same rules across two production servers and a Redis."""

import socket
import time
import unittest
import uuid
from unittest import mock

import jwt
from limits import parse
from limits.errors import StorageError
from limits.strategies import FixedWindowRateLimiter
from redis.connection import SSLConnection

from app import create_app
from auth import ROLES
from config import ConfigError
from loopback import clean_environment, rsa_key, run_procfile
from models import Actor
from ratelimit import Counters, MemoryCounters
from testing import ACTOR, ApiTestCase, app_config, dispose

PER_SUBJECT = 3
PER_ADDRESS = 2
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
UNLIMITED = ["/", "/health", "/docs/", "/docs/swagger-ui.css", "/openapi.json"]


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket closes


class LimitsTestCase(ApiTestCase):
    config = {"RATE_LIMIT": f"{PER_SUBJECT}/hour", "RATE_LIMIT_ANONYMOUS": f"{PER_ADDRESS}/hour"}

    def token(self, sub=None, role="Executive Producer", **claims):
        return self.issuer.token(ROLES[role], sub=sub or f"auth0|{uuid.uuid4().hex}", **claims)

    def forged(self):
        """A token with the issuer's kid, signed with another key: it costs a signature check."""
        return self.issuer.token(ROLES["Executive Producer"], key=rsa_key())

    def request(self, method, path, token=None, address="127.0.0.1", headers=None, **kwargs):
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.open(path, method=method, headers=headers, environ_base={"REMOTE_ADDR": address}, **kwargs)

    def spend_address(self, address="127.0.0.1"):
        for _ in range(PER_ADDRESS):
            self.assertError(self.request("GET", "/actors", address=address), 401)
        self.assertError(self.request("GET", "/actors", address=address), 429)

    def assertLimited(self, response, limit, remaining):
        self.assertEqual(response.headers["X-RateLimit-Limit"], str(limit))
        self.assertEqual(response.headers["X-RateLimit-Remaining"], str(remaining))
        reset = int(response.headers["X-RateLimit-Reset"])
        self.assertTrue(time.time() - 1 <= reset <= time.time() + 3601, reset)

    def assertTooMany(self, response, limit):
        body = self.assertError(response, 429, "too many requests")
        self.assertLimited(response, limit, 0)
        self.assertTrue(0 < int(response.headers["Retry-After"]) <= 3600, response.headers["Retry-After"])
        return body


class SubjectBudgetTest(LimitsTestCase):
    def test_a_subject_has_its_budget_across_operations_then_429_in_the_envelope(self):
        token = self.token()
        answers = [
            self.request("GET", "/actors", token),
            self.request("POST", "/actors", token, json=ACTOR),
            self.request("GET", "/movies/424242", token),
        ]
        self.assertEqual([r.status_code for r in answers], [200, 201, 404])
        for remaining, response in zip((2, 1, 0), answers, strict=True):
            self.assertLimited(response, PER_SUBJECT, remaining)
            self.assertNotIn("Retry-After", response.headers)  # it would read as "come back later"
        body = self.assertTooMany(self.request("POST", "/actors", token, json={**ACTOR, "name": "Late"}), PER_SUBJECT)
        self.assertIn(f"at most {PER_SUBJECT} a hour for a token's subject", body["message"])
        self.assertEqual([row["name"] for row in self.rows(Actor)], ["Viola Davis"])  # the refused POST wrote nothing
        # Another token of the same subject shares the budget.
        subject = jwt.decode(token, options={"verify_signature": False})["sub"]
        self.assertTooMany(self.request("GET", "/actors", self.token(sub=subject)), PER_SUBJECT)

    def test_budgets_are_per_subject(self):
        spent = self.token(sub="auth0|spent")
        for _ in range(PER_SUBJECT):
            self.assertEqual(self.request("GET", "/actors", spent).status_code, 200)
        self.assertTooMany(self.request("GET", "/actors", spent), PER_SUBJECT)
        other = self.request("GET", "/actors", self.token(sub="auth0|other"))
        self.assertEqual(other.status_code, 200)
        self.assertLimited(other, PER_SUBJECT, PER_SUBJECT - 1)

    def test_valid_tokens_do_not_spend_their_address_budget(self):
        for _ in range(PER_ADDRESS * 3):
            self.assertEqual(self.request("GET", "/actors", self.token()).status_code, 200)
        response = self.request("GET", "/actors")
        self.assertError(response, 401)
        self.assertLimited(response, PER_ADDRESS, PER_ADDRESS - 1)

    def test_a_valid_token_lacking_the_permission_counts_against_its_subject(self):
        token = self.token(role="Casting Assistant")
        for remaining in range(PER_SUBJECT - 1, -1, -1):
            response = self.request("POST", "/actors", token, json=ACTOR)
            self.assertError(response, 403)
            self.assertLimited(response, PER_SUBJECT, remaining)
        self.assertTooMany(self.request("POST", "/actors", token, json=ACTOR), PER_SUBJECT)
        self.assertEqual(self.request("GET", "/actors").status_code, 401)  # the address budget is untouched


class AddressBudgetTest(LimitsTestCase):
    def test_failed_authentications_spend_the_address_budget_then_429(self):
        first = self.request("GET", "/actors")
        self.assertError(first, 401)
        self.assertLimited(first, PER_ADDRESS, 1)
        second = self.request("GET", "/actors", self.forged())
        self.assertError(second, 401)
        self.assertLimited(second, PER_ADDRESS, 0)
        for token, headers in (
            (None, {}),
            (self.forged(), {}),
            (self.token(exp=int(time.time()) - 60), {}),
            ("not-a-jwt", {}),
            (None, {"Authorization": "Basic dXNlcjpwYXNz"}),
        ):
            with self.subTest(token=token, headers=headers):
                body = self.assertTooMany(self.request("GET", "/actors", token, headers=headers), PER_ADDRESS)
                self.assertIn("for a client address without a valid token", body["message"])
        self.assertError(self.request("GET", "/actors", address="10.0.0.2"), 401)  # another address has its own

    def test_an_ipv6_client_has_one_budget_for_its_whole_64(self):
        # One client holds 2001:db8:1:2::/64, and sends each forged token from another of its addresses.
        addresses = [f"2001:db8:1:2::{i + 1:x}" for i in range(PER_ADDRESS + 3)] + ["2001:db8:1:2:ffff:ffff:ffff:ffff"]
        for i, address in enumerate(addresses):
            with self.subTest(address):
                response = self.request("GET", "/actors", self.forged(), address=address)
                if i < PER_ADDRESS:
                    self.assertError(response, 401)
                else:
                    self.assertTooMany(response, PER_ADDRESS)
        self.assertError(self.request("GET", "/actors", address="2001:db8:1:3::1"), 401)  # the next /64: another client

    def test_an_ipv4_mapped_ipv6_address_shares_its_ipv4_address_budget(self):
        self.spend_address("192.0.2.7")
        self.assertTooMany(self.request("GET", "/actors", address="::ffff:192.0.2.7"), PER_ADDRESS)
        self.assertError(self.request("GET", "/actors", address="::ffff:192.0.2.8"), 401)

    def test_no_signature_check_and_no_key_fetch_once_the_address_is_over_budget(self):
        self.issuer.token(ROLES["Executive Producer"])  # (warms nothing: the app fetches on first use)
        with mock.patch("auth.jwt.decode", wraps=jwt.decode) as decode:
            for _ in range(PER_ADDRESS):
                self.assertError(self.request("GET", "/actors", self.forged()), 401)
            self.assertEqual(decode.call_count, PER_ADDRESS)
            fetches = self.issuer.fetches
            for _ in range(20):
                self.assertError(self.request("GET", "/actors", self.forged()), 429)
                unknown_kid = self.issuer.token(ROLES["Executive Producer"], headers={"kid": uuid.uuid4().hex})
                self.assertError(self.request("GET", "/actors", unknown_kid), 429)
        self.assertEqual(decode.call_count, PER_ADDRESS)  # no RSA check for any of the 40
        self.assertEqual(self.issuer.fetches, fetches)  # and no JWKS refetch for a forged kid

    def test_a_token_already_verified_skips_the_address_check_a_new_one_does_not(self):
        known = self.token()
        self.assertEqual(self.request("GET", "/actors", known).status_code, 200)  # verified, now in the cache
        self.spend_address()
        with mock.patch("auth.jwt.decode", wraps=jwt.decode) as decode:
            response = self.request("GET", "/actors", known)
            self.assertEqual(response.status_code, 200)
            self.assertLimited(response, PER_SUBJECT, PER_SUBJECT - 2)  # counted against its subject
            self.assertTooMany(self.request("GET", "/actors", self.token()), PER_ADDRESS)  # never verified: 429
        self.assertEqual(decode.call_count, 0)


class UnlimitedTest(LimitsTestCase):
    def test_index_health_docs_and_description_are_never_limited(self):
        self.spend_address()
        for _ in range(3):
            for path in UNLIMITED:
                with self.subTest(path), self.request("GET", path) as response:
                    self.assertEqual(response.status_code, 200)
                    for header in (*RATE_HEADERS, "Retry-After"):
                        self.assertNotIn(header, response.headers)

    def test_a_cors_preflight_is_not_limited(self):
        self.spend_address()
        response = self.request("OPTIONS", "/actors", headers={"Access-Control-Request-Method": "GET"})
        self.assertEqual(response.status_code, 200)
        self.assertNotIn("X-RateLimit-Limit", response.headers)


class OrderTest(LimitsTestCase):
    """404, 405 and 413 answer before the 429; the address's 429 before
    authentication, the subject's right after it, before everything else."""

    def test_routing_and_size_before_the_address_429(self):
        self.spend_address()
        self.assertError(self.request("GET", "/directors"), 404)
        response = self.request("POST", "/actors/1")
        self.assertError(response, 405)
        self.assertIn("PATCH", response.headers["Allow"])
        big = "x" * (2 * 1024 * 1024)
        self.assertError(self.request("POST", "/actors", data=big, content_type="application/json"), 413)
        self.assertError(self.request("POST", "/actors", data=big[:10], content_type="application/json"), 429)

    def test_the_subject_429_before_403_404_and_the_body(self):
        producer, assistant = self.token(), self.token(role="Casting Assistant")
        for token in (producer, assistant):
            for _ in range(PER_SUBJECT):
                self.assertLess(self.request("GET", "/actors", token).status_code, 300)
        for method, path, token, kwargs in (
            ("POST", "/actors", assistant, {"json": ACTOR}),  # would be 403
            ("GET", "/actors/424242", producer, {}),  # would be 404
            ("PATCH", "/actors/424242", producer, {"data": "{", "content_type": "text/plain"}),  # 404, 415
            ("POST", "/actors", producer, {"data": "{", "content_type": "application/json"}),  # 400
            ("POST", "/actors", producer, {"json": {"name": ""}}),  # 422
            ("GET", "/actors?page=0", producer, {}),  # 400
        ):
            with self.subTest(method, path=path, kwargs=str(kwargs)):
                self.assertTooMany(self.request(method, path, token, **kwargs), PER_SUBJECT)
        self.assertEqual(self.rows(Actor), [])


class ProxyTest(LimitsTestCase):
    """With no TRUSTED_PROXY_HOPS the peer's address counts, whatever
    X-Forwarded-For says; with N hops, the address the Nth proxy from the end saw."""

    def spoofed(self, real=None):
        spoof = f"203.0.113.{uuid.uuid4().int % 250}"
        return {"X-Forwarded-For": f"{spoof}, {real}" if real else spoof}

    def test_without_trusted_proxies_a_spoofed_header_gains_nothing(self):
        for _ in range(PER_ADDRESS):
            self.assertError(self.request("GET", "/actors", headers=self.spoofed()), 401)
        for _ in range(5):
            self.assertError(self.request("GET", "/actors", headers=self.spoofed()), 429)


class OneProxyTest(ProxyTest):
    config = {**LimitsTestCase.config, "TRUSTED_PROXY_HOPS": "1"}

    def test_without_trusted_proxies_a_spoofed_header_gains_nothing(self):
        pass  # this class trusts one proxy

    def test_the_address_the_proxy_appended_counts_and_a_spoofed_one_gains_nothing(self):
        # The client sends its own X-Forwarded-For; the router appends the address it saw.
        router = "10.1.1.1"  # the peer: Heroku's router
        for _ in range(PER_ADDRESS):
            self.assertError(self.request("GET", "/actors", address=router, headers=self.spoofed("198.51.100.7")), 401)
        for _ in range(5):
            response = self.request("GET", "/actors", address=router, headers=self.spoofed("198.51.100.7"))
            self.assertError(response, 429)
        # Another client behind the same router has its own budget.
        self.assertError(self.request("GET", "/actors", address=router, headers=self.spoofed("198.51.100.8")), 401)
        # No header (a request that did not come through the router): the peer.
        self.assertError(self.request("GET", "/actors", address="192.0.2.1"), 401)
        self.assertError(self.request("GET", "/actors", address="192.0.2.1"), 401)
        self.assertError(self.request("GET", "/actors", address="192.0.2.1"), 429)


class TwoProxiesTest(LimitsTestCase):
    config = {**LimitsTestCase.config, "TRUSTED_PROXY_HOPS": 2}

    def test_the_address_two_proxies_from_the_end_counts(self):
        # Each request through other proxies: only the client's address, as the first proxy saw it, is shared.
        for i, status in enumerate([401] * PER_ADDRESS + [429, 429]):
            header = {"X-Forwarded-For": f"203.0.113.{i}, 198.51.100.7, 10.2.2.{i}"}
            self.assertError(self.request("GET", "/actors", address=f"10.1.1.{i}", headers=header), status)


class FlakyStorage(MemoryCounters):
    """A stand-in for Redis that fails as limits' storages do (StorageError)
    while `failing` is set, and counts the calls it gets."""

    def __init__(self):
        super().__init__()
        self.failing = False
        self.calls = 0

    def answer(self):
        self.calls += 1
        if self.failing:
            raise StorageError(ConnectionError("Redis went away"))

    def incr(self, key, expiry, amount=1):
        self.answer()
        return super().incr(key, expiry, amount)

    def get(self, key):
        self.answer()
        return super().get(key)

    def get_expiry(self, key):
        self.answer()
        return super().get_expiry(key)

    def check(self):
        self.calls += 1
        return not self.failing


class RedisUnreachableTest(LimitsTestCase):
    def setUp(self):
        self.config = {**self.config, "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}
        super().setUp()

    def test_requests_are_served_with_a_warning_and_limits_held_per_worker(self):
        token = self.token()
        with self.assertLogs("ratelimit", "WARNING") as logs:
            first = self.request("GET", "/actors", token)
        self.assertIn("counting in this worker's memory meanwhile", "\n".join(logs.output))
        self.assertEqual(first.status_code, 200)
        self.assertLimited(first, PER_SUBJECT, PER_SUBJECT - 1)
        for _ in range(PER_SUBJECT - 1):
            self.assertEqual(self.request("GET", "/actors", token).status_code, 200)
        self.assertTooMany(self.request("GET", "/actors", token), PER_SUBJECT)
        self.spend_address()


class StorageFailsMidwayTest(LimitsTestCase):
    def test_a_count_that_fails_falls_back_to_memory_with_a_warning_and_no_error(self):
        redis = FlakyStorage()
        self.app.extensions["rate_limits"].counters = Counters(redis)
        token = self.token()
        self.assertLimited(self.request("GET", "/actors", token), PER_SUBJECT, PER_SUBJECT - 1)
        redis.failing = True
        with self.assertLogs("ratelimit", "WARNING") as logs:
            response = self.request("GET", "/actors", token)  # the token is known: the subject's count fails
        self.assertEqual(response.status_code, 200)
        self.assertIn("counting in this worker's memory meanwhile", "\n".join(logs.output))
        self.assertLimited(response, PER_SUBJECT, PER_SUBJECT - 1)  # counted afresh, in memory
        for _ in range(PER_SUBJECT - 1):
            self.assertEqual(self.request("GET", "/actors", token).status_code, 200)
        self.assertTooMany(self.request("GET", "/actors", token), PER_SUBJECT)
        self.spend_address()


class CountersTest(unittest.TestCase):
    """Redis failing: the worker counts in memory, with one warning, tries Redis
    again 1, 2, 4, ... 32 s apart, and shares the counters again once it answers."""

    def test_a_failing_storage_is_tried_again_with_backoff_and_shared_again_when_it_answers(self):
        redis = FlakyStorage()
        counters = Counters(redis)
        item = parse("100/hour")
        now = [1000.0]
        with mock.patch("ratelimit.time.monotonic", lambda: now[0]):
            self.assertEqual(counters.hit(item, "k"), (True, mock.ANY))
            redis.failing = True
            with self.assertLogs("ratelimit", "WARNING") as logs:
                within, stats = counters.hit(item, "k")
            self.assertEqual(len(logs.output), 1)
            self.assertEqual((within, stats.remaining), (True, 99))  # counted afresh, in memory
            calls, failed_at = redis.calls, now[0]
            for delay in (1, 2, 4, 8, 16, 32, 32):
                with self.subTest(delay=delay), self.assertNoLogs("ratelimit", "WARNING"):
                    now[0] = failed_at + delay - 0.01
                    counters.hit(item, "k")
                    counters.test(item, "k")
                    self.assertEqual(redis.calls, calls)  # not yet
                    now[0] = failed_at + delay
                    counters.hit(item, "k")
                    self.assertEqual(redis.calls, calls + 1)  # one check, which fails
                    calls, failed_at = redis.calls, now[0]
            redis.failing = False
            now[0] += 32
            with self.assertLogs("ratelimit", "INFO") as logs:
                within, stats = counters.hit(item, "k")
            self.assertIn("shared again", "\n".join(logs.output))
            self.assertEqual((within, stats.remaining), (True, 98))  # Redis's count goes on
            self.assertEqual(counters.test(item, "k"), (True, None))


class RedisConnectionTest(unittest.TestCase):
    def storage_pool(self, url):
        app = create_app(app_config(REDIS_URL=url))
        self.addCleanup(dispose, app)
        return app.extensions["rate_limits"].counters.shared.storage.get_connection().connection_pool

    def test_rediss_connects_as_heroku_documents_without_verifying_its_self_signed_certificate(self):
        pool = self.storage_pool("rediss://:secret@redis.example:6380")
        self.assertIs(pool.connection_class, SSLConnection)
        self.assertIsNone(pool.connection_kwargs["ssl_cert_reqs"])

    def test_a_plain_redis_url_has_short_timeouts_and_no_tls(self):
        pool = self.storage_pool("redis://127.0.0.1:6379/0")
        self.assertNotIn("ssl_cert_reqs", pool.connection_kwargs)
        self.assertLessEqual(pool.connection_kwargs["socket_timeout"], 1)
        self.assertLessEqual(pool.connection_kwargs["socket_connect_timeout"], 1)


class MemoryCountersTest(unittest.TestCase):
    """The counters without Redis: limits' fixed windows, their expired keys
    dropped by the counts themselves (no timer thread)."""

    def test_counts_expire_with_their_window_and_are_dropped_without_a_timer(self):
        counters = MemoryCounters()
        limiter = FixedWindowRateLimiter(counters)
        two_a_minute = parse("2/minute")
        now = [1_000_000.0]
        with mock.patch("time.time", lambda: now[0]):
            self.assertEqual([limiter.hit(two_a_minute, "a") for _ in range(3)], [True, True, False])
            self.assertEqual(limiter.get_window_stats(two_a_minute, "a"), (now[0] + 60, 0))
            self.assertTrue(limiter.hit(two_a_minute, "b"))
            now[0] += 61  # both windows are over: a count drops every expired key
            self.assertEqual(limiter.get_window_stats(two_a_minute, "a"), (now[0], 2))
            self.assertTrue(limiter.hit(two_a_minute, "c"))
            self.assertEqual(set(counters.counters), {two_a_minute.key_for("c")})
            self.assertTrue(limiter.hit(two_a_minute, "a"))  # a's window opened again

    def test_the_app_counts_in_them_without_redis(self):
        app = create_app(app_config())
        try:
            counters = app.extensions["rate_limits"].counters
            self.assertIsInstance(counters.memory.storage, MemoryCounters)
            self.assertIsNone(counters.shared)
        finally:
            dispose(app)


class ConfigurationTest(unittest.TestCase):
    def start(self, **settings_):
        app = create_app(app_config(**settings_))
        dispose(app)
        return app

    def test_well_formed_budgets_start(self):
        for value in ("1/second", " 600/minute ", "100000/hour"):
            with self.subTest(value):
                self.start(RATE_LIMIT=value, RATE_LIMIT_ANONYMOUS=value)

    def test_malformed_settings_stop_the_start_with_a_clear_error(self):
        malformed = ["abc", "600", "600/day", "0/minute", "-5/minute", "600 per minute", "600/minutes", "6e2/hour"]
        malformed.append("1" * 10 + "/hour")
        cases = [("RATE_LIMIT", value, "RATE_LIMIT must be N/second, N/minute or N/hour") for value in malformed]
        cases += [("RATE_LIMIT_ANONYMOUS", "60/fortnight", "RATE_LIMIT_ANONYMOUS must be")]
        hops = "TRUSTED_PROXY_HOPS must be a whole number"
        cases += [("TRUSTED_PROXY_HOPS", value, hops) for value in ("x", "-1", "1.5", 1.5)]
        redis = "REDIS_URL must be a redis:// or rediss:// URL"
        cases += [("REDIS_URL", value, redis) for value in ("localhost:6379", "http://h:1", "redis://")]
        for name, value, message in cases:
            with self.subTest(name, value=value):
                with self.assertRaises(ConfigError) as raised:
                    self.start(**{name: value})
                self.assertIn(message, str(raised.exception))
                self.assertIn(repr(value) if name != "REDIS_URL" else "REDIS_URL", str(raised.exception))

    def test_a_production_start_with_a_malformed_budget_fails_with_that_message(self):
        issuer = {"AUTH0_DOMAIN": "tenant.eu.auth0.com", "API_AUDIENCE": "casting-agency"}
        result = run_procfile("web", clean_environment(RATE_LIMIT="lots", **issuer), "--check-config")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("RATE_LIMIT must be N/second, N/minute or N/hour", result.stderr)


class DescriptionTest(LimitsTestCase):
    def test_every_limited_operation_documents_the_429_and_no_other_does(self):
        spec = self.client.get("/openapi.json").get_json()
        for path, item in spec["paths"].items():
            for method, operation in item.items():
                if method == "parameters":
                    continue
                with self.subTest(method, path=path):
                    limited = "security" in operation
                    self.assertEqual("429" in operation["responses"], limited)
                    if limited:
                        schema = operation["responses"]["429"]["content"]["application/json"]["schema"]
                        self.assertEqual(schema, {"$ref": "#/components/schemas/Error"})


class CorsTest(LimitsTestCase):
    config = {**LimitsTestCase.config, "CORS_ORIGINS": "https://app.example"}

    def test_a_browser_app_may_read_the_rate_limit_headers_and_the_429(self):
        origin = {"Origin": "https://app.example"}
        response = self.request("GET", "/actors", headers=origin)
        exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
        self.assertLessEqual({"retry-after", *(header.lower() for header in RATE_HEADERS)}, exposed)
        self.request("GET", "/actors", headers=origin)
        response = self.request("GET", "/actors", headers=origin)
        self.assertTooMany(response, PER_ADDRESS)
        self.assertEqual(response.headers["Access-Control-Allow-Origin"], "https://app.example")


if __name__ == "__main__":
    unittest.main()
