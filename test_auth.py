"""Authentication and permissions (README: Authentication and roles, and each
endpoint's permission in the API reference): the RBAC matrix, the attacks a
verifier must stop, the JWKS cache and its refetch limit, and the local issuer."""

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

import jwt
from click.testing import CliRunner
from flask.cli import FlaskGroup

from app import create_app
from auth import ROLES, IssuerUnavailable, JWKSKeys, role_permissions
from loopback import REPO, Issuer, clean_environment, rsa_key
from models import Actor, AuditEvent, Casting, Movie
from testing import ACTOR, AUDIENCE, ISSUER, MOVIE, ApiTestCase, app_config, dispose

# Every protected endpoint: (method, path, permission, body, success status).
# {actor} and {movie} are filled with fresh rows for each call.
ENDPOINTS = [
    ("GET", "/actors", "get:actors", None, 200),
    ("GET", "/actors/{actor}", "get:actors", None, 200),
    ("GET", "/actors/{actor}/movies", "get:actors", None, 200),
    ("POST", "/actors", "add:actors", ACTOR, 201),
    ("PATCH", "/actors/{actor}", "edit:actors", {"age": 62}, 200),
    ("DELETE", "/actors/{actor}", "delete:actors", None, 200),
    ("GET", "/movies", "get:movies", None, 200),
    ("GET", "/movies/{movie}", "get:movies", None, 200),
    ("GET", "/movies/{movie}/actors", "get:movies", None, 200),
    ("POST", "/movies", "add:movies", MOVIE, 201),
    ("PATCH", "/movies/{movie}", "edit:movies", {"title": "Harbour Lights II"}, 200),
    ("DELETE", "/movies/{movie}", "delete:movies", None, 200),
    ("PUT", "/movies/{movie}/actors/{actor}", "edit:movies", {"character": "Ruth"}, 201),
    ("DELETE", "/movies/{movie}/actors/{cast_actor}", "edit:movies", None, 200),
]


def b64(data):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class PermissionsTest(ApiTestCase):
    def test_roles_hold_the_permissions_of_the_spec(self):
        assistant = {"get:actors", "get:movies"}
        director = assistant | {"add:actors", "edit:actors", "delete:actors", "edit:movies"}
        producer = director | {"add:movies", "delete:movies", "get:audit"}
        self.assertEqual(
            {role: set(p) for role, p in ROLES.items()},
            {
                "Casting Assistant": assistant,
                "Casting Director": director,
                "Executive Producer": producer,
            },
        )

    def test_rbac_matrix(self):
        """Every role, and no token, against every endpoint."""
        for method, path, permission, body, success in ENDPOINTS:
            for role in [None, *ROLES]:
                with self.subTest(method, path=path, role=role):
                    actor = self.add(Actor, **{**ACTOR, "age": 30})["id"]
                    movie = self.add(Movie, title="M", release_date=__import__("datetime").date(2020, 1, 1))["id"]
                    cast_actor = self.add(Actor, **ACTOR)["id"]
                    self.add(Casting, movie_id=movie, actor_id=cast_actor)
                    url = path.format(actor=actor, movie=movie, cast_actor=cast_actor)
                    before = (self.rows(Actor), self.rows(Movie), self.rows(Casting))
                    response = self.call(method, url, role=role, json=body)
                    if role is None:
                        self.assertError(response, 401, "authorization header is missing")
                    elif permission in ROLES[role]:
                        self.assertEqual(response.status_code, success, response.get_data(as_text=True))
                        self.assertIs(response.get_json()["success"], True)
                    else:
                        self.assertError(response, 403, f"permission '{permission}' is required")
                    if role is None or permission not in ROLES[role]:
                        self.assertEqual((self.rows(Actor), self.rows(Movie), self.rows(Casting)), before)

    def test_open_endpoints_need_no_token(self):
        for path in ("/", "/health", "/openapi.json"):
            with self.subTest(path):
                self.assertEqual(self.client.get(path).status_code, 200)

    def test_permissions_must_be_a_list_holding_the_exact_permission(self):
        for permissions in ("get:actors", ["get:actor"], ["GET:ACTORS"], None, {"get:actors": True}, ["get:actors "]):
            with self.subTest(permissions=permissions):
                token = self.issuer.token(permissions)
                self.assertError(self.call("GET", "/actors", headers=self.headers(token=token)), 403)


