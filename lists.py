"""Lists at scale: filters, sorting, cursors and bounded totals.

Every list (the two collections and the two cast lists) is one `Listing`: a
select of its rows plus the columns it can filter and sort by. A request's
page is one SQL statement (the page, its sort keys and its total), built once
per shape of request (which filters, which sort, page or cursor) and cached.

Costs stay flat as the tables grow (on PostgreSQL, with migration 0003's
indexes):
- a page reads the rows of its sort index in order and stops after the page,
  plus one row that says whether more follow;
- a cursor continues after the last row's sort keys (keyset pagination), so
  the 500th page costs what the first does, and a walk sees every row that
  existed throughout it exactly once, whatever is inserted or deleted meanwhile;
- `?page=` reaches the first WINDOW items only (OFFSET reads every skipped row),
  and a page past them is refused or found empty without reading that far;
- a total is the counter row for a whole table, or what a page that ends its
  list shows (the rows before it and its own), and otherwise a count that
  stops at COUNT_BOUND (`total_exact` says which);
- a search looks up its rarest pieces in the search index (search.py).
"""

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlencode

from flask import current_app
from marshmallow import EXCLUDE, ValidationError
from sqlalchemy import String, and_, bindparam, case, func, literal_column, or_, select, tuple_
from werkzeug.exceptions import BadRequest

from database import connect, prepared, rows
from models import Actor, AuditEvent, Movie, RowCount, concerning, fold
from search import contains, holds_pieces, pieces_to_look_up, shares

# `?page=` reaches this many items; a cursor reaches every one.
WINDOW = 10_000
# A filtered list's total counts this many items at most, then says it stopped.
COUNT_BOUND = 1_000
DEFAULT_SORT = (("id", False),)


@dataclass(frozen=True)
class SortKey:
    """A key of `?sort=`: the expression lists order by, and how a cursor
    carries its value (JSON has no date)."""

    expression: Any
    negatable: bool = False  # a number: -x in ascending order is x in descending
    from_json: Any = None  # the value as the database binds it, from its JSON form

    def json_value(self, value):
        return value.isoformat() if isinstance(value, date) else value


