"""The docs page in a real browser: headless Chromium loads /docs/ from a
running server, with every host but loopback unresolvable, and finds every
operation of the description rendered. A screenshot is saved in artifacts/."""

import os
import re
import shutil
import subprocess
import tempfile
import threading
import unittest

from werkzeug.serving import make_server

from app import create_app
from testing import app_config

HERE = os.path.dirname(os.path.abspath(__file__))
SCREENSHOT = os.path.join(HERE, "artifacts", "docs.png")
# Rendered by Swagger UI for each operation: <div class="opblock opblock-get" ...> ... data-path="/actors"
OPERATION = re.compile(r'class="opblock opblock-(\w+)[^"]*".*?data-path="([^"]+)"', re.S)


class DocsInBrowserTest(unittest.TestCase):
    def setUp(self):
        self.chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not self.chromium:
            if os.environ.get("REQUIRE_BROWSER"):
                self.fail("Chromium is not installed (apt-get install chromium)")
            self.skipTest("Chromium is not installed; .ci/run installs it")
        self.app = create_app(app_config())
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    def browse(self, *arguments):
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
                    f"{self.base}/docs/",
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
