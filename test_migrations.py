"""The migrations build exactly the schema of models.py, down to nothing and up
again on SQLite and on a PostgreSQL of their own (its trigram indexes and
statement-level and TRUNCATE triggers), the row counters stay exact, and the
sample data loads once, through `flask` and `python manage.py`."""

import os
import subprocess
import sys
import tempfile
import unittest
import uuid
from datetime import date

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import delete, func, insert, select, text, update

from app import create_app
from loopback import REPO, Postgres, clean_environment, needs_postgres
from models import Actor, Casting, Movie, RowCount, db, schema_comparison
from seed import ACTORS, CASTINGS, MOVIES
from testing import ApiTestCase, app_config, dispose

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


def schema_differences(app):
    with (
        app.app_context(),
        db.engine.connect() as connection,
        schema_comparison(connection.dialect.name) as include_object,
    ):
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": include_object})
        return compare_metadata(context, db.metadata)


class MigrationTest(ApiTestCase):
    def test_models_and_migrations_agree_on_the_test_database(self):
        # The suite's database (SQLite, or TEST_DATABASE_URL) was built by the migrations.
        self.assertEqual(schema_differences(self.app), [])

    def test_searches_sorts_and_filters_are_served_by_indexes_on_postgresql(self):
        self.requires_postgresql("these indexes exist on PostgreSQL only")
        with self.app.app_context():
            indexes = {ix["name"] for table in ("actors", "movies") for ix in db.inspect(db.engine).get_indexes(table)}
        expected = {"ix_actors_name_grams", "ix_movies_title_grams", "ix_actors_gender_folded"}
        for table, keys in (("actors", ("name", "age")), ("movies", ("title", "release_date"))):
            expected |= {f"ix_{table}_{key}_{ending}" for key in keys for ending in ("id", "negated_id")}
        self.assertLessEqual(expected, indexes)


class RowCounterTest(ApiTestCase):
    """The totals of /actors and /movies come from counter rows kept by triggers."""

    def totals(self):
        return (
            self.call("GET", "/actors").get_json()["total_actors"],
            self.call("GET", "/movies").get_json()["total_movies"],
        )

    def counters(self):
        with self.app.app_context():
            return {row.table_name: row.n for row in db.session.scalars(select(RowCount))}

    def test_a_whole_table_total_is_its_counter_row_on_every_page(self):
        # No list counts the table: set the counter apart from the rows and the
        # total follows the counter, on the first page and on one past the end.
        self.add(Actor, name="A", age=30, gender="F")
        self.set_counter(1000)
        self.addCleanup(self.set_counter, 1)  # before the cleanup deletes the row
        for query in ("", "?page=2", "?page=999"):
            with self.subTest(query):
                self.assertEqual(self.call("GET", f"/actors{query}").get_json()["total_actors"], 1000)
        # A search counts its matches instead.
        self.assertEqual(self.call("GET", "/actors?q=a&page=999").get_json()["total_actors"], 1)

    def set_counter(self, n):
        with self.app.app_context(), db.engine.begin() as connection:
            connection.execute(update(RowCount).where(RowCount.table_name == "actors").values(n=n))

    def test_totals_stay_exact_through_every_kind_of_write(self):
        actor = {"name": "A", "age": 30, "gender": "F"}
        ids = [self.call("POST", "/actors", json=actor).get_json()["actor"]["id"] for _ in range(3)]
        movie = self.call("POST", "/movies", json={"title": "M", "release_date": "2020-01-01"}).get_json()["movie"]
        self.call("PUT", f"/movies/{movie['id']}/actors/{ids[0]}")
        self.assertEqual(self.totals(), (3, 1))
        self.call("DELETE", f"/actors/{ids[0]}")  # its casting goes too; the movie stays
        self.assertEqual(self.totals(), (2, 1))
        with self.app.app_context(), db.engine.begin() as connection:  # writes that bypass the API
            connection.execute(insert(Actor), [actor] * 5)
            connection.execute(delete(Actor).where(Actor.id == ids[1]))
        self.assertEqual(self.totals(), (6, 1))
        self.assertEqual(self.counters(), {"actors": len(self.rows(Actor)), "movies": len(self.rows(Movie))})
        self.call("DELETE", f"/movies/{movie['id']}")
        self.assertEqual(self.totals(), (6, 0))


