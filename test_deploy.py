"""The Procfile's commands resolve, its production start fails closed without a
token issuer, and requirements.txt (what Heroku installs) holds what the service
needs and no test tool."""

import ast
import os
import re
import shlex
import socket
import subprocess
import sys
import unittest
from importlib import metadata
from unittest import mock

from packaging.requirements import Requirement

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
ISSUER_VARIABLES = ("AUTH0_DOMAIN", "AUTH0_ISSUER", "JWKS_URL", "API_AUDIENCE", "REQUIRE_ISSUER")


def procfile():
    with open(os.path.join(HERE, "Procfile")) as file:
        return dict(line.split(": ", 1) for line in file.read().splitlines() if line.strip())


def run(command, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ISSUER_VARIABLES}
    clean["PATH"] = BIN + os.pathsep + clean.get("PATH", "")
    return subprocess.run(  # noqa: S603 (the Procfile's own commands)
        command, cwd=HERE, env={**clean, **env}, capture_output=True, text=True, timeout=120
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


# --- what Heroku installs -----------------------------------------------------------

TEST_TOOLS = {"pytest", "pytest-cov", "coverage", "ruff", "schemathesis", "hypothesis", "iniconfig", "pluggy"}
SERVICE_MODULES = ("app", "auth", "models", "schemas", "seed", "manage", "ratelimit", "gunicorn_worker")


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(filename):
    """{canonical name: Requirement} of a requirements file, and its -r lines."""
    pinned, included = {}, []
    with open(os.path.join(HERE, filename)) as file:
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
            with open(os.path.join(HERE, f"{module}.py")) as file:
                tree = ast.parse(file.read())
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
            for top in {name.split(".")[0] for name in imported} - set(sys.stdlib_module_names) - set(SERVICE_MODULES):
                with self.subTest(module, imports=top):
                    found = {canonical(d) for d in distributions.get(top, [])}
                    self.assertTrue(found & set(runtime), f"{module} imports {top}, which requirements.txt lacks")


# --- a graceful stop -----------------------------------------------------------------


class DrainingWorkerTest(unittest.TestCase):
    """gunicorn_worker.DrainingSyncWorker, once SIGTERM has ended its loop: takes
    every queued connection, closes the listening socket, then serves what it
    took (test_fleet.py stops a real server under load)."""

    def test_queued_connections_are_taken_then_the_socket_closed_then_they_are_served(self):
        from gunicorn.workers.sync import SyncWorker

        from gunicorn_worker import DrainingSyncWorker

        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        listener.setblocking(False)  # as gunicorn's workers have it
        address = listener.getsockname()
        clients = [socket.create_connection(address) for _ in range(3)]
        for client in clients:
            self.addCleanup(client.close)
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        served = []

        def handle(listener_, client, peer):
            served.append((listener_.getsockname(), client.getblocking(), listener.fileno()))
            client.close()

        worker = DrainingSyncWorker.__new__(DrainingSyncWorker)  # no arbiter: only what run() uses
        worker.sockets = [listener]
        worker.handle = handle
        with mock.patch.object(SyncWorker, "run") as loop:
            worker.run()
        loop.assert_called_once()
        self.assertEqual(served, [(address, True, -1)] * 3)  # each served blocking, after the close
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5)
