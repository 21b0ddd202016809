"""The OpenAPI description and the app agree: every route is described, every
described operation exists, and schemathesis, fuzzing every operation with a
token holding every permission, finds nothing (all its checks, positive and
negative inputs)."""

import datetime
import re
import unittest

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
CONFIG = SchemathesisConfig.from_dict({"auth": {"openapi": {"bearerAuth": {"bearer": TOKEN}}}})
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
