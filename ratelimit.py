"""Rate limits (SPEC: Rate limits), counted by Flask-Limiter.

Two budgets, each a fixed window that opens with the first request it counts:

* per token subject (`RATE_LIMIT`, default 600/minute): every request to a
  protected operation that carries a valid token counts against its `sub`;
* per client address (`RATE_LIMIT_ANONYMOUS`, default 60/minute): every other
  request to a protected operation (no token, a malformed header, a token that
  fails verification) counts against the address it came from.

In a protected operation, in this order: the address budget is checked (a 429
if it is spent) before the token is verified, so a stream of forged tokens
costs no signature check once its address is over budget; the token is
verified; a valid token is counted against its subject (a 429 if that budget
is spent); then the permission (403) and the rest. A request that did not
authenticate is counted against its address once its answer is known, so
under concurrency an address may get a few more answers than its budget (the
requests already in flight when it ran out), never more signature checks than
that.

A token this worker has verified before (auth.Verifier's cache) skips the
address check: it costs no signature check, so the address budget has nothing
to protect, and an attacker sharing an address with real users (an office, a
mobile carrier's NAT) cannot lock out those whose tokens are already verified.
The cache is per worker: a valid token's first request to a worker whose
address is over budget is a 429 like any other.

The counters live in Redis when `REDIS_URL` is set, shared by every worker of
every instance; otherwise each worker counts alone (development). When Redis
cannot be reached, Flask-Limiter logs a warning and counts in the worker's
memory meanwhile, checks Redis again now and then (1, 2, 4, ... 32 s apart),
and shares the counters again once it answers. Short socket timeouts keep a
stopped or hung Redis from holding up a request for long.

The client's address is the connecting peer's, or, with `TRUSTED_PROXY_HOPS=N`,
the one the Nth proxy from the end appended to `X-Forwarded-For` (Werkzeug's
ProxyFix), so a client cannot choose its own by sending that header.
"""

import functools
import re
import time
from urllib.parse import urlsplit

from flask import current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from limits.storage import MemoryStorage
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.middleware.proxy_fix import ProxyFix

from auth import AuthError, bearer_token

