"""The benchmark: the API under gunicorn and PostgreSQL, driven by wrk.

Run it with `bench/run` (which installs wrk and starts PostgreSQL when needed).
For each table size it loads a fresh data set straight into the database,
then, for each operation, warms up and runs wrk at a fixed concurrency. It
prints one table (also written to bench/results.md with the machine and the
command): requests/s, p50 and p99 latency, throughput as a share of the ceiling
(the app's trivial `GET /`, same server, same size), the largest size's p50 as
a ratio of the smallest's, the responses that were not 2xx, and the JWKS fetches
the issuer saw during the timed runs. The rate limits are set out of the way (one
token sends every request); one more row, GET /actors/<id> at the smallest size
on a second server whose limits count in a redis-server the bench starts, gives
their cost.

With BENCH_PROFILE=1 each operation runs once more, untimed, while py-spy
samples the gunicorn workers from outside; the hottest packages and functions
by samples of their own are printed, and the collapsed stacks (for speedscope
or flamegraph.pl) kept in the run's log folder.

Settings (environment): BENCH_THREADS (2), BENCH_CONNECTIONS (16),
BENCH_DURATION (10s), BENCH_WARMUP (2s, per operation, untimed),
BENCH_SIZES (1000,100000: actors; a movie per 10 actors, 3 castings per actor),
BENCH_PG (postgresql://postgres@127.0.0.1:5432), BENCH_PROFILE (off), DB_POOL_SIZE (the app's).
"""

# This script runs fixed commands only (wrk, git, the virtualenv's flask and gunicorn).
# ruff: noqa: S603, S607

import io
import json
import os
import platform
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import psycopg2
from cryptography.hazmat.primitives.asymmetric import rsa

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = REPO / ".venv" / "bin"

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
DURATION = os.environ.get("BENCH_DURATION", "10s")
WARMUP = os.environ.get("BENCH_WARMUP", "2s")
SIZES = sorted({int(size) for size in os.environ.get("BENCH_SIZES", "1000,100000").split(",")})
PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
PROFILE = os.environ.get("BENCH_PROFILE", "0") not in ("", "0")
DATABASE = "casting_bench"
DATABASE_URL = f"{PG}/{DATABASE}"
WORKERS = 2

ISSUER = "https://bench-issuer.test/"
AUDIENCE = "casting-agency-bench"
# The Executive Producer's permissions (auth.ROLES): every endpoint is open to them.
PRODUCER = [
    "get:actors",
    "get:movies",
    "add:actors",
    "edit:actors",
    "delete:actors",
    "edit:movies",
    "add:movies",
    "delete:movies",
]

# A search term no generated name contains (no "q" in the name parts below);
# PLANTED actors carry it, so ?q= matches exactly that many rows at every size.
SEARCH = "quill"
PLANTED = 5
FIRST_NAMES = ["Ada", "Bola", "Cira", "Dev", "Emil", "Fen", "Gia", "Hugo", "Ines", "Jun", "Kofi", "Lena"]
FIRST_NAMES += ["Milo", "Nia", "Omar", "Pia", "Rhys", "Sana", "Tomas", "Uma", "Vera", "Wim", "Yara", "Zeno"]
SYLLABLES = ["ba", "ke", "lo", "mi", "nu", "ra", "se", "ti", "vo", "wa", "dor", "fen", "gal", "hin", "mar", "nel"]
ADJECTIVES = ["Long", "Quiet", "Paper", "Silver", "Broken", "Hidden", "Last", "Northern", "Golden", "Restless"]
NOUNS = ["Rehearsal", "Frontier", "Kingdom", "Harbour", "Matinee", "Season", "River", "Letter", "Garden", "Winter"]

# (name, label, wrk script, least share of the ceiling or None, most p50 ratio of the largest size to the smallest)
OPERATIONS = [
    ("ceiling", "GET / (ceiling)", "ceiling.lua", None, None),
    ("get_actor", "GET /actors/<id>", "get_actor.lua", 0.50, 1.3),
    ("list_actors", "GET /actors (page of 20, total)", "list_actors.lua", 0.40, 1.3),
    ("search_actors", f"GET /actors?q={SEARCH}", "search_actors.lua", None, 2.0),
    ("movie_actors", "GET /movies/<id>/actors", "movie_actors.lua", None, 1.3),
    ("patch_actor", "PATCH /actors/<id>", "patch_actor.lua", None, 1.3),
    ("post_actor", "POST /actors", "post_actor.lua", None, 1.3),  # last: it grows the table
]
# One more row, at the smallest size only: GET /actors/<id> on a second server whose rate limits
# count in a Redis the bench starts (REDIS_URL, as in production), so their cost is known.
REDIS_ROW = ("get_actor_redis", "GET /actors/<id>, limits in Redis", "get_actor.lua", None, None)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the token issuer ------------------------------------------------------------