class AttackTest(ApiTestCase):
    """Each token below must be refused with a 401 and the right code, before any
    data is read or written."""

    def forged(self, header, payload, signature=b"sig"):
        return f"{b64(header)}.{b64(payload)}.{b64(signature)}"

    def valid_payload(self, **claims):
        return jwt.decode(self.issuer.token(["get:actors"], **claims), options={"verify_signature": False})

    def attacks(self):
        issuer = self.issuer
        payload = self.valid_payload()
        public_pem = jwt.algorithms.RSAAlgorithm.to_jwk(issuer.key.public_key()).encode()
        header = {"alg": "HS256", "typ": "JWT", "kid": issuer.kid}
        signing_input = f"{b64(header)}.{b64(payload)}".encode()
        hs256 = f"{signing_input.decode()}.{b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())}"
        good = issuer.token(["get:actors"])
        head, body, sig = good.split(".")
        tampered_payload = {**payload, "permissions": list(ROLES["Executive Producer"])}
        return [  # (name, Authorization header, code)
            (
                "alg none",
                "Bearer " + self.forged({"alg": "none", "kid": issuer.kid}, payload, b""),
                "invalid_algorithm",
            ),
            ("alg None", "Bearer " + self.forged({"alg": "None", "kid": issuer.kid}, payload), "invalid_algorithm"),
            ("HS256 signed with the public key", "Bearer " + hs256, "invalid_algorithm"),
            ("RS512", "Bearer " + issuer.token(["get:actors"], algorithm="RS512"), "invalid_algorithm"),
            ("PS256", "Bearer " + issuer.token(["get:actors"], algorithm="PS256"), "invalid_algorithm"),
            ("no alg", "Bearer " + self.forged({"kid": issuer.kid}, payload), "invalid_algorithm"),
            ("expired", "Bearer " + issuer.token(["get:actors"], exp=int(time.time()) - 60), "token_expired"),
            (
                "nbf in the future",
                "Bearer " + issuer.token(["get:actors"], nbf=int(time.time()) + 3600),
                "token_not_yet_valid",
            ),
            ("no exp", "Bearer " + issuer.token(["get:actors"], drop=["exp"]), "missing_claim"),
            ("no aud", "Bearer " + issuer.token(["get:actors"], drop=["aud"]), "missing_claim"),
            ("no iss", "Bearer " + issuer.token(["get:actors"], drop=["iss"]), "missing_claim"),
            # Every write records its subject (the audit trail's column holds 255 characters):
            ("no sub", "Bearer " + issuer.token(ROLES["Executive Producer"], drop=["sub"]), "missing_claim"),
            ("sub null", "Bearer " + issuer.token(ROLES["Executive Producer"], sub=None), "missing_claim"),
            ("sub a number", "Bearer " + issuer.token(ROLES["Executive Producer"], sub=42), "invalid_claims"),
            ("sub a list", "Bearer " + issuer.token(ROLES["Executive Producer"], sub=["a"]), "invalid_claims"),
            ("sub empty", "Bearer " + issuer.token(ROLES["Executive Producer"], sub=""), "invalid_claims"),
            ("sub too long", "Bearer " + issuer.token(ROLES["Executive Producer"], sub="a" * 256), "invalid_claims"),
            ("exp not a number", "Bearer " + issuer.token(["get:actors"], exp="tomorrow"), "malformed_token"),
            ("wrong audience", "Bearer " + issuer.token(["get:actors"], aud="another-api"), "invalid_audience"),
            ("wrong issuer", "Bearer " + issuer.token(["get:actors"], iss="https://evil.test/"), "invalid_issuer"),
            ("unknown kid", "Bearer " + issuer.token(["get:actors"], headers={"kid": "forged"}), "unknown_key"),
            (
                "known kid, another key's signature",
                "Bearer " + issuer.token(["get:actors"], key=rsa_key()),
                "invalid_signature",
            ),
            ("tampered payload", f"Bearer {head}.{b64(tampered_payload)}.{sig}", "invalid_signature"),
            ("signature stripped", f"Bearer {head}.{body}.", "invalid_signature"),
            ("no kid", "Bearer " + self.forged({"alg": "RS256"}, payload), "missing_kid"),
            ("kid not a string", "Bearer " + self.forged({"alg": "RS256", "kid": 1}, payload), "malformed_token"),
            ("garbage", "Bearer garbage", "malformed_token"),
            ("three garbage segments", "Bearer a.b.c", "malformed_token"),
            ("header not an object", f"Bearer {b64([1])}.{body}.{sig}", "malformed_token"),
            # The signature is checked before the payload is parsed:
            ("payload not JSON", f"Bearer {head}.{b64(b'not json')}.{sig}", "invalid_signature"),
            ("bare Bearer", "Bearer", "invalid_header"),
            ("Bearer and a space", "Bearer ", "invalid_header"),
            ("another scheme", "Basic " + good, "invalid_header"),
            ("token alone", good, "invalid_header"),
            ("two tokens", f"Bearer {good} {good}", "invalid_header"),
            ("empty header", "", "invalid_header"),
        ]

    def test_attacks_are_401_with_a_code_and_change_nothing(self):
        for name, header, code in self.attacks():
            for method, body in (("GET", None), ("POST", ACTOR)):
                with self.subTest(name, method=method):
                    response = self.client.open("/actors", method=method, headers={"Authorization": header}, json=body)
                    error = self.assertError(response, 401)
                    self.assertEqual(error["code"], code, error["message"])
        self.assertEqual(self.rows(Actor), [])

    def test_a_subject_of_255_characters_writes_and_is_recorded(self):
        subject = "auth0|" + "x" * 249
        token = self.issuer.token(ROLES["Executive Producer"], sub=subject)
        response = self.call("POST", "/actors", headers=self.headers(token=token), json=ACTOR)
        self.assertEqual(response.status_code, 201, response.get_data(as_text=True))
        self.assertEqual([event["subject"] for event in self.rows(AuditEvent)], [subject])

    def test_the_key_source_is_never_taken_from_the_token(self):
        attacker = Issuer(ISSUER, AUDIENCE)  # publishes its own JWKS
        self.addCleanup(attacker.stop)
        for header in (
            {"jku": attacker.jwks_url, "kid": attacker.kid},
            {"x5u": attacker.jwks_url, "kid": "x"},
            {"jwk": json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.key.public_key()))},
        ):
            with self.subTest(header=list(header)):
                token = attacker.token(["get:actors"], headers=header)
                self.assertError(self.call("GET", "/actors", headers=self.headers(token=token)), 401)
        self.assertEqual(attacker.fetches, 0)

    def test_scheme_is_case_insensitive_and_spacing_is_tolerated(self):
        token = self.issuer.token(["get:actors"])
        for header in (f"Bearer {token}", f"bearer {token}", f"BEARER {token}", f"Bearer   {token}  "):
            with self.subTest(header=header[:10]):
                self.assertEqual(self.client.get("/actors", headers={"Authorization": header}).status_code, 200)

    def test_an_audience_list_holding_ours_is_accepted(self):
        token = self.issuer.token(["get:actors"], aud=["https://tenant.auth0.com/userinfo", AUDIENCE])
        self.assertEqual(self.call("GET", "/actors", headers=self.headers(token=token)).status_code, 200)


