"""Data access for requests: one autocommit SQL statement at a time.

Requests run their statements on a pool of their own (the "statements"
engine) whose connections are in autocommit mode: a statement is atomic by
itself, so there is no BEGIN or ROLLBACK round trip around it. The ORM session
and its transactions (db.engine) serve the command line, the migrations and
the tests. The README's benchmark section says what this bought. Lists, which
build their statements from a request's filters and sort, are in lists.py.
"""

import functools
import itertools
import re
import sqlite3
from select import POLLIN, poll

import psycopg2
from flask import current_app
from sqlalchemy import bindparam, create_engine, event, select
from sqlalchemy.exc import DBAPIError, DisconnectionError
from werkzeug.exceptions import NotFound

from models import MAX_ID, db


def engine_options(url, pool_size):
    if url.startswith("sqlite"):
        return {}
    return {
        "pool_size": pool_size,
        "max_overflow": 0,  # the pool size is a hard cap: see DB_POOL_SIZE in the README
        "pool_timeout": 10,
        "connect_args": {"connect_timeout": 5},  # a stopped database is a 503, not a hang
    }


def closed_by_the_server(dbapi_connection, connection_record, connection_proxy):
    """A pooled connection's check before each use, so that a restarted database
    costs no failed request. A connection the server has closed (a restart, a
    failover, an idle timeout) has a readable socket: its last message and then
    end of file; an idle live one has nothing to read. DisconnectionError makes
    the pool replace it. SQLAlchemy's pool_pre_ping asks the server instead
    (SELECT 1), a round trip that measured a fifth of a GET /actors/<id>."""
    fileno = getattr(dbapi_connection, "fileno", None)  # SQLite has no socket
    if fileno is None:
        return
    socket = poll()
    socket.register(fileno(), POLLIN)
    if socket.poll(0):
        raise DisconnectionError("the database closed this connection")


def init_database(app):
    """Flask-SQLAlchemy's engine, and the requests' autocommit engine beside it
    (same database and pool settings; autocommit from the start, because
    switching a pooled connection's isolation level on each checkout costs
    more than the query), both with the liveness check."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(url, app.config["DB_POOL_SIZE"])
    db.init_app(app)
    with app.app_context():
        options = dict(app.config["SQLALCHEMY_ENGINE_OPTIONS"])
        if db.engine.url.get_backend_name() == "postgresql":
            # A prepared select keeps one plan from its first run (see `prepared`).
            connect_args = options.get("connect_args", {})
            options["connect_args"] = {**connect_args, "options": "-c plan_cache_mode=force_generic_plan"}
        statements = create_engine(db.engine.url, isolation_level="AUTOCOMMIT", **options)
        for engine in (db.engine, statements):
            event.listen(engine, "checkout", closed_by_the_server)
    app.extensions["statements"] = statements


def connect():
    """A connection of the requests' autocommit pool, for several statements."""
    return current_app.extensions["statements"].connect()


def execute(statement, parameters=None):
    """Run one statement on the requests' autocommit pool."""
    with connect() as connection:
        return connection.execute(statement, parameters)


def rows(connection, statement, parameters):
    """The rows of a select, as dicts. On PostgreSQL its SQL, compiled once,
    goes to psycopg2's cursor directly: SQLAlchemy's execution path (an
    execution context and a result object per statement) measured 40% of the
    statement's own cost (README: "What each change bought"), and psycopg2
    already returns every type these selects read as Python's. A select marked
    `prepared` runs as a prepared statement of the connection's. Errors are
    SQLAlchemy's DBAPIError, as from connection.execute, and a lost connection
    is invalidated, so the error handlers and the pool see no difference.
    Elsewhere (SQLite, whose dates and JSON SQLAlchemy converts), SQLAlchemy runs it."""
    dialect = connection.dialect
    if dialect.name != "postgresql":
        return [dict(row) for row in connection.execute(statement, parameters).mappings()]
    compiled = _compiled(statement, dialect)
    dbapi_connection = connection.connection.dbapi_connection
    try:
        with dbapi_connection.cursor() as cursor:
            if statement.get_execution_options().get(PREPARED):
                _execute_prepared(connection, cursor, compiled, parameters)
            else:
                cursor.execute(compiled.string, compiled.construct_params(parameters))
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    except dialect.loaded_dbapi.Error as error:
        lost = dialect.is_disconnect(error, dbapi_connection, None)
        if lost:
            connection.invalidate(error)
        raise DBAPIError.instance(
            compiled.string, parameters, error, dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=dialect
        ) from error


