"""The benchmark: the API under gunicorn and PostgreSQL, driven by wrk.

Run it with `bench/run` (which installs wrk and starts PostgreSQL when needed).
For each table size it loads a fresh data set straight into the database,
then, for each operation, warms up and runs wrk at a fixed concurrency. It
prints one table (also written to bench/results.md with the machine and the
command): requests/s, p50 and p99 latency, throughput as a share of the
baseline (a bare Flask app, bench/bare.py, one route returning a constant, served
by the same gunicorn, gunicorn.conf.py and workers in the same run), each size's
p50 as a ratio of the smallest's, the CPU time per request of the app's workers
and of PostgreSQL, the responses that were not 2xx, and the JWKS fetches the
issuer saw during the timed runs. The app's own `GET /` is a row too,
so its fixed cost per request shows. The rate limits are set out of the way (one
token sends every request); one more row, GET /actors/<id> at the smallest size
on a second server whose limits count in a redis-server the bench starts, gives
their cost; three more, at the smallest size on a third server whose
DATABASE_URL names a PgBouncer in transaction mode that the bench starts, give
the cost of the pooled path; two more, GET /actors/<id> and the page of 20 at
the smallest size on a fourth server with metrics and JSON logs on, give theirs.

With BENCH_PROFILE=1 each operation runs once more, untimed, while py-spy
samples the gunicorn workers from outside; the hottest packages and functions
by samples of their own are printed, and the collapsed stacks (for speedscope
or flamegraph.pl) kept in the run's log folder.

Settings (environment): BENCH_THREADS (2), BENCH_CONNECTIONS (16),
BENCH_DURATION (10s), BENCH_WARMUP (2s, per operation, untimed),
BENCH_SIZES (1000,100000,1000000: actors; a movie per 10 actors, a casting per actor),
BENCH_PG (postgresql://postgres@127.0.0.1:5432), BENCH_DATABASE (casting_bench: dropped and made
again), BENCH_PROFILE (off), BENCH_OPERATIONS (all: names from OPERATIONS, comma-separated; the
baseline always runs), DB_POOL_SIZE (the app's).
"""

# This script runs fixed commands only (wrk, git, the virtualenv's flask and gunicorn).
# ruff: noqa: S603, S607

import hashlib
import io
import json
import os
import platform
import random
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg2

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = REPO / ".venv" / "bin"
sys.path.insert(0, str(REPO))  # the app's modules, and loopback's issuer and gunicorn (shared with the tests)

from loopback import Gunicorn, Issuer, PgBouncer, free_port  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
DURATION = os.environ.get("BENCH_DURATION", "10s")
WARMUP = os.environ.get("BENCH_WARMUP", "2s")
SIZES = sorted({int(size) for size in os.environ.get("BENCH_SIZES", "1000,100000,1000000").split(",")})
PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
PROFILE = os.environ.get("BENCH_PROFILE", "0") not in ("", "0")
# Some operations only (their names in OPERATIONS, comma-separated); the baseline always runs.
ONLY = {name for name in os.environ.get("BENCH_OPERATIONS", "").split(",") if name}
DATABASE = os.environ.get("BENCH_DATABASE", "casting_bench")  # dropped and created by each run
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
# one actor carries it, so ?q= matches exactly one row at every size.
SEARCH_ONE = "quill"
# Most last names end in "son" (the rest in other endings), so ?q=son matches most actors.
SEARCH_MOST = "son"
# Of every ten actors, one is named "Seed actor <id in 7 digits>" and one "Bulk <32 hex digits>"
# (the other eight as above): searches whose words many rows share. A whole bulk name matches one
# actor, and so does the seed actor search at every size (its id is padded: "seed actor 771" would
# also find 7,711, 77,101, ...).
SEED_ACTOR = 771
BULK_ACTOR = 502
# A search of the longest length allowed, that no name holds.
SEARCH_LONGEST = "".join(random.Random(7).choices("abcdefghijklmnopqrstuvwxyz0123456789 ", k=200))  # noqa: S311
FIRST_NAMES = ["Ada", "Bola", "Cira", "Dev", "Emil", "Fen", "Gia", "Hugo", "Ines", "Jun", "Kofi", "Lena"]
FIRST_NAMES += ["Milo", "Nia", "Omar", "Pia", "Rhys", "Sana", "Tomas", "Uma", "Vera", "Wim", "Yara", "Zeno"]
SYLLABLES = ["ba", "ke", "lo", "mi", "nu", "ra", "ti", "vo", "wa", "dor", "fen", "gal", "hin", "mar", "nel"]
ENDINGS = ["son"] * 7 + ["berg", "ova", "ez"]
WALK_PAGE = 500  # the page of a walk by cursor (100 a page) compared with the first
ADJECTIVES = ["Long", "Quiet", "Paper", "Silver", "Broken", "Hidden", "Last", "Northern", "Golden", "Restless"]
NOUNS = ["Rehearsal", "Frontier", "Kingdom", "Harbour", "Matinee", "Season", "River", "Letter", "Garden", "Winter"]

