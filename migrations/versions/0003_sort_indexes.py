"""indexes for sorted and filtered lists and cursors

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Lists sort by a key in either direction with ties broken by id, and cursors
continue after a (key, id) pair. Without an index in that order PostgreSQL
must read and sort every matching row for each page: the cost grows with the
table. With one, a page reads its own rows and stops. A B-tree reads both
ways, so (key, id) serves `key`, `-key,-id` and (key, -id) serves `-key` and
`key,-id`. Text keys are indexed as lists compare them: lower case, byte
order. ?gender= compares folded genders: an index of them finds a gender (or
its absence) without a scan, and gives the planner its statistics.
PostgreSQL only, as the trigram indexes: SQLite is for development.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SORT_KEYS = {  # table -> {key: its indexed expression}
    "actors": {"name": 'lower(name COLLATE "C")', "age": "age"},
    "movies": {"title": 'lower(title COLLATE "C")', "release_date": "release_date"},
}


def indexes():
    for table, keys in SORT_KEYS.items():
        for key, expression in keys.items():
            yield table, f"ix_{table}_{key}_id", [sa.text(expression), sa.text("id")]
            yield table, f"ix_{table}_{key}_negated_id", [sa.text(expression), sa.text("(-id)")]
    yield "actors", "ix_actors_gender_folded", [sa.text('lower(gender COLLATE "C")')]


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        for table, name, expressions in indexes():
            op.create_index(name, table, expressions)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for table, name, _ in indexes():
            op.drop_index(name, table_name=table)