def _int(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not a whole number")
    return value


def _str(value):
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


@dataclass(frozen=True)
class Columns:
    """What a list of a model's rows can be searched, filtered and sorted by.
    The query parameters' names and validation are in schemas.py."""

    search: Any  # the folded column ?q= searches
    search_index: str | None = None  # its index of pieces (PostgreSQL)
    filters: dict = field(default_factory=dict)  # query parameter -> its condition, given the value's bindparam
    folded_filters: frozenset = frozenset()  # the filters whose value is compared folded
    sort_keys: dict = field(default_factory=dict)
    default_sort: tuple = DEFAULT_SORT


ACTOR_COLUMNS = Columns(
    search=Actor.name_folded,
    search_index="ix_actors_name_grams",
    filters={
        # Served by an index on the folded gender (migration 0005), which also
        # gives PostgreSQL statistics of it: a gender that no actor has is
        # found absent at once, and a common one is not mistaken for a rare one.
        "gender": lambda value: Actor.gender_folded == value,
        "age_min": lambda value: Actor.age >= value,
        "age_max": lambda value: Actor.age <= value,
    },
    folded_filters=frozenset({"gender"}),
    sort_keys={
        "id": SortKey(Actor.id, negatable=True, from_json=_int),
        "name": SortKey(Actor.name_folded, from_json=_str),
        "age": SortKey(Actor.age, negatable=True, from_json=_int),
    },
)
MOVIE_COLUMNS = Columns(
    search=Movie.title_folded,
    search_index="ix_movies_title_grams",
    filters={
        "released_from": lambda value: Movie.release_date >= value,
        "released_to": lambda value: Movie.release_date <= value,
    },
    sort_keys={
        "id": SortKey(Movie.id, negatable=True, from_json=_int),
        "title": SortKey(Movie.title_folded, from_json=_str),
        "release_date": SortKey(Movie.release_date, from_json=lambda value: date.fromisoformat(_str(value))),
    },
)

AUDIT_COLUMNS = Columns(
    search=None,
    filters={
        "resource": lambda value: AuditEvent.resource == value,
        "resource_id": lambda value: AuditEvent.resource_id == value,
        "actor_id": lambda value: concerning("actor_id", value),
        "movie_id": lambda value: concerning("movie_id", value),
        "subject": lambda value: AuditEvent.subject == value,
        "action": lambda value: AuditEvent.action == value,
        "since": lambda value: AuditEvent.at >= value,
        "until": lambda value: AuditEvent.at < value,
    },
    sort_keys={"id": SortKey(AuditEvent.id, negatable=True, from_json=_int)},
    default_sort=(("id", True),),  # newest first
)


def sort_terms(sort):
    """The full order of a sort (a tuple of (key, descending)): its keys up to
    `id`, then `id` ascending when the keys did not name it."""
    terms = []
    for key, descending in sort:
        terms.append((key, descending))
        if key == "id":
            return tuple(terms)
    return (*terms, ("id", False))


def sort_text(terms):
    """The canonical ?sort= of a tuple of terms, as a cursor carries it."""
    return ",".join(("-" if descending else "") + key for key, descending in terms)


@dataclass
class Page:
    rows: list
    total: int
    total_exact: bool
    next_cursor: str | None


class Listing:
    """One list: `rows` (a select of `model`'s table, maybe joined and with
    bind parameters such as the owner of a cast list) that `columns` search,
    filter and sort, with the query parameters of `query_schema`.
    `whole_table`: unfiltered, the list is the whole table, whose total is its
    counter row."""

    def __init__(self, rows, model, columns, query_schema, whole_table=False):
        self.rows = rows
        self.model = model
        self.columns = columns
        self.query_schema = query_schema
        self.whole_table = whole_table
        self._statements = {}

    # --- the request ----------------------------------------------------------

    def page(self, args, list_key, **parameters):
        """The page that `args` (validated by the list's query schema) asks for.
        `list_key` names this list (a cursor is valid for it alone);
        `parameters` bind the list's own parameters (e.g. the owner's id)."""
        per_page = args["per_page"]
        criteria = self._criteria(args)
        after = None
        if "cursor" in args:
            if "page" in args:
                raise invalid_query(page="Send either page or cursor, not both.")
            criteria, after = self._read_cursor(args, list_key, criteria)
        terms = criteria["sort"]
        filters = tuple(name for name in self.columns.filters if name in criteria)
        for name in filters:
            value = criteria[name]
            parameters[name] = fold(value) if name in self.columns.folded_filters else value
        offset = 0 if after is not None else (args.get("page", 1) - 1) * per_page
        with connect() as connection:
            search = None
            if "q" in criteria:
                search = self._search(connection, fold(criteria["q"]), parameters)
            unfiltered = self.whole_table and not (filters or search)
            shape = (filters, search, terms)
            if offset >= current_app.config["LIST_WINDOW"]:
                return self._past_the_window(connection, shape, unfiltered, parameters, offset)
            statement = self._statement("page", *shape, after is not None)
            if after is not None:
                parameters.update({f"k{i}": value for i, value in enumerate(after)})
            limits = {"limit": per_page + 1, "offset": offset, "bound": self._bound()}
            found = rows(connection, statement, {**parameters, **limits})
            # A page by number that ends the list shows how long it is (see _build_page).
            ends_the_list = after is None and len(found) <= per_page and (len(found) > 0 or offset == 0)
            if found:
                total = found[0]["_total"]
            elif ends_the_list:
                total = 0
            else:  # past the end, or every row after the cursor is gone: count apart
                total = self._count(connection, shape, unfiltered, parameters)
        exact = unfiltered or ends_the_list or total <= self._bound()
        next_cursor = None
        if len(found) > per_page:
            found = found[:per_page]
            keys = [self.columns.sort_keys[key] for key, _ in terms]
            after = [key.json_value(found[-1][f"_k{i}"]) for i, key in enumerate(keys)]
            carried = {name: _query_form(value) for name, value in criteria.items()}
            next_cursor = encode_cursor({"list": list_key, "criteria": carried, "after": after})
        return Page(found, total if exact else self._bound(), exact, next_cursor)

    def _criteria(self, args):
        """What selects and orders the list's items (q, filters, the full sort)."""
        criteria = {name: args[name] for name in ("q", *self.columns.filters) if name in args}
        criteria["sort"] = sort_terms(args.get("sort") or self.columns.default_sort)
        return criteria

    def _read_cursor(self, args, list_key, sent):
        """The cursor's criteria and sort values; a 400 when it is not a cursor
        of this list, or when the request's own criteria contradict it."""
        cursor = decode_cursor(args["cursor"])
        try:
            if cursor["list"] != list_key:
                raise invalid_query(cursor="It belongs to another list.")
            # The criteria travel in their query-string form: the list's own
            # query schema reads them back, as it read them the first time
            # (but `sort`, which a list that takes no ?sort= carries too).
            query = {name: str(value) for name, value in cursor["criteria"].items()}
            carried = self.query_schema.load(query, unknown=EXCLUDE)
            criteria = self._criteria(carried)
            keys = [self.columns.sort_keys[key] for key, _ in criteria["sort"]]
            after = [key.from_json(value) for key, value in zip(keys, cursor["after"], strict=True)]
        except (KeyError, TypeError, ValueError, AttributeError, ValidationError):
            raise invalid_query(cursor="Not a cursor of this list.") from None
        contradicted = [name for name in sent if name in args and _differs(name, sent[name], criteria.get(name))]
        if contradicted:
            contradiction = (
                "The cursor continues a list with other filters, search or sort; send the cursor alone (or with "
                "per_page)."
            )
            raise invalid_query(**dict.fromkeys(contradicted, contradiction))
        return criteria, after

    def _bound(self):
        return current_app.config["LIST_COUNT_BOUND"]

    def _search(self, connection, pattern, parameters):
        """Bind ?q= (folded) and say how the list finds it: "index" when the
        search index looks up its rarest pieces first, "scan" when each row
        the list reads is checked (SQLite; or most rows match)."""
        parameters["pattern"] = pattern
        if connection.dialect.name != "postgresql" or self.columns.search_index is None:
            return "scan"
        pieces = pieces_to_look_up(pattern, shares(connection, self.columns.search_index))
        if not pieces:
            return "scan"
        parameters["pieces"] = list(pieces)
        return "index"

    def _count(self, connection, shape, unfiltered, parameters):
        statement = self._statement("count", *shape, unfiltered)
        [total] = rows(connection, statement, {**parameters, "bound": self._bound()})[0].values()
        return total

    def _past_the_window(self, connection, shape, unfiltered, parameters, offset):
        """A page that starts past the window: an empty list when the list ends
        before it, else a 400 pointing at cursors. Found without reading as far
        as the page: the list is known to end before it when its count ended
        within the bound, when its table has no more rows than the offset, or
        when it has no item past the window. A list longer than the window is
        refused for every page past the window: telling whether this page is
        past its end would mean reading that far."""
        total = self._count(connection, shape, unfiltered, parameters)
        exact = unfiltered or total <= self._bound()
        window = current_app.config["LIST_WINDOW"]
        if exact:
            holds_items = total > offset
        elif offset >= self._table_rows(connection):
            holds_items = False
        else:  # is there an item past the window?
            statement = self._statement("exists", *shape)
            holds_items = connection.execute(statement, {**parameters, "offset": window}).first() is not None
        if holds_items:
            raise invalid_query(
                page=f"Pages reach the first {window:,} items; to go further, follow next_cursor (or the Link "
                "header) with ?cursor=."
            )
        return Page([], total if exact else self._bound(), exact, None)

    def _table_rows(self, connection):
        """How many rows the list's table holds (its counter row), which no list
        of its rows exceeds; infinite for a table without a counter."""
        counted = select(RowCount.n).where(RowCount.table_name == self.model.__tablename__)
        n = connection.execute(counted).scalar()
        return float("inf") if n is None else n

    # --- the statements, built once per shape ---------------------------------

    def _statement(self, kind, filters, search, terms, *shape):
        key = (kind, filters, search, terms, *shape)
        statement = self._statements.get(key)
        if statement is None:
            statement = getattr(self, f"_build_{kind}")(filters, search, terms, *shape)
            # In id order, with no search or filter, the best plan is the same
            # whatever the values bound (the id index, or an owner's few castings).
            if terms[0][0] == "id" and not (filters or search):
                statement = prepared(statement)
            self._statements[key] = statement
        return statement

    def _matching(self, filters, search):
        conditions = [self.columns.filters[name](bindparam(name)) for name in filters]
        if search == "index":
            conditions.append(holds_pieces(self.columns.search))
        if search:
            conditions.append(contains(self.columns.search, bindparam("pattern")))
        return self.rows.where(*conditions)

    def _order(self, terms):
        """The ORDER BY of a sort, as (expression, descending) pairs. Every term
        goes in one direction where the numbers allow it (-x ascending is x
        descending), so that a cursor's condition is one row comparison, which
        an index in that order serves (migration 0003)."""
        direction = terms[0][1]
        order = []
        for key, descending in terms:
            expression = self.columns.sort_keys[key].expression
            if descending != direction and self.columns.sort_keys[key].negatable:
                order.append((-expression, direction))
            else:
                order.append((expression, descending))
        return order

    def _ordered(self, statement, order, search=None):
        if search == "index":
            # The search index finds few rows (search.py): look them up, then
            # sort them. Ordered by an expression that no index serves, so that
            # PostgreSQL cannot walk the list's order instead, hoping to meet
            # matches early (it would read the whole table for a search that
            # matches nothing).
            order = [(_not_by_index(e), descending) for e, descending in order]
        return statement.order_by(*(e.desc() if descending else e.asc() for e, descending in order))

    def _build_count(self, filters, search, terms, unfiltered):
        """The list's total: the table's counter row, or a count that stops at
        the bound. It reads the rows in the page's order, as the page does, so
        the planner walks the same index and stops early; unordered, it may
        build a bitmap of every match first, which grows with the table."""
        if unfiltered:
            return select(RowCount.n).where(RowCount.table_name == self.model.__tablename__)
        matching = self._matching(filters, search).with_only_columns(literal_column("1"), maintain_column_froms=True)
        matching = self._ordered(matching, self._order(terms), search).limit(bindparam("bound") + literal_column("1"))
        return select(func.count()).select_from(matching.subquery())

    def _build_exists(self, filters, search, terms):
        matching = self._matching(filters, search).with_only_columns(literal_column("1"), maintain_column_froms=True)
        return self._ordered(matching, self._order(terms), search).limit(1).offset(bindparam("offset"))

    def _build_page(self, filters, search, terms, after_cursor):
        order = self._order(terms)
        statement = self._matching(filters, search)
        if after_cursor:
            statement = statement.where(_after(order))
        unfiltered = self.whole_table and not (filters or search)
        count = self._build_count(filters, search, terms, unfiltered).scalar_subquery()
        keys = [e.label(f"_k{i}") for i, (e, _) in enumerate(order)]
        if unfiltered or after_cursor:  # the counter row; a cursor's page cannot see the items before it
            statement = statement.add_columns(*keys, count.label("_total"))
            return self._ordered(statement, order, search).limit(bindparam("limit")).offset(bindparam("offset"))
        # A page by number that ends the list (fewer rows than the limit, the
        # page and the one after it) shows how long the list is: the offset
        # plus its rows. PostgreSQL runs a subquery in a CASE only when it
        # reaches it, so the count runs only when the page does not end the list.
        page = statement.add_columns(*keys)
        page = self._ordered(page, order, search).limit(bindparam("limit")).offset(bindparam("offset")).cte("page")
        shown = select(func.count()).select_from(page).scalar_subquery()
        ends_the_list = and_(shown < bindparam("limit"), or_(shown > 0, bindparam("offset") == 0))
        total = case((ends_the_list, bindparam("offset") + shown), else_=count)
        keys = [page.c[f"_k{i}"] for i in range(len(order))]
        ordered = select(page, total.label("_total")).order_by(
            *(key.desc() if descending else key.asc() for key, (_, descending) in zip(keys, order, strict=True))
        )
        return ordered


def _after(order):
    """The rows after the cursor's values k0, k1, ... in this order."""
    values = [bindparam(f"k{i}") for i in range(len(order))]
    directions = {descending for _, descending in order}
    if len(directions) == 1:
        expressions = tuple_(*(e for e, _ in order))
        return expressions < tuple_(*values) if directions.pop() else expressions > tuple_(*values)
    # Mixed directions (two keys that cannot be negated): the same condition spelled out.
    alternatives = []
    for i, (expression, descending) in enumerate(order):
        beyond = expression < values[i] if descending else expression > values[i]
        alternatives.append(and_(*(e == values[j] for j, (e, _) in enumerate(order[:i])), beyond))
    return or_(*alternatives)


def _not_by_index(expression):
    """The same value, as an expression that no index serves."""
    if isinstance(expression.type, String):
        return expression.concat("")
    return expression + 0


def _differs(name, sent, carried):
    if name in ("gender", "q") and carried is not None:  # both match folded
        return fold(sent) != fold(carried)
    return sent != carried


def _query_form(value):
    """A criterion as a query string spells it."""
    if isinstance(value, tuple):
        return sort_text(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


# --- cursors ----------------------------------------------------------------------
#
# A cursor is the list's name, its criteria and the last item's sort keys, as
# JSON, with an HMAC so that a client cannot hand back a cursor the API did not
# make: an edited one is a 400. The key comes from SECRET_KEY, which every
# instance of the service shares (see the README).


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(payload):
    return hmac.new(current_app.extensions["cursor_key"], payload, hashlib.sha256).digest()[:16]


def invalid_query(**messages):
    """A 400 naming query parameters and what is wrong with each, in the shape
    of the query schema's own (errors by parameter, each named in the message)."""
    error = BadRequest()
    error.data = {"messages": {"query": {name: [message] for name, message in messages.items()}}}
    return error


def encode_cursor(content):
    payload = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()
    return f"{_b64(payload)}.{_b64(_mac(payload))}"


def decode_cursor(cursor):
    try:
        payload_text, mac_text = cursor.split(".")
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (ValueError, binascii.Error):
        raise invalid_query(cursor="Malformed.") from None
    if not hmac.compare_digest(mac, _mac(payload)):
        raise invalid_query(cursor="Not one this API made (altered or truncated).")
    try:
        content = json.loads(payload)
    except ValueError:  # pragma: no cover (only a cursor this API signed gets here)
        raise invalid_query(cursor="Malformed.") from None
    if not isinstance(content, dict):  # pragma: no cover
        raise invalid_query(cursor="Malformed.")
    return content


def init_lists(app):
    # A key of its own for cursors, from SECRET_KEY (config.secret_key): never
    # from another setting, or a cursor would be an oracle for that setting.
    app.extensions["cursor_key"] = hmac.new(app.config["SECRET_KEY"].encode(), b"list cursors", hashlib.sha256).digest()
    app.config.setdefault("LIST_WINDOW", WINDOW)
    app.config.setdefault("LIST_COUNT_BOUND", COUNT_BOUND)


def next_link(path, cursor, per_page):
    """The RFC 8288 Link header to the page after this one."""
    return f'<{path}?{urlencode({"cursor": cursor, "per_page": per_page})}>; rel="next"'
