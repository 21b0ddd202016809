"""Services on 127.0.0.1 for the tests and the benchmark: a token issuer that
publishes its JWKS over HTTP, a PostgreSQL cluster of its own, a PgBouncer in
front of it, and the Procfile's gunicorn.

Importing this module starts nothing and reads no settings: each service starts
when it is made and is removed by its `stop()` or `close()`.
"""

# Fixed programs (PostgreSQL's, PgBouncer, gunicorn, cp) with our own arguments.
# ruff: noqa: S603, S607

import concurrent.futures
import contextlib
import glob
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import psycopg2
from cryptography.hazmat.primitives.asymmetric import rsa

from auth import ROLES

HOST = "127.0.0.1"
REPO = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)  # the virtualenv's flask and gunicorn


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- the token issuer -------------------------------------------------------------


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private_key, kid):
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


class Issuer:
    """Signs tokens and serves its JWKS on loopback, counting the fetches.
    `published` (kid -> key) and `failing` (answer 500) may be changed at any time."""

    def __init__(self, issuer, audience, kid="test-key-1"):
        self.issuer = issuer
        self.audience = audience
        self.key = rsa_key()
        self.kid = kid
        self.published = {kid: self.key}
        self.fetches = 0
        self.failing = False
        this = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with lock:
                    this.fetches += 1
                if this.failing or self.path != "/.well-known/jwks.json":
                    self.send_error(500 if this.failing else 404)
                    return
                keys = [public_jwk(key, kid) for kid, key in this.published.items()]
                body = json.dumps({"keys": keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.jwks_url = f"http://{HOST}:{self.server.server_port}/.well-known/jwks.json"

    def reset(self):
        self.published = {self.kid: self.key}
        self.fetches = 0
        self.failing = False

    def token(self, permissions=(), *, key=None, headers=None, algorithm="RS256", drop=(), **claims):
        """A token: valid for an hour by default; keyword arguments override
        claims, `drop` removes some, `headers` overrides header fields."""
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "auth0|test",
            "iat": now,
            "exp": now + 3600,
            "permissions": list(permissions) if isinstance(permissions, (list, tuple)) else permissions,
            **claims,
        }
        for claim in drop:
            payload.pop(claim)
        return jwt.encode(payload, key or self.key, algorithm=algorithm, headers={"kid": self.kid, **(headers or {})})

    def role_token(self, role):
        return self.token(ROLES[role])

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# --- HTTP -------------------------------------------------------------------------


class Reply:
    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers  # case-insensitive
        self.raw = raw

    def json(self):
        return json.loads(self.raw)

    def __repr__(self):
        return f"<{self.status} {self.raw[:300]!r}>"


def call(port, method, path, token=None, body=None, headers=None, timeout=20, source=None, chunked=False):
    """One request on its own connection, read to the end and closed. `body`
    is sent as JSON, unless it is bytes; `source`, another loopback address
    (127.0.0.2, ...), makes it come from another client; `chunked` sends the
    body with Transfer-Encoding: chunked, which gives no length up front."""
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body
    if body is not None and not isinstance(body, bytes):
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout, source_address=source and (source, 0))
    try:
        if chunked:
            whole = data
            data = (whole[i : i + 65536] for i in range(0, len(whole), 65536))
        connection.request(method, path, body=data, headers=headers, encode_chunked=chunked)
        with connection.getresponse() as response:
            return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def concurrently(calls, workers=24, timeout=60):
    """Run the zero-argument callables on a pool of threads; their results in order."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(c) for c in calls]
        _done, pending = concurrent.futures.wait(futures, timeout=timeout)
        for future in pending:
            future.cancel()
        if pending:
            raise AssertionError(f"{len(pending)} of {len(futures)} requests did not finish in {timeout} s")
        return [future.result() for future in futures]


def tail(path, size=3000):
    """The end of a log file, or nothing when there is none yet."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()[-size:]
    except OSError:
        return ""


# --- PostgreSQL -------------------------------------------------------------------


