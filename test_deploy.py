"""The Procfile's commands resolve, and its production start fails closed
without a token issuer."""

import os
import shlex
import subprocess
import unittest

from loopback import clean_environment

HERE = os.path.dirname(os.path.abspath(__file__))


def procfile():
    with open(os.path.join(HERE, "Procfile")) as file:
        return dict(line.split(": ", 1) for line in file.read().splitlines() if line.strip())


def run(command, **env):
    return subprocess.run(  # noqa: S603 (the Procfile's own commands)
        command, cwd=HERE, env=clean_environment(**env), capture_output=True, text=True, timeout=120
    )


class ProcfileTest(unittest.TestCase):
    def test_release_runs_the_migrations(self):
        release = shlex.split(procfile()["release"])
        self.assertEqual(release, ["flask", "db", "upgrade"])
        result = run([*release, "--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Upgrade to a later version", result.stdout)

    def test_web_refuses_to_start_without_an_issuer(self):
        web = shlex.split(procfile()["web"])
        self.assertEqual(web[0], "gunicorn")
        result = run([*web, "--check-config"])
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("no token issuer configured", result.stderr)

    def test_web_starts_with_an_issuer(self):
        web = shlex.split(procfile()["web"])
        result = run([*web, "--check-config"], AUTH0_DOMAIN="tenant.eu.auth0.com", API_AUDIENCE="casting-agency")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("LOCAL ISSUER", result.stderr)