class JWKSCacheTest(ApiTestCase):
    def test_keys_are_fetched_once_for_many_requests(self):
        for role in ROLES:
            for _ in range(5):
                self.assertEqual(self.call("GET", "/movies", role=role).status_code, 200)
        self.assertEqual(self.issuer.fetches, 1)

    def test_forged_kids_cannot_make_the_api_hammer_the_issuer(self):
        self.assertEqual(self.call("GET", "/actors").status_code, 200)
        for i in range(50):
            token = self.issuer.token(["get:actors"], headers={"kid": f"forged-{i}"})
            error = self.assertError(self.call("GET", "/actors", headers=self.headers(token=token)), 401)
            self.assertEqual(error["code"], "unknown_key")
        self.assertEqual(self.issuer.fetches, 1)  # within the 30 s interval: no refetch at all
        # Once the interval has passed, one unknown kid may refetch once more.
        later = time.monotonic() + 31
        with mock.patch("auth.time.monotonic", return_value=later):
            for i in range(10):
                token = self.issuer.token(["get:actors"], headers={"kid": f"forged-later-{i}"})
                self.assertError(self.call("GET", "/actors", headers=self.headers(token=token)), 401)
        self.assertEqual(self.issuer.fetches, 2)

    def test_a_rotated_key_is_picked_up(self):
        self.assertEqual(self.call("GET", "/actors").status_code, 200)
        new_key = rsa_key()
        self.issuer.published["test-key-2"] = new_key
        token = self.issuer.token(["get:actors"], key=new_key, headers={"kid": "test-key-2"})
        with mock.patch("auth.time.monotonic", return_value=time.monotonic() + 31):
            self.assertEqual(self.call("GET", "/actors", headers=self.headers(token=token)).status_code, 200)
            self.assertEqual(self.call("GET", "/actors").status_code, 200)  # the old key still works
        self.assertEqual(self.issuer.fetches, 2)

    def test_no_keys_is_503_and_the_service_recovers(self):
        self.issuer.failing = True
        with self.assertLogs("auth", "WARNING"):
            error = self.assertError(self.call("GET", "/actors"), 503, "issuer's keys cannot be fetched")
        self.assertEqual(error["code"], "issuer_unavailable")
        self.issuer.failing = False
        with mock.patch("auth.time.monotonic", return_value=time.monotonic() + 31):
            self.assertEqual(self.call("GET", "/actors").status_code, 200)

    def test_a_failed_refetch_keeps_the_cached_keys(self):
        self.assertEqual(self.call("GET", "/actors").status_code, 200)
        self.issuer.failing = True
        token = self.issuer.token(["get:actors"], headers={"kid": "unknown"})
        with mock.patch("auth.time.monotonic", return_value=time.monotonic() + 31), self.assertLogs("auth", "WARNING"):
            error = self.assertError(self.call("GET", "/actors", headers=self.headers(token=token)), 401)
            self.assertEqual(error["code"], "unknown_key")
            self.assertEqual(self.call("GET", "/actors").status_code, 200)

    def test_a_hanging_issuer_times_out(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts connections, never answers
        self.addCleanup(listener.close)
        keys = JWKSKeys(f"http://127.0.0.1:{listener.getsockname()[1]}/jwks.json", timeout=0.3)
        started = time.monotonic()
        with self.assertLogs("auth", "WARNING"), self.assertRaises(IssuerUnavailable) as caught:
            keys.get("any")
        self.assertEqual(caught.exception.code, 503)
        self.assertLess(time.monotonic() - started, 5)

    def test_a_jwks_with_unusable_keys_keeps_the_usable_ones(self):
        good = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.issuer.key.public_key()))
        document = {
            "keys": [
                "not an object",
                {"kty": "EC", "kid": "ec"},
                {"kty": "RSA", "kid": "enc", "use": "enc", **good},
                {"kty": "RSA"},
                {**good, "kid": "good"},
            ]
        }
        keys = JWKSKeys("unused")
        with mock.patch("auth.urllib.request.urlopen", mock.mock_open(read_data=json.dumps(document).encode())):
            self.assertIsNotNone(keys.get("good"))
        self.assertEqual(list(keys._keys), ["good"])


