"""Bearer-token authentication and permission checks.

Every protected endpoint is wrapped in `requires_auth(permission)`, the one
authentication step: the rate limits' address budget, the token, the limits'
subject budget, then the permission (`authenticate`). A token is
accepted only if it is an RS256 JWT whose `kid` names a key of the issuer's
key set, whose signature verifies, whose `iss` and `aud` match the
configuration, whose `exp` (required) and `nbf` (when present) hold, and whose
`sub` is a string of 1 to 255 characters (each write records it); then its
`permissions` claim (where Auth0 RBAC puts them) must hold the endpoint's
permission. The checklist is RFC 8725's.

Keys come from one of two sources behind the same verification code:

* `JWKSKeys`: the issuer's published JWKS (Auth0, or any issuer), fetched with
  a timeout and cached; an unknown `kid`, or a set older than JWKS_CACHE_TTL,
  refetches it, at most once per interval.
* `LocalIssuer`: with no issuer configured, an RSA key kept in the instance
  folder, so a newcomer has a working, authenticated API offline. It also
  signs the tokens that `flask token ROLE` prints.
"""

import base64
import functools
import hashlib
import json
import logging
import os
import threading
import time
import urllib.request

import click
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import current_app, g, request
from flask.cli import with_appcontext
from werkzeug.exceptions import Forbidden, ServiceUnavailable, Unauthorized

import metrics
from config import ConfigError, instance_file

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256"]  # an allow-list: the token's own header never chooses

_ASSISTANT = ["get:actors", "get:movies"]
_DIRECTOR = _ASSISTANT + ["add:actors", "edit:actors", "delete:actors", "edit:movies"]
_PRODUCER = _DIRECTOR + ["add:movies", "delete:movies", "get:audit"]
ROLES = {
    "Casting Assistant": _ASSISTANT,
    "Casting Director": _DIRECTOR,
    "Executive Producer": _PRODUCER,
}
PERMISSIONS = _PRODUCER

LOCAL_ISSUER = "urn:casting-agency:local-issuer"
LOCAL_AUDIENCE = "casting-agency"
# A token's `sub` is recorded by every write (the audit trail's subject column
# holds 255 characters) and keys its rate-limit budget.
MAX_SUBJECT = 255


class AuthError(Unauthorized):
    """A 401 whose message says why, with a machine-readable `code` beside it."""

    def __init__(self, code, message):
        super().__init__(message)
        self.error_code = code


class IssuerUnavailable(ServiceUnavailable):
    error_code = "issuer_unavailable"


# --- key sources --------------------------------------------------------------


class JWKSKeys:
    """The issuer's JWKS, fetched on first use and cached in the process.

    A `kid` not in the cache triggers a refetch, and so does a cached set older
    than `max_age` seconds (JWKS_CACHE_TTL), so that a key the issuer has
    withdrawn (a revoked one) stops being trusted; but there is at most one
    fetch per `min_interval` seconds (failures included), so no stream of
    forged `kid`s can make the API hammer the issuer, while a rotated key is
    picked up. When a refetch fails the cached keys keep serving.
    """

    def __init__(self, url, timeout=5.0, min_interval=30.0, max_age=600.0):
        self.url = url
        self.timeout = timeout
        self.min_interval = min_interval
        self.max_age = max_age
        self._keys = {}
        self._fetched_at = None  # when the cached set was fetched
        self._tried_at = None  # the last fetch, whether it worked or not
        self._lock = threading.Lock()

    def known(self, kid):
        """Whether `kid` is in the key set (refetched first if it is too old)."""
        return kid in self._current()

    def get(self, kid):
        key = self._current().get(kid)
        if key is not None:
            return key
        with self._lock:  # one refetch at a time; the others then see its result
            key = self._keys.get(kid)
            if key is None and self._may_fetch():
                self._refresh()
                key = self._keys.get(kid)
        if key is None and not self._keys:
            raise IssuerUnavailable("the token issuer's keys cannot be fetched")
        return key

    def _current(self):
        """The cached key set, refetched first once it is older than max_age.
        Meanwhile the other threads go on with the cached set rather than wait."""
        if self._stale() and self._lock.acquire(blocking=False):
            try:
                if self._stale() and self._may_fetch():
                    self._refresh()
            finally:
                self._lock.release()
        return self._keys

    def _stale(self):
        return self._fetched_at is not None and time.monotonic() - self._fetched_at >= self.max_age

    def _may_fetch(self):
        """Whether the interval since the last fetch allows another (which the caller then makes)."""
        now = time.monotonic()
        if self._tried_at is not None and now - self._tried_at < self.min_interval:
            return False
        self._tried_at = now
        return True

    def _refresh(self):
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
                document = json.load(response)
            keys = {}
            for jwk in document["keys"]:
                if isinstance(jwk, dict) and jwk.get("kty") == "RSA" and jwk.get("use", "sig") == "sig":
                    kid = jwk.get("kid")
                    if isinstance(kid, str):
                        keys[kid] = jwt.PyJWK(jwk, algorithm="RS256").key
        except Exception as exc:  # any failure: keep what we have
            metrics.count_jwks_fetch(succeeded=False)
            log.warning("fetching the JWKS from %s failed: %s", self.url, exc)
            return
        metrics.count_jwks_fetch(succeeded=True)
        self._keys = keys
        self._fetched_at = time.monotonic()


