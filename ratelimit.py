"""Rate limits (SPEC: Rate limits), counted with the `limits` package.

Two budgets, each a fixed window that opens with the first request it counts:

* per token subject (`RATE_LIMIT`, default 600/minute): every request to a
  protected operation that carries a valid token counts against its `sub`;
* per client address (`RATE_LIMIT_ANONYMOUS`, default 60/minute): every other
  request to a protected operation (no token, a malformed header, a token that
  fails verification) counts against the address it came from.

auth.authenticate, the one authentication step of every protected operation,
calls them in this order: the address budget is checked (a 429 if it is spent)
before the token is verified, so a stream of forged tokens costs no signature
check once its address is over budget; a request that then fails
authentication is counted against its address; a valid token is counted
against its subject (a 429 if that budget is spent); then the permission (403)
and the rest. Under concurrency an address may get a few more answers than its
budget (the requests already in flight when it ran out), never more signature
checks than that.

A token this worker has verified before (auth.Verifier's cache) skips the
address check: it costs no signature check, so the address budget has nothing
to protect, and an attacker sharing an address with real users (an office, a
mobile carrier's NAT) cannot lock out those whose tokens are already verified.
The cache is per worker: a valid token's first request to a worker whose
address is over budget is a 429 like any other.

The counters live in Redis when `REDIS_URL` is set, shared by every worker of
every instance; otherwise each worker counts alone (development). When Redis
cannot be reached, the worker logs a warning and counts in its own memory
meanwhile, tries Redis again now and then (1, 2, 4, ... 32 s apart), and
shares the counters again once it answers. Short socket timeouts keep a
stopped or hung Redis from holding up a request for long.

The client's address is the connecting peer's, or, with `TRUSTED_PROXY_HOPS=N`,
the one the Nth proxy from the end appended to `X-Forwarded-For` (Werkzeug's
ProxyFix), so a client cannot choose its own by sending that header. An IPv6
client's budget is its /64.
"""

import ipaddress
import logging
import math
import re
import threading
import time
from urllib.parse import urlsplit

from flask import g, request
from limits import parse
from limits.errors import StorageError
from limits.storage import RedisStorage, Storage
from limits.strategies import FixedWindowRateLimiter
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix

from config import ConfigError

log = logging.getLogger(__name__)