DEFAULTS = {"RATE_LIMIT": "600/minute", "RATE_LIMIT_ANONYMOUS": "60/minute", "TRUSTED_PROXY_HOPS": "0"}
BUDGET = re.compile(r"([1-9][0-9]{0,8})/(second|minute|hour)")
# Sent on limited responses; a browser app may read them when CORS is configured.
HEADERS = ["Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]
# A stopped Redis refuses at once; a hung or unreachable one costs a request at
# most these timeouts, twice (one immediate retry on a fresh connection, which
# also covers a pooled connection that a Redis restart closed).
REDIS_TIMEOUT = 0.5


def settings(env):
    """The rate-limit settings from the environment (load_config's part)."""
    config = {"REDIS_URL": env.get("REDIS_URL") or None}
    config.update({name: env.get(name) or default for name, default in DEFAULTS.items()})
    return config


def budget(config, name):
    """A budget setting, checked: a malformed one stops the start with a clear error."""
    value = str(config.get(name) or DEFAULTS[name]).strip()
    if not BUDGET.fullmatch(value):
        raise RuntimeError(f"{name} must be N/second, N/minute or N/hour, N from 1 to 999999999, not {value!r}")
    return value


def proxy_hops(config):
    value = config.get("TRUSTED_PROXY_HOPS") or 0
    try:
        hops = int(value)
    except (TypeError, ValueError):
        hops = -1
    if hops < 0 or isinstance(value, float):
        raise RuntimeError(f"TRUSTED_PROXY_HOPS must be a whole number of proxies, 0 or more, not {value!r}")
    return hops


def storage(url):
    """(storage URI, redis-py options) for Flask-Limiter: Redis when `url` is set."""
    if not url:
        return MemoryCounters.URI, {}
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise RuntimeError("REDIS_URL must be a redis:// or rediss:// URL with a host")
    options = {
        "socket_connect_timeout": REDIS_TIMEOUT,
        "socket_timeout": REDIS_TIMEOUT,
        "retry": Retry(NoBackoff(), 1),
    }
    if parts.scheme == "rediss":
        # Heroku's Key-Value Store serves TLS with a self-signed certificate;
        # Heroku documents connecting with redis-py's ssl_cert_reqs=None.
        options["ssl_cert_reqs"] = None
    return url, options


class MemoryCounters(MemoryStorage):
    """limits' in-memory counters (the storage without REDIS_URL), whose
    expired counters are dropped at most once a second by a request that
    counts. MemoryStorage drops them from a timer thread instead, which a
    count restarts whenever the last one has run: a thread started every
    10 ms in each busy worker, 15 us of a request's CPU (README: "What each
    change bought"). A counter read after its window is dropped either way
    (MemoryStorage.get)."""

    STORAGE_SCHEME = ["casting-memory"]  # limits finds storages by URI scheme
    URI = "casting-memory://"
    PURGE_EVERY = 1.0  # seconds

    def __init__(self, uri=None, wrap_exceptions=False, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.next_purge = 0.0

    # MemoryStorage calls this private method on every count.
    def _MemoryStorage__schedule_expiry(self):
        now = time.time()
        if now >= self.next_purge:
            self.next_purge = now + self.PURGE_EVERY
            self._MemoryStorage__expire_events()


class OperationLimiter(Limiter):
    """Flask-Limiter, checked only where an operation asks (RateLimits.check).
    Its before-request hook checks default and application limits, of which
    this app has none, on every request: it measured a fifth of a GET / (README:
    "What each change bought")."""

    def _check_request_limit(self, callable_name=None, in_middleware=True):
        if not in_middleware:
            super()._check_request_limit(callable_name, in_middleware)


def client_address():
    return request.remote_addr or "unknown"  # an empty key would make Flask-Limiter skip the limit


def subject_key():
    return g.rate_limit_subject


def _subject(claims):
    sub = (claims or {}).get("sub")
    return sub if isinstance(sub, str) and sub else None


def _message(value, whom):
    amount, unit = value.split("/")
    return f"too many requests: at most {amount} a {unit} for {whom}; see Retry-After"


def _retry_after_only_on_429(response):
    if response.status_code != 429:
        response.headers.pop("Retry-After", None)  # on a 200 it would read as "come back later"
    return response


class RateLimits:
    """The app's two budgets, and the check each protected operation runs first."""

    def __init__(self, app):
        config = app.config
        per_subject = budget(config, "RATE_LIMIT")
        per_address = budget(config, "RATE_LIMIT_ANONYMOUS")
        hops = proxy_hops(config)
        uri, options = storage(config.get("REDIS_URL"))
        if hops:
            # X-Forwarded-For, and X-Forwarded-Proto for the absolute URLs of signing
            # in (https behind Heroku's router); never X-Forwarded-Host.
            app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
        # Registered before the Limiter, so that it runs after the Limiter's own
        # after_request, which sends Retry-After with every limited response.
        app.after_request(_retry_after_only_on_429)
        if uri == MemoryCounters.URI and config.get("REQUIRE_ISSUER"):
            app.logger.warning("REDIS_URL is not set: each worker keeps its own rate-limit counters")
        self.limiter = OperationLimiter(
            key_func=client_address,
            app=app,
            storage_uri=uri,
            storage_options=options,
            strategy="fixed-window",  # one INCR per counted request
            headers_enabled=True,
            retry_after="delta-seconds",
            in_memory_fallback_enabled=True,  # Redis down: count in memory, and share again when it is back
            swallow_errors=True,  # a Redis failure mid-request costs a log line, never a 500
            key_prefix="casting-agency",
            # One identity for every request: the budgets are shared across
            # operations (their scopes name them), so Flask-Limiter has no
            # per-endpoint limits to look up; by default it resolves the
            # endpoint's limits and exemptions on every check.
            request_identifier=lambda: "api",
        )
        by_address = self.limiter.shared_limit(
            per_address,
            scope="address",
            # Checked now, counted after the answer, and only if the request did not authenticate.
            deduct_when=lambda response: "rate_limit_subject" not in g,
            error_message=_message(per_address, "a client address without a valid token"),
        )
        by_subject = self.limiter.shared_limit(
            per_subject,
            scope="subject",
            key_func=subject_key,
            error_message=_message(per_subject, "a token's subject"),
        )

        # Flask-Limiter checks a decorated function's limits each time it is called.
        @by_address
        def check_address():
            pass

        @by_subject
        def check_subject():
            pass

        self.check_address = check_address
        self.check_subject_decorated = check_subject
        [self.subject_limit] = by_subject  # the budget as Flask-Limiter runs it: its item, scope and message

    def check_subject(self):
        """The per-subject count, every valid token's request: Flask-Limiter's
        own steps for one shared limit (count it in the limiter's storage, put
        it where its after_request sends the X-RateLimit-* headers, raise its
        429), without the work its decorator does on each call to find which
        limits apply (README: "What each change bought"). When the storage has
        failed, the decorated check runs instead: it is where Flask-Limiter
        counts in memory meanwhile, and looks for the storage's return."""
        limiter = self.limiter
        if limiter._storage_dead:
            return self.check_subject_decorated()
        limit = self.subject_limit
        keys = [limiter._key_prefix, g.rate_limit_subject, limit.scope]
        try:
            allowed = limiter.limiter.hit(limit.limit, *keys)
        except Exception:  # the storage failed: what Flask-Limiter does then, then its decorated check
            limiter.logger.warning("Rate limit storage unreachable - falling back to in-memory storage")
            limiter._storage_dead = True
            return self.check_subject_decorated()
        context = limiter.context
        context.view_rate_limit = RequestLimit(limiter, limit.limit, keys, not allowed, shared=True)
        context.view_rate_limits = [context.view_rate_limit]
        if not allowed:
            limiter.logger.info("ratelimit %s (%s) exceeded", limit.limit, g.rate_limit_subject)
            raise RateLimitExceeded(limit)

    def check(self):
        """Before a protected operation: 429 when the request is over its budget."""
        verifier = current_app.extensions["auth"]
        try:
            token = bearer_token()
        except AuthError:
            token = None  # requires_auth answers the 401, after the address check
        claims = verifier.cached(token) if token else None
        if _subject(claims) is None:
            self.check_address()
            if token is None:
                return
            claims = verifier.verify(token)  # a 401 or 503 here is counted against the address
        subject = _subject(claims)
        if subject is not None:
            g.rate_limit_subject = subject
            self.check_subject()


def rate_limited(view):
    """Check the request's budget before `view` (a requires_auth-wrapped view) runs."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        current_app.extensions["rate_limits"].check()
        return view(*args, **kwargs)

    return wrapper


def init_rate_limits(app):
    app.extensions["rate_limits"] = RateLimits(app)