FILTER = "gender=female&age_min=25&age_max=35&sort=-age"


def bulk_name(id_):
    return f"Bulk {hashlib.md5(str(id_).encode()).hexdigest()}"  # noqa: S324 (sample data, not a secret)


SEARCH_WHOLE_NAME = quote(bulk_name(BULK_ACTOR))


def seed_actor_name(id_):
    return f"Seed actor {id_:07d}"


SEARCH_SHARED_WORDS = quote(seed_actor_name(SEED_ACTOR).lower())


@dataclass(frozen=True)
class Operation:
    name: str
    label: str
    path: str | None  # GET this path ({actor} and {movie} are random ids), or a write's own wrk script
    least_share: float | None = None  # of the bare Flask app's requests/s
    most_ratio: float | None = None  # p50 at a size over the p50 at the smallest
    compared_with: str | None = None  # p50 over this operation's at the same size, at most most_ratio
    keeps: str | None = None  # its share of the bare app is at least KEEPS of this operation's, same size
    server: str = "api"  # which of the run's servers: "bare", "api", "limited", "pooled" or "observed" (see main)
    script: str = "get.lua"  # the wrk script in bench/


OPERATIONS = [
    Operation("bare", "bare Flask app: GET / (the baseline)", "/", server="bare"),
    Operation("index", "GET / (the app's fixed cost)", "/"),
    Operation("get_actor", "GET /actors/<id>", "/actors/{actor}", 0.50, 1.3),
    Operation("list_actors", "GET /actors (page of 20, total)", "/actors", 0.40, 2.0),
    Operation("search_one", f"GET /actors?q={SEARCH_ONE} (1 match)", f"/actors?q={SEARCH_ONE}", 0.35, 2.0),
    # "The search" of the share target is the one-match search; this one is the hard case, whose cost
    # is its bounded count (1,001 matches read in id order), held flat by the p50 target alone.
    Operation("search_most", f"GET /actors?q={SEARCH_MOST} (most match)", f"/actors?q={SEARCH_MOST}", None, 2.0),
    # The hard searches (issue 23): words that many names share, which the search index cannot
    # look up cheaply; one or two letters; the longest search allowed; pages past the end of long lists.
    Operation(
        "search_shared_words",
        f"GET /actors?q={seed_actor_name(SEED_ACTOR).lower()} (words many share)",
        f"/actors?q={SEARCH_SHARED_WORDS}",
        0.35,
        2.0,
    ),
    Operation(
        "search_whole_name", "GET /actors?q=<a whole bulk name> (1 match)", f"/actors?q={SEARCH_WHOLE_NAME}", None, 2.0
    ),
    Operation("search_letter", "GET /actors?q=x (one letter, no match)", "/actors?q=x", None, 2.0),
    Operation("search_letters", "GET /actors?q=ra (two letters, many match)", "/actors?q=ra", None, 2.0),
    Operation(
        "search_longest", "GET /actors?q=<200 characters> (no match)", f"/actors?q={quote(SEARCH_LONGEST)}", None, 2.0
    ),
    Operation(
        "past_the_end",
        "GET /actors?gender=female&page=10^16 (past the end)",
        "/actors?gender=female&page=10000000000000000",
        None,
        2.0,
    ),
    Operation(
        "search_past_the_end",
        f"GET /actors?q={SEARCH_MOST}&page=10^16 (past the end)",
        f"/actors?q={SEARCH_MOST}&page=10000000000000000",
        None,
        2.0,
    ),
    Operation("filter_sort", f"GET /actors?{FILTER}", f"/actors?{FILTER}", None, 2.0),
    Operation("movie_actors", "GET /movies/<id>/actors", "/movies/{movie}/actors", 0.35, 2.0),
    Operation(
        "movie_actors_filtered",
        "GET /movies/<id>/actors?gender=female",
        "/movies/{movie}/actors?gender=female",
        None,
        2.0,
    ),
    Operation("walk_first", "walk by cursor, sort=-age: page 1 of 100", "/actors?sort=-age&per_page=100"),
    # The path is the cursor of the walk's page WALK_PAGE, found before the run (see walk_cursor).
    Operation("walk_deep", f"walk by cursor, sort=-age: page {WALK_PAGE}", None, None, 1.3, "walk_first"),
    Operation("deepest_page", "GET /actors?page=100&per_page=100 (the window's last)", "/actors?page=100&per_page=100"),
    Operation("patch_actor", "PATCH /actors/<id>", None, None, 1.3, script="patch_actor.lua"),
    Operation("post_actor", "POST /actors", None, None, 1.3, script="post_actor.lua"),  # last: it grows the table
    # At the smallest size only: the rate limits counted in a Redis the bench starts, as in production.
    Operation("get_actor_redis", "GET /actors/<id>, limits counted in Redis", "/actors/{actor}", server="limited"),
    # At the smallest size only: through a PgBouncer in transaction mode (two server connections), with
    # DATABASE_URL naming it and no other setting, as behind Heroku's connection pooling.
    Operation("get_actor_pooled", "GET /actors/<id>, through PgBouncer", "/actors/{actor}", server="pooled"),
    Operation("list_actors_pooled", "GET /actors (page of 20), through PgBouncer", "/actors", server="pooled"),
    Operation(
        "movie_actors_pooled", "GET /movies/<id>/actors, through PgBouncer", "/movies/{movie}/actors", server="pooled"
    ),
    # At the smallest size only: the same server with /metrics on (every request counted) and JSON logs.
    Operation(
        "get_actor_observed",
        "GET /actors/<id>, metrics and JSON logs on",
        "/actors/{actor}",
        keeps="get_actor",
        server="observed",
    ),
    Operation(
        "list_actors_observed",
        "GET /actors (page of 20), metrics and JSON logs on",
        "/actors",
        keeps="list_actors",
        server="observed",
    ),
]
KEEPS = 0.90  # what metrics and JSON logs may cost: a tenth of an operation's share, at most
# Servers whose rows are measured at the smallest size only.
AT_THE_SMALLEST_SIZE = ("limited", "pooled", "observed")