DEFAULTS = {"RATE_LIMIT": "600/minute", "RATE_LIMIT_ANONYMOUS": "60/minute"}
BUDGET = re.compile(r"([1-9][0-9]{0,8})/(second|minute|hour)")
# Sent on limited responses; a browser app may read them when CORS is configured.
HEADERS = ["Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]
# A stopped Redis refuses at once; a hung or unreachable one costs a request at
# most these timeouts, twice (one immediate retry on a fresh connection, which
# also covers a pooled connection that a Redis restart closed).
REDIS_TIMEOUT = 0.5
REDIS_KEY_PREFIX = "casting-agency"  # the app's counters, apart from anything else in that Redis
UNREACHABLE = "rate-limit counters unreachable in Redis (%s): counting in this worker's memory meanwhile"
RECOVERED = "rate-limit counters reachable in Redis again: shared again"


def budget(config, name):
    """A budget setting, checked: a malformed one stops the start with a clear error."""
    value = str(config.get(name) or DEFAULTS[name]).strip()
    if not BUDGET.fullmatch(value):
        raise ConfigError(f"{name} must be N/second, N/minute or N/hour, N from 1 to 999999999, not {value!r}")
    return value


def proxy_hops(config):
    value = config.get("TRUSTED_PROXY_HOPS") or 0
    try:
        hops = int(value)
    except (TypeError, ValueError):
        hops = -1
    if hops < 0 or isinstance(value, float):
        raise ConfigError(f"TRUSTED_PROXY_HOPS must be a whole number of proxies, 0 or more, not {value!r}")
    return hops


def redis_storage(url):
    """limits' Redis storage for REDIS_URL, with short timeouts; its failures
    raise limits' StorageError."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError("REDIS_URL must be a redis:// or rediss:// URL with a host")
    options = {  # redis-py's, passed on by limits
        "socket_connect_timeout": REDIS_TIMEOUT,
        "socket_timeout": REDIS_TIMEOUT,
        "retry": Retry(NoBackoff(), 1),
    }
    if parts.scheme == "rediss":
        # Heroku's Key-Value Store serves TLS with a self-signed certificate;
        # Heroku documents connecting with redis-py's ssl_cert_reqs=None.
        options["ssl_cert_reqs"] = None
    return RedisStorage(url, key_prefix=REDIS_KEY_PREFIX, wrap_exceptions=True, **options)


class MemoryCounters(Storage):
    """Counters in this process's memory, behind limits' storage interface: the
    counters without Redis, and while Redis is unreachable. A count drops the
    expired counters, at most once a second. (limits' MemoryStorage drops them
    from a timer thread, which a count starts again whenever the last one has
    run: a thread every 10 ms in a busy worker, 15 to 35 us of a request's CPU.)"""

    STORAGE_SCHEME = None  # made here, never from a URI
    PURGE_EVERY = 1.0  # seconds

    def __init__(self):
        super().__init__()
        self.counters = {}  # key -> [count, when its window ends (Unix time)]
        self.next_purge = 0.0
        self.lock = threading.Lock()  # `flask run` serves on threads

    @property
    def base_exceptions(self):
        return ()  # nothing here fails as a storage does

    def incr(self, key, expiry, amount=1):
        now = time.time()
        with self.lock:
            if now >= self.next_purge:
                self.next_purge = now + self.PURGE_EVERY
                self.counters = {name: counter for name, counter in self.counters.items() if counter[1] > now}
            counter = self.counters.get(key)
            if counter is None or counter[1] <= now:
                counter = self.counters[key] = [0, now + expiry]
            counter[0] += amount
            return counter[0]

    def _live(self, key):
        counter = self.counters.get(key)
        return counter if counter is not None and counter[1] > time.time() else None

    def get(self, key):
        counter = self._live(key)
        return counter[0] if counter else 0

    def get_expiry(self, key):
        counter = self._live(key)
        return counter[1] if counter else time.time()

    def check(self):
        return True

    def reset(self):
        with self.lock:
            count, self.counters = len(self.counters), {}
        return count

    def clear(self, key):
        with self.lock:
            self.counters.pop(key, None)


class Counters:
    """Fixed windows (limits' FixedWindowRateLimiter) in `shared` (Redis) when
    there is one, else in this worker's memory. While the shared storage fails,
    the worker counts in memory: it logs a warning, tries the storage again 1,
    2, 4, ... 32 s apart, and shares again once it answers."""

    MAX_RETRY_DELAY = 32  # seconds

    def __init__(self, shared=None):
        self.memory = FixedWindowRateLimiter(MemoryCounters())
        self.shared = FixedWindowRateLimiter(shared) if shared is not None else None
        self.down = False  # the shared storage failed: counting in memory
        self.retry_at = 0.0  # time.monotonic() when to try it again
        self.retry_delay = 1

    def hit(self, item, *identifiers):
        """Count one request; (whether it is within the budget, its WindowStats)."""

        def hit(limiter):
            return limiter.hit(item, *identifiers), limiter.get_window_stats(item, *identifiers)

        return self._run(hit)

    def test(self, item, *identifiers):
        """Whether one more request would be within the budget, counting nothing;
        and its WindowStats when it would not."""

        def test(limiter):
            if limiter.test(item, *identifiers):
                return True, None
            return False, limiter.get_window_stats(item, *identifiers)

        return self._run(test)

    def _run(self, step):
        limiter = self._limiter()
        if limiter is self.memory:
            return step(limiter)
        try:
            return step(limiter)
        except StorageError as error:
            log.warning(UNREACHABLE, error.storage_error)
            self._retry_in(1)
            return step(self.memory)

    def _limiter(self):
        if self.shared is None:
            return self.memory
        if not self.down:
            return self.shared
        if time.monotonic() < self.retry_at:
            return self.memory
        if self.shared.storage.check():
            log.info(RECOVERED)
            self.down = False
            return self.shared
        self._retry_in(min(2 * self.retry_delay, self.MAX_RETRY_DELAY))
        return self.memory

    def _retry_in(self, delay):
        self.down = True
        self.retry_delay = delay
        self.retry_at = time.monotonic() + delay


class Budget:
    """One budget: its limit (a limits RateLimitItem), its scope, and its 429's message."""

    def __init__(self, config, name, scope, whom):
        value = budget(config, name)
        amount, unit = value.split("/")
        self.item = parse(value)
        self.scope = scope
        self.message = f"too many requests: at most {amount} a {unit} for {whom}; see Retry-After"


class RateLimited(TooManyRequests):
    """A 429 over one budget, with Retry-After; `scope` says which budget."""

    def __init__(self, budget, stats):
        super().__init__(budget.message, retry_after=max(1, math.ceil(stats.reset_time - time.time())))
        self.scope = budget.scope


def client_address():
    """The key of the client's address budget: an IPv4 address as it is, an
    IPv6 one by its /64, since one client holds a whole /64 (RFC 6177) and
    could otherwise take a fresh budget with each of its addresses."""
    address = request.remote_addr or "unknown"
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:  # ::ffff:192.0.2.7 is 192.0.2.7, by either path
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def limit_headers(response):
    """X-RateLimit-* of the budget the request counted against, on every limited response."""
    counted = g.get("rate_limit")
    if counted is not None:
        item, stats = counted
        response.headers["X-RateLimit-Limit"] = str(item.amount)
        response.headers["X-RateLimit-Remaining"] = str(stats.remaining)
        response.headers["X-RateLimit-Reset"] = str(int(stats.reset_time))
    return response


class RateLimits:
    """The app's two budgets, and the three steps auth.authenticate runs."""

    def __init__(self, app):
        config = app.config
        self.per_subject = Budget(config, "RATE_LIMIT", "subject", "a token's subject")
        self.per_address = Budget(config, "RATE_LIMIT_ANONYMOUS", "address", "a client address without a valid token")
        hops = proxy_hops(config)
        url = config.get("REDIS_URL")
        self.counters = Counters(redis_storage(url) if url else None)
        if hops:
            # X-Forwarded-For, and X-Forwarded-Proto for the absolute URLs of signing
            # in (https behind Heroku's router); never X-Forwarded-Host.
            app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
        if not url and config.get("REQUIRE_ISSUER"):
            app.logger.warning("REDIS_URL is not set: each worker keeps its own rate-limit counters")
        app.after_request(limit_headers)

    def check_address(self):
        """Before a token is verified: a 429 if the client's address has spent its budget."""
        budget = self.per_address
        within, stats = self.counters.test(budget.item, budget.scope, client_address())
        if not within:
            g.rate_limit = (budget.item, stats)
            raise RateLimited(budget, stats)

    def count_address(self):
        """A request that failed authentication counts against its address
        (its answer stays the 401 or 503)."""
        self._count(self.per_address, client_address())

    def count_subject(self, subject):
        """A valid token's request counts against its subject: a 429 over the budget."""
        within, stats = self._count(self.per_subject, subject)
        if not within:
            raise RateLimited(self.per_subject, stats)

    def _count(self, budget, key):
        within, stats = self.counters.hit(budget.item, budget.scope, key)
        g.rate_limit = (budget.item, stats)
        return within, stats


def init_rate_limits(app):
    app.extensions["rate_limits"] = RateLimits(app)
