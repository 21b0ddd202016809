"""row versions and the audit trail

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

`version` on actors and movies: 1 for every row that exists, one more at each
change; ETags carry it and conditional writes compare it. `audit_events`: one
row per successful write, with no foreign key to what it describes.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade():
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("resource", sa.String(length=10), nullable=False),
        sa.Column("resource_id", sa.Integer(), nullable=True),
        sa.Column("movie_id", sa.Integer(), nullable=True),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("before", JSON, nullable=True),
        sa.Column("after", JSON, nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"])
    op.create_index(op.f("ix_audit_events_resource_id_id"), "audit_events", ["resource_id", "id"])
    op.create_index(op.f("ix_audit_events_subject_id"), "audit_events", ["subject", "id"])
    # Plain ALTER TABLE, not batch mode: SQLite adds a column in place, where
    # batch mode would copy the table and lose its row-counting triggers.
    for table in ("actors", "movies"):
        op.add_column(table, sa.Column("version", sa.Integer(), server_default="1", nullable=False))


def downgrade():
    for table in ("actors", "movies"):
        op.drop_column(table, "version")  # SQLite 3.35+ drops a column in place too
    op.drop_index(op.f("ix_audit_events_subject_id"), table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_resource_id_id"), table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_at"), table_name="audit_events")
    op.drop_table("audit_events")
