"""flask-smorest behind one module: how the routes read their input, write
their answers and describe both in the OpenAPI description (/openapi.json,
/docs). A flask-smorest, apispec or webargs upgrade touches this module only;
the routes (resources.py) use its decorators and flask-smorest's public
Blueprint API.

- `BodyParser`: a JSON body with the SPEC's statuses (400, 415), before the
  schema's validation (422).
- `ApiBlueprint`: flask-smorest's Blueprint, answers dumped by a dumper
  compiled from the schemas (schemas.dumper).
- `protected`, `json_body`, `list_query`, `documented_errors`: what an
  operation needs and answers, in the code and in its description at once.
- `sign_in`: how /docs' Authorize dialog gets a token (Auth0, or the local
  issuer's pages in local_signin.py), in the description and in Swagger UI's
  settings; with neither, bearer tokens only.
"""

import functools
import http
import json
from typing import NamedTuple
from urllib.parse import urljoin

from apispec import BasePlugin
from apispec.ext.marshmallow import MarshmallowPlugin, resolve_schema_cls
from flask import Response, current_app, jsonify, request
from flask_smorest import Api, Blueprint
from flask_smorest.utils import (
    resolve_schema_instance,
    set_status_and_headers_in_response,
    unpack_tuple_response,
)
from flask_swagger_ui import get_swaggerui_blueprint
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import BadRequest, UnsupportedMediaType
from werkzeug.routing import BaseConverter

import etags
import local_signin
import schemas
from auth import LocalIssuer, requires_auth
from errors import MESSAGES
from models import MAX_ID


def init_api(app):
    """The Api (its description at /openapi.json), the `id` converter for
    paths, the security schemes, and Swagger UI at /docs from the package's own
    files (offline). The routes' blueprints are registered by the factory."""
    app.url_map.converters["id"] = IdConverter
    signin = sign_in(app)
    api = CastingApi(
        app,
        spec_kwargs={
            "marshmallow_plugin": SchemaPlugin(),
            "extra_plugins": [SignInAlternative()] if signin else [],
            "info": {"description": getting_a_token(app, signin)},
        },
    )
    api.register_converter(IdConverter, lambda converter: {"type": "integer", "minimum": 0})
    api.spec.components.security_scheme(BEARER, {**BEARER_SCHEME, "description": bearer_description(app, signin)})
    if signin:
        api.spec.components.security_scheme(SIGN_IN, sign_in_scheme(signin))
        # flask-smorest's /openapi.json, with the sign-in's URLs in full.
        app.view_functions[DESCRIPTION_ENDPOINT] = functools.partial(description, api)
    _error_examples(api.spec.components.responses_lazy)
    # The lists carry their pages in the body, not in flask-smorest's
    # X-Pagination header, whose schema would only puzzle a reader of /docs.
    api.spec.components.headers_lazy.pop("PAGINATION", None)
    api.spec.components.schemas.pop("PaginationMetadata", None)
    app.register_blueprint(docs_blueprint(app, signin))
    return api


class CastingApi(Api):
    ERROR_SCHEMA = schemas.ErrorSchema  # the error envelope, in the description too


def _error_examples(responses):
    """flask-smorest describes an error response per status (and a default),
    in the error envelope: each gets an example of its own status, or Swagger
    UI would show a made-up `"error": 0`."""
    for status in http.HTTPStatus:
        if status >= 400 and status.name in responses:
            responses[status.name]["content"]["application/json"]["example"] = error_example(status)
    responses["BAD_REQUEST"]["description"] = ERROR_DESCRIPTIONS[400]
    default = responses["DEFAULT_ERROR"]
    default["description"] = "Any other error"
    default["content"]["application/json"]["example"] = error_example(500)


class IdConverter(BaseConverter):
    """A resource id in a path. Any run of digits matches, so an id too large for
    the database is a 404 from the handler (after authentication), whatever the
    method; Werkzeug's `int` would refuse it and the router would answer 405.
    The id stays the number sent, so that the 404 names it."""

    regex = r"[0-9]+"

    def to_python(self, value):
        try:
            return int(value)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits())
            return HugeId(value)

    def to_url(self, value):
        return str(value)


class HugeId(int):
    """An id of more digits than Python converts: past any row's, and printed
    as it was sent."""

    def __new__(cls, digits):
        huge = super().__new__(cls, MAX_ID + 1)
        huge.digits = digits
        return huge

    def __str__(self):
        return self.digits


def _not_json(constant):
    raise ValueError(f"{constant} is not JSON")


