"""api.py: how a request's JSON body is read (400 and 415 before the schema's 422)."""

from models import Actor
from testing import ACTOR, ApiTestCase


class BodyErrorTest(ApiTestCase):
    def test_bodies_that_are_not_json_objects(self):
        actor_id = self.add(Actor, **ACTOR)["id"]
        cases = [  # (kwargs, status, message)
            ({}, 400, "body is required"),
            ({"data": "", "content_type": "application/json"}, 400, "body is required"),
            ({"data": "{not json", "content_type": "application/json"}, 400, "not valid JSON"),
            (
                {"data": '{"age": NaN, "name": "x", "gender": "y"}', "content_type": "application/json"},
                400,
                "not valid JSON",
            ),
            ({"data": '{"age": Infinity}', "content_type": "application/json"}, 400, "not valid JSON"),
            ({"data": b"\xff\xfe{", "content_type": "application/json"}, 400, "not valid JSON"),
            ({"data": "[" * 100000 + "]" * 100000, "content_type": "application/json"}, 400, "not valid JSON"),
            ({"json": [ACTOR]}, 400, "JSON object"),
            ({"json": "Viola"}, 400, "JSON object"),
            ({"data": "null", "content_type": "application/json"}, 400, "JSON object"),
            ({"data": '{"name": "x"}', "content_type": "text/plain"}, 415, "application/json"),
            ({"data": "name=x", "content_type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ]
        for method, path in (("POST", "/actors"), ("PATCH", f"/actors/{actor_id}")):
            for kwargs, status, message in cases:
                with self.subTest(method, kwargs=str(kwargs)[:60]):
                    self.assertError(self.call(method, path, **kwargs), status, message)
        self.assertEqual(self.rows(Actor), [{"id": actor_id, **ACTOR}])
