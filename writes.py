"""Writes, each with its audit event, atomically (SPEC: "Audit trail").

A write that succeeds records one row in audit_events: who (the token's
`sub`), when, in which request (the caller says who and which: an `Author`),
and the row before and after it. Both happen or neither does:

- On PostgreSQL in one statement: the write is a data-modifying CTE and the
  event is inserted from the rows it returned; one round trip, as before.
- Elsewhere (SQLite) in one transaction, begun IMMEDIATE so that no other
  writer gets between the read of the old row and the write.

Deleting an actor or a movie removes its castings too, and its event lists
them (each casting's other side and character), so that the trail holds what
the delete removed. On PostgreSQL the statement deletes them itself (ON DELETE
CASCADE would remove them unseen) after a lock on the row, taken in the same
transaction, has made any casting being added meanwhile commit first or fail.

A change that sets what is already there changes nothing and records nothing,
and a row's version (which its ETag carries) moves only with a change. A
conditional write (If-Match) compares the version inside that same statement
or transaction: of two writes sent with one ETag, exactly one succeeds.
"""

import contextlib
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import and_, delete, func, insert, literal, null, or_, select, true, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement
from werkzeug.exceptions import NotFound, ServiceUnavailable

from database import connect, row_or_404
from models import Actor, AuditEvent, Casting, Movie


@dataclass(frozen=True)
class Author:
    """Who makes a write (a token's `sub`) and in which request (its id):
    what the write's audit event records."""

    subject: str
    request_id: str


@dataclass(frozen=True)
class Change:
    """The row before a change and after it (the same row when nothing changed)."""

    before: dict
    after: dict


def _unchanged(row):
    return Change(row, row)


def create(table, values, by, action="create"):
    """INSERT a row, and its event: the new row."""
    statement = insert(table).values(**values).returning(*table.c)
    with connect() as connection:
        if _one_statement(connection):
            new = statement.cte("new")
            row = connection.execute(select(*new.c).add_cte(_record(by, action, table, None, new))).mappings().one()
        else:
            with _transaction(connection):
                row = connection.execute(statement).mappings().one()
                _record_now(connection, by, action, table, None, row)
    return dict(row)


def change(table, key, values, by, versions=None, action="update"):
    """UPDATE the row whose primary key is `key` (a dict) with `values`, when
    its version is one of `versions` (None: any), and its event when a value
    changed. A Change, or None when there is no such row."""
    matching = _matches(table, key, versions)
    if not values:  # a casting PUT with no body: nothing to change
        with connect() as connection:
            row = connection.execute(select(table).where(matching)).mappings().first()
        return None if row is None else _unchanged(dict(row))
    changing = update(table).values(**_new_values(table, values)).returning(*table.c)
    with connect() as connection:
        if _one_statement(connection):
            # The old row, locked: the UPDATE and the event see the version the lock holds.
            old = select(table).where(matching).with_for_update().cte("old")
            new = changing.where(_same_row(table, table, old), _differs(table, values)).cte("new")
            columns = [c.label(f"before_{c.name}") for c in old.c] + [c.label(f"after_{c.name}") for c in new.c]
            statement = select(*columns).select_from(old.outerjoin(new, true()))
            row = connection.execute(statement.add_cte(_record(by, action, table, old, new))).mappings().first()
            if row is None:
                return None
            before = {c.name: row[f"before_{c.name}"] for c in table.c}
            after = {c.name: row[f"after_{c.name}"] for c in table.c}
            return _unchanged(before) if all(value is None for value in after.values()) else Change(before, after)
        with _transaction(connection):
            before = connection.execute(select(table).where(matching)).mappings().first()
            if before is None:
                return None
            before = dict(before)
            after = connection.execute(changing.where(matching, _differs(table, values))).mappings().first()
            if after is None:
                return _unchanged(before)
            _record_now(connection, by, action, table, before, after)
            return Change(before, dict(after))


# The castings of an actor (a movie) name it in this column, and their other side in that one.
CASTING_SIDES = {"actors": ("actor_id", "movie_id"), "movies": ("movie_id", "actor_id")}


def remove(table, key, by, versions=None, action="delete"):
    """DELETE the row whose primary key is `key`, when its version is one of
    `versions` (None: any), with its castings, and its event: the row as it
    was (and the castings it had), or None."""
    statement = delete(table).where(_matches(table, key, versions)).returning(*table.c)
    sides = CASTING_SIDES.get(table.name)
    with connect() as connection:
        if _one_statement(connection):
            with _transaction(connection) if sides else contextlib.nullcontext():
                if sides:
                    # Adding a casting locks its actor and its movie (FOR KEY SHARE, the
                    # foreign key's check): this waits for any such one to commit, and
                    # holds off the next, so the statement below sees every casting.
                    connection.execute(select(table.c.id).where(_matches(table, key)).with_for_update())
                old = statement.cte("old")
                castings = _delete_castings(old, *sides) if sides else None
                event = _record(by, action, table, old, None, castings)
                row = connection.execute(select(*old.c).add_cte(event)).mappings().first()
        else:
            with _transaction(connection):
                castings = _castings_of(connection, key["id"], *sides) if sides else None
                row = connection.execute(statement).mappings().first()
                if row is not None:
                    _record_now(connection, by, action, table, row, None, castings)
    return None if row is None else dict(row)