def _postgres_bin():
    """The newest PostgreSQL's binaries folder, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        newest = max(found, key=lambda path: int(re.sub(r"\D", "", path.split("/")[4]) or 0))
        return os.path.dirname(newest)
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _postgres_user():
    """(uid, gid) of the `postgres` user, or None."""
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


PG_BIN = _postgres_bin()
AS_ROOT = os.geteuid() == 0
CAN_RUN_POSTGRES = bool(PG_BIN) and (not AS_ROOT or _postgres_user() is not None and bool(shutil.which("runuser")))
WHY_NO_POSTGRES = "needs PostgreSQL's server programs (initdb, pg_ctl) and, as root, a postgres user and runuser"


def needs_postgres(test_case):
    """A TestCase class that runs its own PostgreSQL. Without the server programs
    it is skipped on a developer's machine, and fails, saying why, when
    REQUIRE_POSTGRES (set by .ci/run) or CI says that it must run."""
    return _needs(test_case, CAN_RUN_POSTGRES, "REQUIRE_POSTGRES", WHY_NO_POSTGRES)


def _needs(test_case, can_run, required_by, why):
    if can_run:
        return test_case
    if not (os.environ.get(required_by) or os.environ.get("CI")):
        return unittest.skip(why)(test_case)

    def refuse(cls):
        raise RuntimeError(f"{required_by} is set, but this machine cannot run these tests: it {why}")

    test_case.setUpClass = classmethod(refuse)
    return test_case


class Postgres:
    """A PostgreSQL cluster of its own in a temporary folder, on a free port.
    initdb and pg_ctl refuse root: as root they run as the postgres user."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="casting-agency-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgres.log")
        self.port = free_port()
        self.running = False
        if AS_ROOT:
            os.chown(self.dir, *_postgres_user())

    @classmethod
    def fresh(cls, cleanup):
        """A new cluster, made and started; `cleanup` (a TestCase's addCleanup or
        addClassCleanup) stops and removes it, even if starting it fails."""
        pg = cls()
        cleanup(pg.close)
        pg.init()
        pg.start()
        return pg

    def _run(self, tool, *args, check=True, timeout=60):
        command = [os.path.join(PG_BIN, tool), *args]
        if AS_ROOT:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command, cwd=self.dir, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stdout}{result.stderr}{self.log_text()}")
        return result

    def log_text(self):
        return tail(self.log)

    def init(self):
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")

    def copy_of(self, template):
        """Another cluster's (stopped) data folder as this one's, owners kept."""
        subprocess.run(["cp", "-a", template.data, self.data], check=True, timeout=60)

    def start(self):
        options = (
            f"-k {self.dir} -c listen_addresses={HOST} -p {self.port} -c max_connections=50 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self.running = True  # from here on, close() stops it
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "30", "start")

    def stop(self, mode="fast"):
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")
        self.running = False

    def close(self):
        """Stop it (whatever state it is in) and remove its folder."""
        if self.running:
            result = self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop", check=False)
            if result.returncode != 0:
                self._kill_postmaster()
            self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_postmaster(self):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(os.path.join(self.data, "postmaster.pid")) as file:
                pid = int(file.readline())
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown of the postmaster we started

    def url(self, database):
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def connect(self, database="postgres"):
        return contextlib.closing(psycopg2.connect(host=HOST, port=self.port, user="postgres", dbname=database))

    def create_database(self, name):
        with self.connect() as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')

    def execute(self, database, sql):
        """One statement in a transaction of its own, committed (DDL, say)."""
        with self.connect(database) as connection, connection, connection.cursor() as cursor:
            cursor.execute(sql)

    def query(self, database, sql, params=()):
        with self.connect(database) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            connection.rollback()
            return rows


# --- PgBouncer ----------------------------------------------------------------------

PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")  # Debian's
CAN_RUN_PGBOUNCER = CAN_RUN_POSTGRES and PGBOUNCER is not None
WHY_NO_PGBOUNCER = f"{WHY_NO_POSTGRES}, and PgBouncer (apt-get install pgbouncer)"


