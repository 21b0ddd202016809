"""Data access for requests: one autocommit SQL statement at a time.

Requests run their statements on a pool of their own (the "statements"
engine) whose connections are in autocommit mode: a statement is atomic by
itself, so there is no BEGIN or ROLLBACK round trip around it. The ORM session
and its transactions (db.engine) serve the command line, the migrations and
the tests. The README's benchmark section says what this bought. Lists, which
build their statements from a request's filters and sort, are in lists.py.

The requests' connections may go to PostgreSQL directly or through a pooler in
transaction mode (PgBouncer), with no setting to say which: what a statement
runs under travels with it there (RequestSettings), and a prepared select's
name is its SQL's (`prepared`). See the README's "Behind a connection pooler".
"""

import functools
import hashlib
import re
import sqlite3
from dataclasses import dataclass
from select import POLLIN, poll

import psycopg2
import psycopg2.errors
from flask import current_app
from sqlalchemy import bindparam, create_engine, event, select
from sqlalchemy.exc import DBAPIError, DisconnectionError
from werkzeug.exceptions import NotFound

from config import ConfigError
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
    (same pool settings; autocommit from the start, because switching a pooled
    connection's isolation level on each checkout costs more than the query),
    both with the liveness check. The requests' engine connects to
    DATABASE_CONNECTION_POOL_URL when it is set (a pooler, for the web
    process): the command line and the migrations stay on DATABASE_URL."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(url, app.config["DB_POOL_SIZE"])
    timeouts = [seconds(app.config, name) for name in ("DB_STATEMENT_TIMEOUT", "DB_LOCK_TIMEOUT")]
    db.init_app(app)
    with app.app_context():
        url = app.config.get("REQUESTS_DATABASE_URI") or db.engine.url
        statements = create_engine(url, isolation_level="AUTOCOMMIT", **app.config["SQLALCHEMY_ENGINE_OPTIONS"])
        for engine in (db.engine, statements):
            event.listen(engine, "checkout", closed_by_the_server)
        if statements.dialect.name == "postgresql":
            settings = RequestSettings(statements.url, *timeouts)
            event.listen(statements, "connect", settings.on_connect)
            event.listen(statements, "before_cursor_execute", settings_first, retval=True)
    app.extensions["statements"] = statements


# --- what a request's statements run under -------------------------------------

SETTINGS = "casting_settings"  # the pool record's key: what to send before each statement


class RequestSettings:
    """The settings every statement of a request runs under: a bound on its
    time and on its wait for a lock, which the database enforces (a 503
    within seconds, never a worker killed), and one plan per prepared select
    (see `prepared`). A setting that the operator's own `options` in the
    database URL names is the operator's, and left alone.

    On a connection of its own (a direct one) they are set once, for the
    session. Through a pooler in transaction mode a session is nobody's:
    consecutive transactions run on different server connections, a SET would
    stay behind for other clients, and PgBouncer refuses the `options`
    startup parameter; so each statement carries them (SET LOCAL, in its own
    transaction), which costs the database a few microseconds a statement. A
    pooler answers with its own process id, not the server's: that tells them
    apart, with no setting (README: "Running in production")."""

    def __init__(self, url, statement_timeout, lock_timeout):
        wanted = {
            "statement_timeout": round(statement_timeout * 1000),  # milliseconds
            "lock_timeout": round(lock_timeout * 1000),
            "plan_cache_mode": "force_generic_plan",
        }
        operators = named_in_options(url.query.get("options", ""))
        settings = [f"{name} = {value}" for name, value in wanted.items() if name not in operators]
        self.session = "; ".join(f"SET {setting}" for setting in settings)
        self.each_statement = "".join(f"SET LOCAL {setting}; " for setting in settings)

    def on_connect(self, dbapi_connection, connection_record):
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pooled = cursor.fetchone()[0] != dbapi_connection.get_backend_pid()
            if self.session and not pooled:
                cursor.execute(self.session)
        dbapi_connection.commit()  # nothing to do in autocommit mode; else a SET in a transaction ends with it
        connection_record.info[SETTINGS] = self.each_statement if pooled else ""


def seconds(config, name):
    """A timeout setting in seconds, checked: a malformed one stops the start
    with a clear error. 0 turns it off, as in PostgreSQL."""
    value = config.get(name)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not 0 <= number <= 86400:  # also refuses nan
        raise ConfigError(f"{name} must be a number of seconds from 0 to 86400, not {value!r}")
    return number


def named_in_options(options):
    """The settings that a libpq `options` string sets (`-c name=value`,
    `--name=value`), lower-cased as PostgreSQL reads them."""
    if not isinstance(options, str):  # given twice in the URL: libpq takes the last
        options = options[-1] if options else ""
    return {name.lower().replace("-", "_") for name in _OPTION.findall(options)}


_OPTION = re.compile(r"(?:-c\s*|--)([A-Za-z_][\w.-]*)=")


def settings_first(conn, cursor, statement, parameters, context, executemany):
    """SQLAlchemy's statements on a pooled connection carry the settings."""
    prefix = conn.info.get(SETTINGS)
    return (prefix + statement if prefix else statement), parameters


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
    `prepared` runs as a prepared statement. Errors are SQLAlchemy's
    DBAPIError, as from connection.execute, and a lost connection is
    invalidated, so the error handlers and the pool see no difference.
    Elsewhere (SQLite, whose dates and JSON SQLAlchemy converts), SQLAlchemy runs it."""
    dialect = connection.dialect
    if dialect.name != "postgresql":
        return [dict(row) for row in connection.execute(statement, parameters).mappings()]
    compiled = _compiled(statement, dialect)
    pooled = connection.connection
    dbapi_connection = pooled.dbapi_connection
    try:
        with dbapi_connection.cursor() as cursor:
            if statement.get_execution_options().get(PREPARED):
                _execute_prepared(pooled.info, cursor, compiled, parameters)
            else:
                cursor.execute(pooled.info.get(SETTINGS, "") + compiled.string, compiled.construct_params(parameters))
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
    a prepared one is planned once per server connection, for any values,
    and reused (the requests' settings force that: plan_cache_mode). So only
    for selects whose best plan is the same whatever the values bound: a row
    by id, a list in id order without a search or filter. Not for a search,
    say, whose best plan depends on how many rows the words match."""
    return statement.execution_options(**{PREPARED: True})


# What the server answered that the next attempt of a prepared select mends.
_NOT_PREPARED = "26000"  # invalid_sql_statement_name: no such prepared statement on this server connection
_ALREADY_PREPARED = "42P05"  # duplicate_prepared_statement: this server connection has it
_TABLE_CHANGED = "0A000"  # "cached plan must not change result type": a migration changed a column's type
_ATTEMPTS = 4


def _execute_prepared(info, cursor, compiled, parameters):
    """EXECUTE the statement, preparing it in the same round trip where the
    server connection may not have it.

    Its name is a digest of its SQL, so a name means one statement on every
    server connection, whichever process or release prepared it. Which
    statements a server connection holds is known only on a connection of
    our own: `info` (the pool's record of the connection, emptied when it
    is replaced) remembers those this connection prepared. Through a pooler
    in transaction mode each statement may land on another server
    connection, and the server's answer says what to send next: PREPARE
    and EXECUTE together where it has no such statement, EXECUTE alone where
    it has one, DEALLOCATE first where a migration changed the table under
    its plan. A few misses in a row (other clients racing on a busy pool)
    end in the select sent as text, which every server connection runs."""
    form = _prepared_form(compiled)
    values = compiled.construct_params(parameters)
    arguments = [values[key] for key in form.order]
    settings = info.get(SETTINGS, "")
    done = info.setdefault(PREPARED, set())
    first = "" if form.name in done else form.prepare
    for _attempt in range(_ATTEMPTS):
        try:
            cursor.execute(settings + first + form.execute, arguments)
        except psycopg2.Error as error:
            if error.pgcode not in form.mend:
                raise
            first = form.mend[error.pgcode]
        else:
            done.add(form.name)
            return
    cursor.execute(settings + compiled.string, values)


@dataclass(frozen=True)
class _Prepared:
    name: str
    order: tuple  # the parameters' names, in the order of $1, $2 ...
    prepare: str  # PREPARE ...; to send before the EXECUTE
    execute: str  # EXECUTE name (%s, ...)
    mend: dict  # SQLSTATE -> what to send before the EXECUTE next time


@functools.cache
def _prepared_form(compiled):
    """The statements that run a select as a prepared statement, built once:
    its SQL with $1, $2 ... placeholders (keeping psycopg2's `%%` for a `%`,
    since it is sent with the EXECUTE's values), named by a digest of that SQL
    as the server reads it (128 bits: no two statements share one)."""
    order = []

    def positional(match):
        key = match.group(1)
        if key not in order:
            order.append(key)
        return f"${order.index(key) + 1}"

    sql = _PYFORMAT.sub(positional, compiled.string)
    name = "casting_" + hashlib.blake2b(sql.replace("%%", "%").encode(), digest_size=16).hexdigest()
    prepare = f"PREPARE {name} AS {sql}; "
    return _Prepared(
        name=name,
        order=tuple(order),
        prepare=prepare,
        execute=f"EXECUTE {name} ({', '.join(['%s'] * len(order))})" if order else f"EXECUTE {name}",
        mend={_NOT_PREPARED: prepare, _ALREADY_PREPARED: "", _TABLE_CHANGED: f"DEALLOCATE {name}; {prepare}"},
    )


_PYFORMAT = re.compile(r"%\((\w+)\)s")


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
    """Whether a driver's error means the database cannot be reached or cannot
    answer in time (a 503): a refused, timed out or lost connection, a lock
    waited for past lock_timeout (a migration's, say), a statement stopped by
    statement_timeout. Anything else the database said (a missing table, a
    statement cancelled on request, a serialization failure) is a bug or a
    conflict to see in the log: a 500."""
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_CANTOPEN
    if isinstance(error, psycopg2.InterfaceError):  # a connection already closed
        return True
    if isinstance(error, psycopg2.errors.LockNotAvailable):  # 55P03
        return True
    if isinstance(error, psycopg2.errors.QueryCanceled):  # 57014
        return over_its_time(error)
    if isinstance(error, psycopg2.OperationalError):
        if error.pgcode is None:  # libpq's own error, with no SQLSTATE: refused, timed out or lost
            return type(error) is psycopg2.OperationalError
        return error.pgcode.startswith("08") or error.pgcode in _SERVER_UNAVAILABLE  # 08: connection exception
    return False


def over_its_time(error):
    """Whether a cancelled statement (57014) was stopped by statement_timeout,
    rather than by a cancel request (pg_cancel_backend, an operator's): the
    SQLSTATE is the same, only the server's message tells them apart (in
    English, as Heroku's servers write it; a server writing another language
    makes the timeout a 500 with its traceback, never a wrong answer)."""
    message = error.diag.message_primary or str(error)
    return "statement timeout" in message


def unavailable(error):
    """Whether a DBAPIError means the database cannot answer now (a 503, which
    clears by itself) rather than a bug or a conflict (a 500)."""
    return error.connection_invalidated or connection_lost_or_refused(error.orig)
