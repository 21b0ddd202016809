"""Database tables: actors, movies and the castings between them.

The database enforces the domain's rules itself, so no code path (or concurrent
client) can break them: a movie/actor pair is cast at most once (the casting's
primary key), and deleting either side removes its castings (ON DELETE CASCADE)
but never the other side.
"""

import contextlib
import re
import sqlite3
import unicodedata
import warnings

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    and_,
    event,
    func,
    literal_column,
)
from sqlalchemy.dialects.postgresql import JSONB
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


# --- folded text: what searches, sorts and the gender filter compare ----------------
#
# One fold, used everywhere text is compared: ?q= (on both sides), sorting by
# name or title, ?gender=, a cursor's sort values and the tests' model of the
# SPEC. The database keeps each folded value in a generated column (migration
# 0005), computed by its own function: casting_fold, in SQL on PostgreSQL (it
# must match `fold` character for character; test_lists.py checks every
# assigned code point), and `fold` itself on SQLite, registered on each
# connection below.

# Accents: the marks of the "Combining Diacritical Marks" blocks, which
# compatibility decomposition (NFKD) separates from Latin, Greek and Cyrillic
# letters ("É" is "E" and U+0301).
_ACCENTS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
# Letters that Unicode does not decompose, but that a reader takes for a base
# letter with a mark, or for two letters (as PostgreSQL's unaccent does), and
# the final sigma, which is a sigma.
_BASE_LETTERS = str.maketrans(
    {"ø": "o", "đ": "d", "ð": "d", "ł": "l", "ħ": "h", "ŧ": "t", "ı": "i", "ς": "σ"}
    | {"æ": "ae", "œ": "oe", "þ": "th", "ß": "ss"}
)


def fold(text):
    """`text` ignoring case and accents: "Zoë", "ZOE" and "zoe" fold alike, and
    so do "Søren" and "Soren", "Straße" and "STRASSE". Decomposed (NFKD: "ﬁ" is
    "fi", "Ａ" is "A"), in lower case, decomposed again ("İ" lowers to "i" and
    a dot), without accents, and with the letters above replaced."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).lower())
    return _ACCENTS.sub("", text).translate(_BASE_LETTERS)


def _sqlite_fold(text):
    return None if text is None else fold(text)


@event.listens_for(Engine, "connect")
def _sqlite_connection(dbapi_connection, connection_record):
    if isinstance(dbapi_connection, sqlite3.Connection):
        # SQLite ignores ON DELETE CASCADE unless every connection turns this on.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        # The generated columns' function (PostgreSQL's is in SQL, migration 0005).
        dbapi_connection.create_function("casting_fold", 1, _sqlite_fold, deterministic=True)


def _folded(column):
    """The generated column that holds `column` folded. In byte order ("C") on
    PostgreSQL, as SQLite compares: the same order on both, under any server
    locale. A stored column, so that no list computes a fold per row it reads."""
    return Column(
        Text().with_variant(Text(collation="C"), "postgresql"), Computed(f"casting_fold({column})"), nullable=False
    )


# Indexes that exist on PostgreSQL only: SQLite is for development and tests,
# and cannot describe expression indexes to Alembic's autogenerate.
POSTGRESQL_ONLY = "postgresql_only"


def _postgresql_index(name, *expressions, **kwargs):
    index = Index(name, *expressions, info={POSTGRESQL_ONLY: True}, **kwargs)
    return index.ddl_if(dialect="postgresql")


def _search_index(table, key, folded):
    """?q= is a substring match on folded text, which no B-tree serves. On
    PostgreSQL a GIN index of every piece of one, two and three characters of
    the folded text (casting_grams, migration 0005) finds the rows that hold
    the rarest pieces of a search, and the search checks the whole text on
    those rows only (search.py). SQLite has no such index and scans."""
    return _postgresql_index(f"ix_{table}_{key}_grams", func.casting_grams(folded), postgresql_using="gin")


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
    name_folded = _folded("name")
    gender_folded = _folded("gender")

    __table_args__ = (
        _search_index("actors", "name", name_folded),
        *_sort_indexes("actors", "name", name_folded, -id),
        *_sort_indexes("actors", "age", age, -id),
        # ?gender= compares folded genders: found (or found absent) without a scan.
        _postgresql_index("ix_actors_gender_folded", gender_folded),
        _NO_ID_REUSE,
    )


class Movie(db.Model):
    __tablename__ = "movies"

    id = Column(Integer, primary_key=True)
    title = Column(String(200), nullable=False)
    release_date = Column(Date, nullable=False)
    version = _version()
    title_folded = _folded("title")

    __table_args__ = (
        _search_index("movies", "title", title_folded),
        *_sort_indexes("movies", "title", title_folded, -id),
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


def concerned(side_id, resource_id, resource, other):
    """Which actor (or movie) an event concerns, from its columns: (the id,
    the condition for concerning one). A casting's event concerns its
    `side_id` (actor_id, or movie_id); an actor's (a movie's) own event its
    `resource_id`; an event of the `other` resource ("movies", or "actors")
    none. /audit's ?actor_id= and ?movie_id= compare them, served on
    PostgreSQL by a partial index (migration 0006) that lists the events
    newest first. `other` is written into the SQL, not bound, so that the
    planner sees that the query's condition is the index's."""
    return func.coalesce(side_id, resource_id), resource != literal_column(f"'{other}'")


def _concerned_index(name, concerned_id, condition, event_id):
    return _postgresql_index(f"ix_audit_events_concerned_{name}", concerned_id, event_id, postgresql_where=condition)


class AuditEvent(db.Model):
    """One successful write: who made it, when, in which request, and the row
    as it was before and after (null for a create's before and a delete's
    after; a delete's before also lists the castings it removed). No foreign
    keys: the history of an actor outlives the actor. The API shows
    `changes`, derived from before and after (schemas.py)."""

    __tablename__ = "audit_events"

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

    __table_args__ = (
        # /audit lists newest first, by id: these serve its filters in that order.
        Index(None, "resource_id", "id"),
        Index(None, "subject", "id"),
        Index(None, "at"),
        _concerned_index("actor_id", *concerned(actor_id, resource_id, resource, "movies"), id),
        _concerned_index("movie_id", *concerned(movie_id, resource_id, resource, "actors"), id),
        _NO_ID_REUSE,
    )


def concerning(name, value):
    """/audit?actor_id= (name "actor_id") and ?movie_id=: the events that
    concern that actor or movie, its own and its castings'."""
    side, other = {"actor_id": (AuditEvent.actor_id, "movies"), "movie_id": (AuditEvent.movie_id, "actors")}[name]
    concerned_id, condition = concerned(side, AuditEvent.resource_id, AuditEvent.resource, other)
    return and_(concerned_id == value, condition)


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


def shown(column):
    """Whether a client sees this column: not the version (the ETag's) nor a
    folded copy of another column."""
    return column.key != "version" and column.computed is None


def columns(row):
    """A row's column values by name, as a client sees them."""
    return {column.key: getattr(row, column.key) for column in row.__table__.columns if shown(column)}