class Issuer:
    """An RSA key published as a JWKS on loopback (counting the fetches) that signs tokens."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "bench-key-1"
        self.fetches = 0
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}).encode()
        issuer = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with lock:
                    issuer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.jwks_url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"

    def token(self, permissions, lifetime=3600):
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench|producer", "iat": now, "exp": now + lifetime}
        claims["permissions"] = permissions
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# --- the database ----------------------------------------------------------------


def app_environment(issuer, **extra):
    """The environment the app runs in: this run's database and issuer, nothing from .env. The rate
    limits are out of the way (one token sends every request), counted in each worker's memory unless
    `extra` sets REDIS_URL."""
    env = dict(os.environ, DATABASE_URL=DATABASE_URL, AUTH0_DOMAIN="", AUTH0_ISSUER=ISSUER)
    env.update(JWKS_URL=issuer.jwks_url, API_AUDIENCE=AUDIENCE, CORS_ORIGINS="", REDIS_URL="")
    env.update(RATE_LIMIT="100000000/second", RATE_LIMIT_ANONYMOUS="100000000/second", TRUSTED_PROXY_HOPS="0")
    env.update(extra)
    return env


def create_database(issuer):
    connection = psycopg2.connect(f"{PG}/postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {DATABASE}")
    connection.close()
    subprocess.run(
        [str(VENV_BIN / "flask"), "db", "upgrade"],
        cwd=REPO,
        env=app_environment(issuer, FLASK_APP="app"),
        check=True,
        capture_output=True,
    )


def copy_rows(cursor, table, columns, rows):
    """COPY rows (tuples; None is NULL) into a table. The values hold no tab, newline or backslash."""
    text = "".join("\t".join("\\N" if v is None else str(v) for v in row) + "\n" for row in rows)
    cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", io.StringIO(text))


def generate(actors, seed=1):
    """Actors, movies (one per 10 actors) and castings (3 per actor), the same for a size every run."""
    rng = random.Random(seed)  # noqa: S311 (sample data, not secrets)
    movies = max(3, actors // 10)
    planted = {1 + k * actors // PLANTED for k in range(PLANTED)}

    def actor_name(id_):
        last = "Quillfeather" if id_ in planted else "".join(rng.sample(SYLLABLES, rng.randint(2, 3))).capitalize()
        return f"{rng.choice(FIRST_NAMES)} {last}"

    actor_rows = [
        (i, actor_name(i), rng.randint(18, 90), rng.choice(("Female", "Male", "Non-binary")))
        for i in range(1, actors + 1)
    ]
    first_day = date(1950, 1, 1)
    movie_rows = [
        (i, f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {i}", first_day + timedelta(days=rng.randrange(28000)))
        for i in range(1, movies + 1)
    ]
    casting_rows = [
        (movie, actor, rng.choice((None, f"Role {movie}-{actor}")))
        for actor in range(1, actors + 1)
        for movie in rng.sample(range(1, movies + 1), 3)
    ]
    return actor_rows, movie_rows, casting_rows


def load(actors):
    """Empty the tables and load a data set of this size; return (movies, castings)."""
    actor_rows, movie_rows, casting_rows = generate(actors)
    connection = psycopg2.connect(DATABASE_URL)
    with connection, connection.cursor() as cursor:
        cursor.execute("TRUNCATE castings, movies, actors RESTART IDENTITY")
        copy_rows(cursor, "actors", ("id", "name", "age", "gender"), actor_rows)
        copy_rows(cursor, "movies", ("id", "title", "release_date"), movie_rows)
        copy_rows(cursor, "castings", ("movie_id", "actor_id", "character"), casting_rows)
        for table, last in (("actors", len(actor_rows)), ("movies", len(movie_rows))):
            cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", (table, last))
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    connection.close()
    return len(movie_rows), len(casting_rows)


def delete_actors_after(last_id):
    """Remove the actors POST added, so the table is back to its size. Requests
    wrk sent before it stopped are still served for a moment after it returns,
    so first wait until no new actor has arrived for a second."""
    connection = psycopg2.connect(DATABASE_URL)
    connection.autocommit = True
    with connection.cursor() as cursor:

        def newest():
            cursor.execute("SELECT max(id) FROM actors")
            return cursor.fetchone()[0]

        previous, latest = None, newest()
        while latest != previous:
            time.sleep(1)
            previous, latest = latest, newest()
        cursor.execute("DELETE FROM actors WHERE id > %s", (last_id,))
    connection.close()


# --- the server ------------------------------------------------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(issuer, port, log_file, **settings):
    """gunicorn as deployed (it reads ./gunicorn.conf.py), in its own process group."""
    env = app_environment(issuer, PORT=str(port), WEB_CONCURRENCY=str(WORKERS), **settings)
    server = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "app:create_app()"],
        cwd=REPO,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with status {server.returncode}; see {log_file.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer on port {port} within 30 s; see {log_file.name}")


def start_redis(port, log_file):
    """redis-server on 127.0.0.1:port, no persistence; returned once it answers."""
    import redis

    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return server
        except redis.RedisError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}; see {log_file.name}") from None
            time.sleep(0.1)


def stop_server(server):
    """SIGTERM to the master (a graceful stop); SIGKILL to its process group if it lingers."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def get_json(url, token):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"GET {url}: {error.code} {error.read()[:300]!r}") from None