PREPARED = "casting_prepared"


def prepared(statement):
    """Mark a select to run as a prepared statement on PostgreSQL. PostgreSQL
    plans a select each time it is sent as text, and for a short select the
    plan costs more than the run (a cast list: 1 ms to plan, 0.2 ms to run);
    a prepared one is planned once per connection, for any values, and reused
    (the requests' connections force that: plan_cache_mode). So only for
    selects whose best plan is the same whatever the values bound: a row by
    id, a list in id order without a search or filter. Not for a search, say,
    whose best plan depends on how many rows the words match."""
    return statement.execution_options(**{PREPARED: True})


def _execute_prepared(connection, cursor, compiled, parameters):
    """EXECUTE the statement, after PREPARE on a connection that has not seen
    it (the names live in the pool's record of the connection, which is
    emptied when the connection is replaced)."""
    name, sql, order = _prepared_form(compiled)
    done = connection.connection.info.setdefault(PREPARED, set())
    if name not in done:
        cursor.execute(f"PREPARE {name} AS {sql}")
        done.add(name)
    values = compiled.construct_params(parameters)
    cursor.execute(
        f"EXECUTE {name} ({', '.join(['%s'] * len(order))})" if order else f"EXECUTE {name}",
        [values[key] for key in order],
    )


@functools.cache
def _prepared_form(compiled):
    """(name, SQL with $1, $2 ... placeholders, the parameters' names in their order)."""
    order = []

    def positional(match):
        key = match.group(1)
        if key not in order:
            order.append(key)
        return f"${order.index(key) + 1}"

    sql = _PYFORMAT.sub(positional, compiled.string).replace("%%", "%")
    return f"casting_{next(_names)}", sql, tuple(order)


_PYFORMAT = re.compile(r"%\((\w+)\)s")
_names = itertools.count(1)


@functools.cache
def _compiled(statement, dialect):
    """A select's SQL for this dialect: statements are built once (by_id, a
    Listing's), so this compiles each once."""
    return statement.compile(dialect=dialect)


# The hot statements are built once: building one costs about as much as
# running it (SQLAlchemy caches the compiled SQL, not the construction).
@functools.cache
def by_id(table):
    return prepared(select(table).where(table.c.id == bindparam("id")))


def noun(model):
    return model.__tablename__[:-1]


def row_or_404(model, id_):
    """The row of `model` with this id, as a dict, or a 404 naming it."""
    found = []
    if id_ <= MAX_ID:
        with connect() as connection:
            found = rows(connection, by_id(model.__table__), {"id": id_})
    if not found:
        raise NotFound(f"{noun(model)} {id_} not found")
    return found[0]


# --- errors: unavailable (503) or a bug (500) ---------------------------------

# PostgreSQL's answers that mean "not now": the server is shutting down,
# starting up, or has no connection to spare.
_SERVER_UNAVAILABLE = ("57P01", "57P02", "57P03", "53300")


def connection_lost_or_refused(error):
    """Whether a driver's error means the database cannot be reached (a 503):
    a refused, timed out or lost connection. Anything else the database said (a
    missing table, a cancelled statement, a serialization failure) is a bug or a
    conflict to see in the log: a 500."""
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_CANTOPEN
    if isinstance(error, psycopg2.InterfaceError):  # a connection already closed
        return True
    if isinstance(error, psycopg2.OperationalError):
        if error.pgcode is None:  # libpq's own error, with no SQLSTATE: refused, timed out or lost
            return type(error) is psycopg2.OperationalError
        return error.pgcode.startswith("08") or error.pgcode in _SERVER_UNAVAILABLE  # 08: connection exception
    return False


def unavailable(error):
    """Whether a DBAPIError means the database cannot answer now (a 503, which
    clears by itself) rather than a bug or a conflict (a 500)."""
    return error.connection_invalidated or connection_lost_or_refused(error.orig)
