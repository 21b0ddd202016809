"""local_signin.py over HTTP: signing in from /docs with the local issuer (the
authorization code flow with PKCE), each rule of an authorization server with
the attack it stops, codes redeemed by another instance on the same database,
and no such endpoints with an issuer configured. test_docs_browser.py runs the
same flow in Chromium, through Swagger UI."""

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import unittest
from html.parser import HTMLParser
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import flask_swagger_ui
import jwt
import schemathesis
from werkzeug.datastructures import MultiDict

import local_signin
from app import create_app
from auth import ROLES
from models import AuthorizationCode
from testing import ACTOR, LOCAL_ISSUER_CONFIG, ApiTestCase, app_config, dispose

ORIGIN = "http://localhost"  # the test client's
REDIRECT_URI = f"{ORIGIN}/docs/oauth2-redirect.html"
AUTHORIZE = "/local-issuer/authorize"
EXCHANGE = "/local-issuer/oauth/token"


def pkce():
    """A PKCE verifier and its S256 challenge, as Swagger UI makes them."""
    verifier = secrets.token_urlsafe(32)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class Page(HTMLParser):
    """What a browser without JavaScript finds on a page: its forms (method,
    action, hidden fields, buttons) and whether it has any script."""

    def __init__(self, html):
        super().__init__()
        self.forms = []
        self.scripts = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        elif tag == "form":
            self.forms.append(
                {"method": attrs.get("method"), "action": attrs.get("action"), "fields": [], "buttons": []}
            )
        elif tag == "input" and attrs.get("type") == "hidden":
            self.forms[-1]["fields"].append((attrs["name"], attrs["value"]))
        elif tag == "button":
            self.forms[-1]["buttons"].append((attrs.get("name"), attrs.get("value")))


