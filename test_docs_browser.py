"""The docs page in a real browser: headless Chromium loads /docs/ from a
running server, with every host but loopback unresolvable, and finds every
operation of the description rendered. A screenshot is saved in artifacts/.

Then, driven by Playwright (its Python package, with Debian's Chromium): a
person signs in from /docs as a role, through the Authorize dialog and its
pop-up, and tries requests, on the local issuer and with Auth0 simulated in
the browser (no request leaves the machine); and a page on another origin
reads ETags and sends conditional PATCHes (CORS)."""

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import unittest
from urllib.parse import parse_qs, urlencode, urlsplit

from playwright.sync_api import expect, sync_playwright
from werkzeug.serving import make_server

import local_signin
from app import create_app
from models import Actor, AuditEvent, Movie
from testing import ACTOR, AUDIENCE, LOCAL_ISSUER_CONFIG, MOVIE_ROW, ApiTestCase, app_config, dispose

TENANT = "tenant.example.auth0.com"  # never resolved: the browser's requests to it are answered by the test

HERE = os.path.dirname(os.path.abspath(__file__))
SCREENSHOT = os.path.join(HERE, "artifacts", "docs.png")
# Rendered by Swagger UI for each operation: <div class="opblock opblock-get" ...> ... data-path="/actors"
OPERATION = re.compile(r'class="opblock opblock-(\w+)[^"]*".*?data-path="([^"]+)"', re.S)


# A page of Swagger UI's own, on the same server as /docs: it writes the request
# bodies that "Try it out" would start from (Swagger UI's getSampleSchema, as the
# request-body editor calls it) into the page, as JSON.
TRY_IT_OUT = b"""<!doctype html>
<html><body><pre id="bodies">not yet</pre><div id="ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
const ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui", onComplete: () => {
  const spec = ui.specSelectors.specJson().toJS();
  const bodies = {};
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(item)) {
      if (!operation.requestBody) continue;
      const ref = operation.requestBody.content["application/json"].schema["$ref"];
      const schema = spec.components.schemas[ref.split("/").pop()];
      bodies[method.toUpperCase() + " " + path] = JSON.parse(
        ui.fn.getSampleSchema(schema, "application/json", {includeWriteOnly: true}));
    }
  }
  document.getElementById("bodies").textContent = JSON.stringify(bodies);
}});
</script></body></html>"""


def chromium_or_skip():
    """Debian's Chromium, or the test is skipped (failed in CI: REQUIRE_BROWSER)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        return chromium
    if os.environ.get("REQUIRE_BROWSER"):
        raise AssertionError("Chromium is not installed (apt-get install chromium)")
    raise unittest.SkipTest("Chromium is not installed; .ci/run installs it")


def serve(test, app):
    """`app` on a free port of 127.0.0.1 until the test ends; its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    test.addCleanup(server.server_close)
    test.addCleanup(server.shutdown)
    return f"http://127.0.0.1:{server.server_port}"