if ONLY - {op.name for op in OPERATIONS}:  # a misspelt name would run the baseline alone
    sys.exit(
        f"BENCH_OPERATIONS: no operation {', '.join(sorted(ONLY - {op.name for op in OPERATIONS}))}; "
        f"the operations are {', '.join(op.name for op in OPERATIONS)}"
    )


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the database ----------------------------------------------------------------


def app_environment(issuer, **extra):
    """The environment the app runs in: this run's database and issuer, nothing from .env. The rate
    limits are out of the way (one token sends every request), counted in each worker's memory unless
    `extra` sets REDIS_URL."""
    env = dict(os.environ, DATABASE_URL=DATABASE_URL, AUTH0_DOMAIN="", AUTH0_ISSUER=ISSUER)
    env.setdefault("SECRET_KEY", "the benchmark's")  # a production start refuses to run without one
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
    """Actors, movies (one per 10 actors) and castings (one per actor, in a random
    movie), the same for a size every run."""
    rng = random.Random(seed)  # noqa: S311 (sample data, not secrets)
    movies = max(3, actors // 10)
    needle = 1 + actors // 2  # the one actor whose name holds SEARCH_ONE

    def actor_name(id_):
        if id_ == needle:
            return f"{rng.choice(FIRST_NAMES)} Quillfeather"
        if id_ % 10 == SEED_ACTOR % 10:
            return seed_actor_name(id_)
        if id_ % 10 == BULK_ACTOR % 10:
            return bulk_name(id_)
        last = "".join(rng.sample(SYLLABLES, rng.randint(2, 3))) + rng.choice(ENDINGS)
        return f"{rng.choice(FIRST_NAMES)} {last.capitalize()}"

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
        (rng.randrange(movies) + 1, actor, rng.choice((None, f"Role {actor}"))) for actor in range(1, actors + 1)
    ]
    return actor_rows, movie_rows, casting_rows