class KeySetExpiryTest(ApiTestCase):
    """JWKS_CACHE_TTL: the cached key set is refetched once it is older, so a key
    the issuer has withdrawn (a revoked one) stops being trusted, cached tokens
    included; a key still published keeps working, at one fetch per TTL."""

    config = {"JWKS_CACHE_TTL": 60}

    def later(self, seconds):
        return mock.patch("auth.time.monotonic", return_value=time.monotonic() + seconds)

    def status(self, token):
        return self.call("GET", "/actors", headers=self.headers(token=token)).status_code

    def test_a_revoked_key_stops_verifying_once_the_set_is_older_than_the_ttl(self):
        remembered = self.issuer.token(["get:actors"])
        self.assertEqual(self.status(remembered), 200)  # verified, and remembered by the worker
        new_key = rsa_key()
        self.issuer.published = {"test-key-2": new_key}  # test-key-1 revoked, another in its place
        rotated = self.issuer.token(["get:actors"], key=new_key, headers={"kid": "test-key-2"})
        with self.later(59):
            self.assertEqual(self.status(remembered), 200)  # within the TTL: the bound the README states
        with self.later(61):
            for token in (remembered, self.issuer.token(["get:actors"])):
                error = self.assertError(self.call("GET", "/actors", headers=self.headers(token=token)), 401)
                self.assertEqual(error["code"], "unknown_key")
            self.assertEqual(self.status(rotated), 200)
        self.assertEqual(self.issuer.fetches, 2)

    def test_a_key_still_published_keeps_working_at_one_fetch_per_ttl(self):
        remembered = self.issuer.token(["get:actors"])
        for _ in range(5):
            self.assertEqual(self.status(remembered), 200)
            self.assertEqual(self.status(self.issuer.token(["get:actors"])), 200)
        self.assertEqual(self.issuer.fetches, 1)
        for age, fetches in ((59, 1), (61, 2), (122, 3)):
            with self.subTest(age=age), self.later(age):
                for _ in range(5):
                    self.assertEqual(self.status(remembered), 200)
                    self.assertEqual(self.status(self.issuer.token(["get:actors"])), 200)
                self.assertEqual(self.issuer.fetches, fetches)

    def test_a_failed_refetch_keeps_the_keys_and_is_retried_no_more_than_the_interval_allows(self):
        remembered = self.issuer.token(["get:actors"])
        self.assertEqual(self.status(remembered), 200)
        self.issuer.failing = True
        with self.later(61), self.assertLogs("auth", "WARNING"):
            for _ in range(10):
                self.assertEqual(self.status(remembered), 200)
                self.assertEqual(self.status(self.issuer.token(["get:actors"])), 200)
        self.assertEqual(self.issuer.fetches, 2)  # one failed refetch for the twenty requests
        with self.later(61 + 31), self.assertLogs("auth", "WARNING"):
            self.assertEqual(self.status(remembered), 200)
        self.assertEqual(self.issuer.fetches, 3)  # retried once the refetch interval had passed
        self.issuer.failing = False
        self.issuer.published = {"test-key-2": rsa_key()}  # the issuer answers again, and has revoked the key
        with self.later(61 + 62):
            error = self.assertError(self.call("GET", "/actors", headers=self.headers(token=remembered)), 401)
        self.assertEqual(error["code"], "unknown_key")
        self.assertEqual(self.issuer.fetches, 4)


