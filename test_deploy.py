"""The Procfile as Heroku runs it (by bash, from the repository's folder): the
release phase migrates the database, and both it and the web start refuse to
run without a token issuer, so that a misconfigured deploy fails before it goes
live and Heroku keeps the previous release serving. And ./setup.sh's answer
when its database cannot be reached."""

import os
import sqlite3
import subprocess
import sys
import tempfile
import unittest

from alembic.script import ScriptDirectory

from loopback import REPO, Postgres, clean_environment, needs_postgres, run_procfile

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


@needs_postgres
@unittest.skipUnless(
    sys.prefix == os.path.join(REPO, ".venv"), "runs ./setup.sh, which uses .venv: run the tests with ./setup.sh test"
)
class SetupTest(unittest.TestCase):
    """./setup.sh against a database it cannot use stops with one line that says
    why (and how to create a missing PostgreSQL database), not a traceback."""

    @classmethod
    def setUpClass(cls):
        cls.pg = Postgres()
        cls.addClassCleanup(cls.pg.close)
        cls.pg.init()
        cls.pg.start()

    def setup_sh(self, mode, **settings):
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        env = clean_environment(**{"DATABASE_URL": f"sqlite:///{folder.name}/dev.db", **settings})
        return subprocess.run(  # noqa: S603 (our own script)
            ["./setup.sh", mode], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )

    def test_a_database_it_cannot_use_is_one_line(self):
        missing = self.pg.url("casting_missing")
        refused = "postgresql://postgres@127.0.0.1:1/casting"  # nothing listens on port 1
        createdb = f"createdb -h 127.0.0.1 -p {self.pg.port} -U postgres casting_missing"
        cases = [  # (mode, settings, what the one line says)
            (
                "serve",
                {"DATABASE_URL": missing},
                f'"casting_missing" (DATABASE_URL) does not exist: create it with `{createdb}`',
            ),
            ("test", {"TEST_DATABASE_URL": missing}, '"casting_missing" (TEST_DATABASE_URL) does not exist'),
            ("serve", {"DATABASE_URL": refused}, "cannot connect to DATABASE_URL"),
        ]
        for mode, settings, says in cases:
            with self.subTest(mode, **settings):
                result = self.setup_sh(mode, **settings)
                self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
                self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
                self.assertTrue(result.stderr.startswith("setup.sh: "), result.stderr)
                self.assertIn(says, result.stderr)
                self.assertNotIn("running the tests", result.stdout)