def check_data(base, token, actors):
    """What the runs will read, checked through the API: a few facts for the report."""
    total = get_json(f"{base}/actors", token)["total_actors"]
    matches = get_json(f"{base}/actors?q={SEARCH}", token)["total_actors"]
    cast = get_json(f"{base}/movies/1/actors", token)["total_actors"]
    get_json(f"{base}/actors/{actors}", token)
    if total != actors or matches != PLANTED:
        raise RuntimeError(f"expected {actors} actors and {PLANTED} matches of {SEARCH!r}, got {total} and {matches}")
    return f"?q={SEARCH} matches {matches}; movie 1 has {cast} actors"


# --- wrk -------------------------------------------------------------------------


def run_wrk(base, script, duration, env, wrk_log):
    command = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration}", "--timeout", "10s", "--latency"]
    command += ["-s", str(BENCH / script), base]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    wrk_log.write(f"$ {shlex.join(command)}\n{result.stdout}{result.stderr}\n")
    wrk_log.flush()
    match = re.search(r"^BENCH_RESULT (.*)$", result.stdout, re.MULTILINE)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout[-500:]}")
    fields = dict(pair.split("=", 1) for pair in match.group(1).split())
    numbers = {key: int(value) for key, value in fields.items() if key != "statuses"}
    return {
        "rps": numbers["requests"] / (numbers["duration_us"] / 1e6),
        "p50": numbers["p50_us"] / 1000,
        "p99": numbers["p99_us"] / 1000,
        "non2xx": numbers["non2xx"],
        "statuses": fields["statuses"],
        "socket_errors": numbers["socket_errors"],
    }


# --- py-spy ----------------------------------------------------------------------


