"""What each index of the lists buys: for each, the statements of a few list
requests, timed by PostgreSQL (EXPLAIN ANALYZE, best of 5) with the index and
then without it (dropped inside a transaction that is rolled back). The two
B-trees of a sort key are dropped together: each can stand in for the other
at the cost of an incremental sort within ties, which is cheap for names and
dates, and for cursors only the pair serves every direction.

Run it after `bench/run` has loaded its largest size into the `casting_bench`
database (the run leaves it there):

    .venv/bin/python bench/indexes.py
"""

# ruff: noqa: S608 (index names and SQL from this file and from the app's own statements)

import sys
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import DATABASE_URL  # noqa: E402 (the benchmark's database: BENCH_PG, BENCH_DATABASE)

# indexes -> the requests whose statements they serve
REQUESTS = {
    ("ix_actors_name_grams",): ["/actors?q=quill", "/actors?q=x", "/actors?q=seed%20actor%20771"],
    ("ix_actors_name_id", "ix_actors_name_negated_id"): ["/actors?sort=name", "/actors?sort=-name"],
    ("ix_actors_age_id", "ix_actors_age_negated_id"): [
        "/actors?sort=age",
        "/actors?age_min=90&age_max=90",
        "/actors?gender=female&age_min=25&age_max=35&sort=-age",
    ],
    ("ix_actors_gender_folded",): ["/actors?gender=unknown", "/actors?gender=female"],
    ("ix_movies_title_id", "ix_movies_title_negated_id"): ["/movies?sort=title", "/movies?sort=-title"],
    ("ix_movies_release_date_id", "ix_movies_release_date_negated_id"): [
        "/movies?released_from=2000-01-01&released_to=2000-01-31",
        "/movies?sort=-release_date",
    ],
}


def statements_of(path):
    """The SQL (with its parameters) of the selects of a list that a GET of
    `path` runs, by the app itself (not the search index's statistics, read
    once a minute, nor a lookup by id)."""
    from app import create_app
    from auth import PERMISSIONS
    from testing import ISSUER_ON_LOOPBACK, app_config, statements_run

    app = create_app(app_config(DATABASE_URL=DATABASE_URL))
    token = ISSUER_ON_LOOPBACK.token(PERMISSIONS)
    with statements_run(app) as captured:
        response = app.test_client().get(path, headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.get_data(as_text=True)[:200]}")
    return [
        sql
        for sql in captured
        if sql.lstrip().upper().startswith(("SELECT", "WITH"))
        and "pg_stats" not in sql
        and "FROM actors WHERE actors.id" not in sql
    ]


def execution_ms(cursor, sql):
    best = None
    for _ in range(5):
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
        ms = cursor.fetchone()[0][0]["Execution Time"]
        best = ms if best is None else min(best, ms)
    return best


def main():
    connection = psycopg2.connect(DATABASE_URL)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM actors")
        actors = cursor.fetchone()[0]
    connection.rollback()
    print(f"{actors:,} actors in {DATABASE_URL.rsplit('/', 1)[1]}\n")
    print("| indexes | request | with (ms) | without (ms) |")
    print("| --- | --- | ---: | ---: |")
    for indexes, paths in REQUESTS.items():
        for path in paths:
            statements = statements_of(path)
            with connection.cursor() as cursor:
                with_index = sum(execution_ms(cursor, sql) for sql in statements)
                for index in indexes:
                    cursor.execute(f'DROP INDEX "{index}"')
                without = sum(execution_ms(cursor, sql) for sql in statements)
            connection.rollback()
            names = ", ".join(f"`{index}`" for index in indexes)
            print(f"| {names} | `{path}` | {with_index:.2f} | {without:.2f} |", flush=True)
    connection.close()


if __name__ == "__main__":
    main()