def load(actors):
    """Empty the tables and load a data set of this size; return (movies, castings).
    The secondary indexes are dropped during the COPY and built again after it
    (much faster than updating them row by row), then the planner's statistics."""
    actor_rows, movie_rows, casting_rows = generate(actors)
    connection = psycopg2.connect(DATABASE_URL)
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('actors', 'movies', 'castings') "
            "AND indexname NOT LIKE 'pk_%'"
        )
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        cursor.execute("TRUNCATE castings, movies, actors RESTART IDENTITY")
        copy_rows(cursor, "actors", ("id", "name", "age", "gender"), actor_rows)
        copy_rows(cursor, "movies", ("id", "title", "release_date"), movie_rows)
        copy_rows(cursor, "castings", ("movie_id", "actor_id", "character"), casting_rows)
        for table, last in (("actors", len(actor_rows)), ("movies", len(movie_rows))):
            cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", (table, last))
        cursor.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            cursor.execute(definition)
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


def start_server(env, log_path, app=None):
    """gunicorn as deployed (it reads ./gunicorn.conf.py), serving the API, or `app`."""
    server = Gunicorn({**env, "PORT": str(free_port()), "WEB_CONCURRENCY": str(WORKERS)}, log_path, app=app)
    try:
        server.wait_ready(path="/" if app else "/health")
    except BaseException:
        server.stop()
        raise
    return server


def start_redis(log_path):
    """redis-server on a free port of 127.0.0.1, no persistence; returned once it answers."""
    import redis

    port = free_port()
    with open(log_path, "wb") as log_file:
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
            return server, f"redis://127.0.0.1:{port}/0"
        except redis.RedisError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}; see {log_path}") from None
            time.sleep(0.1)


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
    one = get_json(f"{base}/actors?q={SEARCH_ONE}", token)["total_actors"]
    whole_name = get_json(f"{base}/actors?q={SEARCH_WHOLE_NAME}", token)["total_actors"]
    most = get_json(f"{base}/actors?q={SEARCH_MOST}", token)
    shared = get_json(f"{base}/actors?q={SEARCH_SHARED_WORDS}", token)
    letters = get_json(f"{base}/actors?q=ra", token)
    filtered = get_json(f"{base}/actors?{FILTER}", token)
    cast = get_json(f"{base}/movies/1/actors", token)["total_actors"]
    get_json(f"{base}/actors/{actors}", token)
    nothing = [q for q in ("x", quote(SEARCH_LONGEST)) if get_json(f"{base}/actors?q={q}", token)["total_actors"]]
    if total != actors or one != 1 or whole_name != 1 or shared["total_actors"] != 1 or nothing:
        raise RuntimeError(
            f"expected {actors} actors, 1 match of {SEARCH_ONE!r}, of a whole bulk name and of a seed actor, "
            f"none of ?q=x or the longest search; got {total}, {one}, {whole_name}, {shared['total_actors']} "
            f"and matches of {nothing}"
        )

    def counted(body):
        return f"{body['total_actors']:,}{'' if body['total_exact'] else '+'}"

    return (
        f"?q={SEARCH_ONE}, a whole bulk name and ?q={seed_actor_name(SEED_ACTOR).lower()} match 1, "
        f"?q={SEARCH_MOST} {counted(most)}, ?q=ra {counted(letters)}, ?{FILTER} {counted(filtered)} "
        f"(+: the count stopped at its bound); movie 1 has {cast} actors"
    )


def walk_cursor(base, token, pages):
    """The cursor of page `pages` of the walk that walk_first starts, or None
    when the walk is shorter."""
    path = "/actors?sort=-age&per_page=100"
    for _ in range(pages - 1):
        cursor = get_json(base + path, token)["next_cursor"]
        if cursor is None:
            return None
        path = f"/actors?cursor={cursor}&per_page=100"
    return path


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
        "requests": numbers["requests"],
        "p50": numbers["p50_us"] / 1000,
        "p99": numbers["p99_us"] / 1000,
        "non2xx": numbers["non2xx"],
        "statuses": fields["statuses"],
        "socket_errors": numbers["socket_errors"],
    }


