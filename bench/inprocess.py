"""The API's own cost per request, in-process: no server, no client, no network
but the database's. It calls the WSGI app directly with a prepared request, the
way gunicorn's worker does, and reports the CPU time this process spent per
request (the best of 10 rounds: a virtual machine's slow spells last
seconds, and the best round is the one they missed), which varies far less
from run to run than throughput under wrk. With --profile it also prints cProfile's view of one
round (sorted by --sort, default cumtime). What `bench/run` measures is the
whole request through gunicorn; this is the part the app's code can change.

Run it after `bench/run` has loaded the `casting_bench` database (any size;
BENCH_DATABASE names another, as for bench/run):

    .venv/bin/python bench/inprocess.py                  # the paths below
    .venv/bin/python bench/inprocess.py /actors/7 --profile

The rate limits count in the worker's memory, as in the benchmark; the token
is verified once and remembered, as in production.
"""

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import AUDIENCE, DATABASE_URL, ISSUER, PRODUCER  # noqa: E402
from loopback import Issuer  # noqa: E402

PATHS = ["/", "/actors/7", "/actors", "/actors?q=quill", "/movies/3/actors"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=PATHS)
    parser.add_argument("--requests", type=int, default=1000, help="requests per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="cumtime")
    options = parser.parse_args()

    from werkzeug.test import EnvironBuilder

    issuer = Issuer(ISSUER, AUDIENCE, kid="inprocess-key-1")
    os.environ.update(
        FLASK_SKIP_DOTENV="1",
        DATABASE_URL=DATABASE_URL,
        AUTH0_DOMAIN="",
        AUTH0_ISSUER=ISSUER,
        JWKS_URL=issuer.jwks_url,
        API_AUDIENCE=AUDIENCE,
        REDIS_URL="",
        RATE_LIMIT="100000000/second",
        RATE_LIMIT_ANONYMOUS="100000000/second",
    )
    from app import create_app

    app = create_app()
    token = issuer.token(PRODUCER, sub="bench|producer")

    def call(environ):
        statuses = []
        body = b"".join(app.wsgi_app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
        return statuses[0], body

    try:
        for path in options.paths:
            environ = EnvironBuilder(path=path, headers={"Authorization": f"Bearer {token}"}).get_environ()
            status, body = call(dict(environ))
            if not status.startswith("200"):
                raise SystemExit(f"{path}: {status} {body[:300]!r}")
            for _ in range(200):  # warm-up: the token's verification, the pool, compiled statements
                call(dict(environ))
            rounds = []
            for _ in range(options.rounds):
                started = time.process_time()
                for _ in range(options.requests):
                    call(dict(environ))
                rounds.append((time.process_time() - started) / options.requests * 1e6)
            spread = ", ".join(f"{us:.0f}" for us in rounds)
            print(f"{path:28} {min(rounds):6.0f} us CPU a request (rounds: {spread})", flush=True)
            if options.profile:
                profile = cProfile.Profile()
                profile.enable()
                for _ in range(options.requests):
                    call(dict(environ))
                profile.disable()
                pstats.Stats(profile).sort_stats(options.sort).print_stats(30)
    finally:
        issuer.stop()


if __name__ == "__main__":
    main()
