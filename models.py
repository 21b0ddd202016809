"""Database tables: actors, movies and the castings between them.

The database enforces the domain's rules itself, so no code path (or concurrent
client) can break them: a movie/actor pair is cast at most once (the casting's
primary key), and deleting either side removes its castings (ON DELETE CASCADE)
but never the other side.
"""

import sqlite3

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, Column, Date, ForeignKey, Index, Integer, MetaData, String, event
from sqlalchemy.engine import Engine

# Named constraints, so that migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# The ORM session serves the command line and the tests (requests run Core
# statements). expire_on_commit=False: a row keeps its values after its commit,
# with no SELECT to reload them.
db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION), session_options={"expire_on_commit": False})

# PostgreSQL's INTEGER is 32-bit: an id above this cannot exist, so it is a 404
# without asking the database (which would fail with an out-of-range error).
MAX_ID = 2**31 - 1

# SQLite reuses the id of a deleted last row unless the table is AUTOINCREMENT;
# a client that deleted actor 7 must never meet a different actor 7.
_NO_ID_REUSE = {"sqlite_autoincrement": True}


@event.listens_for(Engine, "connect")
def _sqlite_enforces_foreign_keys(dbapi_connection, connection_record):
    # SQLite ignores ON DELETE CASCADE unless every connection turns this on.
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def _search_index(table, column):
    """?q= is a case-insensitive substring match (ILIKE '%q%'), which no B-tree
    serves; on PostgreSQL a trigram GIN index does, so a search does not scan
    the table. SQLite has no such index and scans."""
    return Index(
        f"ix_{table}_{column}_trgm",
        column,
        postgresql_using="gin",
        postgresql_ops={column: "gin_trgm_ops"},
    ).ddl_if(dialect="postgresql")


def migration_filter(dialect_name):
    """Alembic's include_object for one database: the trigram indexes exist on
    PostgreSQL only, so elsewhere autogenerate must not ask for them."""

    def include_object(obj, name, type_, reflected, compare_to):
        return not (type_ == "index" and name.endswith("_trgm") and dialect_name != "postgresql")

    return include_object


class Actor(db.Model):
    __tablename__ = "actors"
    __table_args__ = (_search_index("actors", "name"), _NO_ID_REUSE)

    id = Column(Integer, primary_key=True)
    name = Column(String(120), nullable=False)
    age = Column(Integer, nullable=False)
    gender = Column(String(50), nullable=False)


class Movie(db.Model):
    __tablename__ = "movies"
    __table_args__ = (_search_index("movies", "title"), _NO_ID_REUSE)

    id = Column(Integer, primary_key=True)
    title = Column(String(200), nullable=False)
    release_date = Column(Date, nullable=False)


class Casting(db.Model):
    """An actor cast in a movie, optionally as a named character."""

    __tablename__ = "castings"
    # The primary key (movie_id, actor_id) serves a movie's cast in actor order;
    # the second index serves an actor's movies in movie order.
    __table_args__ = (Index(None, "actor_id", "movie_id"),)

    movie_id = Column(Integer, ForeignKey("movies.id", ondelete="CASCADE"), primary_key=True)
    actor_id = Column(Integer, ForeignKey("actors.id", ondelete="CASCADE"), primary_key=True)
    character = Column(String(120), nullable=True)


class RowCount(db.Model):
    """The exact number of rows of a table, kept by triggers (migration 0002):
    a list's total without counting the table."""

    __tablename__ = "row_counts"

    table_name = Column(String(20), primary_key=True)
    n = Column(BigInteger, nullable=False)


def columns(row):
    """A row's column values by name."""
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}
