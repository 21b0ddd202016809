"""The Procfile as Heroku runs it (by bash, from the repository's folder): the
release phase migrates the database, and both it and the web start refuse to
run without a token issuer, so that a misconfigured deploy fails before it goes
live and Heroku keeps the previous release serving. requirements.txt (what
Heroku installs) holds what the service needs and no test tool. And
./setup.sh's answer when its database cannot be reached."""

import ast
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest
from importlib import metadata
from unittest import mock

from alembic.script import ScriptDirectory
from packaging.requirements import Requirement

import loopback
from loopback import REPO, Postgres, clean_environment, needs_postgres, run_procfile
from models import db

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
    # An empty REQUIRE_ISSUER is a production start too (gunicorn.conf.py's setdefault keeps it).
    ({"REQUIRE_ISSUER": ""}, NO_ISSUER),
    ({**AN_AUTH0_TENANT, "SECRET_KEY": ""}, "SECRET_KEY is not set"),
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
                    expected = ({*db.metadata.tables, "alembic_version"}, HEAD)
                    self.assertEqual(tables_and_version(database), expected)
                else:
                    self.assertNotEqual(result.returncode, 0)
                    [line] = result.stderr.strip().splitlines()  # one line, no traceback
                    self.assertRegex(line, f"^Error: .*{re.escape(refusal)}")
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
        cls.pg = Postgres.fresh(cls.addClassCleanup)

    def setup_sh(self, mode, **settings):
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        # An issuer, so that no local issuer key is made in the checkout.
        env = clean_environment(**{"DATABASE_URL": f"sqlite:///{folder.name}/dev.db", **AN_AUTH0_TENANT, **settings})
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


FAKE_TOOL = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CALLS"
exit "${EXIT:-0}"
"""
# The environment each call of ./setup.sh saw, one line per call.
FAKE_SETUP = """#!/usr/bin/env bash
echo "setup.sh $* REQUIRE_POSTGRES=${REQUIRE_POSTGRES:-} REQUIRE_BROWSER=${REQUIRE_BROWSER:-}\
 REQUIRE_PGBOUNCER=${REQUIRE_PGBOUNCER:-} TEST_DATABASE_URL=${TEST_DATABASE_URL:-}" >> "$CALLS"
