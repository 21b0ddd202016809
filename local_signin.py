"""Signing in from /docs with the local issuer: the OAuth 2.0 authorization
code flow with PKCE (RFC 6749, RFC 7636), offline, against the app itself.

Swagger UI's Authorize dialog opens `GET /local-issuer/authorize`, a page with
one button per role (a plain form: no JavaScript). Choosing one posts the
request back, and the browser is sent (303) to /docs' redirect page with a
code; Swagger UI exchanges it, with its PKCE verifier, at
`POST /local-issuer/oauth/token` for the token `flask token ROLE` prints.

The rules of an authorization server hold:

- the redirect URI is exactly this origin's /docs/oauth2-redirect.html, as the
  request reached the app (scheme, host and port), or the answer is a 400 page
  and no redirect: the page never sends a code anywhere else;
- PKCE with S256 only, `response_type=code` and a `client_id` are required;
- a code is good once, within CODE_LIFETIME seconds, for the redirect URI,
  client and challenge it was issued to. Codes are kept in the database (their
  SHA-256), so that whichever worker or instance serves the exchange redeems
  it, and deleted as they are redeemed.

No CSRF token: there is no session and nothing to steal. Anyone who can reach
the page can get a token of any role (that is what the local issuer is for,
like `flask token`), and a code posted from another site goes to this
origin's redirect page, where it is useless without the verifier, which only
the Swagger UI that asked holds. The page cannot be framed (hooks.py) and its
Content-Security-Policy allows no script and no form target but this origin.

The blueprint is registered only while the local issuer is in use: with an
issuer configured these paths do not exist (404).
"""

import base64
import hashlib
import hmac
import re
import secrets
import time
from urllib.parse import urlencode

from flask import Blueprint, current_app, jsonify, redirect, render_template_string, request, url_for
from sqlalchemy import delete, insert

from auth import ROLES, LocalIssuer
from database import connect
from models import AuthorizationCode

# The client id /docs' Swagger UI sends. Any client id is accepted (there are no
# registered clients): the redirect URI, fixed to /docs' page, is what a code is for.
CLIENT_ID = "casting-agency-docs"
AUTHORIZE_URL = "/local-issuer/authorize"
TOKEN_URL = "/local-issuer/oauth/token"  # noqa: S105 (a path, not a secret)
CODE_LIFETIME = 60  # seconds
TOKEN_LIFETIME = 86400  # seconds, as `flask token` gives by default

AUTHORIZE_PARAMETERS = ("response_type", "client_id", "redirect_uri", "code_challenge", "code_challenge_method")
OPTIONAL_PARAMETERS = ("state", "audience")
TOKEN_PARAMETERS = ("grant_type", "code", "redirect_uri", "client_id", "code_verifier")
CLIENT_ID_FORM = re.compile(r"[\x20-\x7e]{1,255}")  # RFC 6749 appendix A.1, at most the column's length
S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # BASE64URL(SHA-256(verifier)), unpadded
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 section 4.1

# The pages allow no script, no resource from elsewhere, and no form target but this origin.
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

blueprint = Blueprint("local_signin", __name__, url_prefix="/local-issuer")


def init_local_signin(app):
    """The sign-in endpoints, only while the local issuer is in use."""
    if isinstance(app.extensions["auth"].keys, LocalIssuer):
        app.register_blueprint(blueprint)


def now():
    return time.time()


class Refused(Exception):
    """An authorization request answered with a 400 page, and no redirect."""


@blueprint.errorhandler(Refused)
def refused(error):
    return page(REFUSED_PAGE, 400, message=str(error))


@blueprint.get("/authorize")
def authorize():
    """The page that asks which role to sign in as."""
    parameters = authorization_request(request.args)
    return page(CHOOSE_PAGE, 200, parameters=parameters, roles=ROLES, redirect_uri=parameters["redirect_uri"])


@blueprint.post("/authorize")
def choose():
    """A role chosen: a code for it, sent to the redirect URI with the request's state."""
    parameters = authorization_request(request.form)
    role = request.form.get("role")
    if role not in ROLES:
        raise Refused("choose one of the roles: " + ", ".join(ROLES))
    code = secrets.token_urlsafe(32)
    with connect() as connection:
        # Codes left unredeemed go here: the table holds at most a minute of them.
        connection.execute(delete(AuthorizationCode).where(AuthorizationCode.expires_at <= now()))
        connection.execute(
            insert(AuthorizationCode).values(
                code_hash=digest(code),
                role=role,
                client_id=parameters["client_id"],
                redirect_uri=parameters["redirect_uri"],
                code_challenge=parameters["code_challenge"],
                expires_at=int(now()) + CODE_LIFETIME,
            )
        )
    answer = {"code": code, **({"state": parameters["state"]} if "state" in parameters else {})}
    return redirect(f"{parameters['redirect_uri']}?{urlencode(answer)}", 303)


