"""Database tables: actors, movies and the castings between them.

The database enforces the domain's rules itself, so no code path (or concurrent
client) can break them: a movie/actor pair is cast at most once (the casting's
primary key), and deleting either side removes its castings (ON DELETE CASCADE)
but never the other side.
"""

import contextlib
import sqlite3
import warnings

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    event,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction

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


class folded(GenericFunction):
    """A text column as lists sort it: lower case, compared byte by byte (code
    point order), so the order ignores case the same way on every database and
    under any server locale. Like `?q=`, it folds ASCII letters only (SQLite's
    lower() does, and so does PostgreSQL's under the "C" collation)."""

    type = String()
    inherit_cache = True


@compiles(folded)
def _folded(element, compiler, **kw):
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(folded, "postgresql")
def _folded_postgresql(element, compiler, **kw):
    return f'lower({compiler.process(element.clauses, **kw)} COLLATE "C")'


# Indexes that exist on PostgreSQL only: SQLite is for development and tests,
# and cannot describe expression indexes to Alembic's autogenerate.
POSTGRESQL_ONLY = "postgresql_only"


def _postgresql_index(name, *expressions, **kwargs):
    index = Index(name, *expressions, info={POSTGRESQL_ONLY: True}, **kwargs)
    return index.ddl_if(dialect="postgresql")


def _search_index(table, column):
    """?q= is a case-insensitive substring match (ILIKE '%q%'), which no B-tree
    serves; on PostgreSQL a trigram GIN index does, so a search does not scan
    the table. SQLite has no such index and scans."""
    return _postgresql_index(
        f"ix_{table}_{column}_trgm",
        column,
        postgresql_using="gin",
        postgresql_ops={column: "gin_trgm_ops"},
    )


def _sort_indexes(table, key, column, negated_id):
    """The two B-trees that serve sorting by `key` in either direction, ties
    broken by id ascending (the default) or descending, and the keyset
    conditions of cursors, so a page of any sort reads only its own rows. A
    B-tree reads forwards and backwards, so (key, id) serves `key` with
    `id` and `-key` with `-id`; (key, -id) serves the mixed directions, with
    lists comparing -id where the order wants id against key's direction."""
    return (
        _postgresql_index(f"ix_{table}_{key}_id", column, "id"),
        _postgresql_index(f"ix_{table}_{key}_negated_id", column, negated_id),
    )


@contextlib.contextmanager
def schema_comparison(dialect_name):
    """Alembic's include_object for one database, for comparing the models
    with it: the PostgreSQL-only indexes are not asked for elsewhere. Alembic
    warns about expression indexes on SQLite before it asks include_object,
    so that one warning is silenced there."""

    def include_object(obj, name, type_, reflected, compare_to):
        return type_ != "index" or dialect_name == "postgresql" or not obj.info.get(POSTGRESQL_ONLY)

    with warnings.catch_warnings():
        if dialect_name != "postgresql":
            warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
        yield include_object


def _version():
    """A row's version: 1 when created, one more at each write that changes a
    value. Its ETag carries it, and a conditional write compares it in the
    write's own statement (see writes.py)."""
    return Column(Integer, nullable=False, server_default="1")


class Actor(db.Model):
    __tablename__ = "actors"

    id = Column(Integer, primary_key=True)
    name = Column(String(120), nullable=False)
    age = Column(Integer, nullable=False)
    gender = Column(String(50), nullable=False)
    version = _version()

    __table_args__ = (
        _search_index("actors", "name"),
        *_sort_indexes("actors", "name", folded(name), -id),
        *_sort_indexes("actors", "age", age, -id),
        # ?gender= compares folded genders: found (or found absent) without a scan.
        _postgresql_index("ix_actors_gender_folded", folded(gender)),
        _NO_ID_REUSE,
    )


class Movie(db.Model):
    __tablename__ = "movies"

    id = Column(Integer, primary_key=True)
    title = Column(String(200), nullable=False)
    release_date = Column(Date, nullable=False)
    version = _version()

    __table_args__ = (
        _search_index("movies", "title"),
        *_sort_indexes("movies", "title", folded(title), -id),
        *_sort_indexes("movies", "release_date", release_date, -id),
        _NO_ID_REUSE,
    )


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


class AuditEvent(db.Model):
    """One successful write: who made it, when, in which request, and the row
    as it was before and after (null for a create's before and a delete's
    after). No foreign keys: the history of an actor outlives the actor.
    The API shows `changes`, derived from before and after (schemas.py)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        # /audit lists newest first, by id: these serve its filters in that order.
        Index(None, "resource_id", "id"),
        Index(None, "subject", "id"),
        Index(None, "at"),
        _NO_ID_REUSE,
    )

    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)  # SQLite's rowid is INTEGER
    at = Column(DateTime(timezone=True), nullable=False)
    subject = Column(String(255), nullable=False)
    action = Column(String(10), nullable=False)
    resource = Column(String(10), nullable=False)
    resource_id = Column(Integer, nullable=True)
    movie_id = Column(Integer, nullable=True)
    actor_id = Column(Integer, nullable=True)
    before = Column(JSON().with_variant(JSONB(), "postgresql"), nullable=True)
    after = Column(JSON().with_variant(JSONB(), "postgresql"), nullable=True)
    request_id = Column(String(64), nullable=False)


class AuthorizationCode(db.Model):
    """A code of the local issuer's sign-in (local_signin.py) until it is
    redeemed or expires. In the database, so that whichever worker or instance
    serves the exchange redeems it; deleted as it is redeemed, so that it is
    good once. It holds the code's SHA-256, never the code itself."""

    __tablename__ = "authorization_codes"

    code_hash = Column(String(64), primary_key=True)
    role = Column(String(40), nullable=False)
    client_id = Column(String(255), nullable=False)
    redirect_uri = Column(Text, nullable=False)
    code_challenge = Column(String(43), nullable=False)
    expires_at = Column(BigInteger, nullable=False)  # Unix time, in seconds


def columns(row):
    """A row's column values by name, but its version: the values a client sees."""
    return {column.key: getattr(row, column.key) for column in row.__table__.columns if column.key != "version"}