# --- CPU by process ----------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_by_kind(server):
    """CPU seconds (user and system) used so far by the server's gunicorn
    workers, by every PostgreSQL process and by PgBouncer, read from /proc:
    sampled around a timed run, they say where a request's cost is (the app's
    Python or the database: a statement planned on every run shows in the
    second)."""
    spent = {"app": 0.0, "database": 0.0, "pooler": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        kind = {"postgres": "database", "pgbouncer": "pooler"}.get(comm)
        kind = kind or ("app" if int(fields[1]) == server.process.pid else None)
        if kind:
            spent[kind] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return spent


# --- py-spy ----------------------------------------------------------------------


def profile(server, base, script, env, wrk_log, out):
    """Drive the operation once more while py-spy samples gunicorn's workers
    (--nonblocking: it never pauses them); keep the collapsed stacks in `out`
    and return a summary of where the samples were."""
    seconds = 5
    command = [str(VENV_BIN / "py-spy"), "record", "--pid", str(server.process.pid), "--subprocesses", "--nonblocking"]
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
        "| operation | actors | req/s | p50 ms | p99 ms | of bare Flask | p50 vs "
        f"{smallest:,} | app CPU us | database CPU us | PgBouncer CPU us | non-2xx | socket errors | JWKS fetches "
        "| targets |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for op in OPERATIONS:
        for size in SIZES:
            r = results.get((op.name, size))
            if r is None:
                continue
            share = r["rps"] / results[("bare", size)]["rps"]
            ratio, against = None, ""
            if op.compared_with and (op.compared_with, size) in results:
                ratio, against = r["p50"] / results[(op.compared_with, size)]["p50"], " (vs page 1)"
            elif size != smallest and (op.name, smallest) in results:
                ratio = r["p50"] / results[(op.name, smallest)]["p50"]
            misses = []
            if op.least_share is not None and share < op.least_share:
                misses.append(f"share < {op.least_share:.0%}")
            if op.keeps and (op.keeps, size) in results:
                kept = share / (results[(op.keeps, size)]["rps"] / results[("bare", size)]["rps"])
                if kept < KEEPS:
                    misses.append(f"{kept:.0%} of {op.keeps}'s share < {KEEPS:.0%}")
            if ratio is not None and op.most_ratio is not None and ratio > op.most_ratio:
                misses.append(f"p50 > {op.most_ratio}x")
            if r["non2xx"] or r["socket_errors"]:
                misses.append("errors")
            if r["jwks"]:
                misses.append("JWKS fetched")
            non2xx = f"{r['non2xx']:,}" + (f" ({r['statuses']})" if r["non2xx"] else "")
            ratio_text = "" if ratio is None else f"{ratio:.2f}x{against}"
            lines.append(
                f"| {op.label} | {size:,} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {share:.0%} | "
                f"{ratio_text} | {r['cpu_us']['app']:,.0f} | {r['cpu_us']['database']:,.0f} | "
                f"{r['cpu_us']['pooler']:,.0f} | {non2xx} | {r['socket_errors']:,} | {r['jwks']} | "
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
  redis-server on 127.0.0.1 (a Redis round trip per count and per header). "metrics and JSON logs on":
  the same server with `METRICS_TOKEN` set (every request counted, in prometheus-client's multiprocess
  files) and `LOG_FORMAT=json` (the access line a JSON object).
- "of bare Flask": requests/s as a share of the bare Flask app's `GET /` (bench/bare.py: one route, a
  constant; the same gunicorn, `gunicorn.conf.py` and workers) at the same size in the same run.
  "p50 vs {min(SIZES):,}": the p50 at that size over the p50 at {min(SIZES):,} actors.
  "app CPU us", "database CPU us": CPU time per request of the server's gunicorn workers and of all
  PostgreSQL's processes during the timed run (from /proc; wrk's own is in neither).
  "non-2xx": responses with status >= 300, counted by the Lua `response` hook (statuses in brackets).
  "JWKS fetches": fetches the issuer saw during the timed run (after the warm-ups).
- Targets: GET by id >= 50% of the bare Flask app, the counted page >= 40%, the one-match searches (by a
  rare word, and by words many names share) and the cast list >= 35%; p50 at every size within 2x of
  {min(SIZES):,} for every list, 1.3x for GET by id and the writes; the walk's page {WALK_PAGE} within 1.3x of
  its page 1 at the same size; with metrics and JSON logs on, by id and the page each keep {KEEPS:.0%} of their
  share with them off; no non-2xx, no JWKS fetch after the warm-up. The window's last page
  (items 9,901 to 10,000) has no target: it is empty at 1,000 actors and reads 10,000 rows at any larger size.
{notes}

