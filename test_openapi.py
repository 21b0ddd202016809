"""The OpenAPI description and the app agree: every route is described, every
described operation exists, and schemathesis, fuzzing every operation with a
token holding every permission, finds nothing (all its checks, positive and
negative inputs)."""

import datetime
import os
import re
import unittest
from unittest import mock

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import create_app
from auth import PERMISSIONS
from models import Actor, Casting, Movie, db
from schemas import US_DATE_PATTERN, parse_release_date
from seed import seed
from testing import ISSUER_ON_LOOPBACK, app_config, dispose, prepare_database

app = create_app(app_config())
# The token goes in through the description's own security scheme, so that the
# fuzzer's negative cases (no token, a broken one) are sent as generated.
TOKEN = ISSUER_ON_LOOPBACK.token(PERMISSIONS, exp=2**40)
# Every run sends the same requests, so a red run is red again when replayed;
# FUZZ_SEED=<another number> explores other requests (and replays them).
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "20241129"))
CONFIG = SchemathesisConfig.from_dict({"seed": FUZZ_SEED, "auth": {"openapi": {"bearerAuth": {"bearer": TOKEN}}}})
schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=CONFIG)
DOCUMENTATION_ENDPOINTS = ("api-docs.", "swagger_ui.")  # the description and the page that shows it


def described_operations():
    spec = app.test_client().get("/openapi.json").get_json()
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item if method != "parameters"}


