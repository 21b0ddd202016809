"""Running as a fleet: two production servers (the Procfile's gunicorn with
./gunicorn.conf.py, as two Heroku dynos run it) against one PostgreSQL and one
Redis, both started by the test on free ports of 127.0.0.1.

* A token subject's budget holds across both instances exactly; each subject
  has its own.
* Forged tokens are throttled per client address, and once an address is over
  its budget they cost no verification (each unknown `kid` would cost a JWKS
  refetch: the issuer counts them).
* A spoofed X-Forwarded-For gains nothing, with TRUSTED_PROXY_HOPS unset and
  with it at 1 behind a "router".
* Redis stopped, or frozen, under load costs no 5xx and no hung request; a
  warning is logged, and the counters are shared again once it is back.
* SIGTERM to one instance (to its master, or to all its processes as Heroku
  sends it) while clients stream requests to it loses no request it accepted,
  and it exits within gunicorn's graceful timeout.

Clients other than 127.0.0.1 are other loopback addresses (127.0.0.2, ...), so
each test has addresses of its own. The harness (PostgreSQL, gunicorn, HTTP)
is loopback.py's, as test_production.py's is.
"""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import unittest
import uuid
from collections import namedtuple

import redis

import loopback
import testing
from auth import ROLES
from loopback import HOST, REPO, Gunicorn, Reply, call, concurrently, free_port, migrated_cluster, server_env
from testing import actor, tag

DATABASE = "casting_agency"
PRODUCER = "Executive Producer"
PER_SUBJECT = 30
PER_ADDRESS = 10
FALLING_BACK = "rate-limit counters unreachable in Redis"
RECOVERED = "rate-limit counters reachable in Redis again: shared again"
REDIS_SERVER = shutil.which("redis-server")
CAN_RUN = loopback.CAN_RUN_POSTGRES and REDIS_SERVER is not None
# A developer without redis-server or PostgreSQL skips these; CI (REQUIRE_FLEET=1, or CI=true) never does.
needs_fleet = unittest.skipUnless(
    CAN_RUN or os.environ.get("REQUIRE_FLEET") or os.environ.get("CI"),
    "needs redis-server, and PostgreSQL's initdb and pg_ctl (.ci/run installs them)",
)


def graceful_timeout():
    """gunicorn.conf.py's graceful_timeout (read, not executed: it sets REQUIRE_ISSUER)."""
    with open(os.path.join(REPO, "gunicorn.conf.py")) as file:
        return int(re.search(r"^graceful_timeout = (\d+)$", file.read(), re.MULTILINE).group(1))


