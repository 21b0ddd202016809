"""Sample data: a dozen actors, several movies and their castings.

`flask seed` (or `python manage.py seed`) loads it. Running it again adds
nothing: each actor, movie and casting is added only when it is not there.
"""

from datetime import date

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from models import Actor, Casting, Movie, db

ACTORS = [
    ("Viola Davis", 61, "Female"),
    ("Denzel Washington", 71, "Male"),
    ("Tilda Swinton", 65, "Female"),
    ("Mahershala Ali", 52, "Male"),
    ("Cate Blanchett", 57, "Female"),
    ("Song Kang-ho", 59, "Male"),
    ("Michelle Yeoh", 64, "Female"),
    ("Daniel Kaluuya", 37, "Male"),
    ("Saoirse Ronan", 32, "Female"),
    ("Riz Ahmed", 44, "Male"),
    ("Lupita Nyong'o", 43, "Female"),
    ("Elliot Page", 39, "Non-binary"),
]

MOVIES = [
    ("The Long Rehearsal", date(2019, 3, 8)),
    ("Harbour Lights", date(2021, 10, 15)),
    ("A Quiet Frontier", date(2023, 6, 2)),
    ("Paper Kingdoms", date(2024, 11, 22)),
    ("The Last Matinee", date(2026, 4, 17)),
]

CASTINGS = [  # (movie title, actor name, character)
    ("The Long Rehearsal", "Viola Davis", "Director Ruth Bell"),
    ("The Long Rehearsal", "Riz Ahmed", "Samir"),
    ("The Long Rehearsal", "Saoirse Ronan", None),
    ("Harbour Lights", "Denzel Washington", "Captain Hale"),
    ("Harbour Lights", "Michelle Yeoh", "Mei Lin"),
    ("Harbour Lights", "Daniel Kaluuya", None),
    ("A Quiet Frontier", "Tilda Swinton", "The Surveyor"),
    ("A Quiet Frontier", "Mahershala Ali", "Elias"),
    ("Paper Kingdoms", "Song Kang-ho", "Mr. Park"),
    ("Paper Kingdoms", "Cate Blanchett", "Lady Ashford"),
    ("Paper Kingdoms", "Lupita Nyong'o", "Ada"),
    ("The Last Matinee", "Elliot Page", "Projectionist"),
    ("The Last Matinee", "Viola Davis", None),
]


def _get_or_add(model, match, **values):
    row = db.session.scalars(select(model).filter_by(**match).limit(1)).first()
    if row is None:
        row = model(**match, **values)
        db.session.add(row)
        db.session.flush()
        return row, True
    return row, False


def seed():
    """Add the sample rows that are missing; return how many were added."""
    added = 0
    actors = {}
    for name, age, gender in ACTORS:
        actors[name], new = _get_or_add(Actor, {"name": name}, age=age, gender=gender)
        added += new
    movies = {}
    for title, release_date in MOVIES:
        movies[title], new = _get_or_add(Movie, {"title": title}, release_date=release_date)
        added += new
    for title, name, character in CASTINGS:
        match = {"movie_id": movies[title].id, "actor_id": actors[name].id}
        added += _get_or_add(Casting, match, character=character)[1]
    db.session.commit()
    return added


@click.command("seed")
@click.option("--if-empty", is_flag=True, help="Only when there are no actors and no movies at all.")
@with_appcontext
def seed_command(if_empty):
    """Load the sample actors, movies and castings (adds only what is missing)."""
    if if_empty and (db.session.scalar(select(Actor.id).limit(1)) or db.session.scalar(select(Movie.id).limit(1))):
        click.echo("seed: the database holds data already; nothing added")
        return
    added = seed()
    click.echo(f"seed: {added} rows added" if added else "seed: the sample data is already there")