def cast(movie, actor, data, by):
    """Cast `actor` in `movie`, `data` setting the character: (the casting,
    created?). Each step is atomic on its own, so a concurrent PUT or DELETE
    can land between them; the loop takes the step that matches what it finds."""
    key = {"movie_id": movie, "actor_id": actor}
    table = Casting.__table__
    for _attempt in range(3):
        # With no body, the "change" is of nothing: it finds the casting, changes nothing.
        found = change(table, key, data, by, action="cast")
        if found is not None:
            return found.after, False
        try:
            return create(table, {**key, **data}, by, action="cast"), True
        except IntegrityError:
            # Another request cast the same pair first (then this is an update:
            # go round again), or deleted the movie or the actor (then it is a 404).
            row_or_404(Movie, movie)
            row_or_404(Actor, actor)
    raise ServiceUnavailable("the casting is changing too fast; try again")


def uncast(movie, actor, by):
    """Remove `actor` from `movie`'s cast: the casting as it was, or a 404."""
    removed = remove(Casting.__table__, {"movie_id": movie, "actor_id": actor}, by, action="uncast")
    if removed is None:
        raise NotFound(f"actor {actor} is not cast in movie {movie}")
    return removed


# --- the pieces -------------------------------------------------------------------


def _one_statement(connection):
    """PostgreSQL runs a write and its event as one statement; SQLite's CTEs
    cannot hold an INSERT, UPDATE or DELETE."""
    return connection.dialect.name == "postgresql"


@contextlib.contextmanager
def _transaction(connection):
    # The requests' engine is in autocommit mode: the transaction is spelled out.
    connection.exec_driver_sql("BEGIN" if _one_statement(connection) else "BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.exec_driver_sql("ROLLBACK")
        raise
    connection.exec_driver_sql("COMMIT")


def _matches(table, key, versions=None):
    conditions = [table.c[name] == value for name, value in key.items()]
    if versions is not None:
        conditions.append(table.c.version.in_(sorted(versions)))
    return and_(*conditions)


def _same_row(table, a, b):
    """a's and b's primary keys are equal (two aliases of `table`'s rows)."""
    return and_(*(a.c[column.name] == b.c[column.name] for column in table.primary_key))


def _differs(table, values):
    """Any of `values` differs from the row's (NULL-safe)."""
    return or_(*(table.c[name].is_distinct_from(value) for name, value in values.items()))


def _new_values(table, values):
    return {**values, "version": table.c.version + 1} if "version" in table.c else values


def _event(by, action, table, row):
    """An event's columns but before and after, for a write of `row` (a dict,
    or the columns of a CTE) of `table`."""
    if table.name == "castings":
        ids = {"resource_id": None, "movie_id": row["movie_id"], "actor_id": row["actor_id"]}
    else:
        ids = {"resource_id": row["id"], "movie_id": None, "actor_id": None}
    return {
        "at": datetime.now(UTC),
        "subject": by.subject,
        "action": action,
        "resource": table.name,
        **ids,
        "request_id": by.request_id,
    }


def _delete_castings(old, own, other):
    """PostgreSQL: the DELETE of the castings of the row that `old` (a CTE)
    deletes, as a CTE returning each one's other side and character. Only the
    castings it deleted itself: one that another request removed meanwhile is
    that request's to record."""
    castings = Casting.__table__
    statement = delete(castings).where(castings.c[own].in_(select(old.c.id)))
    return statement.returning(castings.c[other], castings.c.character).cte("castings_gone")


def _castings_of(connection, row_id, own, other):
    """Elsewhere: the castings of a row, each one's other side and character."""
    castings = Casting.__table__
    statement = select(castings.c[other], castings.c.character).where(castings.c[own] == row_id)
    return [dict(row) for row in connection.execute(statement.order_by(castings.c[other])).mappings()]


def _record(by, action, table, old, new, castings=None):
    """PostgreSQL: the INSERT of the event, as a CTE, from the write's CTEs
    `old` (the row before) and `new` (after); either may be None. `castings`:
    a CTE of the castings a delete removed, which `before` lists."""
    source = old if old is not None else new
    event = _event(by, action, table, source.c)
    event["before"] = null() if old is None else func.to_jsonb(old.table_valued())
    if castings is not None:
        other = castings.c[0]
        each = func.jsonb_build_object(other.name, other, "character", castings.c.character)
        listed = func.coalesce(func.jsonb_agg(aggregate_order_by(each, other)), func.jsonb_build_array())
        removed = func.jsonb_build_object("castings", select(listed).scalar_subquery())
        event["before"] = event["before"].op("||")(removed)
    event["after"] = null() if new is None else func.to_jsonb(new.table_valued())
    values = [v if isinstance(v, ColumnElement) else null() if v is None else literal(v) for v in event.values()]
    sources = source if old is None or new is None else old.join(new, _same_row(table, old, new))
    return insert(AuditEvent).from_select(list(event), select(*values).select_from(sources)).cte("event")


def _record_now(connection, by, action, table, before, after, castings=None):
    """Elsewhere: INSERT the event, in the write's transaction."""
    event = _event(by, action, table, after if after is not None else before)
    before = _jsonable(before)
    if castings is not None:
        before["castings"] = castings
    connection.execute(insert(AuditEvent).values(**event, before=before, after=_jsonable(after)))


def _jsonable(row):
    if row is None:
        return None
    return {name: value.isoformat() if isinstance(value, date) else value for name, value in row.items()}