def profile(server, base, script, env, wrk_log, out):
    """Drive the operation once more while py-spy samples gunicorn's workers
    (--nonblocking: it never pauses them); keep the collapsed stacks in `out`
    and return a summary of where the samples were."""
    seconds = 5
    command = [str(VENV_BIN / "py-spy"), "record", "--pid", str(server.pid), "--subprocesses", "--nonblocking"]
    command += ["--full-filenames", "--format", "raw", "--duration", str(seconds), "--output", str(out)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # let it attach
    run_wrk(base, script, f"{seconds}s", env, wrk_log)
    _, errors = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {errors.strip()[-500:]}")
    return hottest(out)


def hottest(collapsed, top=6):
    """Shares of the samples by the package (or our module) and by the function
    that was running: its own time, not its callees'."""
    packages, functions, total = Counter(), Counter(), 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frame = stack.rsplit(";", 1)[-1]  # "function (path:line)"
        name, _, where = frame.partition(" (")
        path = where.rsplit(":", 1)[0]
        if "site-packages/" in path:
            package = path.split("site-packages/", 1)[1].split("/", 1)[0]
        else:  # the standard library or ours: the module, or the package of an __init__.py
            package = (Path(path).parent.name if path.endswith("__init__.py") else Path(path).name) or name
        samples = int(count)
        total += samples
        packages[package] += samples
        functions[f"{name} ({package})"] += samples

    def shares(counter):
        return ", ".join(f"{key} {samples / total:.0%}" for key, samples in counter.most_common(top))

    return f"{total} samples; by package: {shares(packages)}; by function: {shares(functions)}"


# --- the report ------------------------------------------------------------------


def table(results):
    """The markdown table: a row per operation and size."""
    smallest = min(SIZES)
    lines = [
        "| operation | actors | req/s | p50 ms | p99 ms | of ceiling | p50 vs "
        f"{smallest:,} | non-2xx | socket errors | JWKS fetches | targets |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, label, _script, least_share, most_ratio in [*OPERATIONS, REDIS_ROW]:
        for size in SIZES:
            r = results.get((name, size))
            if r is None:
                continue
            share = r["rps"] / results[("ceiling", size)]["rps"]
            ratio = r["p50"] / results[(name, smallest)]["p50"] if size != smallest else None
            misses = []
            if least_share is not None and share < least_share:
                misses.append(f"share < {least_share:.0%}")
            if ratio is not None and most_ratio is not None and ratio > most_ratio:
                misses.append(f"p50 > {most_ratio}x")
            if r["non2xx"] or r["socket_errors"]:
                misses.append("errors")
            if r["jwks"]:
                misses.append("JWKS fetched")
            non2xx = f"{r['non2xx']:,}" + (f" ({r['statuses']})" if r["non2xx"] else "")
            lines.append(
                f"| {label} | {size:,} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {share:.0%} | "
                f"{'' if ratio is None else f'{ratio:.2f}x'} | {non2xx} | {r['socket_errors']:,} | {r['jwks']} | "
                f"{'miss: ' + ', '.join(misses) if misses else 'ok'} |"
            )
    return "\n".join(lines)


def load_average():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine():
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"^MemTotal:\s*(\d+)", meminfo, re.MULTILINE).group(1))
    return (
        f"{len(os.sched_getaffinity(0))} CPUs (nproc), {model.group(1) if model else 'unknown CPU'}, "
        f"{mem_kib / 1024**2:.1f} GiB memory, {platform.platform()}"
    )


def software():
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    connection = psycopg2.connect(f"{PG}/postgres")
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    connection.close()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    # Documentation (a previous run's results.md, the README) is not a change to what is measured.
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!*.md"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (
        f"commit {commit.stdout.strip()}{' (with uncommitted changes)' if dirty else ''}; "
        f"{wrk.split(' Copyright')[0]}; PostgreSQL {postgres}; Python {platform.python_version()}"
    )


def command_line():
    settings = [f"{key}={shlex.quote(value)}" for key, value in sorted(os.environ.items()) if key.startswith("BENCH_")]
    if "DB_POOL_SIZE" in os.environ:
        settings.append(f"DB_POOL_SIZE={shlex.quote(os.environ['DB_POOL_SIZE'])}")
    return " ".join([*settings, "bench/run"])


def write_results(text_table, notes, started, elapsed, load_before):
    content = f"""# Benchmark results

Run {started:%Y-%m-%d %H:%M} UTC with `{command_line()}`; it took {elapsed:.0f} s.

- Machine: {machine()}; load average (1, 5, 15 min) {load_before} before the run, {load_average()} after it:
  other work on the machine during the run skews the numbers.
- Software: {software()}.
- Load: wrk `-t{THREADS} -c{CONNECTIONS} -d{DURATION} --latency` per operation after an untimed {WARMUP} warm-up;
  gunicorn with {WORKERS} sync workers and `./gunicorn.conf.py` (access log on), PostgreSQL on 127.0.0.1,
  an Executive Producer's RS256 token checked against a JWKS served on loopback. wrk, gunicorn and
  PostgreSQL share the machine's CPUs. Rate limits out of the way (budgets of 10^8 a second), counted in
  each worker's memory, except for "limits in Redis": the same server with `REDIS_URL` set to a
  redis-server on 127.0.0.1 (a Redis round trip per count and per header).
- "of ceiling": requests/s as a share of `GET /` (no token, no database) at the same size in the same run.
  "p50 vs {min(SIZES):,}": the p50 at that size over the p50 at {min(SIZES):,} actors.
  "non-2xx": responses with status >= 300, counted by the Lua `response` hook (statuses in brackets).
  "JWKS fetches": fetches the issuer saw during the timed run (after the warm-ups).
- Targets: GET by id >= 50% of the ceiling, the counted page >= 40%, p50 at 100,000 within 1.3x of 1,000
  (search within 2x), no non-2xx, no JWKS fetch after the warm-up.
{notes}

{text_table}
"""
    (BENCH / "results.md").write_text(content)


# --- the run ---------------------------------------------------------------------


