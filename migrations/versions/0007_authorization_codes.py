"""the local issuer's authorization codes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

`authorization_codes`: the codes of the local issuer's sign-in from /docs
(local_signin.py), each until it is redeemed (once) or expires (within a
minute). A deploy with an issuer configured leaves the table empty.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "authorization_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=40), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("code_challenge", sa.String(length=43), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_authorization_codes")),
    )


def downgrade():
    op.drop_table("authorization_codes")
