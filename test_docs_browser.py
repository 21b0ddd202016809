"""The docs page in a real browser: headless Chromium loads /docs/ from a
running server, with every host but loopback unresolvable, and finds every
operation of the description rendered. A screenshot is saved in artifacts/."""

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading

from werkzeug.serving import make_server

from models import Actor, Movie
from testing import ACTOR, MOVIE_ROW, ApiTestCase

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


class DocsInBrowserTest(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not self.chromium:
            if os.environ.get("REQUIRE_BROWSER"):
                self.fail("Chromium is not installed (apt-get install chromium)")
            self.skipTest("Chromium is not installed; .ci/run installs it")

        def app_and_page(environ, start_response):
            if environ["PATH_INFO"] == "/try-it-out.html":
                start_response("200 OK", [("Content-Type", "text/html")])
                return [TRY_IT_OUT]
            return self.app(environ, start_response)

        self.server = make_server("127.0.0.1", 0, app_and_page, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.base = f"http://127.0.0.1:{self.server.server_port}"

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