class VerifiedTokenCacheTest(ApiTestCase):
    def test_a_token_seen_again_is_not_verified_again(self):
        token = self.issuer.token(["get:actors"])
        with mock.patch("auth.jwt.decode", wraps=jwt.decode) as decode:
            for _ in range(5):
                self.assertEqual(self.call("GET", "/actors", headers=self.headers(token=token)).status_code, 200)
        self.assertEqual(decode.call_count, 1)

    def test_a_cached_token_still_expires(self):
        token = self.issuer.token(["get:actors"], exp=int(time.time()) + 2)
        self.assertEqual(self.call("GET", "/actors", headers=self.headers(token=token)).status_code, 200)
        time.sleep(max(0, jwt.decode(token, options={"verify_signature": False})["exp"] - time.time()) + 0.1)
        error = self.assertError(self.call("GET", "/actors", headers=self.headers(token=token)), 401)
        self.assertEqual(error["code"], "token_expired")

    def test_a_cached_token_is_refused_once_its_key_is_withdrawn(self):
        token = self.issuer.token(["get:actors"])
        self.assertEqual(self.call("GET", "/actors", headers=self.headers(token=token)).status_code, 200)
        new_key = rsa_key()
        self.issuer.published = {"test-key-2": new_key}  # the issuer rotated test-key-1 out
        rotated = self.issuer.token(["get:actors"], key=new_key, headers={"kid": "test-key-2"})
        with mock.patch("auth.time.monotonic", return_value=time.monotonic() + 31):
            self.assertEqual(self.call("GET", "/actors", headers=self.headers(token=rotated)).status_code, 200)
        error = self.assertError(self.call("GET", "/actors", headers=self.headers(token=token)), 401)
        self.assertEqual(error["code"], "unknown_key")

    def test_the_cache_is_bounded(self):
        verifier = self.app.extensions["auth"]
        with mock.patch.object(verifier, "CACHE_SIZE", 3):
            for i in range(10):
                token = self.issuer.token(["get:actors"], sub=f"user-{i}")
                self.assertEqual(self.call("GET", "/actors", headers=self.headers(token=token)).status_code, 200)
                self.assertLessEqual(len(verifier._verified), 3)