class RedisServer:
    """Debian's redis-server on a free port of 127.0.0.1, no persistence."""

    def __init__(self, directory):
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.process = None

    def start(self):
        with open(os.path.join(self.dir, "redis.log"), "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (a fixed program, our arguments)
                [REDIS_SERVER, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = self.client()
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def client(self):
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=20)

    def close(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a test left it frozen
            self.process.kill()
            self.process.wait(timeout=20)


def attempt(port, method, path, token=None, body=None, source=None, timeout=15):
    """One request, and what became of it: ("refused", error) when the connection
    was not accepted (nothing was sent), ("answered", Reply), or ("lost", error):
    accepted and sent, but no whole answer came back."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout, source_address=source and (source, 0))
    try:
        try:
            connection.connect()
        except OSError as error:
            return "refused", error
        try:
            connection.request(method, path, body=data, headers=headers)
            with connection.getresponse() as response:
                return "answered", Reply(response.status, response.headers, response.read())
        except (OSError, http.client.HTTPException) as error:
            return "lost", error
    finally:
        connection.close()


Outcome = namedtuple("Outcome", "started ended kind value")


class Load:
    """Clients on threads, each sending one request after another until stopped;
    `send(client, n)` makes a request, and every outcome is kept."""

    def __init__(self, send, clients=4):
        self.send = send
        self.outcomes = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def run(self, client):
        n = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            kind, value = self.send(client, n)
            self.outcomes.append(Outcome(started, time.monotonic(), kind, value))
            n += 1

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        if any(thread.is_alive() for thread in self.threads):
            raise AssertionError("a client is still waiting for an answer 60 s after the load stopped")

    def answered(self):
        return [outcome.value for outcome in self.of_kind("answered")]

    def of_kind(self, kind):
        return [outcome for outcome in self.outcomes if outcome.kind == kind]


@needs_fleet
class FleetTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir, cls.issuer = testing.folder_and_issuer(cls, "fleet")
        cls.pg = migrated_cluster(testing.ISSUER_ON_LOOPBACK, DATABASE)
        cls.addClassCleanup(cls.pg.close)
        cls.pg.start()
        cls.redis = RedisServer(cls.dir)
        cls.addClassCleanup(cls.redis.close)
        cls.redis.start()
        cls.a = cls.instance("a")
        cls.b = cls.instance("b")
        cls.fleet = (cls.a, cls.b)

    @classmethod
    def instance(cls, name, cleanup=None, **settings):
        """Another production server of the fleet (same database, same Redis)."""
        env = server_env(
            cls.issuer,
            cls.pg.url(DATABASE),
            PORT=str(free_port()),
            WEB_CONCURRENCY="2",
            XDG_RUNTIME_DIR=cls.dir,
            REDIS_URL=cls.redis.url,
            RATE_LIMIT=f"{PER_SUBJECT}/hour",
            RATE_LIMIT_ANONYMOUS=f"{PER_ADDRESS}/hour",
            # Every unknown kid refetches the key set, so the fetches count the verifications that reach a key.
            JWKS_MIN_REFETCH_INTERVAL="0",
        )
        env.update(settings)
        server = Gunicorn(env, os.path.join(cls.dir, f"gunicorn-{name}-{uuid.uuid4().hex[:6]}.log"))
        (cleanup or cls.addClassCleanup)(server.stop)
        server.wait_ready()
        return server

    # --- requests -------------------------------------------------------------

    def token(self, sub=None, **claims):
        return self.issuer.token(ROLES[PRODUCER], sub=sub or f"auth0|{uuid.uuid4().hex}", **claims)

    def call(self, server, path="/actors", token=None, source=None, headers=None, method="GET", body=None):
        return call(server.port, method, path, token=token, body=body, headers=headers, source=source)

    def assertLimited(self, reply, status, limit, remaining=None):
        self.assertEqual(reply.status, status, reply)
        self.assertEqual(reply.headers["X-RateLimit-Limit"], str(limit), reply)
        if remaining is not None:
            self.assertEqual(reply.headers["X-RateLimit-Remaining"], str(remaining), reply)
        if status == 429:
            body = reply.json()
            self.assertEqual((body["success"], body["error"]), (False, 429), body)
            self.assertEqual(reply.headers["X-RateLimit-Remaining"], "0", reply)
            self.assertGreater(int(reply.headers["Retry-After"]), 0, reply)

    def wait_until_shared(self, instances, deadline=90):
        """Until every worker counts in Redis again: each worker that logged the
        fall-back has logged the recovery, and a fresh subject's budget holds
        exactly across the instances."""
        deadline = time.monotonic() + deadline
        while True:
            logs = [server.log() for server in instances]
            recovered = all(log.count(RECOVERED) >= log.count(FALLING_BACK) for log in logs)
            token = self.token()
            statuses = [self.call(instances[i % len(instances)], token=token).status for i in range(PER_SUBJECT + 4)]
            if recovered and statuses == [200] * PER_SUBJECT + [429] * 4:
                return
            if time.monotonic() > deadline:
                self.fail(f"counters not shared again: {statuses}; logs recovered: {recovered}")
            time.sleep(0.5)

    # --- budgets --------------------------------------------------------------

    def test_a_subject_budget_holds_across_both_instances_exactly(self):
        token = self.token()
        # One after another, alternating: each answer counts every request before it, on either instance.
        for i in range(10):
            self.assertLimited(self.call(self.fleet[i % 2], token=token), 200, PER_SUBJECT, PER_SUBJECT - 1 - i)
        # The rest of the budget, raced from many clients on both instances.
        replies = concurrently(
            [lambda i=i: self.call(self.fleet[i % 2], token=token) for i in range(2 * (PER_SUBJECT - 10))],
            workers=16,
        )
        self.assertEqual(sorted(r.status for r in replies), [200] * (PER_SUBJECT - 10) + [429] * (PER_SUBJECT - 10))
        for reply in replies:
            self.assertLimited(reply, reply.status, PER_SUBJECT)
        for server in self.fleet:
            self.assertLimited(self.call(server, token=token), 429, PER_SUBJECT)

    def test_budgets_are_per_subject(self):
        spent = f"auth0|{uuid.uuid4().hex}"
        for i in range(PER_SUBJECT):
            self.assertEqual(self.call(self.fleet[i % 2], token=self.token(sub=spent)).status, 200)
        for server in self.fleet:
            self.assertLimited(self.call(server, token=self.token(sub=spent)), 429, PER_SUBJECT)
            other = self.token()
            self.assertLimited(self.call(server, token=other), 200, PER_SUBJECT, PER_SUBJECT - 1)

    def test_forged_tokens_are_throttled_per_address_and_cost_no_verification_once_over(self):
        attacker, neighbour = "127.0.0.2", "127.0.0.3"
        fetches = self.issuer.fetches
        for i in range(PER_ADDRESS):  # an unknown kid: each one refetches the key set
            forged = self.token(headers={"kid": f"forged-{uuid.uuid4().hex}"})
            reply = self.call(self.fleet[i % 2], token=forged, source=attacker)
            self.assertLimited(reply, 401, PER_ADDRESS, PER_ADDRESS - 1 - i)
            self.assertEqual(reply.json()["code"], "unknown_key")
        self.assertEqual(self.issuer.fetches, fetches + PER_ADDRESS)
        for i in range(3 * PER_ADDRESS):
            forged = [
                self.token(headers={"kid": f"forged-{uuid.uuid4().hex}"}),
                self.issuer.token(ROLES[PRODUCER], key=loopback.rsa_key()),  # a signature to check
                None,
                self.token(),  # valid, but never verified: an address over budget is answered first
            ][i % 4]
            self.assertLimited(self.call(self.fleet[i % 2], token=forged, source=attacker), 429, PER_ADDRESS)
        self.assertEqual(self.issuer.fetches, fetches + PER_ADDRESS, "a forged token reached the key set")
        for server in self.fleet:  # the neighbour's budget is its own
            self.assertLimited(self.call(server, source=neighbour), 401, PER_ADDRESS)

    def test_a_spoofed_x_forwarded_for_gains_nothing(self):
        def spoof():
            return f"203.0.113.{uuid.uuid4().int % 250}"

        with self.subTest("no trusted proxy: the peer's address counts"):
            client = "127.0.0.4"
            for i in range(PER_ADDRESS + 6):
                reply = self.call(self.fleet[i % 2], source=client, headers={"X-Forwarded-For": spoof()})
                self.assertLimited(reply, 401 if i < PER_ADDRESS else 429, PER_ADDRESS)

        with self.subTest("TRUSTED_PROXY_HOPS=1: the address the router appended counts"):
            behind_router = self.instance("hops1", TRUSTED_PROXY_HOPS="1")
            router = "127.0.0.5"  # every request comes from it; it appends the client's address
            for i in range(PER_ADDRESS + 6):
                headers = {"X-Forwarded-For": f"{spoof()}, 198.51.100.9"}
                reply = self.call(behind_router, source=router, headers=headers)
                self.assertLimited(reply, 401 if i < PER_ADDRESS else 429, PER_ADDRESS)
            other_client = {"X-Forwarded-For": f"{spoof()}, 198.51.100.10"}
            self.assertLimited(self.call(behind_router, source=router, headers=other_client), 401, PER_ADDRESS)

    # --- Redis going away -------------------------------------------------------

    def load(self, clients=6, timeout=15):
        """Valid tokens of fresh subjects (no budget runs out) and /health, on both
        instances; a request that waits longer than `timeout` counts as lost."""

        def send(client, n):
            server = self.fleet[(client + n) % 2]
            if n % 5 == 4:
                return attempt(server.port, "GET", "/health", timeout=timeout)
            return attempt(server.port, "GET", "/actors", token=self.token(), timeout=timeout)

        return Load(send, clients)

    def assertServedThrough(self, load):
        problems = [o for o in load.outcomes if o.kind != "answered" or o.value.status >= 500]
        self.assertEqual(problems, [], f"{len(problems)} of {len(load.outcomes)} requests failed")
        self.assertEqual({reply.status for reply in load.answered()}, {200})

    def test_redis_stopped_under_load_costs_no_error_and_counters_are_shared_again_when_it_is_back(self):
        self.wait_until_shared(self.fleet)
        with self.load() as load:
            time.sleep(1)
            self.redis.stop()
            stopped = time.monotonic()
            time.sleep(3)
            during = [o for o in load.outcomes if o.started > stopped]
            self.redis.start()
            time.sleep(1)
        self.assertServedThrough(load)
        self.assertGreater(len(during), 20, "too few requests while Redis was down to tell anything")
        for server in self.fleet:
            self.assertTrue(FALLING_BACK in server.log(), f"no warning in the log of the server on port {server.port}")
        self.wait_until_shared(self.fleet)

    def test_a_frozen_redis_holds_no_request_up(self):
        """SIGSTOP: Redis accepts connections and never answers, as a hung or
        unreachable server does; the socket timeouts (0.5 s) end each wait, so no
        request waits for Redis to come back, which would take 8 s here."""
        self.wait_until_shared(self.fleet)
        with self.load(timeout=5) as load:
            time.sleep(1)
            self.redis.process.send_signal(signal.SIGSTOP)
            time.sleep(8)
            self.redis.process.send_signal(signal.SIGCONT)
            time.sleep(1)
        self.assertServedThrough(load)
        self.wait_until_shared(self.fleet)

    # --- a graceful stop -------------------------------------------------------------

    def test_sigterm_to_one_instance_loses_no_accepted_request(self):
        for whom in ("the master", "every process, as Heroku sends it"):
            with self.subTest(whom):
                self.sigterm_under_load(every_process=whom != "the master")

    def sigterm_under_load(self, every_process):
        server = self.instance("sigterm", cleanup=self.addCleanup, RATE_LIMIT="1000000/hour")
        tokens = [self.token() for _ in range(6)]
        names = f"{tag()} streamed"

        def send(client, n):
            if client % 2:  # writes too: their fate must be known
                body = actor(f"{names} {client}-{n}")
                return attempt(server.port, "POST", "/actors", tokens[client], body)
            return attempt(server.port, "GET", "/actors?per_page=5", tokens[client])

        with Load(send, clients=len(tokens)) as load:
            time.sleep(1.5)
            signalled = time.monotonic()
            if every_process:
                os.killpg(server.process.pid, signal.SIGTERM)
            else:
                server.process.send_signal(signal.SIGTERM)
            exit_code = server.process.wait(timeout=graceful_timeout())
            exited = time.monotonic()
            time.sleep(0.5)

        self.assertEqual(exit_code, 0, server.log()[-3000:])
        self.assertFalse("SIGKILL" in server.log(), "gunicorn killed a worker that did not stop in time")
        lost = load.of_kind("lost")
        self.assertEqual(lost, [], f"{len(lost)} accepted requests got no answer")
        answered = load.answered()
        self.assertEqual({reply.status for reply in answered} - {200, 201}, set(), answered)
        in_flight = [o for o in load.of_kind("answered") if o.started < signalled < o.ended]
        self.assertTrue(in_flight, "no request was in flight at the SIGTERM")
        refused_after = [o for o in load.of_kind("refused") if o.started > exited]
        self.assertTrue(refused_after, "the clients stopped before the server did")
        # Every write that was answered 201 is in the database, and no other.
        created = sorted(reply.json()["actor"]["id"] for reply in answered if reply.status == 201)
        sql = "SELECT id FROM actors WHERE name LIKE %s ORDER BY id"
        rows = self.pg.query(DATABASE, sql, (f"{names} %",))
        self.assertEqual([row[0] for row in rows], created)


if __name__ == "__main__":
    unittest.main()