{text_table}
"""
    (BENCH / "results.md").write_text(content)


# --- the run ---------------------------------------------------------------------


def main():
    started, begun, load_before = datetime.now(UTC), time.monotonic(), load_average()
    run_dir = Path(tempfile.mkdtemp(prefix="casting-bench-"))
    issuer = redis_server = bouncer = None
    servers, results, notes = {}, {}, []
    # A SIGTERM unwinds like Ctrl-C, so the finally below stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with open(run_dir / "wrk.log", "w") as wrk_log:
        try:
            issuer = Issuer(ISSUER, AUDIENCE, kid="bench-key-1")
            log(f"JWKS on {issuer.jwks_url}; logs in {run_dir}")
            create_database(issuer)
            log(f"database {DATABASE} created and migrated")
            token = issuer.token(PRODUCER, sub="bench|producer")
            redis_server, redis_url = start_redis(run_dir / "redis.log")
            # The API with its rate limits out of the way; the same with them counted in
            # Redis; and the baseline, a bare Flask app. All under ./gunicorn.conf.py.
            servers["api"] = start_server(app_environment(issuer), run_dir / "gunicorn.log")
            servers["limited"] = start_server(
                app_environment(issuer, REDIS_URL=redis_url, RATE_LIMIT="100000000/hour"),
                run_dir / "gunicorn-limited.log",
            )
            servers["observed"] = start_server(
                app_environment(issuer, METRICS_TOKEN=secrets.token_urlsafe(), LOG_FORMAT="json"),
                run_dir / "gunicorn-observed.log",
            )
            servers["bare"] = start_server(
                app_environment(issuer), run_dir / "gunicorn-bare.log", app="bench.bare:create_app()"
            )
            bouncer = PgBouncer(urllib.parse.urlsplit(PG).port or 5432, pool_size=2)
            bouncer.start()
            servers["pooled"] = start_server(
                app_environment(issuer, DATABASE_URL=bouncer.url(DATABASE)), run_dir / "gunicorn-pooled.log"
            )
            log(
                ", ".join(f"{name} on port {server.port}" for name, server in servers.items())
                + f" ({WORKERS} workers each)"
            )
            for size in SIZES:
                run_size(size, servers, token, issuer, results, notes, wrk_log, run_dir)
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
            for server in servers.values():
                server.stop()
            if bouncer is not None:
                bouncer.close()
            if redis_server is not None:
                redis_server.terminate()
                redis_server.wait(timeout=30)
            if issuer is not None:
                issuer.stop()


def run_size(size, servers, token, issuer, results, notes, wrk_log, run_dir):
    """Load a data set of this size, then warm up and time each operation on it."""
    started = time.monotonic()
    movies, castings = load(size)
    base = f"http://127.0.0.1:{servers['api'].port}"
    facts = check_data(base, token, size)
    notes.append(f"- {size:,} actors, {movies:,} movies, {castings:,} castings: {facts}.")
    log(f"loaded in {time.monotonic() - started:.1f} s: {notes[-1][2:-1]}")
    env = dict(os.environ, BENCH_DIR=str(BENCH), BENCH_TOKEN=token, BENCH_ACTORS=str(size))
    env.update(BENCH_MOVIES=str(movies))
    deep_walk = walk_cursor(base, token, WALK_PAGE)
    for op in OPERATIONS:
        path = deep_walk if op.name == "walk_deep" else op.path
        if (op.name == "walk_deep" and path is None) or (op.server in AT_THE_SMALLEST_SIZE and size != min(SIZES)):
            continue  # the walk is shorter than WALK_PAGE pages at this size; some servers at the smallest size only
        if ONLY and op.name not in ONLY | {"bare"}:
            continue
        server = servers[op.server]
        op_base = f"http://127.0.0.1:{server.port}"
        run_env = dict(env, BENCH_PATH=path or "")
        run_wrk(op_base, op.script, WARMUP, run_env, wrk_log)
        fetches, cpu_before = issuer.fetches, cpu_by_kind(server)
        result = run_wrk(op_base, op.script, DURATION, run_env, wrk_log)
        result["jwks"] = issuer.fetches - fetches
        result["cpu_us"] = {
            kind: (spent - cpu_before[kind]) / max(result["requests"], 1) * 1e6
            for kind, spent in cpu_by_kind(server).items()
        }
        results[(op.name, size)] = result
        if PROFILE:
            summary = profile(server, op_base, op.script, run_env, wrk_log, run_dir / f"profile-{op.name}-{size}.txt")
            log(f"{op.label} at {size:,}, profiled: {summary}")
        if op.name == "post_actor":
            delete_actors_after(size)
        log(
            f"{op.label} at {size:,}: {result['rps']:,.0f} req/s, p50 {result['p50']:.2f} ms, "
            f"p99 {result['p99']:.2f} ms, non-2xx {result['non2xx']}, JWKS fetches {result['jwks']}"
        )


if __name__ == "__main__":
    main()