class LocalIssuerTest(ApiTestCase):
    """No AUTH0_DOMAIN and no JWKS_URL: the app is its own issuer, its key in a
    temporary instance folder. The suite's database, emptied after each test."""

    def setUp(self):
        super().setUp()
        instance = tempfile.TemporaryDirectory()
        self.addCleanup(instance.cleanup)
        self.instance = instance.name

    def make_app(self):
        app = create_app(app_config(AUTH0_ISSUER=None, JWKS_URL=None, API_AUDIENCE=None, INSTANCE_PATH=self.instance))
        self.addCleanup(dispose, app)
        return app

    def token(self, app, *args):
        result = app.test_cli_runner().invoke(args=["token", *args])
        return result

    def test_tokens_work_with_the_api_for_each_role(self):
        with self.assertLogs("app", "WARNING") as logs:
            app = self.make_app()
        self.assertIn("LOCAL ISSUER IN USE", "\n".join(logs.output))
        client = app.test_client()
        for role in ROLES:
            with self.subTest(role):
                result = self.token(app, role.lower().replace(" ", "-"))
                self.assertEqual(result.exit_code, 0, result.output)
                token = result.output.strip()
                self.assertEqual(result.output, token + "\n")  # the token alone
                self.assertEqual(token.count("."), 2)
                response = client.post("/movies", json=MOVIE, headers={"Authorization": f"Bearer {token}"})
                self.assertEqual(response.status_code, 201 if "add:movies" in ROLES[role] else 403)
                response = client.get("/actors", headers={"Authorization": f"Bearer {token}"})
                self.assertEqual(response.status_code, 200)

    def test_the_key_is_kept_private_and_reused(self):
        self.make_app()
        path = os.path.join(self.instance, "local-issuer-key.pem")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        first = self.make_app().extensions["auth"].keys.kid
        self.assertEqual(self.make_app().extensions["auth"].keys.kid, first)

    def test_role_names_in_any_case_with_spaces_or_hyphens(self):
        for name in ("Casting Director", "casting-director", "CASTING DIRECTOR", "casting_director"):
            with self.subTest(name):
                self.assertEqual(role_permissions(name), ROLES["Casting Director"])
        result = self.token(self.make_app(), "Producer")
        self.assertEqual(result.exit_code, 2)
        self.assertIn("unknown role", result.output)

    def test_one_subject_per_role_however_it_is_spelt(self):
        app = self.make_app()
        subjects = {
            "Casting Assistant": "local|casting-assistant",
            "Casting Director": "local|casting-director",
            "Executive Producer": "local|executive-producer",
        }
        for role, subject in subjects.items():
            hyphens = role.lower().replace(" ", "-")
            for spelling in (role, hyphens, role.upper(), hyphens.replace("-", "_"), f" {role.lower()}  "):
                with self.subTest(spelling):
                    result = self.token(app, spelling)
                    self.assertEqual(result.exit_code, 0, result.output)
                    claims = jwt.decode(result.output.strip(), options={"verify_signature": False})
                    self.assertEqual(claims["sub"], subject)
                    self.assertEqual(claims["permissions"], ROLES[role])

    def test_lifetime_option(self):
        app = self.make_app()
        token = self.token(app, "casting-assistant", "--lifetime", "60").output.strip()
        claims = jwt.decode(token, options={"verify_signature": False})
        self.assertEqual(claims["exp"] - claims["iat"], 60)
        self.assertEqual(claims["permissions"], ROLES["Casting Assistant"])
        self.assertEqual(self.token(app, "casting-assistant", "--lifetime", "0").exit_code, 2)

    def test_an_expired_local_token_is_refused(self):
        app = self.make_app()
        token = app.extensions["auth"].keys.mint(ROLES["Casting Assistant"], lifetime=-10)
        response = app.test_client().get("/actors", headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(response.status_code, 401)
        self.assertEqual(response.get_json()["code"], "token_expired")

    def test_no_tokens_are_printed_when_a_real_issuer_is_configured(self):
        app = create_app(app_config(INSTANCE_PATH=self.instance))
        result = self.token(app, "casting-assistant")
        self.assertEqual(result.exit_code, 1)
        self.assertIn("configured issuer", result.stderr)

    def test_only_a_server_warns_that_the_local_issuer_is_in_use(self):
        cli = FlaskGroup(create_app=self.make_app, load_dotenv=False)  # as `flask` and manage.py make it
        cases = [  # (command, whether the warning is logged)
            (["token", "casting-assistant"], False),  # it exists to mint local tokens
            (["seed", "--help"], False),
            (["run"], True),  # the development server
        ]
        for arguments, warns in cases:
            with self.subTest(arguments), mock.patch.dict(os.environ), mock.patch("flask.cli.run_simple") as serve:
                with self.assertLogs("app", "WARNING") if warns else self.assertNoLogs("app", "WARNING"):
                    result = CliRunner().invoke(cli, arguments)
                self.assertEqual(result.exit_code, 0, result.output)
                self.assertEqual(serve.called, arguments == ["run"])

    def test_manage_py_prints_a_token_and_nothing_else(self):
        result = subprocess.run(  # noqa: S603 (our own script)
            [sys.executable, "manage.py", "token", "executive-producer"],
            cwd=REPO,
            env=clean_environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        self.assertEqual(result.stderr, "")
        self.assertEqual(result.stdout.count("\n"), 1)
        claims = jwt.decode(result.stdout.strip(), options={"verify_signature": False})
        self.assertEqual(claims["permissions"], ROLES["Executive Producer"])


class IssuerConfigurationTest(unittest.TestCase):
    def test_misconfigurations_fail_at_start_saying_what_is_missing(self):
        both = "set AUTH0_DOMAIN, or both AUTH0_ISSUER and JWKS_URL"
        cases = [  # (what, config, message)
            (
                "a production start without an issuer",
                {"AUTH0_ISSUER": None, "JWKS_URL": None, "REQUIRE_ISSUER": True},
                "no token issuer configured",
            ),
            ("JWKS_URL without AUTH0_ISSUER", {"AUTH0_ISSUER": None}, both),
            ("AUTH0_ISSUER without JWKS_URL", {"JWKS_URL": None}, both),
            ("an issuer without API_AUDIENCE", {"API_AUDIENCE": None}, "API_AUDIENCE must be set"),
        ]
        for what, config, message in cases:
            with self.subTest(what), self.assertRaisesRegex(RuntimeError, re.escape(message)):
                create_app(app_config(**config))