def authorization_request(values):
    """The parameters of an authorization request (from the query, or the
    form the page posts back), checked. Refused, and no redirect, when the
    redirect URI is not /docs' own; refused too for any other fault (a page
    for the person, rather than an error sent to the client)."""
    names = AUTHORIZE_PARAMETERS + OPTIONAL_PARAMETERS
    for name in names:
        if len(values.getlist(name)) > 1:
            raise Refused(f"{name} is sent more than once")
    parameters = {name: values[name] for name in names if name in values}
    expected = redirect_uri()
    if parameters.get("redirect_uri") != expected:
        raise Refused(f"redirect_uri must be {expected}, the redirect page of this server's /docs")
    if not CLIENT_ID_FORM.fullmatch(parameters.get("client_id", "")):
        raise Refused("client_id is required (printable ASCII, at most 255 characters)")
    if parameters.get("response_type") != "code":
        raise Refused("response_type must be code: this issuer gives authorization codes only")
    if parameters.get("code_challenge_method") != "S256":
        raise Refused("PKCE is required, with code_challenge_method=S256 (plain is refused)")
    if not S256_CHALLENGE.fullmatch(parameters.get("code_challenge", "")):
        raise Refused("code_challenge must be the unpadded BASE64URL of the verifier's SHA-256 (43 characters)")
    audience = current_app.extensions["auth"].audience
    if parameters.get("audience", audience) != audience:
        raise Refused(f"this issuer gives tokens for the audience {audience} only")
    return parameters


def redirect_uri():
    """/docs' redirect page on the origin the request reached (with
    TRUSTED_PROXY_HOPS, the scheme the proxy was reached with: ratelimit.py's
    ProxyFix), as /docs itself tells Swagger UI."""
    return url_for("swagger_ui.show", path="oauth2-redirect.html", _external=True)


@blueprint.post("/oauth/token")
def token():
    """A code and its PKCE verifier exchanged for a token (RFC 6749 section
    4.1.3); errors as section 5.2 says."""
    if request.mimetype != "application/x-www-form-urlencoded":
        return oauth_error("invalid_request", "the body must be application/x-www-form-urlencoded")
    form = request.form
    for name in TOKEN_PARAMETERS:
        if len(form.getlist(name)) > 1:
            return oauth_error("invalid_request", f"{name} is sent more than once")
    if not form.get("grant_type"):
        return oauth_error("invalid_request", "grant_type is required")
    if form["grant_type"] != "authorization_code":
        return oauth_error("unsupported_grant_type", "grant_type must be authorization_code")
    missing = [name for name in TOKEN_PARAMETERS if not form.get(name)]
    if missing:
        return oauth_error("invalid_request", f"{', '.join(missing)} required")
    grant = redeem(form["code"])
    if grant is None or now() >= grant["expires_at"]:
        return oauth_error("invalid_grant", "the code is unknown, used or expired")
    if (grant["redirect_uri"], grant["client_id"]) != (form["redirect_uri"], form["client_id"]):
        return oauth_error("invalid_grant", "the code was issued for another redirect_uri or client_id")
    verifier = form["code_verifier"]
    if not VERIFIER.fullmatch(verifier) or not hmac.compare_digest(s256(verifier), grant["code_challenge"]):
        return oauth_error("invalid_grant", "code_verifier does not match the code_challenge")
    issuer = current_app.extensions["auth"].keys
    body = {"access_token": issuer.role_token(grant["role"], TOKEN_LIFETIME), "token_type": "Bearer"}
    return no_store(jsonify({**body, "expires_in": TOKEN_LIFETIME}))


def redeem(code):
    """The code's record, deleted in the same statement: of two exchanges of
    one code, on any workers or instances, one gets it."""
    table = AuthorizationCode.__table__
    statement = delete(table).where(table.c.code_hash == digest(code)).returning(*table.c)
    with connect() as connection:
        return connection.execute(statement).mappings().first()


def digest(code):
    return hashlib.sha256(code.encode()).hexdigest()


def s256(verifier):
    """RFC 7636's S256 code challenge of a verifier."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def oauth_error(error, description):
    return no_store(jsonify({"error": error, "error_description": description})), 400


def no_store(response):
    # RFC 6749 section 5.1: a token answer must not be cached.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def page(template, status, **values):
    """An HTML page, its values escaped (Jinja autoescapes strings' templates):
    state and redirect_uri come from whoever made the link."""
    response = current_app.make_response((render_template_string(template, **values), status))
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


CHOOSE_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in: Casting Agency API</title>
<style>
body { font-family: sans-serif; max-width: 34em; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
button { font-size: 1em; padding: .6em 1em; min-width: 12em; }
li { list-style: none; margin: 0 0 1em; }
small { display: block; color: #555; }
</style>
</head>
<body>
<h1>Sign in to the Casting Agency API</h1>
<p>This server is its own token issuer (no Auth0 tenant is configured).
Choose a role: its token carries the role's permissions.</p>
<form method="post" action="{{ url_for('local_signin.choose') }}">
{%- for name, value in parameters.items() %}
<input type="hidden" name="{{ name }}" value="{{ value }}">
{%- endfor %}
<ul>
{%- for role, permissions in roles.items() %}
<li><button type="submit" name="role" value="{{ role }}">{{ role }}</button>
<small>{{ permissions | join(", ") }}</small></li>
{%- endfor %}
</ul>
</form>
<p><small>You will be sent back to {{ redirect_uri }}</small></p>
</body>
</html>
"""

REFUSED_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign-in refused: Casting Agency API</title></head>
<body>
<h1>This sign-in request is refused</h1>
<p>{{ message }}</p>
</body>
</html>
"""