class FreshDatabaseMigrations:
    """The migrations on a database of their own, down to nothing and up
    again; the row counters exact afterwards. Mixed into a TestCase per
    database, whose fresh_url() makes an empty database."""

    def fresh_app(self):
        app = create_app(app_config(DATABASE_URL=self.fresh_url()))
        self.addCleanup(dispose, app)
        return app

    def counters_and_counts(self, app):
        with app.app_context(), db.engine.connect() as connection:
            counters = dict(connection.execute(select(RowCount.table_name, RowCount.n)).all())
            counts = {t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("actors", "movies")}  # noqa: S608 (fixed names)
        return counters, counts

    def write(self, app):
        """Rows added and removed one at a time and many per statement."""
        actor = {"name": "A", "age": 30, "gender": "F"}
        with app.app_context(), db.engine.begin() as connection:
            connection.execute(insert(Actor).values(actor))
            connection.execute(insert(Actor).values([actor] * 4))
            connection.execute(insert(Movie).values([{"title": "M", "release_date": date(2020, 1, 1)}] * 2))
            connection.execute(delete(Actor).where(Actor.id.in_(select(Actor.id).limit(2).scalar_subquery())))
            connection.execute(delete(Movie).where(Movie.id == select(func.min(Movie.id)).scalar_subquery()))

    def test_down_to_base_and_up_again(self):
        app = self.fresh_app()
        with app.app_context():
            upgrade(directory=MIGRATIONS)
            self.write(app)
            downgrade(directory=MIGRATIONS, revision="base")
            self.assertEqual(sorted(db.inspect(db.engine).get_table_names()), ["alembic_version"])
            with db.engine.connect() as connection:
                self.assertEqual(connection.execute(text(self.LEFTOVERS)).all(), [])
            upgrade(directory=MIGRATIONS)
        self.assertEqual(schema_differences(app), [])
        self.assertEqual(self.counters_and_counts(app), ({"actors": 0, "movies": 0}, {"actors": 0, "movies": 0}))
        self.write(app)
        self.assertEqual(self.counters_and_counts(app), ({"actors": 3, "movies": 1}, {"actors": 3, "movies": 1}))

    def test_the_counters_start_from_the_rows_already_there(self):
        app = self.fresh_app()
        with app.app_context():
            upgrade(directory=MIGRATIONS, revision="0001")
            self.write(app)
            upgrade(directory=MIGRATIONS)
        self.assertEqual(self.counters_and_counts(app), ({"actors": 3, "movies": 1}, {"actors": 3, "movies": 1}))
        self.write(app)
        self.assertEqual(self.counters_and_counts(app), ({"actors": 6, "movies": 2}, {"actors": 6, "movies": 2}))

    def test_the_folded_columns_fill_from_the_rows_already_there_and_go_cleanly(self):
        app = self.fresh_app()
        with app.app_context():
            upgrade(directory=MIGRATIONS, revision="0004")
            with db.engine.begin() as connection:
                connection.execute(text("INSERT INTO actors (name, age, gender) VALUES ('Zoë Saldaña', 45, 'FÉMALE')"))
                connection.execute(text("INSERT INTO movies (title, release_date) VALUES ('Amélie', '2001-04-25')"))
            upgrade(directory=MIGRATIONS)
            with db.engine.connect() as connection:
                actor = connection.execute(text("SELECT name_folded, gender_folded FROM actors")).one()
                movie = connection.execute(text("SELECT title_folded FROM movies")).one()
            self.assertEqual((tuple(actor), tuple(movie)), (("zoe saldana", "female"), ("amelie",)))
            downgrade(directory=MIGRATIONS, revision="0004")
            columns = {c["name"] for c in db.inspect(db.engine).get_columns("actors")}
            with db.engine.connect() as connection:
                rows = connection.execute(text("SELECT name, gender FROM actors")).all()
        self.assertEqual(columns, {"id", "name", "age", "gender", "version"})
        self.assertEqual([tuple(row) for row in rows], [("Zoë Saldaña", "FÉMALE")])


class SQLiteMigrationTest(FreshDatabaseMigrations, unittest.TestCase):
    LEFTOVERS = "SELECT name FROM sqlite_master WHERE type = 'trigger'"

    def fresh_url(self):
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        return f"sqlite:///{folder.name}/fresh.db"