"""


class CiScriptTest(unittest.TestCase):
    """.ci/run, in a folder of its own where ./setup.sh, ruff and the system's
    tools are fakes that record their calls: what it runs, with what it
    exports, and that it stops, saying why, when PostgreSQL does not come up."""

    def ci_run(self, pg_isready=0, pg_ctlcluster=0):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        calls = os.path.join(folder, "calls")

        def fake(path, text, **env):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as file:
                file.write(text.replace("${EXIT:-0}", str(env.get("EXIT", 0))))
            os.chmod(path, 0o700)

        os.makedirs(os.path.join(folder, ".ci"))
        shutil.copy(os.path.join(REPO, ".ci", "run"), os.path.join(folder, ".ci", "run"))
        fake(os.path.join(folder, "setup.sh"), FAKE_SETUP)
        fake(os.path.join(folder, ".venv", "bin", "ruff"), FAKE_TOOL)
        for tool, exit_code in (("pg_isready", pg_isready), ("pg_ctlcluster", pg_ctlcluster)):
            fake(os.path.join(folder, "bin", tool), FAKE_TOOL, EXIT=exit_code)
        for tool in ("sleep", "chromium", "pgbouncer", "psql", "apt-get"):
            fake(os.path.join(folder, "bin", tool), FAKE_TOOL)
        env = {"PATH": os.path.join(folder, "bin") + ":/usr/bin:/bin", "CALLS": calls, "HOME": folder}
        result = subprocess.run(  # noqa: S603 (the CI script, in a folder of fakes)
            [shutil.which("bash"), ".ci/run"], cwd=folder, env=env, capture_output=True, text=True, timeout=60
        )
        with open(calls) as file:
            return result, [line for line in file.read().splitlines() if not line.startswith(("sleep", "pg_isready"))]

    def test_it_runs_the_suite_on_sqlite_and_on_postgresql_in_reverse_with_nothing_skipped(self):
        result, calls = self.ci_run()
        self.assertEqual(result.returncode, 0, result.stderr)
        required = "REQUIRE_POSTGRES=1 REQUIRE_BROWSER=1 REQUIRE_PGBOUNCER=1"
        self.assertEqual(
            calls,
            [
                f"setup.sh test {required} TEST_DATABASE_URL=",
                "ruff check .",
                "ruff format --check .",
                "psql -q -h 127.0.0.1 -U postgres -d postgres -c DROP DATABASE IF EXISTS casting_agency_ci "
                "-c CREATE DATABASE casting_agency_ci",
                f"setup.sh test --reverse {required} "
                "TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/casting_agency_ci",
            ],
        )

    def test_it_stops_when_postgresql_does_not_come_up(self):
        cases = [  # (pg_isready's exit code, pg_ctlcluster's, what the one line says)
            (2, 0, "PostgreSQL did not answer on 127.0.0.1:5432 within 30 s"),
            (2, 1, "did not start"),
        ]
        for pg_isready, pg_ctlcluster, says in cases:
            with self.subTest(pg_ctlcluster=pg_ctlcluster):
                result, calls = self.ci_run(pg_isready=pg_isready, pg_ctlcluster=pg_ctlcluster)
                self.assertEqual(result.returncode, 1)
                self.assertIn(says, result.stderr)
                self.assertEqual([call for call in calls if not call.startswith("pg_ctlcluster")], [])


class NeedsPostgresTest(unittest.TestCase):
    """loopback.needs_postgres: a machine without PostgreSQL's server programs
    skips the tests that start their own cluster, unless REQUIRE_POSTGRES says
    they must run: then they fail, and say why."""

    def outcome(self, can_run, environment, needs="postgres"):
        class Probe(unittest.TestCase):
            def test_probe(self):
                pass

        can = f"loopback.CAN_RUN_{needs.upper()}"
        with mock.patch(can, can_run), mock.patch.dict(os.environ, environment, clear=True):
            result = unittest.TestResult()
            decorated = getattr(loopback, f"needs_{needs}")(Probe)
            unittest.defaultTestLoader.loadTestsFromTestCase(decorated).run(result)
        return result

    def test_skipped_or_failed_as_required(self):
        ran = self.outcome(True, {"REQUIRE_POSTGRES": "1"})
        self.assertEqual((ran.testsRun, ran.skipped, ran.errors), (1, [], []))
        skipped = self.outcome(False, {})
        self.assertEqual(len(skipped.skipped), 1)
        for environment in ({"REQUIRE_POSTGRES": "1"}, {"CI": "true"}):
            with self.subTest(environment):
                failed = self.outcome(False, environment)
                self.assertEqual((failed.skipped, len(failed.errors)), ([], 1))
                self.assertIn("initdb", failed.errors[0][1])

    def test_pgbouncer_skipped_or_failed_as_required(self):
        self.assertEqual(len(self.outcome(False, {}, needs="pgbouncer").skipped), 1)
        self.assertEqual(len(self.outcome(False, {"REQUIRE_POSTGRES": "1"}, needs="pgbouncer").skipped), 1)
        failed = self.outcome(False, {"REQUIRE_PGBOUNCER": "1"}, needs="pgbouncer")
        self.assertEqual((failed.skipped, len(failed.errors)), ([], 1))
        self.assertIn("apt-get install pgbouncer", failed.errors[0][1])


# --- what Heroku installs -----------------------------------------------------------

TEST_TOOLS = {"pytest", "pytest-cov", "coverage", "ruff", "schemathesis", "hypothesis", "iniconfig", "pluggy"}
# The service's own modules: every module at the top of the repository but the tests and their support.
TEST_SUPPORT = {"testing", "loopback", "conftest"}
SERVICE_MODULES = sorted(
    name[:-3]
    for name in os.listdir(REPO)
    if name.endswith(".py") and "." not in name[:-3] and not name.startswith("test_") and name[:-3] not in TEST_SUPPORT
)


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(filename):
    """{canonical name: Requirement} of a requirements file, and its -r lines."""
    pinned, included = {}, []
    with open(os.path.join(REPO, filename)) as file:
        for line in file:
            line = line.split("#", 1)[0].strip()
            if line.startswith("-r "):
                included.append(line[3:].strip())
            elif line:
                requirement = Requirement(line)
                pinned[canonical(requirement.name)] = requirement
    return pinned, included


class RequirementsTest(unittest.TestCase):
    """requirements.txt is what Heroku installs: the service's packages, every one
    pinned, and nothing else; the test and lint tools are in requirements-dev.txt,
    which includes it."""

    def test_every_package_is_pinned_and_no_test_tool_is_in_requirements_txt(self):
        runtime, included = requirements("requirements.txt")
        self.assertEqual(included, [])
        for name, requirement in runtime.items():
            with self.subTest(name):
                self.assertRegex(str(requirement.specifier), r"^==[^,*]+$")
        self.assertEqual(TEST_TOOLS & set(runtime), set())
        dev, included = requirements("requirements-dev.txt")
        self.assertEqual(included, ["requirements.txt"])
        self.assertLessEqual(TEST_TOOLS, set(dev))
        self.assertEqual(set(dev) & set(runtime), set(), "pinned in both files")

    def test_requirements_txt_holds_everything_its_packages_need(self):
        """Closed under the installed packages' own requirements, so that a fresh
        `pip install -r requirements.txt` brings in nothing unpinned."""
        runtime, _ = requirements("requirements.txt")
        for name, requirement in runtime.items():
            for needed in metadata.requires(name) or []:
                needed = Requirement(needed)
                applies = needed.marker is None or any(
                    needed.marker.evaluate({"extra": extra}) for extra in (requirement.extras or {""})
                )
                if applies:
                    with self.subTest(name, needs=needed.name):
                        self.assertTrue(canonical(needed.name) in runtime, f"{name} needs {needed.name}: pin it")

    def test_the_service_imports_only_what_requirements_txt_installs(self):
        runtime, _ = requirements("requirements.txt")
        distributions = metadata.packages_distributions()
        for module in SERVICE_MODULES:
            with open(os.path.join(REPO, f"{module}.py")) as file:
                tree = ast.parse(file.read())
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
            for top in {name.split(".")[0] for name in imported} - set(sys.stdlib_module_names) - set(SERVICE_MODULES):
                with self.subTest(module, imports=top):
                    found = {canonical(d) for d in distributions.get(top, [])}
                    self.assertTrue(found & set(runtime), f"{module} imports {top}, which requirements.txt lacks")