def needs_pgbouncer(test_case):
    """A TestCase class that runs its own PostgreSQL and PgBouncer: skipped
    without them on a developer's machine; failing, saying why, when
    REQUIRE_PGBOUNCER (set by .ci/run) or CI says that it must run."""
    return _needs(test_case, CAN_RUN_PGBOUNCER, "REQUIRE_PGBOUNCER", WHY_NO_PGBOUNCER)


class PgBouncer:
    """Debian's PgBouncer on a free port in front of the PostgreSQL on
    127.0.0.1:`postgres_port`, in
    transaction mode, as Heroku's connection pooling and most managed
    PostgreSQL services run it: consecutive transactions of one client may run
    on different server connections, and a pool holds `pool_size` of them
    per database. `settings` adds lines to its [pgbouncer] section. It
    refuses to run as root: as root it runs as the postgres user."""

    def __init__(self, postgres_port, pool_size=2, **settings):
        self.dir = tempfile.mkdtemp(prefix="casting-agency-pgbouncer-")
        self.port = free_port()
        self.log = os.path.join(self.dir, "pgbouncer.log")
        self.pidfile = os.path.join(self.dir, "pgbouncer.pid")
        self.ini = os.path.join(self.dir, "pgbouncer.ini")
        lines = {
            "listen_addr": HOST,
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",  # the tests' PostgreSQL trusts loopback too
            "auth_file": os.path.join(self.dir, "users.txt"),
            "pool_mode": "transaction",
            "default_pool_size": pool_size,
            "max_client_conn": 500,
            "logfile": self.log,
            "pidfile": self.pidfile,
            **settings,
        }
        with open(self.ini, "w") as file:
            file.write(f"[databases]\n* = host={HOST} port={postgres_port}\n[pgbouncer]\n")
            file.writelines(f"{name} = {value}\n" for name, value in lines.items())
        with open(lines["auth_file"], "w") as file:
            file.write('"postgres" ""\n')  # trust still wants the user listed
        if AS_ROOT:
            for path in (self.dir, self.ini, lines["auth_file"]):
                os.chown(path, *_postgres_user())
        self.running = False

    @classmethod
    def fresh(cls, postgres_port, cleanup, **kwargs):
        """A new PgBouncer, started; `cleanup` stops and removes it."""
        bouncer = cls(postgres_port, **kwargs)
        cleanup(bouncer.close)
        bouncer.start()
        return bouncer

    def start(self):
        command = [PGBOUNCER, "-d", self.ini]  # -d: it goes to the background once it listens
        if AS_ROOT:
            command = ["runuser", "-u", "postgres", "--", *command]
        self.running = True
        result = subprocess.run(
            command, cwd=self.dir, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise RuntimeError(f"pgbouncer failed ({result.returncode}): {output}{self.log_text()}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen within 10 s: {self.log_text()}")

    def log_text(self):
        return tail(self.log)

    def url(self, database):
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def close(self):
        """Stop it (SIGTERM: PgBouncer's immediate shutdown) and remove its folder."""
        if self.running:
            with contextlib.suppress(OSError, ValueError):
                with open(self.pidfile) as file:
                    pid = int(file.read())
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while _running(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)


def _running(pid):
    """Whether a process runs: not gone, and not a zombie that its parent (a
    daemon's is init) has yet to reap."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# --- the app as deployed ------------------------------------------------------------


def procfile():
    """The Procfile's commands by process type."""
    with open(os.path.join(REPO, "Procfile")) as file:
        return dict(line.split(": ", 1) for line in file.read().splitlines() if line.strip())


def run_procfile(process, env, *arguments, timeout=120):
    """A Procfile command (with more arguments), run by bash from the
    repository's folder as Heroku runs it; its output captured."""
    command = " ".join([procfile()[process], *map(shlex.quote, arguments)])
    return subprocess.run(
        ["bash", "-c", command],
        cwd=REPO,
        env={**env, "PATH": BIN + os.pathsep + env.get("PATH", "")},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# What a command needs from the machine's environment; nothing else of it (no
# DATABASE_URL, AUTH0_DOMAIN, ... a developer may have set) reaches the app.
KEPT = ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER")


def clean_environment(**settings):
    """An environment for the app's commands with `settings` and nothing else of
    the machine's: the virtualenv's programs first on PATH, and FLASK_SKIP_DOTENV
    so that neither Flask nor the app reads the checkout's .env."""
    env = {name: os.environ[name] for name in KEPT if name in os.environ}
    # A deploy has a SECRET_KEY (a production start refuses to run without one);
    # SECRET_KEY="" stands for a deploy that forgot it.
    env.update(PATH=BIN + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"), FLASK_SKIP_DOTENV="1")
    env.update({"SECRET_KEY": "a secret shared by every instance of the deploy", **settings})
    return env


def server_env(issuer, database_url, **more):
    """A production server's settings (the Procfile's commands) for the tests,
    with `issuer` (an Issuer) and a database, and nothing of the machine's or
    .env. The rate limits out of the way, unless `more` says otherwise."""
    return clean_environment(
        DATABASE_URL=database_url,
        AUTH0_ISSUER=issuer.issuer,
        JWKS_URL=issuer.jwks_url,
        API_AUDIENCE=issuer.audience,
        PYTHONUNBUFFERED="1",
        **{"RATE_LIMIT": "1000000/second", "RATE_LIMIT_ANONYMOUS": "1000000/second", **more},
    )


def release(issuer, database_url):
    """The Procfile's release command (the migrations) on a database; an error
    that says what it printed when it fails."""
    result = run_procfile("release", server_env(issuer, database_url))
    if result.returncode != 0:
        raise RuntimeError(f"the release command failed: {result.stdout}{result.stderr}")


def migrated_cluster(issuer, database):
    """initdb, a database, and the Procfile's release command on it; then
    stopped, to be copied by each test's cluster (Postgres.copy_of), which
    saves seconds a cluster."""
    pg = Postgres()
    try:
        pg.init()
        pg.start()
        pg.create_database(database)
        release(issuer, pg.url(database))
        tables = {row[0] for row in pg.query(database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        if not {"actors", "movies", "castings", "alembic_version"} <= tables:
            raise RuntimeError(f"the migrations made only {sorted(tables)}")
        pg.stop()
    except BaseException:
        pg.close()
        raise
    return pg


class Gunicorn:
    """The Procfile's web command from the repository's folder (so that
    ./gunicorn.conf.py applies), in its own process group, its output in a file;
    or, given `app`, the same command serving that app instead (the benchmark's
    baseline)."""

    def __init__(self, env, log_path, app=None):
        self.port = int(env["PORT"])
        self.log_path = log_path
        env = {**env, "PATH": BIN + os.pathsep + env.get("PATH", "")}
        command = shlex.split(procfile()["web"])
        if app is not None:
            command = [*command[:-1], app]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout=30, path="/health"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if call(self.port, "GET", path, timeout=5).status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer within {timeout} s:\n{self.log()}")

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return file.read()

    def stop(self):
        """SIGTERM to the master (a graceful stop); SIGKILL to its group if it lingers."""
        group = self.process.pid  # start_new_session: the master leads its own group
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)  # any worker the master left behind


def on_sqlite(folder, issuer, **settings):
    """The settings of a production server on a SQLite file in `folder`,
    migrated by the Procfile's release command: a server of its own, for tests
    that need no PostgreSQL (SQLite serves several gunicorn workers' reads)."""
    database_url = f"sqlite:///{os.path.join(folder, 'casting.db')}"
    release(issuer, database_url)
    # gunicorn's control socket goes to $XDG_RUNTIME_DIR (else ~/.gunicorn/): each its own.
    return server_env(issuer, database_url, PORT=str(free_port()), XDG_RUNTIME_DIR=folder, **settings)


def children(pid):
    """The pids of a process's children (a gunicorn master's workers), from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.add(int(entry))
    return found
