"""?q=: the items whose folded name or title holds the folded search.

A search's cost should follow what it finds, not how common its letters are.
On PostgreSQL each searched column has a GIN index of every piece of one, two
and three characters of its folded text (migration 0005). Looking up every
piece of a search would read, for a piece that every row holds ("bul" among a
million "Bulk ..." names), an entry per row. So a search looks up only its
rarest pieces, by the index's own statistics (PostgreSQL's ANALYZE counts the
most common pieces; any other piece is rarer than all of those), and checks
the whole text on the few rows that hold them all:

- "bulk 3fa9...": three pieces of the hex digits, a handful of rows, whatever
  the table's size;
- "seed actor 777" among "Seed actor N": "777" and " 77";
- "son", which most names hold: no lookup at all; the list is read in its own
  order and each row checked, and the page and its bounded count stop early.

Whichever pieces are chosen, the whole search is checked on each row, so the
choice changes the cost, never the answer. SQLite has no such index: its
searches check every row.
"""

import time
from dataclasses import dataclass, field

from flask import current_app
from sqlalchemy import Boolean, Text, bindparam, func, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

# A piece is at most this long (the index holds pieces of 1 to 3 characters).
PIECE = 3
# At most this many pieces are looked up: each costs a walk of the index.
MOST_PIECES = 4
# Reading one row of the table costs about as much as reading this many entries
# of the index (which packs thousands of row pointers in a page): a piece is
# worth looking up while the rows it rules out cost more than its entries.
ENTRIES_PER_ROW = 1_000
# When more than this share of the rows holds the chosen pieces, the index
# finds too much: reading the list in order and checking each row, which stops
# after the page (and the bounded count after its 1,001 matches), costs less.
SCAN_SHARE = 0.01
# PostgreSQL's guess for a piece that its statistics do not list, when it has
# none at all (array_selfuncs.c: DEFAULT_CONTAIN_SEL).
UNKNOWN_SHARE = 0.005
# Statistics change when PostgreSQL analyzes the table: read again after this.
STATISTICS_SECONDS = 60


class contains(FunctionElement):
    """Whether a text holds another, literally: no character is a wildcard, so
    `%`, `_` and `\\` in a search stand for themselves."""

    type = Boolean()
    inherit_cache = True
    name = "contains"


@compiles(contains)
def _contains(element, compiler, **kw):
    haystack, needle = element.clauses
    return f"instr({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)}) > 0"


@compiles(contains, "postgresql")
def _contains_postgresql(element, compiler, **kw):
    haystack, needle = element.clauses
    return f"strpos({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)}) > 0"


def holds_pieces(folded):
    """The condition the search index serves: the folded text holds every piece
    bound to `pieces`."""
    return func.casting_grams(folded).op("@>")(bindparam("pieces", type_=ARRAY(Text)))


@dataclass(frozen=True)
class Shares:
    """The share of rows that hold each piece, as PostgreSQL's statistics of an
    index's pieces say: the most common ones listed, any other one rarer."""

    listed: dict = field(default_factory=dict)
    unlisted: float = UNKNOWN_SHARE


def pieces_to_look_up(pattern, shares):
    """The pieces of `pattern` (folded) that the index should look up, rarest
    first: () when even the rarest are held by so many rows that reading the
    list in order costs less. `shares` says how many rows hold a piece.

    Rarest first: by the share of rows holding the piece; among pieces the
    statistics do not list (all given one share), by the shares of its two
    shorter pieces ("771" before "000" when "00" is listed as common and "77"
    and "71" are not); then by the piece itself, so that a search always looks
    up the same pieces."""
    size = min(len(pattern), PIECE)
    if size == 0:
        return ()
    share, unlisted = shares.listed.get, shares.unlisted  # called 3 times a piece: no method calls
    ranked = sorted(
        (share(piece, unlisted), share(piece[:-1], unlisted) * share(piece[1:], unlisted), piece)
        for piece in {pattern[i : i + size] for i in range(len(pattern) - size + 1)}
    )
    chosen, holding = [], 1.0  # the share of rows expected to hold every piece chosen
    for piece_share, _, piece in ranked[:MOST_PIECES]:
        if chosen and piece_share >= holding * ENTRIES_PER_ROW:
            break  # its entries would cost more than the rows it rules out
        chosen.append(piece)
        holding *= piece_share
    return tuple(chosen) if holding < SCAN_SHARE else ()


def shares(connection, index):
    """The statistics of `index`'s pieces, read from pg_stats at most once a
    minute per process (they change when autovacuum analyzes the table)."""
    cache = current_app.extensions.setdefault("search_statistics", {})
    now = time.monotonic()
    cached = cache.get(index)
    if cached is None or cached[0] < now:
        cached = (now + STATISTICS_SECONDS, _read_shares(connection, index))
        cache[index] = cached
    return cached[1]


_STATISTICS = text(
    "SELECT most_common_elems::text::text[] AS pieces, most_common_elem_freqs AS shares FROM pg_stats "
    "WHERE schemaname = current_schema() AND tablename = :index"
)


def _read_shares(connection, index):
    row = connection.execute(_STATISTICS, {"index": index}).first()
    if row is None or row.pieces is None:  # not analyzed yet
        return Shares()
    # The shares of the pieces, then the least and the greatest of them (and of nulls).
    listed = dict(zip(row.pieces, row.shares, strict=False))
    least = row.shares[len(row.pieces)]
    # As PostgreSQL estimates a piece it does not list (array_selfuncs.c).
    return Shares(listed, min(UNKNOWN_SHARE, least / 2))
