"""the audit events that concern an actor or a movie

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

/audit?actor_id= and ?movie_id= list the events that concern an actor or a
movie: its own (resource_id) and its castings' (actor_id, movie_id). A
partial index of that id and the event's id, over the events that can concern
one (a movie's own events concern no actor), serves each newest first: a
page reads its own rows, however long the trail. PostgreSQL only, as the
other expression indexes: SQLite is for development.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# models.concerned(), as SQL: the concerned id, and the events it is kept for.
CONCERNED = {
    "actor_id": ("coalesce(actor_id, resource_id)", "resource <> 'movies'"),
    "movie_id": ("coalesce(movie_id, resource_id)", "resource <> 'actors'"),
}


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        for name, (expression, condition) in CONCERNED.items():
            op.create_index(
                f"ix_audit_events_concerned_{name}",
                "audit_events",
                [sa.text(expression), sa.text("id")],
                postgresql_where=sa.text(condition),
            )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for name in CONCERNED:
            op.drop_index(f"ix_audit_events_concerned_{name}", table_name="audit_events")
