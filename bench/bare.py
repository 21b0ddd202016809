"""The benchmark's baseline: a bare Flask app, one route returning a constant.
bench.py serves it with the same gunicorn, ./gunicorn.conf.py and workers as
the API, so that the API's ratios against it show the API's own cost per
request (hooks, authentication, the database, serialising), nothing shared."""

from flask import Flask


def create_app():
    app = Flask(__name__)

    @app.get("/")
    def index():
        return {"success": True}

    return app
