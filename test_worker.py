"""gunicorn_worker.py under the Procfile's gunicorn (./gunicorn.conf.py, two
workers, SQLite): a worker that leaves alone (recycled by --max-requests, a HUP
reload, its own SIGTERM, killed for its timeout) leaves the server accepting
connections; a stop of the whole server serves every connection already queued;
gunicorn's own refusals answer in the API's JSON envelope."""

import concurrent.futures
import email
import os
import re
import shutil
import signal
import socket
import tempfile
import time
import types
import unittest
from unittest import mock

from gunicorn.config import Config
from gunicorn.workers.sync import SyncWorker

from gunicorn_worker import DrainingSyncWorker, refuse_new_connections, refusing_new_connections, when_ready
from loopback import HOST, Gunicorn, Reply, call, clean_environment, free_port

# An issuer is configured (a production start refuses to run without one), never asked: no request here has a token.
AN_ISSUER = {"AUTH0_ISSUER": "https://issuer.example/", "JWKS_URL": "https://issuer.example/jwks", "API_AUDIENCE": "x"}
# Long enough for any answer on a busy machine; a new connection the server never takes waits it out.
PATIENCE = 10


def start_server(cleanup, **settings):
    """The Procfile's gunicorn with two workers on a SQLite file of its own, stopped
    and removed by `cleanup` (addCleanup, addClassCleanup); `settings` are more
    environment variables (GUNICORN_CMD_ARGS...)."""
    folder = tempfile.mkdtemp(prefix="casting-agency-worker-")
    cleanup(shutil.rmtree, folder, ignore_errors=True)
    env = clean_environment(
        DATABASE_URL=f"sqlite:///{folder}/worker.db",
        PORT=str(free_port()),
        WEB_CONCURRENCY="2",
        XDG_RUNTIME_DIR=folder,
        PYTHONUNBUFFERED="1",
        **AN_ISSUER,
        **settings,
    )
    server = Gunicorn(env, os.path.join(folder, "gunicorn.log"))
    cleanup(server.stop)
    server.wait_ready()
    wait_for_log(server, "Booting worker", count=2)  # the other worker too
    return server


