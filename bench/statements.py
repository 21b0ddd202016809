"""What a request costs the database: for each path, the selects a GET of it
runs (by the app itself, as bench/indexes.py finds them), their time sent as
text (planned and run, as the app sends a search; the median of --rounds
runs of all of them), and the pages of tables and indexes their plans read
(EXPLAIN (ANALYZE, BUFFERS)).

Run it after `bench/run` has loaded the `casting_bench` database (any size):

    .venv/bin/python bench/statements.py "/actors?q=quill" "/actors?q=x"
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from indexes import statements_of  # noqa: E402

from bench import DATABASE_URL  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--rounds", type=int, default=30)
    options = parser.parse_args()
    connection = psycopg2.connect(DATABASE_URL)
    connection.autocommit = True
    with connection.cursor() as cursor:
        for path in options.paths:
            statements = statements_of(path)
            pages = 0
            for sql in statements:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
                plan = cursor.fetchone()[0][0]["Plan"]
                pages += plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
            times = []
            for _ in range(options.rounds):
                started = time.perf_counter()
                for sql in statements:
                    cursor.execute(sql)
                    cursor.fetchall()
                times.append((time.perf_counter() - started) * 1000)
            print(f"{path[:70]:70} {statistics.median(times):8.2f} ms {pages:6} pages", flush=True)
    connection.close()


if __name__ == "__main__":
    main()