def routed_operations():
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(DOCUMENTATION_ENDPOINTS):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        operations |= {(method, path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return operations


class DescriptionTest(unittest.TestCase):
    def test_every_route_is_described_and_every_described_operation_is_routed(self):
        self.assertEqual(routed_operations(), described_operations())
        self.assertEqual(len(routed_operations()), 17)

    def test_protected_operations_name_their_permission_and_the_bearer_scheme(self):
        spec = app.test_client().get("/openapi.json").get_json()
        self.assertEqual(spec["openapi"], "3.1.0")
        self.assertEqual(spec["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer")
        seen = set()
        for path, item in spec["paths"].items():
            operations = {method: operation for method, operation in item.items() if method != "parameters"}
            for method, operation in operations.items():
                with self.subTest(method, path=path):
                    if path in ("/", "/health"):
                        self.assertNotIn("security", operation)
                        continue
                    permission = operation["x-permission"]
                    seen.add(permission)
                    self.assertIn(f"`{permission}`", operation["description"])
                    self.assertEqual(operation["security"], [{"bearerAuth": []}])
                    self.assertLessEqual({"401", "403"}, set(operation["responses"]))
        self.assertEqual(seen, set(PERMISSIONS))

    def test_the_m_d_yyyy_pattern_is_exactly_the_parser(self):
        pattern = re.compile(US_DATE_PATTERN)
        years = ["0000", "0001", "0004", "0100", "0400", "1900", "2000", "2023", "2024", "9999"]
        for year in years:
            for month in range(0, 14):
                for day in range(0, 33):
                    for text in {f"{month}/{day}/{year}", f"{month:02}/{day:02}/{year}"}:
                        try:
                            parse_release_date(text)
                            accepted = True
                        except Exception:
                            accepted = False
                        self.assertEqual(bool(pattern.search(text)), accepted, text)


def described():
    return app.test_client().get("/openapi.json").get_json()


def resolve(spec, item):
    """An object of the description, its $ref followed."""
    while "$ref" in item:
        section, kind, name = item["$ref"].split("/")[1:]
        item = spec[section][kind][name]
    return item


def operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield method.upper(), path, operation


class ExamplesTest(unittest.TestCase):
    """/docs shows the examples of the description and its "Try it out" sends
    them (Swagger UI takes a property's first example; without one it makes a
    value up, from the pattern of a text field): each must be realistic."""

    def test_every_property_has_an_example_it_accepts(self):
        spec = described()
        for name, component in spec["components"]["schemas"].items():
            for field, prop in component.get("properties", {}).items():
                if "$ref" in prop or prop.get("type") == "array":
                    continue  # shown from the schema it refers to
                with self.subTest(f"{name}.{field}"):
                    self.assertTrue(prop.get("examples"), prop)
                    validator = jsonschema_rs.Draft202012Validator(prop, validate_formats=True)
                    for example in prop["examples"]:
                        self.assertTrue(validator.is_valid(example), example)

    def test_try_it_out_sends_bodies_the_api_accepts(self):
        spec = described()
        client = app.test_client()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        ids = {
            "actor_id": client.get("/actors", headers=headers).get_json()["actors"][0]["id"],
            "movie_id": client.get("/movies", headers=headers).get_json()["movies"][0]["id"],
        }
        tried = 0
        for method, path, operation in operations(spec):
            if "requestBody" not in operation:
                continue
            with self.subTest(method, path=path):
                body_schema = resolve(spec, operation["requestBody"]["content"]["application/json"]["schema"])
                body = {k: p["examples"][0] for k, p in body_schema["properties"].items() if not p.get("readOnly")}
                url = re.sub(r"{(\w+)}", lambda match: str(ids[match[1]]), path)
                response = client.open(url, method=method, json=body, headers=headers)
                successes = {int(status) for status in operation["responses"] if status.startswith("2")}
                self.assertIn(response.status_code, successes, response.get_json())
                tried += 1
        self.assertEqual(tried, 5)  # POST and PATCH of actors and movies, PUT of a casting

    def test_error_examples_are_answers_the_api_gives(self):
        spec = described()
        producer, assistant = (
            {"Authorization": f"Bearer {ISSUER_ON_LOOPBACK.role_token(role)}"}
            for role in ("Executive Producer", "Casting Assistant")
        )
        actor = app.test_client().get("/actors", headers=producer).get_json()["actors"][0]["id"]
        cases = [  # (method, path, how to make the error, status)
            ("GET", "/actors", {"query_string": "per_page=0", "headers": producer}, 400),
            ("GET", "/actors/{actor_id}", {"query_string": "dry_run=1", "headers": producer}, 400),
            ("POST", "/actors", {"data": "{", "content_type": "application/json", "headers": producer}, 400),
            ("GET", "/actors", {}, 401),
            ("POST", "/movies", {"json": {}, "headers": assistant}, 403),
            ("POST", "/actors", {"data": "x" * (2 * 1024 * 1024), "headers": producer}, 413),
            ("POST", "/actors", {"data": "{}", "content_type": "text/plain", "headers": producer}, 415),
            ("PATCH", "/actors/{actor_id}", {"json": {"age": 34.5}, "headers": producer}, 422),
        ]
        for method, path, request, status in cases:
            with self.subTest(method, path=path, status=status):
                response = resolve(spec, spec["paths"][path][method.lower()]["responses"][str(status)])
                url = path.replace("{actor_id}", str(actor))
                answer = app.test_client().open(url, method=method, **request)
                self.assertEqual(answer.status_code, status)
                self.assertEqual(response["content"]["application/json"]["example"], answer.get_json())
        down = create_app(app_config(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none"))  # nothing on port 1
        with self.assertLogs("app", "WARNING"):
            unavailable = down.test_client().get("/actors", headers=producer)
        dispose(down)
        with mock.patch("lists.Listing.page", side_effect=RuntimeError), self.assertLogs("app", "ERROR"):
            failed = app.test_client().get("/actors", headers=producer)
        for answer, status in ((unavailable, "503"), (failed, "default")):
            with self.subTest(status=status):
                example = resolve(spec, spec["paths"]["/actors"]["get"]["responses"][status])
                self.assertEqual(example["content"]["application/json"]["example"], answer.get_json())
        for method, path, operation in operations(spec):
            for status, response in operation["responses"].items():
                if status[0] in "45" or status == "default":
                    with self.subTest(method, path=path, status=status):
                        example = resolve(spec, response)["content"]["application/json"]["example"]
                        self.assertEqual(example["error"], 500 if status == "default" else int(status))
                        self.assertIs(example["success"], False)


@pytest.fixture(scope="module", autouse=True)
def sample_data():
    """Real rows for the ids the fuzzer tries, removed afterwards."""
    prepare_database(app)
    with app.app_context():
        seed()
        db.session.add(Movie(title="Fuzz", release_date=datetime.date(2000, 1, 1)))
        db.session.commit()
    yield
    with app.app_context():
        for model in (Casting, Movie, Actor):
            db.session.execute(db.delete(model))
        db.session.commit()
    dispose(app)


@schema.parametrize()
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_description(case):
    # Whether a request is accepted may depend on more than its shape: a
    # cursor is opaque (only one the API made is valid) and excludes `page`
    # and contradicting filters (400); an If-Match must name the item's
    # current ETag (else 412). No JSON Schema states these, so such requests
    # may be refused though they match the description; every other check
    # still applies to them. test_lists.py and test_conditional.py test both.
    stateful = "cursor" in (case.query or {}) or "If-Match" in (case.headers or {})
    excluded = [positive_data_acceptance] if stateful else []
    case.call_and_validate(excluded_checks=excluded)