class LocalIssuer:
    """An RSA key in the instance folder: verifies like a JWKS, and signs tokens."""

    def __init__(self, path, issuer=LOCAL_ISSUER, audience=LOCAL_AUDIENCE):
        self.issuer = issuer
        self.audience = audience
        self._private_key = _load_or_create_key(path)
        self.public_key = self._private_key.public_key()
        self.kid = _thumbprint(self.public_key)

    def get(self, kid):
        return self.public_key if kid == self.kid else None

    def known(self, kid):
        return kid == self.kid

    def mint(self, permissions, lifetime, subject="local-user"):
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "exp": now + lifetime,
            "permissions": list(permissions),
        }
        return jwt.encode(claims, self._private_key, algorithm="RS256", headers={"kid": self.kid})

    def role_token(self, role, lifetime):
        """A token for a role (a key of ROLES): its permissions, and one subject
        per role (`local|casting-director`), so that a role has one audit
        subject and one rate-limit budget, however its name was spelt."""
        return self.mint(ROLES[role], lifetime, subject="local|" + role.lower().replace(" ", "-"))


def _load_or_create_key(path):
    def new_key():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    return serialization.load_pem_private_key(instance_file(path, new_key), password=None)


def _thumbprint(public_key):
    """The RFC 7638 thumbprint of an RSA public key, used as its `kid`."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public_key))
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# --- verification -------------------------------------------------------------

INVALID_SUBJECT = f"token subject (sub) must be a string of 1 to {MAX_SUBJECT} characters"
_DECODE_ERRORS = [  # most specific first: several are subclasses of others
    (jwt.ExpiredSignatureError, "token_expired", "token has expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid", "token is not valid yet"),
    (jwt.InvalidAudienceError, "invalid_audience", "token audience is invalid"),
    (jwt.InvalidIssuerError, "invalid_issuer", "token issuer is invalid"),
    (jwt.InvalidSignatureError, "invalid_signature", "token signature is invalid"),
    (jwt.exceptions.InvalidSubjectError, "invalid_claims", INVALID_SUBJECT),
    (jwt.DecodeError, "malformed_token", "token is malformed"),
]


class Verifier:
    # A client sends the same token with every request until it expires, and an
    # RS256 verification is most of an authenticated request's cost: a verified
    # token is remembered until its `exp`, while its key is in the key set
    # (which is refetched once it is older than JWKS_CACHE_TTL).
    CACHE_SIZE = 4096

    def __init__(self, keys, issuer, audience):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self._verified = {}  # token -> (claims, kid)

    def cached(self, token):
        """The claims of a token verified before that still holds (its `exp` is
        ahead, its key still in the key set), or None. Costs no signature check."""
        cached = self._verified.get(token)
        if cached is None:
            return None
        claims, kid = cached
        if time.time() < claims["exp"] and self.keys.known(kid):
            return claims
        self._verified.pop(token, None)
        return None

    def verify(self, token):
        """Return the claims of a valid token; raise AuthError otherwise."""
        claims = self.cached(token)
        if claims is not None:
            return claims
        claims, kid = self._verify(token)
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.clear()  # a crude bound, but a bound: no request pattern grows it further
        self._verified[token] = (claims, kid)
        return claims

    def _verify(self, token):
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("malformed_token", "token is malformed") from None
        if header.get("alg") not in ALGORITHMS:
            raise AuthError("invalid_algorithm", "token must be signed with RS256")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthError("missing_kid", "token header has no key id (kid)")
        key = self.keys.get(kid)
        if key is None:
            raise AuthError("unknown_key", "token is signed with an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("missing_claim", f"token lacks the required claim '{exc.claim}'") from None
        except jwt.InvalidTokenError as exc:
            for error, code, message in _DECODE_ERRORS:
                if isinstance(exc, error):
                    raise AuthError(code, message) from None
            raise AuthError("invalid_token", "token is invalid") from None
        if not 0 < len(claims["sub"]) <= MAX_SUBJECT:  # PyJWT has checked that it is a string
            raise AuthError("invalid_claims", INVALID_SUBJECT)
        return claims, kid


def bearer_token():
    header = request.headers.get("Authorization")
    if header is None:
        raise AuthError("authorization_header_missing", "authorization header is missing")
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise AuthError("invalid_header", "authorization header must be 'Bearer <token>'")
    return parts[1]


def requires_auth(permission):
    """Allow the view only to a valid token carrying `permission` (authenticate)."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            g.claims = authenticate(permission)  # the audit trail records who wrote: its `sub` (writes.py)
            return view(*args, **kwargs)

        return wrapper

    return decorator