def wait_for_log(server, pattern, count=1, timeout=30):
    """The matches of `pattern` in the server's log once there are `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.findall(pattern, server.log())
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} is not {count} times in the log:\n{server.log()[-3000:]}")
        time.sleep(0.05)


def workers(server):
    """The pids of the workers booted so far, in order."""
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", server.log())]


def health(server):
    return call(server.port, "GET", "/health", timeout=PATIENCE).status


class AWorkerLeavingAloneTest(unittest.TestCase):
    """Only a stop of the whole server closes the door: a worker that exits alone
    leaves the listening socket, shared by the master and every worker, accepting."""

    def assertAnswersNewConnections(self, server):
        self.assertEqual([health(server) for _ in range(6)], [200] * 6)

    def test_workers_recycled_by_max_requests_leave_every_request_answered(self):
        # GUNICORN_CMD_ARGS: how Heroku sets it; each worker is replaced after 5 requests.
        server = start_server(self.addCleanup, GUNICORN_CMD_ARGS="--max-requests 5")
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as clients:
            streams = [clients.submit(lambda: [health(server) for _ in range(20)]) for _ in range(3)]
            statuses = [status for stream in streams for status in stream.result()]
        self.assertEqual(statuses, [200] * 60)
        self.assertGreaterEqual(server.log().count("Autorestarting worker after current request"), 10)

    def test_a_reload_by_hup_leaves_the_server_answering(self):
        server = start_server(self.addCleanup)
        old = workers(server)
        os.kill(server.process.pid, signal.SIGHUP)
        for pid in old:
            wait_for_log(server, rf"Worker exiting \(pid: {pid}\)")
        self.assertAnswersNewConnections(server)
        self.assertEqual(len(workers(server)), len(old) + 2, "the reload started no new workers")

    def test_sigterm_to_one_worker_leaves_the_server_answering(self):
        server = start_server(self.addCleanup)
        worker = workers(server)[0]
        os.kill(worker, signal.SIGTERM)
        wait_for_log(server, rf"Worker exiting \(pid: {worker}\)")
        self.assertAnswersNewConnections(server)

    def test_a_worker_killed_for_its_timeout_leaves_the_server_answering(self):
        server = start_server(self.addCleanup, GUNICORN_CMD_ARGS="--timeout 2")
        # A client that never finishes its request holds a sync worker until the master kills it.
        with socket.create_connection((HOST, server.port), timeout=PATIENCE) as slow:
            slow.sendall(b"GET /health HTTP/1.1\r\n")
            wait_for_log(server, r"WORKER TIMEOUT")
            wait_for_log(server, r"Booting worker", count=3)  # its replacement: the master has reaped it
            self.assertAnswersNewConnections(server)
            killed_in_the_middle = parse(read_all(slow))
        self.assertEqual(killed_in_the_middle.status, 500)
        self.assertEqual(
            killed_in_the_middle.json(), {"success": False, "error": 500, "message": "internal server error"}
        )


class AWholeServerStopTest(unittest.TestCase):
    """SIGTERM to the master (or to every process, as Heroku sends it): each
    connection already queued is served before the server exits."""

    def test_every_queued_request_is_answered(self):
        for whom in ("the master", "every process"):
            with self.subTest(whom):
                server = start_server(self.addCleanup)
                # Each worker takes one of these and waits for the rest of its request ...
                held = [socket.create_connection((HOST, server.port), timeout=PATIENCE) for _ in range(2)]
                for client in held:
                    client.sendall(b"GET /health HTTP/1.1\r\n")
                # ... so these wait in the listening socket's queue, accepted by the kernel alone.
                queued = [socket.create_connection((HOST, server.port), timeout=PATIENCE) for _ in range(6)]
                for client in held + queued:
                    self.addCleanup(client.close)
                for client in queued:
                    client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                if whom == "the master":
                    server.process.send_signal(signal.SIGTERM)
                else:
                    os.killpg(server.process.pid, signal.SIGTERM)
                wait_for_log(server, "Handling signal: term")
                for client in held:
                    client.sendall(b"Host: x\r\n\r\n")
                self.assertEqual([status_of(read_all(client)) for client in held + queued], [200] * 8)
                self.assertEqual(server.process.wait(timeout=PATIENCE), 0)


class DoorTest(unittest.TestCase):
    """The parts, without gunicorn: the master's SIGTERM closes the door; a worker
    whose loop has stopped drains the queue only behind a closed door."""

    def listener_with_queue(self, requests=3):
        """A listening socket, non-blocking as gunicorn's workers have it, with
        connections queued that have sent their request."""
        listener = socket.create_server((HOST, 0))
        self.addCleanup(listener.close)
        listener.setblocking(False)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(requests)]
        for client in clients:
            self.addCleanup(client.close)
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        return listener

    def stopped_worker(self, listener, terminated=False, master=None):
        """A DrainingSyncWorker whose loop has stopped, by SIGTERM or not (--max-requests),
        and what it served; `master` acts whenever the worker waits for the master."""
        worker = DrainingSyncWorker.__new__(DrainingSyncWorker)  # no arbiter: only what run() uses
        worker.sockets = [listener]
        worker.terminated = terminated
        worker.notify = mock.Mock(side_effect=master)  # the worker's heartbeat, as it waits
        served = []

        def handle(listener_, client, peer):
            served.append((listener_.getsockname(), client.getblocking(), listener.fileno()))
            client.close()

        worker.handle = handle
        with mock.patch.object(SyncWorker, "run") as loop:
            worker.run()
        loop.assert_called_once()
        return worker, served

    def test_behind_a_closed_door_queued_connections_are_taken_then_the_socket_closed_then_served(self):
        listener = self.listener_with_queue()
        address = listener.getsockname()
        if not refuse_new_connections(listener):
            self.skipTest("no socket filters on this platform")
        _, served = self.stopped_worker(listener)
        self.assertEqual(served, [(address, True, -1)] * 3)  # each served blocking, after the close
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5)

    def test_a_worker_leaving_alone_takes_nothing_and_leaves_the_socket_open(self):
        for terminated in (False, True):  # recycled by --max-requests; sent SIGTERM, and the master never closes
            with self.subTest(terminated=terminated), mock.patch("gunicorn_worker.MASTER_CLOSES_THE_DOOR_WITHIN", 0.05):
                listener = self.listener_with_queue()
                worker, served = self.stopped_worker(listener, terminated=terminated)
                self.assertEqual(served, [])
                self.assertEqual(worker.notify.called, terminated)  # only SIGTERM waits for the master
                self.assertFalse(refusing_new_connections(listener))
                for _ in range(3):  # the queue is left whole, to the others and the replacement
                    client, _ = listener.accept()
                    client.close()
                socket.create_connection(listener.getsockname(), timeout=5).close()

    def test_after_sigterm_a_worker_drains_once_the_master_closes_the_door(self):
        """Heroku's SIGTERM reaches every process at once: the worker's loop may
        stop before the master has closed the door."""
        with socket.socket() as probe:
            if not refuse_new_connections(probe):
                self.skipTest("no socket filters on this platform")
        listener = self.listener_with_queue()
        address = listener.getsockname()
        worker, served = self.stopped_worker(listener, terminated=True, master=lambda: refuse_new_connections(listener))
        worker.notify.assert_called_once()  # it waited for the master, once
        self.assertEqual(served, [(address, True, -1)] * 3)

    def test_the_masters_sigterm_closes_the_door_unless_another_process_holds_the_socket(self):
        cases = [  # (the arbiter's state, whether the door closes)
            ({}, True),
            ({"reexec_pid": 4242}, False),  # a new master started by USR2 shares the socket
            ({"master_pid": 4242}, False),  # this one is that new master: the old one shares it
            ({"systemd": True}, False),  # systemd holds it for the next start
        ]
        previous = signal.getsignal(signal.SIGTERM)
        self.addCleanup(signal.signal, signal.SIGTERM, previous)
        for state, closes in cases:
            with self.subTest(**state):
                listener = socket.create_server((HOST, 0))
                self.addCleanup(listener.close)
                arbiter = types.SimpleNamespace(LISTENERS=[listener], reexec_pid=0, master_pid=0, systemd=False)
                vars(arbiter).update(state)
                queued = mock.Mock()  # the arbiter's own handler queues the signal
                signal.signal(signal.SIGTERM, queued)
                when_ready(arbiter)
                self.assertFalse(refusing_new_connections(listener))
                signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
                self.assertEqual(refusing_new_connections(listener), closes)
                queued.assert_called_once_with(signal.SIGTERM, None)

    def test_a_closed_door_holds_off_new_connections_and_lets_queued_ones_be_taken(self):
        """The race the door closes: a connection queued between the drain's last
        accept() and the close() would be reset. Once the filter is on, a new
        client's SYN is dropped (it would retry, and meet the closed socket),
        while a connection already queued is still taken whole."""
        listener = socket.create_server((HOST, 0))
        self.addCleanup(listener.close)
        queued = socket.create_connection(listener.getsockname())
        self.addCleanup(queued.close)
        if not refuse_new_connections(listener):
            self.skipTest("no socket filters on this platform: the worker only drains")
        queued.sendall(b"GET / HTTP/1.1\r\n\r\n")
        with self.assertRaises(TimeoutError):
            socket.create_connection(listener.getsockname(), timeout=0.5)
        listener.settimeout(5)
        client, _ = listener.accept()
        self.addCleanup(client.close)
        self.assertEqual(client.recv(100), b"GET / HTTP/1.1\r\n\r\n")
        listener.setblocking(False)
        with self.assertRaises(BlockingIOError):  # the refused SYN left nothing in the queue
            listener.accept()


class HandleErrorTest(unittest.TestCase):
    """The worker's handle_error in this process, as the sync worker calls it
    for a request that gunicorn refuses, with gunicorn's default limits."""

    def answer(self, request, app=None):
        worker = DrainingSyncWorker.__new__(DrainingSyncWorker)  # no arbiter: only what handle() uses
        worker.cfg = Config()
        worker.log = mock.Mock()
        worker.wsgi = app
        worker.nr, worker.max_requests = 0, 1000
        listener = types.SimpleNamespace(getsockname=lambda: (HOST, 8000))
        server_side, client = socket.socketpair()
        self.addCleanup(client.close)
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        worker.handle(listener, server_side, ("127.0.0.1", 4242))
        return parse(read_all(client)), worker.log

    def test_the_envelope_follows_the_configured_limits_and_gunicorn_logs_the_refusal(self):
        reply, log = self.answer(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n")
        self.assertEqual((reply.status, reply.headers["Content-Type"]), (414, "application/json"))
        expected = {"success": False, "error": 414, "message": "the request line is longer than 4094 bytes"}
        self.assertEqual(reply.json(), expected)
        log.warning.assert_called_once()
        self.assertIn("Invalid request from ip=127.0.0.1: Request Line is too large", log.warning.call_args[0][0])

    def test_an_application_that_fails_before_it_answers_is_a_500_envelope(self):
        def app(environ, start_response):
            raise RuntimeError("a WSGI layer's bug")

        reply, log = self.answer(b"GET / HTTP/1.1\r\n\r\n", app)
        self.assertEqual(reply.status, 500)
        self.assertEqual(reply.json(), {"success": False, "error": 500, "message": "internal server error"})
        log.exception.assert_called_once()


class RefusalsTest(unittest.TestCase):
    """gunicorn's own refusals, before the app sees a request, answer in the API's
    JSON envelope (written by the worker), and gunicorn still logs each one."""

    @classmethod
    def setUpClass(cls):
        cls.server = start_server(cls.addClassCleanup)

    def exchange(self, request):
        with socket.create_connection((HOST, self.server.port), timeout=PATIENCE) as client:
            client.sendall(request)
            return parse(read_all(client))

    def test_each_refusal_is_the_json_envelope(self):
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n"
        too_many_headers = b"".join(b"X-%d: y\r\n" % i for i in range(101))
        too_many = (
            "the request has more than 100 header fields, or one longer than 16384 bytes",
            "limit request headers fields",
        )
        cases = [  # (name, request, status, the envelope's message, gunicorn's log line)
            (
                "request line over 8,190 bytes",
                b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                414,
                "the request line is longer than 8190 bytes",
                "Request Line is too large",
            ),
            ("a header field over 16,384 bytes", request + b"X-Big: " + b"a" * 16400 + b"\r\n\r\n", 431, *too_many),
            ("101 header fields", request + too_many_headers + b"\r\n", 431, *too_many),
            ("no request line", b"NONSENSE\r\n\r\n", 400, "the request line is malformed", "Invalid HTTP request line"),
            (
                "a malformed method",
                b"G@T /health HTTP/1.1\r\nHost: x\r\n\r\n",
                400,
                "the request method is not valid",
                "Invalid HTTP method: 'G@T'",
            ),
            (
                "an unknown HTTP version",
                b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
                400,
                "the HTTP version is not supported",
                "Invalid HTTP Version",
            ),
            (
                "a header without a colon",
                request + b"No colon here\r\n\r\n",
                400,
                "a header field is malformed",
                "Invalid HTTP Header: 'No colon here'",
            ),
            (
                "a header name with a space",
                request + b"Bad Name: y\r\n\r\n",
                400,
                "a header field is malformed",
                "Invalid HTTP header name: 'Bad Name'",
            ),
            (
                "two lengths",
                request + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
                "a header field is malformed",
                "Invalid HTTP Header: 'CONTENT-LENGTH'",
            ),
        ]
        for name, sent, status, message, logged in cases:
            with self.subTest(name):
                reply = self.exchange(sent)
                self.assertEqual(reply.status, status, reply)
                self.assertEqual(reply.headers["Content-Type"], "application/json")
                self.assertEqual(reply.headers["Connection"], "close")
                self.assertEqual(int(reply.headers["Content-Length"]), len(reply.raw))
                self.assertEqual(reply.json(), {"success": False, "error": status, "message": message})
                wait_for_log(self.server, re.escape(f"Invalid request from ip=127.0.0.1: {logged}"))

    def test_a_request_gunicorn_accepts_is_the_apps_answer(self):
        reply = self.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(reply.status, 200, reply)
        self.assertEqual(reply.json(), {"success": True, "database": "ok"})
        self.assertIn("X-Request-ID", reply.headers)  # the app's own answer
        self.assertEqual(reply.headers["X-Content-Type-Options"], "nosniff")


def read_all(client):
    """What the server sent until it closed the connection."""
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received


def parse(response):
    """An HTTP response read whole, as a Reply (its headers case-insensitive)."""
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    return Reply(int(status_line.split(" ")[1]), email.message_from_string("\r\n".join(fields)), body)


def status_of(response):
    return parse(response).status if response else None


if __name__ == "__main__":
    unittest.main()
