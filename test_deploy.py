"""The Procfile as Heroku runs it (by bash, from the repository's folder): the
release phase migrates the database, and both it and the web start refuse to
run without a token issuer, so that a misconfigured deploy fails before it goes
live and Heroku keeps the previous release serving."""

import os
import sqlite3
import tempfile
import unittest

from alembic.script import ScriptDirectory

from loopback import REPO, clean_environment, run_procfile

AN_AUTH0_TENANT = {"AUTH0_DOMAIN": "tenant.eu.auth0.com", "API_AUDIENCE": "casting-agency"}
ANOTHER_ISSUER = {
    "AUTH0_ISSUER": "https://issuer.example/",
    "JWKS_URL": "https://issuer.example/jwks",
    "API_AUDIENCE": "x",
}
NO_ISSUER = "no token issuer configured"

# (settings, the message of a refusal, or None when the command must succeed)
CASES = [
    (AN_AUTH0_TENANT, None),
    (ANOTHER_ISSUER, None),
    ({}, NO_ISSUER),
    ({"API_AUDIENCE": "casting-agency", "AUTH0_DOMAIN": ""}, NO_ISSUER),
    ({"AUTH0_DOMAIN": "tenant.eu.auth0.com"}, "API_AUDIENCE must be set"),
    ({"JWKS_URL": "https://issuer.example/jwks", "API_AUDIENCE": "x"}, "set AUTH0_DOMAIN, or both"),
]
HEAD = ScriptDirectory(os.path.join(REPO, "migrations")).get_current_head()


def tables_and_version(path):
    """The tables of a SQLite file and its Alembic version; nothing when there is no file."""
    if not os.path.exists(path):
        return set(), None
    with sqlite3.connect(path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = connection.execute("SELECT version_num FROM alembic_version").fetchone() if tables else None
    return tables - {"sqlite_sequence"}, version and version[0]


class ProcfileTest(unittest.TestCase):
    def test_the_release_migrates_with_an_issuer_and_refuses_without(self):
        for settings, refusal in CASES:
            with self.subTest(settings), tempfile.TemporaryDirectory() as folder:
                database = os.path.join(folder, "release.db")
                result = run_procfile("release", clean_environment(DATABASE_URL=f"sqlite:///{database}", **settings))
                if refusal is None:
                    self.assertEqual(result.returncode, 0, result.stderr)
                    expected = ({"actors", "movies", "castings", "row_counts", "alembic_version"}, HEAD)
                    self.assertEqual(tables_and_version(database), expected)
                else:
                    self.assertNotEqual(result.returncode, 0)
                    self.assertIn(refusal, result.stderr.strip().splitlines()[-1])
                    self.assertEqual(tables_and_version(database), (set(), None))  # it migrated nothing

    def test_the_web_start_refuses_without_an_issuer(self):
        for settings, refusal in CASES:
            with self.subTest(settings):
                result = run_procfile("web", clean_environment(**settings), "--check-config")
                if refusal is None:
                    self.assertEqual(result.returncode, 0, result.stderr)
                    self.assertNotIn("LOCAL ISSUER", result.stderr)
                else:
                    self.assertNotEqual(result.returncode, 0)
                    self.assertIn(refusal, result.stderr)