def authenticate(permission):
    """The one authentication step of a protected operation, in the SPEC's order
    (Errors): the client address's budget (429), unless this worker has verified
    the token before; the token, verified once (401; 503 without keys); its
    subject's budget (429); the permission (403). Returns the token's claims.
    The budgets are ratelimit.RateLimits, found in the app's extensions."""
    verifier = current_app.extensions["auth"]
    budgets = current_app.extensions["rate_limits"]
    try:
        claims = verifier.cached(bearer_token())
    except AuthError:
        claims = None
    if claims is None:
        # Before the signature check, so that a stream of forged tokens is refused without one.
        budgets.check_address()
        try:
            claims = verifier.verify(bearer_token())
        except (AuthError, IssuerUnavailable):
            budgets.count_address()
            raise
    budgets.count_subject(claims["sub"])
    permissions = claims.get("permissions")
    if not isinstance(permissions, list) or permission not in permissions:
        raise Forbidden(f"permission '{permission}' is required")
    return claims


# --- set-up -------------------------------------------------------------------


def issuer_settings(config):
    """(issuer, jwks_url) from the configuration, or None for the local issuer."""
    domain = config.get("AUTH0_DOMAIN")
    issuer = config.get("AUTH0_ISSUER") or (f"https://{domain}/" if domain else None)
    jwks_url = config.get("JWKS_URL") or (f"https://{domain}/.well-known/jwks.json" if domain else None)
    if not (issuer or jwks_url):
        return None
    if not (issuer and jwks_url):
        raise ConfigError("set AUTH0_DOMAIN, or both AUTH0_ISSUER and JWKS_URL")
    return issuer, jwks_url


def init_auth(app):
    settings = issuer_settings(app.config)
    if settings is None:
        if app.config.get("REQUIRE_ISSUER"):
            raise ConfigError(
                "no token issuer configured: set AUTH0_DOMAIN (or AUTH0_ISSUER and JWKS_URL) "
                "and API_AUDIENCE; a production start refuses to run with the local issuer"
            )
        local = LocalIssuer(
            os.path.join(app.instance_path, "local-issuer-key.pem"),
            audience=app.config.get("API_AUDIENCE") or LOCAL_AUDIENCE,
        )
        if not _loaded_for_a_command():
            app.logger.warning(
                "LOCAL ISSUER IN USE: no AUTH0_DOMAIN or JWKS_URL is set, so tokens are signed and "
                "verified with the key in %s. Fine for development; never for production.",
                app.instance_path,
            )
        app.extensions["auth"] = Verifier(local, local.issuer, local.audience)
        return
    issuer, jwks_url = settings
    audience = app.config.get("API_AUDIENCE")
    if not audience:
        raise ConfigError("API_AUDIENCE must be set when a token issuer is configured")
    keys = JWKSKeys(
        jwks_url,
        timeout=float(app.config["JWKS_TIMEOUT"]),
        min_interval=float(app.config["JWKS_MIN_REFETCH_INTERVAL"]),
        max_age=float(app.config["JWKS_CACHE_TTL"]),
    )
    app.extensions["auth"] = Verifier(keys, issuer, audience)


def _loaded_for_a_command():
    """Whether `flask` (or manage.py) made the app to find one of the app's
    commands (`flask token`, `flask seed`, `flask db`): those verify no token,
    and `flask token` exists to mint local ones. A server warns: gunicorn, and
    `flask run`, which loads the app inside its own command."""
    context = click.get_current_context(silent=True)
    return context is not None and isinstance(context.command, click.Group)


def role_named(name):
    """The role (a key of ROLES) that `name` spells, in any case, with spaces,
    hyphens or underscores."""
    wanted = [word.lower() for word in name.replace("-", " ").replace("_", " ").split()]
    for role in ROLES:
        if role.lower().split() == wanted:
            return role
    raise click.BadParameter(f"unknown role {name!r}; choose one of: " + ", ".join(ROLES))


def role_permissions(name):
    return ROLES[role_named(name)]


@click.command("token")
@click.argument("role")
@with_appcontext
@click.option("--lifetime", default=86400, show_default=True, type=click.IntRange(min=1), help="Seconds it is valid.")
def token_command(role, lifetime):
    """Print a local issuer's token for ROLE (e.g. casting-director)."""
    role = role_named(role)
    keys = current_app.extensions["auth"].keys
    if not isinstance(keys, LocalIssuer):
        raise click.ClickException("tokens come from the configured issuer (Auth0), not from this app")
    click.echo(keys.role_token(role, lifetime))
