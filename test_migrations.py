"""The migrations build exactly the schema of models.py, and the sample data
loads once."""

import os
import tempfile

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import delete, insert, select, text, update

from app import create_app
from models import Actor, Casting, Movie, RowCount, db, schema_comparison
from seed import ACTORS, CASTINGS, MOVIES
from testing import ApiTestCase, app_config

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
        with self.app.app_context():
            if db.engine.dialect.name != "postgresql":
                self.skipTest("these indexes exist on PostgreSQL only")
            indexes = {ix["name"] for table in ("actors", "movies") for ix in db.inspect(db.engine).get_indexes(table)}
        expected = {"ix_actors_name_trgm", "ix_movies_title_trgm", "ix_actors_gender_folded"}
        for table, keys in (("actors", ("name", "age")), ("movies", ("title", "release_date"))):
            expected |= {f"ix_{table}_{key}_{ending}" for key in keys for ending in ("id", "negated_id")}
        self.assertLessEqual(expected, indexes)

    def test_downgrade_and_upgrade_again_on_a_fresh_database(self):
        with tempfile.TemporaryDirectory() as folder:
            app = create_app(app_config(DATABASE_URL=f"sqlite:///{folder}/fresh.db"))
            with app.app_context():
                upgrade(directory=MIGRATIONS)
                downgrade(directory=MIGRATIONS, revision="base")
                self.assertEqual(sorted(db.inspect(db.engine).get_table_names()), ["alembic_version"])
                upgrade(directory=MIGRATIONS)
            self.assertEqual(schema_differences(app), [])
            with app.app_context():
                db.engine.dispose()


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

    def test_the_migration_counts_the_rows_already_there(self):
        with tempfile.TemporaryDirectory() as folder:
            app = create_app(app_config(DATABASE_URL=f"sqlite:///{folder}/old.db"))
            with app.app_context():
                upgrade(directory=MIGRATIONS, revision="0001")
                with db.engine.begin() as connection:
                    connection.execute(
                        text("INSERT INTO actors (name, age, gender) VALUES ('A', 1, 'F'), ('B', 2, 'M')")
                    )
                upgrade(directory=MIGRATIONS)
                self.assertEqual(db.session.get(RowCount, "actors").n, 2)
                self.assertEqual(db.session.get(RowCount, "movies").n, 0)
                db.session.remove()
                db.engine.dispose()


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

    def test_seed_if_empty_leaves_existing_data_alone(self):
        self.add(Actor, name="Only Me", age=30, gender="Female")
        result = self.app.test_cli_runner().invoke(args=["seed", "--if-empty"])
        self.assertIn("nothing added", result.output)
        self.assertEqual(self.counts(), (1, 0, 0))