class DocsInBrowserTest(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.chromium = chromium_or_skip()

        def app_and_page(environ, start_response):
            if environ["PATH_INFO"] == "/try-it-out.html":
                start_response("200 OK", [("Content-Type", "text/html")])
                return [TRY_IT_OUT]
            return self.app(environ, start_response)

        self.base = serve(self, app_and_page)

    def browse(self, *arguments, page="/docs/"):
        with tempfile.TemporaryDirectory() as profile:
            result = subprocess.run(  # noqa: S603 (a fixed browser command)
                [
                    self.chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    # No network but loopback: a page that needed a CDN would break here.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                    "--virtual-time-budget=20000",
                    *arguments,
                    f"{self.base}{page}",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        return result.stdout

    def test_every_described_operation_is_rendered(self):
        spec = self.app.test_client().get("/openapi.json").get_json()
        described = {(m.upper(), p) for p, item in spec["paths"].items() for m in item if m != "parameters"}
        dom = self.browse("--dump-dom")
        rendered = {(method.upper(), path) for method, path in OPERATION.findall(dom)}
        self.assertEqual(rendered, described)
        self.assertIn("Casting Agency API", dom)
        self.assertIn("Authorize", dom)  # the bearer scheme's button

        os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
        self.browse(f"--screenshot={SCREENSHOT}", "--window-size=1280,2400", "--hide-scrollbars")
        with open(SCREENSHOT, "rb") as image:
            self.assertEqual(image.read(8), b"\x89PNG\r\n\x1a\n")

    def test_try_it_out_starts_from_realistic_bodies_the_api_accepts(self):
        dom = self.browse("--dump-dom", page="/try-it-out.html")
        bodies = json.loads(html.unescape(re.search(r'<pre id="bodies">(.*?)</pre>', dom, re.S)[1]))
        ids = {"actor_id": self.add(Actor, **ACTOR)["id"], "movie_id": self.add(Movie, **MOVIE_ROW)["id"]}
        actor = {"name": "Viola Davis", "age": 61, "gender": "Female"}
        movie = {"title": "Harbour Lights", "release_date": "2021-10-15"}
        expected = {  # what a user sees, as the sample data reads
            "POST /actors": actor,
            "PATCH /actors/{actor_id}": actor,
            "POST /movies": movie,
            "PATCH /movies/{movie_id}": movie,
            "PUT /movies/{movie_id}/actors/{actor_id}": {"character": "Captain Hale"},
        }
        self.assertEqual(bodies, expected)
        for operation, body in bodies.items():
            method, path = operation.split(" ")
            with self.subTest(operation, body=body):
                response = self.call(method, re.sub(r"{(\w+)}", lambda match: str(ids[match[1]]), path), json=body)
                self.assertLess(response.status_code, 300, response.get_json())


class BrowserTestCase(ApiTestCase):
    """A headless Chromium for the class, a fresh profile (context) for each
    test. Every host but 127.0.0.1 is unresolvable: what the tests let out,
    they intercept."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        chromium = chromium_or_skip()
        cls.playwright = sync_playwright().start()
        cls.browser = cls.playwright.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.playwright.stop()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.context = self.browser.new_context()
        self.context.set_default_timeout(20000)
        self.addCleanup(self.context.close)


class SwaggerUI:
    """/docs as a person uses it: the Authorize dialog, its sign-in pop-up, and
    each operation's "Try it out"."""

    def __init__(self, page, base):
        self.page = page
        page.goto(f"{base}/docs/")

    def open_dialog(self):
        self.page.locator(".auth-wrapper").get_by_role("button", name="Authorize").click()

    def close_dialog(self):
        self.page.locator(".close-modal").click()

    def sign_in(self, choose):
        """Press the sign-in's Authorize; `choose(popup)` does what the person
        does in the pop-up, which then closes."""
        self.open_dialog()
        with self.page.expect_popup() as opened:
            self.page.get_by_role("button", name="Apply given OAuth2 credentials").click()
        popup = opened.value
        with popup.expect_event("close"):
            choose(popup)
        expect(self.page.get_by_role("button", name="Remove authorization")).to_be_visible()
        self.close_dialog()

    def sign_out(self):
        self.open_dialog()
        self.page.get_by_role("button", name="Remove authorization").click()
        self.close_dialog()

    def try_it_out(self, method, path):
        """Execute the operation with Swagger UI's own sample body; the status and body it shows."""
        operation = self.page.locator(f".opblock-{method.lower()}").filter(
            has=self.page.locator(f'[data-path="{path}"]')
        )
        if "is-open" not in operation.get_attribute("class"):
            operation.locator(".opblock-summary").first.click()
        toggle = operation.locator(".try-out__btn")  # "Try it out", then "Cancel"
        expect(toggle).to_be_visible()
        if toggle.inner_text().strip() == "Try it out":
            toggle.click()
        clear = operation.get_by_role("button", name="Clear")
        if clear.count():  # the answer shown is then this request's
            clear.click()
            expect(clear).to_have_count(0)
        operation.get_by_role("button", name="Execute").click()
        answer = operation.locator(".live-responses-table .response").first
        status = answer.locator(".response-col_status").inner_text()
        return int(status.strip()), json.loads(answer.locator(".microlight").first.inner_text())


def choose_role(role):
    """The person's click on the local issuer's page."""

    def choose(popup):
        expect(popup).to_have_title("Sign in: Casting Agency API")
        popup.get_by_role("button", name=role, exact=True).click()

    return choose


class SignInFromDocsTest(BrowserTestCase):
    config = LOCAL_ISSUER_CONFIG

    def test_a_person_signs_in_as_a_role_and_tries_requests(self):
        page = self.context.new_page()
        base = serve(self, self.app)
        docs = SwaggerUI(page, base)
        expect(page.locator(".topbar")).to_have_count(0)  # no "Explore" bar
        status, body = docs.try_it_out("POST", "/actors")
        self.assertEqual((status, body["code"]), (401, "authorization_header_missing"))

        docs.sign_in(choose_role("Casting Director"))
        status, body = docs.try_it_out("POST", "/actors")
        self.assertEqual(status, 201, body)
        self.assertEqual(body["actor"], {"id": body["actor"]["id"], **ACTOR})  # Swagger UI's sample body, as sent
        # Loaded again (without the address's #/actors/post_actors, which would
        # open the operation by itself), the page keeps the token: persistAuthorization.
        docs = SwaggerUI(page, base)
        self.assertEqual(docs.try_it_out("POST", "/actors")[0], 201)

        docs.sign_out()
        docs.sign_in(choose_role("Casting Assistant"))
        status, body = docs.try_it_out("POST", "/actors")
        self.assertEqual((status, body["message"]), (403, "permission 'add:actors' is required"))
        status, body = docs.try_it_out("GET", "/actors")
        self.assertEqual((status, body["total_actors"]), (200, 2))
        self.assertEqual([event["subject"] for event in self.rows(AuditEvent)], ["local|casting-director"] * 2)


class SignInWithAuth0SimulatedTest(BrowserTestCase):
    """Auth0's two endpoints answered inside the browser: the pop-up's
    authorization request and Swagger UI's token request are checked as Auth0
    would see them, and the token is one Auth0 could give (signed by the
    suite's issuer, whose keys the app fetches on loopback)."""

    config = {"AUTH0_DOMAIN": TENANT, "AUTH0_CLIENT_ID": "spa-client-id"}  # AUTH0_ISSUER, JWKS_URL: the suite's

    def test_the_dialog_signs_in_at_auth0_with_pkce_and_the_api_s_audience(self):
        base = serve(self, self.app)
        seen = {}
        left = []

        def auth0(route):
            request = route.request
            url = urlsplit(request.url)
            if url.path == "/authorize":
                seen["authorize"] = query = {k: v[0] for k, v in parse_qs(url.query).items()}
                back = f"{query['redirect_uri']}?{urlencode({'code': 'auth0-code', 'state': query['state']})}"
                # Auth0's login page, reduced to its outcome: a link back with the code.
                route.fulfill(content_type="text/html", body=f'<a id="back" href="{html.escape(back)}">Log in</a>')
            elif url.path == "/oauth/token":
                cors = {
                    "Access-Control-Allow-Origin": base,
                    "Access-Control-Allow-Headers": "content-type, x-requested-with",
                }
                if request.method == "OPTIONS":
                    route.fulfill(status=204, headers=cors)
                    return
                seen["token"] = {k: v[0] for k, v in parse_qs(request.post_data).items()}
                token = self.issuer.role_token("Casting Director")
                body = {"access_token": token, "token_type": "Bearer", "expires_in": 86400}
                route.fulfill(json=body, headers={**cors, "Cache-Control": "no-store"})
            else:
                route.abort()

        self.context.route(f"https://{TENANT}/**", auth0)
        page = self.context.new_page()
        page.on("requestfailed", lambda request: left.append(request.url))
        docs = SwaggerUI(page, base)
        docs.sign_in(lambda popup: popup.locator("#back").click())

        query = seen["authorize"]
        self.assertTrue(query.pop("state"))  # the pop-up's answer came back with it, or Swagger UI ignores it
        challenge = query.pop("code_challenge")
        redirect_page = f"{base}/docs/oauth2-redirect.html"
        expected = {
            "response_type": "code",
            "client_id": "spa-client-id",
            "redirect_uri": redirect_page,
            "code_challenge_method": "S256",
            "audience": AUDIENCE,
        }
        self.assertEqual(query, expected)
        verifier = seen["token"].pop("code_verifier")
        self.assertEqual(local_signin.s256(verifier), challenge)
        exchange = {"grant_type": "authorization_code", "code": "auth0-code", "client_id": "spa-client-id"}
        self.assertEqual(seen["token"], {**exchange, "redirect_uri": redirect_page})

        status, body = docs.try_it_out("POST", "/actors")
        self.assertEqual(status, 201, body)
        self.assertEqual(left, [])  # nothing was sent towards the network


class CrossOriginTest(BrowserTestCase):
    """A front-end on another origin (another port of 127.0.0.1) listed in
    CORS_ORIGINS reads what curl reads and sends conditional writes."""

    def test_a_front_end_reads_the_etag_and_patches_with_if_match(self):
        def front_end(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/html")])
            return [b"<!doctype html><title>A front-end</title>"]

        origin = serve(self, front_end)
        api = create_app(app_config(CORS_ORIGINS=origin))
        self.addCleanup(dispose, api)
        base = serve(self, api)
        actor = self.add(Actor, **ACTOR)["id"]
        page = self.context.new_page()
        page.goto(origin)
        expect(page).to_have_title("A front-end")
        answers = page.evaluate(
            """async ([base, actor, token]) => {
                const headers = {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"};
                const read = await fetch(`${base}/actors/${actor}`, {headers});
                const etag = read.headers.get("ETag");
                const patch = (match) => fetch(`${base}/actors/${actor}`, {
                    method: "PATCH", headers: {...headers, "If-Match": match}, body: JSON.stringify({"age": 62})});
                const patched = await patch(etag);
                const stale = await patch(etag);
                const current = {...headers, "If-None-Match": patched.headers.get("ETag")};
                const unchanged = await fetch(`${base}/actors/${actor}`, {headers: current});
                const created = await fetch(`${base}/actors`, {method: "POST", headers, body: JSON.stringify(
                    {"name": "Kunle Afolayan", "age": 50, "gender": "Male"})});
                const listed = await fetch(`${base}/actors?per_page=1`, {headers});
                return {
                    etag, patched: patched.status, stale: stale.status, unchanged: unchanged.status,
                    created: created.status, location: created.headers.get("Location"),
                    link: listed.headers.get("Link"), request_id: listed.headers.get("X-Request-ID"),
                    remaining: listed.headers.get("X-RateLimit-Remaining"),
                };
            }""",
            [base, actor, self.issuer.role_token("Executive Producer")],
        )
        self.assertEqual(answers["etag"], f'"{actor}.1"')
        self.assertEqual((answers["patched"], answers["stale"], answers["unchanged"]), (200, 412, 304))
        self.assertEqual(answers["created"], 201)
        self.assertRegex(answers["location"], r"^/actors/\d+$")
        self.assertIn('rel="next"', answers["link"])
        self.assertRegex(answers["request_id"], r"^[0-9a-f]{32}$")
        self.assertTrue(answers["remaining"].isdigit())
        self.assertEqual(self.rows(Actor)[0]["age"], 62)