@needs_postgres
class PostgresMigrationTest(FreshDatabaseMigrations, unittest.TestCase):
    """PostgreSQL's branches of the migrations (trigram indexes, statement-level
    and TRUNCATE triggers), on a cluster of the class's own."""

    LEFTOVERS = "SELECT proname FROM pg_proc WHERE proname LIKE 'row_counts_%'"

    @classmethod
    def setUpClass(cls):
        cls.pg = Postgres.fresh(cls.addClassCleanup)

    def fresh_url(self):
        name = f"fresh_{uuid.uuid4().hex[:12]}"
        self.pg.create_database(name)
        return self.pg.url(name)

    def test_truncate_resets_the_counters(self):
        app = self.fresh_app()
        with app.app_context():
            upgrade(directory=MIGRATIONS)
        self.write(app)
        with app.app_context(), db.engine.begin() as connection:
            connection.execute(text("TRUNCATE castings, movies, actors"))
        self.assertEqual(self.counters_and_counts(app), ({"actors": 0, "movies": 0}, {"actors": 0, "movies": 0}))
        self.write(app)
        self.assertEqual(self.counters_and_counts(app), ({"actors": 3, "movies": 1}, {"actors": 3, "movies": 1}))


class SeedTest(ApiTestCase):
    def counts(self):
        return len(self.rows(Actor)), len(self.rows(Movie)), len(self.rows(Casting))

    def test_seed_loads_the_sample_once(self):
        runner = self.app.test_cli_runner()
        result = runner.invoke(args=["seed"])
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertIn(f"{len(ACTORS) + len(MOVIES) + len(CASTINGS)} rows added", result.output)
        self.assertEqual(self.counts(), (len(ACTORS), len(MOVIES), len(CASTINGS)))
        self.assertGreaterEqual(len(ACTORS), 10)
        again = runner.invoke(args=["seed"])
        self.assertIn("already there", again.output)
        self.assertEqual(self.counts(), (len(ACTORS), len(MOVIES), len(CASTINGS)))
        cast = self.call("GET", "/movies?q=Harbour").get_json()["movies"][0]
        actors = self.call("GET", f"/movies/{cast['id']}/actors").get_json()
        self.assertIn("Captain Hale", [a["character"] for a in actors["actors"]])

    def test_seed_if_empty_loads_only_into_an_empty_database(self):
        sample = (len(ACTORS), len(MOVIES), len(CASTINGS))
        cases = [  # (a row already there, the output, the counts afterwards)
            (None, f"{sum(sample)} rows added", sample),
            ((Actor, {"name": "Only Me", "age": 30, "gender": "Female"}), "nothing added", (1, 0, 0)),
            ((Movie, {"title": "Only Me", "release_date": date(2020, 1, 1)}), "nothing added", (0, 1, 0)),
        ]
        for there, output, counts in cases:
            with self.subTest(there=there and there[0].__name__):
                if there:
                    self.add(there[0], **there[1])
                result = self.app.test_cli_runner().invoke(args=["seed", "--if-empty"])
                self.assertEqual(result.exit_code, 0, result.output)
                self.assertIn(output, result.output)
                self.assertEqual(self.counts(), counts)
                self._empty_database()


class ManagePyTest(unittest.TestCase):
    def test_db_upgrade_then_seed(self):
        """`python manage.py db upgrade` and `python manage.py seed`, as the README gives them."""
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        url = f"sqlite:///{folder.name}/manage.db"
        # An issuer configured, so that no local issuer key is made in the checkout.
        env = clean_environment(DATABASE_URL=url, AUTH0_DOMAIN="tenant.eu.auth0.com", API_AUDIENCE="casting-agency")

        def manage(*arguments):
            return subprocess.run(  # noqa: S603 (our own script)
                [sys.executable, "manage.py", *arguments],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

        upgraded = manage("db", "upgrade")
        self.assertEqual(upgraded.returncode, 0, upgraded.stderr)
        app = create_app(app_config(DATABASE_URL=url))
        self.addCleanup(dispose, app)
        self.assertEqual(schema_differences(app), [])
        for output in (f"{len(ACTORS) + len(MOVIES) + len(CASTINGS)} rows added", "already there"):
            seeded = manage("seed")
            self.assertEqual(seeded.returncode, 0, seeded.stderr)
            self.assertIn(output, seeded.stdout)
            with app.app_context():
                counts = [db.session.scalar(select(func.count()).select_from(m)) for m in (Actor, Movie, Casting)]
            self.assertEqual(counts, [len(ACTORS), len(MOVIES), len(CASTINGS)])