class BodyParser(FlaskParser):
    """Reads a JSON body with the README's statuses: no body 400, not JSON 415,
    malformed JSON (NaN and Infinity included) or not an object 400. A query
    string's unknown parameters are the schema's to refuse (webargs would drop
    them): schemas.QuerySchema names them."""

    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": None, "querystring": None}

    def load_json(self, req, schema):
        body = req.get_data(cache=True)
        if not body:
            if getattr(schema, "body_optional", False):
                return {}
            raise BadRequest("a JSON body is required")
        if not req.is_json:
            raise UnsupportedMediaType("the body must be sent as application/json")
        try:
            data = json.loads(body, parse_constant=_not_json)
        except (ValueError, RecursionError):
            raise BadRequest("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        return data


class ApiBlueprint(Blueprint):
    """flask-smorest's Blueprint, its descriptions unchanged, with less work per
    request (README: "What each change bought")."""

    ARGUMENTS_PARSER = BodyParser()

    # flask-smorest's `doc` and `alt_response` describe an operation by wrapping
    # its view in a function that only passes the call on (7 us a request for
    # three of them); these keep the description and drop the wrapper.
    @staticmethod
    def doc(**kwargs):
        return _described_only(Blueprint.doc(**kwargs))

    def alt_response(self, *args, **kwargs):
        return _described_only(super().alt_response(*args, **kwargs))

    def response(self, status_code, schema=None, **kwargs):
        """flask-smorest's `response`, dumped by the schema's compiled dumper
        (schemas.dumper) instead of marshmallow's `dump`. The description is
        flask-smorest's own: its decorator's function, never called, lends the
        wrapper its attributes (functools.wraps), as its decorators do for
        each other."""
        describe = super().response(status_code, schema, **kwargs)
        dump = schemas.dumper(resolve_schema_instance(schema))

        def decorator(view):
            @functools.wraps(describe(view))
            def wrapper(*args, **kwargs):
                body, status, headers = unpack_tuple_response(view(*args, **kwargs))
                if not isinstance(body, Response):
                    body = jsonify(dump(body))
                    body.status_code = status_code
                set_status_and_headers_in_response(body, status, headers)
                return body

            return wrapper

        return decorator


def _described_only(decorator):
    """The view itself, given the attributes in which flask-smorest's decorator
    describes it (its decorators hand them on to each other the same way, by
    functools.wraps), but not the link to the view that would make it its own
    wrapper."""

    def describe(view):
        described = decorator(view)
        vars(view).update((name, value) for name, value in vars(described).items() if name != "__wrapped__")
        return view

    return describe


class SchemaPlugin(MarshmallowPlugin):
    """Adds a schema's `openapi_extra` (e.g. PATCH's minProperties) to its
    description: rules marshmallow checks in code, stated in the description."""

    def schema_helper(self, name, _, schema=None, **kwargs):
        described = super().schema_helper(name, _, schema=schema, **kwargs)
        return {**described, **getattr(resolve_schema_cls(schema), "openapi_extra", {})}


# --- signing in from /docs ----------------------------------------------------

BEARER = "bearerAuth"
BEARER_SCHEME = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
SIGN_IN = "oauth2"


class SignIn(NamedTuple):
    """How /docs' Authorize dialog signs a person in: the authorization code
    flow with PKCE, at an issuer's endpoints, for the API's audience."""

    issuer: str  # in words, for the description
    authorization_url: str
    token_url: str
    client_id: str
    audience: str


def sign_in(app):
    """The sign-in of /docs, or None (bearer tokens only): the local issuer's
    own endpoints while it is in use; Auth0's with AUTH0_DOMAIN and
    AUTH0_CLIENT_ID (a Single Page Application) set. Another issuer
    (AUTH0_ISSUER and JWKS_URL without AUTH0_DOMAIN) gets bearer only: where
    its authorization endpoint is, and whether it takes `audience`, is not
    known without asking it (OpenID discovery, a network call at start)."""
    verifier = app.extensions["auth"]
    if isinstance(verifier.keys, LocalIssuer):
        urls = (local_signin.AUTHORIZE_URL, local_signin.TOKEN_URL)
        return SignIn("this server (the local issuer)", *urls, local_signin.CLIENT_ID, verifier.audience)
    domain, client_id = app.config.get("AUTH0_DOMAIN"), app.config.get("AUTH0_CLIENT_ID")
    if domain and client_id:
        base = f"https://{domain}"
        return SignIn(f"Auth0 ({domain})", f"{base}/authorize", f"{base}/oauth/token", client_id, verifier.audience)
    return None


def sign_in_scheme(signin):
    """The OpenAPI security scheme of the sign-in. No scopes: Auth0's RBAC puts
    the role's permissions in the access token, and the local issuer does too."""
    flow = {"authorizationUrl": signin.authorization_url, "tokenUrl": signin.token_url, "scopes": {}}
    return {
        "type": "oauth2",
        "description": f"Sign in with {signin.issuer}: the authorization code flow with PKCE (S256), "
        f"for the audience `{signin.audience}`.",
        "flows": {"authorizationCode": flow},
    }


DESCRIPTION_ENDPOINT = "api-docs.openapi_json"


def description(api):
    """The OpenAPI description, the sign-in's URLs absolute: the local
    issuer's are this server's, on the origin the request reached (OpenAPI's
    schema wants URLs there, and a client reading the description elsewhere
    than /docs could not tell what a bare path is relative to)."""
    spec = api.spec.to_dict()
    components = spec["components"]  # a new dict, but its sections are apispec's own: replaced, never changed
    scheme = components["securitySchemes"][SIGN_IN]
    flow = scheme["flows"]["authorizationCode"]
    urls = {name: urljoin(request.host_url, flow[name]) for name in ("authorizationUrl", "tokenUrl")}
    scheme = {**scheme, "flows": {"authorizationCode": {**flow, **urls}}}
    spec["components"] = {**components, "securitySchemes": {**components["securitySchemes"], SIGN_IN: scheme}}
    return current_app.response_class(json.dumps(spec, indent=2), mimetype="application/json")


class SignInAlternative(BasePlugin):
    """Every operation that takes a bearer token takes one from the sign-in
    too: its security requirements list both, either will do."""

    def operation_helper(self, path=None, operations=None, **kwargs):
        for operation in (operations or {}).values():
            requirements = operation.get("security", [])
            if {BEARER: []} in requirements:
                operation["security"] = [*requirements, {SIGN_IN: []}]  # a new list: the view's doc stays as it was


def getting_a_token(app, signin):
    """The description's introduction: which token each operation needs, and
    how to get one in this configuration (Markdown, shown atop /docs)."""
    needs = (
        "Every operation but `GET /` and `GET /health` needs a bearer token (a JWT) that carries the "
        "operation's permission; each operation names it. Press **Authorize** to give one; it is kept "
        "across reloads of this page."
    )
    verifier = app.extensions["auth"]
    if isinstance(verifier.keys, LocalIssuer):
        how = (
            "This server is its own token issuer (no Auth0 tenant is configured), so signing in works "
            "offline: under `oauth2`, press *Authorize* and choose a role (Casting Assistant, Casting "
            "Director or Executive Producer). Or run `flask token ROLE` in the project folder (e.g. "
            "`.venv/bin/flask token casting-director`) and paste the token under `bearerAuth`. With an Auth0 "
            "tenant configured (`AUTH0_DOMAIN`), tokens come from Auth0 instead."
        )
    elif signin:
        how = (
            f"Tokens come from {signin.issuer}: under `oauth2`, press *Authorize* and sign in on Auth0's "
            "page; the token carries your roles' permissions. Or paste an Auth0 access token for the "
            f"audience `{signin.audience}` under `bearerAuth`. (`flask token ROLE` gives tokens only "
            "when no issuer is configured: the local issuer.)"
        )
    else:
        how = (
            f"Tokens come from {issuer_in_words(app)} for the audience `{verifier.audience}`: get an access "
            "token there (on Auth0, an application's login with that `audience`, or the API's *Test* tab) and paste it "
            "under `bearerAuth`. Signing in from this page needs an Auth0 tenant and a Single Page "
            "Application (`AUTH0_DOMAIN` and `AUTH0_CLIENT_ID`). (`flask token ROLE` gives tokens only "
            "when no issuer is configured: the local issuer.)"
        )
    return f"{needs}\n\n**Getting a token.** {how}"


def bearer_description(app, signin):
    verifier = app.extensions["auth"]
    if isinstance(verifier.keys, LocalIssuer):
        return "A token of this server's local issuer: `flask token ROLE` prints one, or sign in under `oauth2`."
    where = "; signing in under `oauth2` gets one" if signin else ""
    source = issuer_in_words(app)
    return f"An access token of {source} for the audience `{verifier.audience}` (not `flask token ROLE`){where}."


def issuer_in_words(app):
    domain = app.config.get("AUTH0_DOMAIN")
    return f"Auth0 ({domain})" if domain else f"the issuer `{app.extensions['auth'].issuer}`"


def docs_blueprint(app, signin):
    """Swagger UI at /docs, from the package's own files (offline), its
    redirect page for signing in at /docs/oauth2-redirect.html. The token is
    kept across reloads; no "Explore" bar (this page shows one description)."""
    config = {"app_name": app.config["API_TITLE"], "persistAuthorization": True, "layout": "BaseLayout"}
    oauth = None
    if signin:
        oauth = {
            "clientId": signin.client_id,
            "usePkceWithAuthorizationCodeGrant": True,
            "additionalQueryStringParams": {"audience": signin.audience},
        }
    return get_swaggerui_blueprint(DOCS_URL, "/openapi.json", config=config, oauth_config=oauth)


DOCS_URL = "/docs"


# What /docs shows for an error of each status: an answer the API gives.
ERROR_EXAMPLES = {
    400: {
        "message": "invalid query parameters: per_page: Must be greater than or equal to 1 and less than or "
        "equal to 100.",
        "errors": {"per_page": ["Must be greater than or equal to 1 and less than or equal to 100."]},
    },
    401: {"message": "authorization header is missing", "code": "authorization_header_missing"},
    412: {"message": etags.PRECONDITION_FAILED},
    413: {"message": "the body is larger than 1048576 bytes"},
    415: {"message": "the body must be sent as application/json"},
    422: {"message": "invalid fields: age: Not a whole number.", "errors": {"age": ["Not a whole number."]}},
    503: {"message": "the database is unavailable"},
}


ERROR_DESCRIPTIONS = {
    400: "A query parameter that is malformed, out of range, or that the operation does not take (the message "
    "names it, and the parameter meant for a near miss: `min_age`, did you mean `age_min`?); or a body that is not "
    "a JSON object.",
}
UNKNOWN_QUERY_PARAMETER = {
    "message": "invalid query parameters: dry_run: Unknown parameter: this operation takes no query parameters.",
    "errors": {"dry_run": ["Unknown parameter: this operation takes no query parameters."]},
}


def error_example(status, **fields):
    """An error envelope of this status, for the OpenAPI description."""
    message = MESSAGES.get(status) or http.HTTPStatus(status).phrase.lower()
    return {"success": False, "error": int(status), "message": message, **(fields or ERROR_EXAMPLES.get(status, {}))}


def protected(blp, permission):
    """requires_auth(permission) (with the rate limits), and the same facts in the
    OpenAPI description: the bearer scheme (and the sign-in's), the permission (in `x-permission`
    and in words) and the 401, 403, 429 and 503 (no keys from the issuer) answers."""

    def decorator(view):
        documented = blp.doc(
            security=[{BEARER: []}],
            description=f"Needs a bearer token with the `{permission}` permission.",
            **{"x-permission": permission},
        )(view)
        forbidden = error_example(403, message=f"permission '{permission}' is required")
        documented = documented_errors(blp, 401, 403, 429, 503, examples={403: forbidden})(documented)
        return requires_auth(permission)(documented)

    return decorator


def documented_errors(blp, *statuses, examples=None):
    """Document error answers of an operation, each in the error envelope, with
    an example (`examples` by status, else error_example's)."""

    def decorator(view):
        for status in statuses:
            example = (examples or {}).get(status) or error_example(status)
            description = ERROR_DESCRIPTIONS.get(status)
            view = blp.alt_response(status, schema=schemas.ErrorSchema, description=description, example=example)(view)
        return view

    return decorator


def json_body(blp, schema, **kwargs):
    """Validate the JSON body with `schema` (422), after BodyParser's checks."""

    def decorator(view):
        # An instance, not the class: webargs would build a schema per request.
        not_json = error_example(400, message="the body is not valid JSON")
        return documented_errors(blp, 400, 413, 415, examples={400: not_json})(blp.arguments(schema(), **kwargs)(view))

    return decorator


def list_query(blp, schema):
    """A list's query parameters (pages, cursor, search, filters, sort), malformed or unknown ones a 400."""
    return blp.arguments(schema(), location="query", error_status_code=400)


def no_query(blp, body=False):
    """An operation that takes no query parameters: any is a 400 (a `?dry_run=1`
    on a DELETE must not delete), as the parser words it for any query schema.
    A request without a query string, nearly every one, costs a check of
    `request.args` (webargs' parse of an empty query measured 7 us). With a
    `body` (json_body), the description's 400 example stays the body's
    (flask-smorest would merge two examples into one)."""
    schema = schemas.NoQuerySchema()

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if request.args:
                ApiBlueprint.ARGUMENTS_PARSER.parse(schema, location="query", error_status_code=400)  # raises
            return view(*args, **kwargs)

        if body:
            return wrapper
        return documented_errors(blp, 400, examples={400: error_example(400, **UNKNOWN_QUERY_PARAMETER)})(wrapper)

    return decorator


NEXT_LINK_HEADER = {
    "description": 'RFC 8288 `<path?cursor=...&per_page=k>; rel="next"`, when more items follow.',
    "schema": {"type": "string"},
}
