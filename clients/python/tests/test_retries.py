"""Retry and error mapping against a local stub (plain HTTP on loopback,
standard library server): retries resend the same body and idempotency
key, and the outcome classes match the Rust client's rules."""

import json
import socket
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vellum_client import (
    BadRequest,
    Client,
    DuplicateEventId,
    GroupExists,
    NotDelivered,
    NotParked,
    NewEvent,
    IdempotencyKey,
    Indeterminate,
    NotFound,
    TransportError,
    Unavailable,
    WrongExpectedOffset,
)


class Stub(BaseHTTPRequestHandler):
    """Answers every request with the class's (status, body) script, in
    order, and records each request body."""

    script: list = []
    bodies: list = []
    paths: list = []

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        type(self).bodies.append(self.rfile.read(length))
        type(self).paths.append(self.path)
        status, body = type(self).script.pop(0) if type(self).script else (500, {})
        # A str body is sent as is (raw JSON text), anything else as JSON.
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = _answer
    do_POST = _answer
    do_DELETE = _answer

    def log_message(self, *args):
        pass


def error(code, message="m", **extra):
    return {"error": {"code": code, "message": message, **extra}}


class Retries(unittest.TestCase):
    def setUp(self):
        Stub.script, Stub.bodies = [], []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def tearDown(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def client(self, urls=None, retries_max=3):
        return Client(urls or [self.url], "t", retries_max=retries_max, retry_delay=0.0, timeout=5.0)

    def test_indeterminate_after_retries_with_the_same_body_and_key(self):
        """Goal: 503 indeterminate on every attempt: all attempts carry the
        same body and key, and the error hands back that key."""
        Stub.script = [(503, error("indeterminate"))] * 4
        key = IdempotencyKey.new()
        with self.client() as client, self.assertRaises(Indeterminate) as caught:
            client.append(20, [b"\x00\x01"], key=key)
        self.assertEqual(len(Stub.bodies), 4)
        self.assertEqual(len(set(Stub.bodies)), 1, "every retry is the same request")
        sent = json.loads(Stub.bodies[0])
        self.assertEqual(sent["idempotency"], {"session": key.session, "request": key.request})
        self.assertEqual(caught.exception.key, (key.session, key.request))

    def test_unavailable_only_when_nothing_was_taken(self):
        """Goal: 503 unavailable everywhere is Unavailable (nothing written);
        a later success is returned after the retries."""
        Stub.script = [(503, error("unavailable"))] * 4
        with self.client() as client, self.assertRaises(Unavailable):
            client.append(20, [b"x"])
        receipt = {"stream": 20, "first_offset": 0, "next_offset": 1, "first_position": 5, "op": 2,
                   "duplicate": True, "certificate": "c", "proofs": ["p"], "salts": ["s"]}
        Stub.script = [(503, error("unavailable")), (200, receipt)]
        with self.client() as client:
            self.assertTrue(client.append(20, [b"x"]).duplicate)

    def test_refused_port_is_unavailable_for_appends_and_transport_for_reads(self):
        """Goal: a port nobody listens on: an append never left (Unavailable),
        a read fails as TransportError."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
        with self.client([closed], retries_max=1) as client:
            with self.assertRaises(Unavailable):
                client.append(20, [b"x"])
            with self.assertRaises(TransportError):
                client.read_log()

    def test_envelope_fields_go_byte_for_byte_and_come_back(self):
        """Goal: an event's metadata JSON text is sent exactly as given, a
        409 duplicate_event_id is DuplicateEventId, and a read's envelope
        fields land in the Event."""
        metadata = '{"z": 1.50 , "a":[1e3]}'
        Stub.script = [(409, error("duplicate_event_id", original_offset=4))]
        event = NewEvent(b"\x00p", id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a01", type="Obs\u2014x", metadata_json=metadata)
        with self.client() as client, self.assertRaises(DuplicateEventId):
            client.append(20, [event, b"raw"])
        sent = Stub.bodies[0].decode()
        self.assertIn('"metadata":' + metadata + "}", sent)
        events = json.loads(sent)["events"]
        self.assertEqual(events[0]["type"], "Obs\u2014x")
        self.assertEqual(events[1], {"base64": "cmF3"})
        doc = {"position": 3, "stream": 20, "offset": 0, "base64": "AHA=", "salt": "", "envelope": True,
               "id": event.id, "type": event.type, "metadata": "@META@"}
        # The answer's metadata is the exact text sent, spliced in raw.
        answer = json.dumps({"stream": 20, "events": [doc], "next_offset": 1}).replace('"@META@"', metadata)
        Stub.script = [(200, answer)]
        with self.client() as client:
            got = client.read_stream(20).events[0]
        self.assertEqual((got.envelope, got.id, got.type, got.data), (True, event.id, event.type, b"\x00p"))
        self.assertEqual(got.metadata_json, metadata)
        self.assertEqual(got.metadata(), {"z": 1.5, "a": [1000.0]})
        self.assertEqual(got.committed_bytes(), event.committed_bytes())

    def test_group_calls_send_their_bodies_and_map_their_codes(self):
        """Goal: group_exists, not_delivered and not_parked (409) map to
        their classes at the first answer (not WrongExpectedOffset, not
        retried); ack, nack and replay send exactly the documented bodies;
        a bad group name never leaves the client."""
        Stub.script = [
            (409, error("group_exists")),
            (409, error("not_delivered")),
            (409, error("not_parked")),
            (200, {"retried": 0, "parked": 1, "checkpoint": 5}),
        ]
        with self.client() as client:
            with self.assertRaises(GroupExists):
                client.create_group("g-1", streams="5001,6000-6999", start=7, retry_max=0, lease_ms=100)
            with self.assertRaises(NotDelivered):
                client.ack("g-1", [3, 4])
            with self.assertRaises(NotParked):
                client.replay("g-1", [9])
            nacked = client.nack("g-1", [3], park=True, reason="bad")
            self.assertEqual((nacked.retried, nacked.parked, nacked.checkpoint), (0, 1, 5))
            for bad in ["", ".g", "g/x", "g" * 65, "g\u00e9"]:
                with self.assertRaises(BadRequest, msg=bad):
                    client.group(bad)
            with self.assertRaises(BadRequest):
                client.ack("g-1", [])
            with self.assertRaises(BadRequest):
                client.pull("g-1", max_events=501)
        self.assertEqual(len(Stub.bodies), 4, "each 409 answered at once, never retried")
        self.assertEqual(
            json.loads(Stub.bodies[0]),
            {"name": "g-1", "streams": "5001,6000-6999", "start": "7", "retry_max": 0, "lease_ms": 100},
        )
        self.assertEqual(json.loads(Stub.bodies[1]), {"positions": [3, 4]})
        self.assertEqual(json.loads(Stub.bodies[2]), {"positions": [9]})
        self.assertEqual(json.loads(Stub.bodies[3]), {"positions": [3], "action": "park", "reason": "bad"})

    def test_filters_are_sent_as_documented(self):
        """Goal: `streams` and `types` reach the server as the documented
        query (types comma-joined, each percent-encoded) and, for a group,
        as a JSON list; a type holding a comma or a bare string never
        leaves the client."""
        Stub.paths = []
        group = {
            "name": "g-1", "streams": None, "types": ["Obs ervation", "a,b"], "start": 0, "retry_max": 5,
            "lease_ms": 100, "created_at": 9, "checkpoint": 0, "acked": 0, "parked": 0, "in_flight": 0,
        }
        Stub.script = [(200, {"events": [], "next_position": 10}), (201, group)]
        with self.client() as client:
            page = client.read_log(0, 10, streams="5001,6000-6999", types=["Patient", "Obs ervation", "M\u00e9d"])
            self.assertEqual(page.next_position, 10)
            info = client.create_group("g-1", types=["Obs ervation", "a,b"], lease_ms=100)
            self.assertEqual(info.types, ("Obs ervation", "a,b"))
            with self.assertRaises(ValueError):
                client.read_log(0, 10, types=["a,b"])
            with self.assertRaises(TypeError):
                client.read_log(0, 10, types="Patient")
            with self.assertRaises(ValueError):
                next(iter(client.subscribe(0, types=["a,b"])))
        self.assertEqual(
            Stub.paths[0],
            "/v1/log?from=0&max=10&streams=5001%2C6000-6999&types=Patient%2CObs%20ervation%2CM%C3%A9d",
        )
        self.assertEqual(json.loads(Stub.bodies[1]), {"name": "g-1", "types": ["Obs ervation", "a,b"], "lease_ms": 100})
        self.assertEqual(len(Stub.paths), 2, "refused filters never leave the client")

    def test_4xx_is_typed_and_never_retried(self):
        """Goal: 409 and 404 map to their classes at the first answer."""
        Stub.script = [(409, error("wrong_expected_offset", actual_offset=7)), (404, error("not_found"))]
        with self.client() as client:
            with self.assertRaises(WrongExpectedOffset) as caught:
                client.append(21, [b"x"], expected_offset=3)
            self.assertEqual((caught.exception.expected, caught.exception.actual), (3, 7))
            with self.assertRaises(NotFound):
                client.read_stream(21)
        self.assertEqual(len(Stub.bodies), 2)

    def test_numbers_the_server_refuses_are_refused_before_sending(self):
        """Goal: above 2^63-1, negative, or a page above 1000: refused
        locally, naming the field; nothing is sent."""
        with self.client() as client:
            for call in (
                lambda: client.read_stream(2**63),
                lambda: client.read_stream(1, -1),
                lambda: client.read_log(0, 1001),
                lambda: client.append(1, [b"x"], expected_offset=2**64),
                lambda: client.append(1, []),
                lambda: client.append(1, [b"x" * (1024 * 1024 + 1)]),
            ):
                with self.assertRaises(BadRequest):
                    call()
        self.assertEqual(Stub.bodies, [])


if __name__ == "__main__":
    unittest.main()
