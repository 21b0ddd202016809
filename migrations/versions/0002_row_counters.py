"""row counters: exact totals without counting the table

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

`count(*)` reads every row, so the total of GET /actors grew with the table.
A counter row per table, kept by triggers in the same transaction as the
change, gives the exact total in one index lookup. Statement-level triggers
on PostgreSQL (one update per INSERT, DELETE or COPY statement, via transition
tables); row-level on SQLite, which has no others.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("actors", "movies")

POSTGRESQL = """
CREATE OR REPLACE FUNCTION row_counts_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE row_counts SET n = n + (SELECT count(*) FROM changed_rows) WHERE table_name = TG_TABLE_NAME;
  RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION row_counts_subtract() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE row_counts SET n = n - (SELECT count(*) FROM changed_rows) WHERE table_name = TG_TABLE_NAME;
  RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION row_counts_reset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE row_counts SET n = 0 WHERE table_name = TG_TABLE_NAME;
  RETURN NULL;
END $$;
"""


def upgrade():
    op.create_table(
        "row_counts",
        sa.Column("table_name", sa.String(length=20), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("table_name", name=op.f("pk_row_counts")),
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.execute(POSTGRESQL)
    for table in TABLES:
        if postgresql:
            op.execute(f"LOCK TABLE {table} IN SHARE MODE")  # no write between the count and the triggers
            op.execute(
                f"CREATE TRIGGER {table}_count_insert AFTER INSERT ON {table} REFERENCING NEW TABLE AS changed_rows "
                "FOR EACH STATEMENT EXECUTE FUNCTION row_counts_add()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_count_delete AFTER DELETE ON {table} REFERENCING OLD TABLE AS changed_rows "
                "FOR EACH STATEMENT EXECUTE FUNCTION row_counts_subtract()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_count_truncate AFTER TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION row_counts_reset()"
            )
        else:
            op.execute(
                f"CREATE TRIGGER {table}_count_insert AFTER INSERT ON {table} BEGIN "
                f"UPDATE row_counts SET n = n + 1 WHERE table_name = '{table}'; END"
            )
            op.execute(
                f"CREATE TRIGGER {table}_count_delete AFTER DELETE ON {table} BEGIN "
                f"UPDATE row_counts SET n = n - 1 WHERE table_name = '{table}'; END"
            )
        op.execute(f"INSERT INTO row_counts (table_name, n) SELECT '{table}', count(*) FROM {table}")


def downgrade():
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in TABLES:
        for event in ("insert", "delete") + (("truncate",) if postgresql else ()):
            op.execute(f"DROP TRIGGER {table}_count_{event}" + (f" ON {table}" if postgresql else ""))
    if postgresql:
        op.execute("DROP FUNCTION row_counts_add(), row_counts_subtract(), row_counts_reset()")
    op.drop_table("row_counts")
