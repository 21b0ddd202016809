"""folded text: search and sort ignoring case and accents, at any table size

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

Searches, sorts by name or title and ?gender= compare text folded (models.fold):
"Zoë", "ZOE" and "zoe" alike, "Søren" and "Soren", "Straße" and "STRASSE".
Each folded value is a generated column (`name_folded`, `gender_folded`,
`title_folded`), computed once per write by the database, so that a row
written by any client (a COPY, a bulk INSERT) is folded too, and no list
folds a row it reads.

The fold must be the same wherever it runs: in the database for the columns,
in Python for ?q= and ?gender= (and for the tests' model of the SPEC). On
SQLite the database's function is Python's `fold`, registered on each
connection (models.py). On PostgreSQL it is `casting_fold` below, written to
do exactly what `fold` does: NFKD, lower case (ICU's root locale, whatever
the server's locale), NFKD again, the marks of the "Combining Diacritical
Marks" blocks removed, then the letters that Unicode does not decompose
(ø, đ, ð, ł, ħ, ŧ, ı, æ, œ, þ, ß) and the final sigma replaced. PostgreSQL's
`unaccent` was not used: its rules file is the server's, differs between
versions, and folds more than letters (quotes, dashes, fractions), so Python
could not follow it; this function and `fold` are written from one recipe,
and test_lists.py compares them on every assigned code point. The folded
columns sort in byte order ("C"), as SQLite compares.

?q= is a substring match, which no B-tree serves. The trigram indexes of
migration 0001 read the posting list of every trigram of a search, and the
common ones (a word every row shares) hold every row: at a million rows a
search for one whole name read 1,250 index pages. In their place, a GIN index
of every piece of one, two and three characters of the folded text
(`casting_grams`): a search looks up only its rarest pieces, which its
statistics name (the index's expression gets them at ANALYZE, which this
migration runs), then checks the whole text on the few rows they lead to
(search.py). One- and two-letter searches use it too, where trigrams could
not.

Cost: PostgreSQL rewrites actors and movies once to add the columns, and
builds the new indexes (tens of seconds per million actors; the tables are
locked meanwhile). An application that predates this migration still writes:
the columns are generated.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Kept equal to models.fold (test_lists.py compares them).
FUNCTIONS = """
CREATE OR REPLACE FUNCTION casting_fold(text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
SELECT replace(replace(replace(replace(translate(
    regexp_replace(
        normalize(lower(normalize($1, NFKD) COLLATE "und-x-icu"), NFKD),
        '[' || U&'\\0300-\\036F\\1AB0-\\1AFF\\1DC0-\\1DFF\\20D0-\\20FF\\FE20-\\FE2F' || ']', '', 'g'),
    'øđðłħŧıς', 'oddlhtiσ'),
    'æ', 'ae'), 'œ', 'oe'), 'þ', 'th'), 'ß', 'ss')
$$;

CREATE OR REPLACE FUNCTION casting_grams(folded text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    pairs text[] := '{}';
    triples text[] := '{}';
BEGIN
    FOR i IN 1 .. length(folded) - 1 LOOP
        pairs[i] := substr(folded, i, 2);
        triples[i] := substr(folded, i, 3);  -- the last one is a pair again: the index keeps one of each
    END LOOP;
    RETURN string_to_array(folded, NULL) || pairs || triples;
END $$;
"""

FOLDED = {"actors": ("name", "gender"), "movies": ("title",)}
SEARCHED = {"actors": "name", "movies": "title"}

# What migrations 0001 and 0003 built on the unfolded columns, dropped before the
# tables are rewritten (so that they are not rebuilt only to be dropped).
OLD_INDEXES = {
    "actors": {
        "ix_actors_name_trgm": "USING gin (name gin_trgm_ops)",
        "ix_actors_name_id": '(lower(name COLLATE "C"), id)',
        "ix_actors_name_negated_id": '(lower(name COLLATE "C"), (-id))',
        "ix_actors_gender_folded": '(lower(gender COLLATE "C"))',
    },
    "movies": {
        "ix_movies_title_trgm": "USING gin (title gin_trgm_ops)",
        "ix_movies_title_id": '(lower(title COLLATE "C"), id)',
        "ix_movies_title_negated_id": '(lower(title COLLATE "C"), (-id))',
    },
}
NEW_INDEXES = {
    "actors": {
        "ix_actors_name_grams": "USING gin (casting_grams(name_folded))",
        "ix_actors_name_id": "(name_folded, id)",
        "ix_actors_name_negated_id": "(name_folded, (-id))",
        "ix_actors_gender_folded": "(gender_folded)",
    },
    "movies": {
        "ix_movies_title_grams": "USING gin (casting_grams(title_folded))",
        "ix_movies_title_id": "(title_folded, id)",
        "ix_movies_title_negated_id": "(title_folded, (-id))",
    },
}


def create_indexes(indexes):
    for table, definitions in indexes.items():
        for name, definition in definitions.items():
            op.execute(f"CREATE INDEX {name} ON {table} {definition}")


def drop_indexes(indexes):
    for definitions in indexes.values():
        for name in definitions:
            op.execute(f"DROP INDEX {name}")


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTIONS)
        drop_indexes(OLD_INDEXES)
        for table, columns in FOLDED.items():  # one rewrite per table
            added = ", ".join(
                f'ADD COLUMN {column}_folded text COLLATE "C" GENERATED ALWAYS AS (casting_fold({column})) STORED '
                "NOT NULL"
                for column in columns
            )
            op.execute(f"ALTER TABLE {table} {added}")
        op.execute("SET LOCAL maintenance_work_mem = '256MB'")  # a GIN index builds much faster in memory
        create_indexes(NEW_INDEXES)
        # The search index's statistics: which pieces are common (search.py reads them).
        op.execute("ANALYZE actors, movies")
    else:
        # SQLite adds a VIRTUAL generated column in place (a STORED one would need the
        # table copied, which would lose its row-counting triggers); its casting_fold
        # is the application's (models.py).
        for table, columns in FOLDED.items():
            for column in columns:
                op.execute(
                    f"ALTER TABLE {table} ADD COLUMN {column}_folded TEXT "
                    f"GENERATED ALWAYS AS (casting_fold({column})) VIRTUAL NOT NULL"
                )


def downgrade():
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        drop_indexes(NEW_INDEXES)
    for table, columns in FOLDED.items():
        for column in columns:
            op.drop_column(table, f"{column}_folded")
    if postgresql:
        op.execute("DROP FUNCTION casting_grams(text), casting_fold(text)")
        create_indexes(OLD_INDEXES)