class SignInTest(ApiTestCase):
    config = LOCAL_ISSUER_CONFIG

    def parameters(self, challenge, **changes):
        """An authorization request as /docs' Swagger UI makes it, with changes
        (None drops a parameter)."""
        parameters = {
            "response_type": "code",
            "client_id": local_signin.CLIENT_ID,
            "redirect_uri": REDIRECT_URI,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "c3RhdGU=",
            "audience": "casting-agency",
            **changes,
        }
        return {name: value for name, value in parameters.items() if value is not None}

    def choose(self, role, parameters, client=None):
        """Open the page and press a role's button, as a browser without JavaScript does."""
        client = client or self.client
        page = client.get(AUTHORIZE, query_string=parameters)
        self.assertEqual(page.status_code, 200, page.get_data(as_text=True))
        (form,) = Page(page.get_data(as_text=True)).forms
        self.assertEqual((form["method"], form["action"]), ("post", AUTHORIZE))
        self.assertIn(("role", role), form["buttons"])
        return client.post(form["action"], data=MultiDict([*form["fields"], ("role", role)]))

    def sign_in(self, role="Casting Director", client=None, **changes):
        """(code, verifier) of a completed sign-in."""
        verifier, challenge = pkce()
        answer = self.choose(role, self.parameters(challenge, **changes), client)
        self.assertEqual(answer.status_code, 303, answer.get_data(as_text=True))
        return parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0], verifier

    def exchange(self, issued_code, verifier, client=None, **changes):
        form = {
            "grant_type": "authorization_code",
            "code": issued_code,
            "redirect_uri": REDIRECT_URI,
            "client_id": local_signin.CLIENT_ID,
            "code_verifier": verifier,
            **changes,
        }
        return (client or self.client).post(EXCHANGE, data={k: v for k, v in form.items() if v is not None})

    def assertRefused(self, response, message):
        """A 400 page, and no redirect."""
        self.assertEqual(response.status_code, 400, response.get_data(as_text=True))
        self.assertEqual(response.mimetype, "text/html")
        self.assertNotIn("Location", response.headers)
        self.assertIn(message, response.get_data(as_text=True))

    def assertOAuthError(self, response, error):
        self.assertEqual(response.status_code, 400, response.get_data(as_text=True))
        self.assertEqual(response.get_json()["error"], error)
        self.assertEqual(response.headers["Cache-Control"], "no-store")

    def codes(self):
        return self.rows(AuthorizationCode)

    # --- the flow ---------------------------------------------------------------

    def test_each_role_chosen_on_the_page_gets_the_token_flask_token_prints(self):
        state = "Sat Dec 05 2026 é+/=&? <b>"  # Swagger UI's is base64; any state comes back exactly
        for role, permissions in ROLES.items():
            with self.subTest(role):
                verifier, challenge = pkce()
                page = self.client.get(AUTHORIZE, query_string=self.parameters(challenge, state=state))
                self.assertEqual(page.mimetype, "text/html")
                self.assertIn("default-src 'none'", page.headers["Content-Security-Policy"])  # no script runs
                parsed = Page(page.get_data(as_text=True))
                self.assertEqual(parsed.scripts, 0)  # a form: it works without JavaScript
                self.assertEqual(parsed.forms[0]["buttons"], [("role", name) for name in ROLES])  # one button a role

                answer = self.choose(role, self.parameters(challenge, state=state))
                self.assertEqual(answer.status_code, 303)
                location = urlsplit(answer.headers["Location"])
                self.assertEqual(f"{location.scheme}://{location.netloc}{location.path}", REDIRECT_URI)
                query = parse_qs(location.query)
                self.assertEqual(set(query), {"code", "state"})
                self.assertEqual(query["state"], [state])

                response = self.exchange(query["code"][0], verifier)
                self.assertEqual(response.status_code, 200, response.get_json())
                body = response.get_json()
                self.assertEqual(set(body), {"access_token", "token_type", "expires_in"})
                self.assertEqual((body["token_type"], body["expires_in"]), ("Bearer", 86400))
                self.assertEqual(response.headers["Cache-Control"], "no-store")

                printed = self.app.test_cli_runner().invoke(args=["token", role]).output.strip()
                claims, expected = (
                    jwt.decode(t, options={"verify_signature": False}) for t in (body["access_token"], printed)
                )
                self.assertEqual(set(claims), set(expected))
                for claim in ("iss", "aud", "sub", "permissions"):
                    self.assertEqual(claims[claim], expected[claim])
                self.assertEqual(claims["sub"], "local|" + role.lower().replace(" ", "-"))
                self.assertEqual(claims["exp"] - claims["iat"], 86400)

                headers = {"Authorization": f"Bearer {body['access_token']}"}
                created = self.client.post("/actors", json=ACTOR, headers=headers)
                self.assertEqual(created.status_code, 201 if "add:actors" in permissions else 403)
                self.assertEqual(self.client.get("/actors", headers=headers).status_code, 200)

    def test_the_page_escapes_what_the_link_carries(self):
        verifier, challenge = pkce()
        state = '"><script>alert(1)</script>'
        page = self.client.get(AUTHORIZE, query_string=self.parameters(challenge, state=state, client_id="<b>x</b>"))
        html = page.get_data(as_text=True)
        self.assertNotIn("<script", html)
        self.assertNotIn("<b>", html)
        self.assertIn("&lt;script&gt;", html)
        answer = self.choose("Casting Assistant", self.parameters(challenge, state=state, client_id="<b>x</b>"))
        self.assertEqual(parse_qs(urlsplit(answer.headers["Location"]).query)["state"], [state])

    # --- the authorization request's rules ----------------------------------------

    def test_a_code_goes_nowhere_but_to_docs_own_redirect_page(self):
        """An open redirect would hand a code (or a phishing page) to another site."""
        _, challenge = pkce()
        others = [
            "https://evil.example/docs/oauth2-redirect.html",
            "http://localhost.evil.example/docs/oauth2-redirect.html",
            "http://evil.example@localhost/docs/oauth2-redirect.html",
            "http://localhost@evil.example/docs/oauth2-redirect.html",
            "//evil.example/docs/oauth2-redirect.html",
            "/docs/oauth2-redirect.html",
            "http://localhost/docs/oauth2-redirect.html?next=https://evil.example/",
            "http://localhost/docs/oauth2-redirect.html#https://evil.example/",
            "http://localhost/docs/oauth2-redirect.html/../../evil",
            "http://localhost:8080/docs/oauth2-redirect.html",  # another origin of the same host
            "https://localhost/docs/oauth2-redirect.html",  # another scheme: not as the request came
            "HTTP://LOCALHOST/docs/oauth2-redirect.html",
            "http://localhost/docs/",
            "",
            None,
        ]
        for redirect_uri in others:
            with self.subTest(redirect_uri):
                parameters = self.parameters(challenge, redirect_uri=redirect_uri)
                expected = f"redirect_uri must be {REDIRECT_URI}"
                self.assertRefused(self.client.get(AUTHORIZE, query_string=parameters), expected)
                chosen = self.client.post(AUTHORIZE, data={**parameters, "role": "Executive Producer"})
                self.assertRefused(chosen, expected)
        self.assertEqual(self.codes(), [])

    def test_pkce_with_s256_a_code_response_and_a_client_id_are_required(self):
        verifier, challenge = pkce()
        cases = [  # (changes, what the page says)
            ({"code_challenge_method": None}, "code_challenge_method=S256"),  # no method means plain
            ({"code_challenge_method": "plain", "code_challenge": verifier}, "code_challenge_method=S256"),
            ({"code_challenge_method": "s256"}, "code_challenge_method=S256"),
            ({"code_challenge": None}, "code_challenge must be"),
            ({"code_challenge": ""}, "code_challenge must be"),
            ({"code_challenge": verifier + "abc"}, "code_challenge must be"),  # a plain verifier's length
            ({"code_challenge": challenge[:42]}, "code_challenge must be"),
            ({"code_challenge": challenge[:42] + "="}, "code_challenge must be"),
            ({"response_type": None}, "response_type must be code"),
            ({"response_type": "token"}, "response_type must be code"),  # the implicit flow
            ({"response_type": "code token"}, "response_type must be code"),
            ({"client_id": None}, "client_id is required"),
            ({"client_id": ""}, "client_id is required"),
            ({"client_id": "x" * 256}, "client_id is required"),
            ({"client_id": "a\x00b"}, "client_id is required"),
            ({"audience": "https://another-api.example"}, "audience casting-agency only"),
        ]
        for changes, message in cases:
            with self.subTest(changes=changes):
                parameters = self.parameters(challenge, **changes)
                self.assertRefused(self.client.get(AUTHORIZE, query_string=parameters), message)
                self.assertRefused(
                    self.client.post(AUTHORIZE, data={**parameters, "role": "Casting Director"}), message
                )
        twice = [*self.parameters(challenge).items(), ("client_id", "another")]
        self.assertRefused(self.client.get(AUTHORIZE, query_string=twice), "client_id is sent more than once")
        unknown = self.client.post(AUTHORIZE, data={**self.parameters(challenge), "role": "Director"})
        self.assertRefused(unknown, "choose one of the roles")
        self.assertEqual(self.codes(), [])

    # --- the token request's rules -------------------------------------------------

    def test_a_code_is_good_once(self):
        code, verifier = self.sign_in()
        self.assertEqual(self.exchange(code, verifier).status_code, 200)
        self.assertOAuthError(self.exchange(code, verifier), "invalid_grant")  # replayed
        self.assertEqual(self.codes(), [])

    def test_a_code_is_bound_to_its_redirect_uri_client_and_challenge(self):
        """A code taken on its way (a log, a history, a referrer) is useless
        without the verifier that only the client that asked for it holds."""
        other_verifier, other_challenge = pkce()
        cases = [
            {"redirect_uri": "http://localhost:8080/docs/oauth2-redirect.html"},
            {"redirect_uri": "https://evil.example/docs/oauth2-redirect.html"},
            {"client_id": "another-client"},
            {"code_verifier": other_verifier},  # the wrong verifier
            {"code_verifier": "x" * 43},
            {"code_verifier": "short"},
        ]
        for changes in cases:
            with self.subTest(changes=changes):
                code, verifier = self.sign_in()
                self.assertOAuthError(self.exchange(code, verifier, **changes), "invalid_grant")
                # A failed exchange spends the code: no second guess.
                self.assertOAuthError(self.exchange(code, verifier), "invalid_grant")
        with self.subTest("plain: the challenge sent as the verifier"):
            code, _ = self.sign_in()
            self.assertOAuthError(self.exchange(code, other_challenge), "invalid_grant")

    def test_a_code_expires_within_a_minute(self):
        issued = 1_900_000_000.25
        with mock.patch("local_signin.now", return_value=issued):
            fresh, fresh_verifier = self.sign_in()
            stale, stale_verifier = self.sign_in()
        with mock.patch("local_signin.now", return_value=issued + 59.5):
            self.assertEqual(self.exchange(fresh, fresh_verifier).status_code, 200)
        with mock.patch("local_signin.now", return_value=issued + 60):
            self.assertOAuthError(self.exchange(stale, stale_verifier), "invalid_grant")

    def test_codes_left_unredeemed_are_deleted(self):
        issued = 1_900_000_000
        with mock.patch("local_signin.now", return_value=issued):
            self.sign_in()
            self.sign_in()
        self.assertEqual(len(self.codes()), 2)
        with mock.patch("local_signin.now", return_value=issued + 60):
            code, verifier = self.sign_in()
        self.assertEqual([row["expires_at"] for row in self.codes()], [issued + 120])
        self.assertNotIn(code, str(self.codes()))  # the table holds no usable code
        self.assertEqual(self.codes()[0]["code_hash"], hashlib.sha256(code.encode()).hexdigest())

    def test_malformed_token_requests(self):
        code, verifier = self.sign_in()
        cases = [  # (changes, error)
            ({"grant_type": None}, "invalid_request"),
            ({"grant_type": "password"}, "unsupported_grant_type"),
            ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
            ({"grant_type": "refresh_token"}, "unsupported_grant_type"),
            ({"code": None}, "invalid_request"),
            ({"redirect_uri": None}, "invalid_request"),
            ({"client_id": None}, "invalid_request"),
            ({"code_verifier": None}, "invalid_request"),
            ({"code_verifier": ""}, "invalid_request"),
        ]
        for changes, error in cases:
            with self.subTest(changes=changes):
                self.assertOAuthError(self.exchange(code, verifier, **changes), error)
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
        as_json = self.client.post(
            EXCHANGE, json={**form, "client_id": local_signin.CLIENT_ID, "code_verifier": verifier}
        )
        self.assertOAuthError(as_json, "invalid_request")
        twice = self.client.post(
            EXCHANGE, data=MultiDict([*form.items(), ("code", "another"), ("code_verifier", verifier)])
        )
        self.assertOAuthError(twice, "invalid_request")
        self.assertOAuthError(self.exchange("a-code-never-issued", verifier), "invalid_grant")
        # None of these spent the code.
        self.assertEqual(self.exchange(code, verifier).status_code, 200)
        self.assertEqual(self.client.get(EXCHANGE).status_code, 405)

    # --- several workers and instances ------------------------------------------------

    def test_another_instance_on_the_same_database_redeems_the_code(self):
        other = create_app(app_config(**LOCAL_ISSUER_CONFIG, SECRET_KEY="another instance's"))  # noqa: S106
        self.addCleanup(dispose, other)
        code, verifier = self.sign_in()
        response = self.exchange(code, verifier, client=other.test_client())
        self.assertEqual(response.status_code, 200, response.get_json())
        token = response.get_json()["access_token"]
        self.assertEqual(self.client.get("/actors", headers={"Authorization": f"Bearer {token}"}).status_code, 200)
        self.assertOAuthError(self.exchange(code, verifier), "invalid_grant")  # and not again here

    def test_of_simultaneous_exchanges_of_one_code_one_succeeds(self):
        other = create_app(app_config(**LOCAL_ISSUER_CONFIG))
        self.addCleanup(dispose, other)
        code, verifier = self.sign_in()
        apps = [self.app, other] * 4
        start = threading.Barrier(len(apps))
        statuses = []

        def exchange(app):
            client = app.test_client()
            start.wait()
            statuses.append(self.exchange(code, verifier, client=client).status_code)

        threads = [threading.Thread(target=exchange, args=(app,)) for app in apps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(sorted(statuses), [200] + [400] * (len(apps) - 1))

    # --- where the endpoints are -------------------------------------------------------

    def test_behind_a_proxy_the_redirect_page_is_on_the_scheme_the_proxy_was_reached_with(self):
        _, challenge = pkce()
        https = "https://localhost/docs/oauth2-redirect.html"
        proxied = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        behind = create_app(app_config(**LOCAL_ISSUER_CONFIG, TRUSTED_PROXY_HOPS=1))
        self.addCleanup(dispose, behind)
        client = behind.test_client()
        page = client.get(AUTHORIZE, query_string=self.parameters(challenge, redirect_uri=https), headers=proxied)
        self.assertEqual(page.status_code, 200)
        plain = client.get(AUTHORIZE, query_string=self.parameters(challenge), headers=proxied)
        self.assertRefused(plain, f"redirect_uri must be {https}")
        self.assertIn(f'"oauth2RedirectUrl": "{https}"', client.get("/docs/", headers=proxied).get_data(as_text=True))
        flows = client.get("/openapi.json", headers=proxied).get_json()["components"]["securitySchemes"]["oauth2"]
        self.assertEqual(flows["flows"]["authorizationCode"]["authorizationUrl"], "https://localhost" + AUTHORIZE)
        # With no proxy trusted, a client's X-Forwarded-Proto changes nothing.
        spoofed = self.client.get(
            AUTHORIZE, query_string=self.parameters(challenge, redirect_uri=https), headers=proxied
        )
        self.assertRefused(spoofed, f"redirect_uri must be {REDIRECT_URI}")

    def test_with_an_issuer_configured_the_endpoints_do_not_exist(self):
        _, challenge = pkce()
        configurations = [{}, {"AUTH0_DOMAIN": "tenant.example.auth0.com", "AUTH0_CLIENT_ID": "spa-client-id"}]
        for config in configurations:
            with self.subTest(config=config):
                app = create_app(app_config(**config))
                self.addCleanup(dispose, app)
                client = app.test_client()
                parameters = self.parameters(challenge)
                self.assertError(client.get(AUTHORIZE, query_string=parameters), 404)
                self.assertError(client.post(AUTHORIZE, data={**parameters, "role": "Executive Producer"}), 404)
                self.assertError(client.post(EXCHANGE, data={"grant_type": "authorization_code"}), 404)
        self.assertEqual(self.codes(), [])


TENANT = "tenant.example.auth0.com"
AUTH0 = {"AUTH0_DOMAIN": TENANT, "AUTH0_ISSUER": None, "JWKS_URL": None}
CONFIGURATIONS = {  # name: (configuration, the sign-in's authorization URL, token URL and client id, or None)
    "the local issuer": (
        LOCAL_ISSUER_CONFIG,
        (f"{ORIGIN}{AUTHORIZE}", f"{ORIGIN}{EXCHANGE}", local_signin.CLIENT_ID, "casting-agency"),
    ),
    "Auth0 with a Single Page Application": (
        {**AUTH0, "AUTH0_CLIENT_ID": "spa-client-id"},
        (f"https://{TENANT}/authorize", f"https://{TENANT}/oauth/token", "spa-client-id", "casting-agency-test"),
    ),
    "Auth0 without AUTH0_CLIENT_ID": (AUTH0, None),
    # Where another issuer signs people in is not known: bearer tokens only, client id or not.
    "another issuer": ({"AUTH0_CLIENT_ID": "spa-client-id"}, None),
}


class DescriptionTest(unittest.TestCase):
    """What /openapi.json and /docs say about getting a token, in each
    configuration; the description stays valid OpenAPI 3.1."""

    def described(self, config):
        app = create_app(app_config(**config))
        self.addCleanup(dispose, app)
        client = app.test_client()
        docs = client.get("/docs/").get_data(as_text=True)
        settings = {  # what the page hands Swagger UI: SwaggerUIBundle's and initOAuth's settings
            name: json.loads(match[1]) if (match := re.search(rf"var {name} = (\{{.*?\}});", docs, re.S)) else None
            for name in ("user_config", "oauth_user_config")
        }
        return client.get("/openapi.json").get_json(), settings

    def test_the_sign_in_scheme_beside_the_bearer_one_in_each_configuration(self):
        for name, (config, sign_in) in CONFIGURATIONS.items():
            with self.subTest(name):
                spec, settings = self.described(config)
                schemathesis.openapi.from_dict(spec).validate()  # OpenAPI 3.1's own schema: the URLs absolute
                schemes = spec["components"]["securitySchemes"]
                self.assertEqual(schemes["bearerAuth"]["scheme"], "bearer")
                accepted = [{"bearerAuth": []}]
                if sign_in:
                    authorization_url, token_url, client_id, audience = sign_in
                    self.assertEqual(schemes["oauth2"]["type"], "oauth2")
                    flows = {
                        "authorizationCode": {
                            "authorizationUrl": authorization_url,
                            "tokenUrl": token_url,
                            "scopes": {},
                        }
                    }
                    self.assertEqual(schemes["oauth2"]["flows"], flows)
                    accepted.append({"oauth2": []})
                    oauth = {
                        "clientId": client_id,
                        "usePkceWithAuthorizationCodeGrant": True,
                        "additionalQueryStringParams": {"audience": audience},
                    }
                    self.assertEqual(settings["oauth_user_config"], oauth)
                else:
                    self.assertEqual(set(schemes), {"bearerAuth"})
                    self.assertIsNone(settings["oauth_user_config"])
                for path, item in spec["paths"].items():
                    for method, operation in item.items():
                        if path not in ("/", "/health") and method != "parameters":
                            self.assertEqual(operation["security"], accepted, f"{method} {path}")
                self.assertEqual(settings["user_config"]["oauth2RedirectUrl"], REDIRECT_URI)
                self.assertIs(settings["user_config"]["persistAuthorization"], True)  # kept across reloads
                self.assertEqual(settings["user_config"]["layout"], "BaseLayout")  # no "Explore" bar

    def test_the_description_says_how_to_get_a_token(self):
        says = {  # what the description's introduction says, beside `flask token ROLE` and Auth0
            "the local issuer": ["its own token issuer", "choose a role", "`flask token ROLE` in the project folder"],
            "Auth0 with a Single Page Application": [
                f"Auth0 ({TENANT})",
                "sign in on Auth0's page",
                "casting-agency-test",
            ],
            "Auth0 without AUTH0_CLIENT_ID": [f"Auth0 ({TENANT})", "`AUTH0_CLIENT_ID`", "casting-agency-test"],
            "another issuer": ["the issuer `https://issuer.test/`", "`AUTH0_CLIENT_ID`", "casting-agency-test"],
        }
        for name, (config, _) in CONFIGURATIONS.items():
            with self.subTest(name):
                spec, _ = self.described(config)
                introduction = spec["info"]["description"]
                for words in ["`flask token ROLE`", "Auth0", *says[name]]:
                    self.assertIn(words, introduction)
                bearer = spec["components"]["securitySchemes"]["bearerAuth"]["description"]
                self.assertIn("`flask token ROLE`", bearer)
                self.assertEqual(
                    "sign in under `oauth2`" in bearer or "signing in under `oauth2`" in bearer,
                    bool(CONFIGURATIONS[name][1]),
                )

    def test_swagger_ui_s_redirect_page_is_served_from_the_package(self):
        spec_app = create_app(app_config(**LOCAL_ISSUER_CONFIG))
        self.addCleanup(dispose, spec_app)
        dist = os.path.join(os.path.dirname(flask_swagger_ui.__file__), "dist")
        for name in ("oauth2-redirect.html", "oauth2-redirect.js"):
            path = os.path.join(dist, name)
            with self.subTest(name), open(path, "rb") as file, spec_app.test_client().get(f"/docs/{name}") as response:
                self.assertEqual(response.status_code, 200)
                self.assertEqual(response.data, file.read())