def main():
    started, begun, load_before = datetime.now(UTC), time.monotonic(), load_average()
    run_dir = Path(tempfile.mkdtemp(prefix="casting-bench-"))
    issuer = server = redis_server = limited = None
    results, notes = {}, []
    # A SIGTERM unwinds like Ctrl-C, so the finally below stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with open(run_dir / "gunicorn.log", "w") as server_log, open(run_dir / "wrk.log", "w") as wrk_log:
        try:
            issuer = Issuer()
            log(f"JWKS on {issuer.jwks_url}; logs in {run_dir}")
            create_database(issuer)
            log(f"database {DATABASE} created and migrated")
            token = issuer.token(PRODUCER)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            server = start_server(issuer, port, server_log)
            log(f"gunicorn ({WORKERS} workers) on {base}")
            redis_port, limited_port = free_port(), free_port()
            redis_server = start_redis(redis_port, server_log)
            limited = start_server(issuer, limited_port, server_log, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
            limited_base = f"http://127.0.0.1:{limited_port}"
            log(f"and on {limited_base}, its rate limits counted in redis-server on port {redis_port}")
            for size in SIZES:
                run_size(size, base, token, issuer, results, notes, wrk_log, server, run_dir)
                if size == min(SIZES):
                    run_redis_row(limited_base, size, token, issuer, results, wrk_log)
            timed_fetches = sum(result["jwks"] for result in results.values())
            notes.append(
                f"- JWKS fetches outside the timed runs (checks, warm-ups): {issuer.fetches - timed_fetches} "
                f"(one per worker expected); during them: {timed_fetches}."
            )
            notes.append(f"- Logs of this run (gunicorn, wrk): {run_dir}.")
            text_table = table(results)
            print("\n" + text_table + "\n", flush=True)
            write_results(text_table, "\n".join(notes), started, time.monotonic() - begun, load_before)
            log(f"written to {BENCH / 'results.md'} ({time.monotonic() - begun:.0f} s in all)")
        finally:
            for process in (server, limited):
                if process is not None:
                    stop_server(process)
                    log("gunicorn stopped")
            if redis_server is not None:
                redis_server.terminate()
                redis_server.wait(timeout=30)
            if issuer is not None:
                issuer.stop()


def run_size(size, base, token, issuer, results, notes, wrk_log, server, run_dir):
    """Load a data set of this size, then warm up and time each operation on it."""
    started = time.monotonic()
    movies, castings = load(size)
    facts = check_data(base, token, size)
    notes.append(f"- {size:,} actors, {movies:,} movies, {castings:,} castings: {facts}.")
    log(f"loaded in {time.monotonic() - started:.1f} s: {notes[-1][2:-1]}")
    env = dict(os.environ, BENCH_DIR=str(BENCH), BENCH_TOKEN=token, BENCH_ACTORS=str(size))
    env.update(BENCH_MOVIES=str(movies), BENCH_QUERY=SEARCH)
    for name, label, script, _share, _ratio in OPERATIONS:
        run_wrk(base, script, WARMUP, env, wrk_log)
        fetches = issuer.fetches
        result = run_wrk(base, script, DURATION, env, wrk_log)
        result["jwks"] = issuer.fetches - fetches
        results[(name, size)] = result
        if PROFILE:
            summary = profile(server, base, script, env, wrk_log, run_dir / f"profile-{name}-{size}.txt")
            log(f"{label} at {size:,}, profiled: {summary}")
        if name == "post_actor":
            delete_actors_after(size)
        log(
            f"{label} at {size:,}: {result['rps']:,.0f} req/s, p50 {result['p50']:.2f} ms, "
            f"p99 {result['p99']:.2f} ms, non-2xx {result['non2xx']}, JWKS fetches {result['jwks']}"
        )


def run_redis_row(base, size, token, issuer, results, wrk_log):
    """REDIS_ROW, on the data set of this size that run_size left."""
    env = dict(os.environ, BENCH_DIR=str(BENCH), BENCH_TOKEN=token, BENCH_ACTORS=str(size))
    name, label, script, _share, _ratio = REDIS_ROW
    run_wrk(base, script, WARMUP, env, wrk_log)
    fetches = issuer.fetches
    result = run_wrk(base, script, DURATION, env, wrk_log)
    result["jwks"] = issuer.fetches - fetches
    results[(name, size)] = result
    log(f"{label} at {size:,}: {result['rps']:,.0f} req/s, p50 {result['p50']:.2f} ms, non-2xx {result['non2xx']}")


if __name__ == "__main__":
    main()
