"""`python manage.py db upgrade`, `python manage.py seed`, `python manage.py token ROLE`:
the commands of the project's first drafts (from Flask-Script, which no longer
runs on Flask 2+), as a FlaskGroup over the same app as `flask` (README: Command
line)."""

from flask.cli import FlaskGroup

from app import create_app

cli = FlaskGroup(create_app=create_app)

if __name__ == "__main__":
    cli()
