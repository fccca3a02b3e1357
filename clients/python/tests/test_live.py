"""The Python client against a live `vellum dev` cluster (.ci/python_client.sh
starts one and sets the variables below).

Environment: VELLUM_URLS (comma-separated API base URLs), VELLUM_CA (the
cluster CA, PEM), VELLUM_WRITER_TOKEN, VELLUM_AUDITOR_TOKEN, VELLUM_POLICY
(the trust policy file); optional VELLUM_BIN (the `vellum` binary: then
each offline check is compared with `vellum proof check`), optional
VELLUM_CLIENT_CERT and VELLUM_CLIENT_KEY (the dev service's client
certificate and key, principal `service`: then mTLS is tested). Without them
every test here skips, saying so once.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

from vellum_client import (
    BadRequest,
    Client,
    Forbidden,
    GroupExists,
    NewEvent,
    NotDelivered,
    NotFound,
    NotParked,
    Heartbeat,
    IdempotencyKey,
    IdempotencyKeyReused,
    Policy,
    RateLimited,
    Unauthorized,
    Verifier,
    WrongExpectedOffset,
    check_event,
    ed25519,
)

_NEEDED = ["VELLUM_URLS", "VELLUM_CA", "VELLUM_WRITER_TOKEN", "VELLUM_AUDITOR_TOKEN", "VELLUM_POLICY"]
_MISSING = [name for name in _NEEDED if not os.environ.get(name)]
if _MISSING:
    print(f"SKIP: live client tests need {', '.join(_MISSING)} (see .ci/python_client.sh)", file=sys.stderr)

# Bounds on every wait in this file.
LIVE_WAIT_S = 20.0


def fresh_stream() -> int:
    """A stream id no other test (or run) uses; below the reserved ids."""
    return 10_000 + secrets.randbelow(2**40)


@unittest.skipIf(_MISSING, f"needs {_MISSING}")
class Live(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.urls = os.environ["VELLUM_URLS"].split(",")
        cls.ca = os.environ["VELLUM_CA"]
        with open(os.environ["VELLUM_POLICY"], encoding="utf-8") as file:
            cls.policy_text = file.read()
        cls.policy = Policy.parse(cls.policy_text)
        cls.writer = Client(cls.urls, os.environ["VELLUM_WRITER_TOKEN"], ca_file=cls.ca)
        cls.writer_h1 = Client(cls.urls, os.environ["VELLUM_WRITER_TOKEN"], ca_file=cls.ca, http2=False)

    @classmethod
    def tearDownClass(cls):
        cls.writer.close()
        cls.writer_h1.close()

    def test_client_certificate_instead_of_a_token(self):
        """Goal: a client given `client_cert` (and no token) appends and
        reads over HTTP/2 and HTTP/1.1 as the certificate's principal (it
        sends no Authorization header, so the server can only have taken the
        certificate); a certificate with a token, neither, or a certificate
        over plain http is refused before any request."""
        cert, key = os.environ.get("VELLUM_CLIENT_CERT"), os.environ.get("VELLUM_CLIENT_KEY")
        if not cert or not key:
            self.skipTest("VELLUM_CLIENT_CERT / VELLUM_CLIENT_KEY unset (a cluster without a client CA)")
        stream = fresh_stream()
        for http2 in (True, False):
            with Client(self.urls, client_cert=(cert, key), ca_file=self.ca, http2=http2) as service:
                service.append(stream, [b"by certificate"])
                self.assertEqual(service.last_http_version, "HTTP/2" if http2 else "HTTP/1.1")
                self.assertEqual(
                    [e.data for e in service.read_stream(stream).events], [b"by certificate"] * (2 if not http2 else 1)
                )
                self.assertNotIn("authorization", service._headers())
        with self.assertRaises(ValueError):
            Client(self.urls, os.environ["VELLUM_WRITER_TOKEN"], client_cert=(cert, key), ca_file=self.ca)
        with self.assertRaises(ValueError):
            Client(self.urls, ca_file=self.ca)
        with self.assertRaises(ValueError):
            Client("http://127.0.0.1:1", client_cert=(cert, key))

    def test_http2_is_used_and_http1_still_works(self):
        """Goal: the default client speaks HTTP/2, the http2=False one
        HTTP/1.1, and both read the same bytes."""
        stream = fresh_stream()
        self.writer.append(stream, [b"\x00h2\xff"])
        over_h2 = self.writer.read_stream(stream)
        self.assertEqual(self.writer.last_http_version, "HTTP/2")
        over_h1 = self.writer_h1.read_stream(stream)
        self.assertEqual(self.writer_h1.last_http_version, "HTTP/1.1")
        self.assertEqual([e.data for e in over_h2.events], [b"\x00h2\xff"])
        self.assertEqual(over_h2, over_h1)

    def test_bytes_appended_are_bytes_read_back(self):
        """Goal: all 256 byte values, empty, random and 1 MiB events read
        back byte for byte from the stream and the global log, over both
        protocols (P9)."""
        stream = fresh_stream()
        events = [
            bytes(range(256)),
            b"",
            secrets.token_bytes(4096),
            secrets.token_bytes(1024 * 1024),
            "caf\u00e9 \u2603 \x00".encode(),
        ]
        receipt = self.writer.append(stream, events, expected_offset=0)
        self.assertEqual((receipt.first_offset, receipt.next_offset), (0, len(events)))
        for client in (self.writer, self.writer_h1):
            read = client.read_stream(stream, 0, 10)
            self.assertEqual([e.data for e in read.events], events)
            self.assertEqual([e.offset for e in read.events], list(range(len(events))))
            self.assertEqual(read.next_offset, len(events))
            log = client.read_log(receipt.first_position, len(events))
            self.assertEqual([(e.stream, e.data) for e in log.events], [(stream, e) for e in events])
            self.assertEqual(
                [e.position for e in log.events],
                list(range(receipt.first_position, receipt.first_position + len(events))),
            )

    def test_expected_offset_conflict_writes_nothing(self):
        """Goal: a wrong expected offset is WrongExpectedOffset with the
        actual length, and nothing is written."""
        stream = fresh_stream()
        self.writer.append(stream, [b"first"], expected_offset=0)
        with self.assertRaises(WrongExpectedOffset) as caught:
            self.writer.append(stream, [b"second"], expected_offset=0)
        self.assertEqual((caught.exception.status, caught.exception.actual), (409, 1))
        self.assertEqual((caught.exception.stream, caught.exception.expected), (stream, 0))
        self.writer.append(stream, [b"second"], expected_offset=1)
        self.assertEqual([e.data for e in self.writer.read_stream(stream).events], [b"first", b"second"])

    def test_idempotent_retry_and_reused_key(self):
        """Goal: a retry with the same key returns the first offsets
        (duplicate, nothing written twice); the key with another body is
        IdempotencyKeyReused and writes nothing."""
        stream = fresh_stream()
        key = IdempotencyKey.new()
        first = self.writer.append(stream, [b"a", b"b"], key=key)
        again = self.writer_h1.append(stream, [b"a", b"b"], key=key)
        self.assertFalse(first.duplicate)
        self.assertTrue(again.duplicate)
        self.assertEqual(
            (again.first_offset, again.next_offset, again.first_position),
            (first.first_offset, first.next_offset, first.first_position),
        )
        with self.assertRaises(IdempotencyKeyReused) as caught:
            self.writer.append(stream, [b"a", b"c"], key=key)
        self.assertEqual((caught.exception.status, caught.exception.code), (422, "idempotency_key_reused"))
        with self.assertRaises(IdempotencyKeyReused):
            self.writer.append(stream + 1, [b"a", b"b"], key=key)
        self.assertEqual([e.data for e in self.writer.read_stream(stream).events], [b"a", b"b"])

    def test_receipt_verifies_offline_and_tampering_fails(self):
        """Goal: a receipt's proofs pass all three parts; a flipped byte in
        the proof, other event bytes, a policy with a wrong key, and a
        certificate with too few signatures each fail the part they break."""
        stream = fresh_stream()
        events = [bytes(range(256)), b"x" * 1000]
        receipt = self.writer.append(stream, events)
        for check in receipt.check(self.policy, events):
            self.assertTrue(check.passed, check)
        proof, salt, event = receipt.proofs[0], receipt.salts[0], events[0]
        # The proof served later (against a newer certificate) verifies too,
        # with the salt a read returns.
        read = self.writer.read_stream(stream, 0, 1).events[0]
        later = self.writer.proof(stream, 0)
        self.assertTrue(check_event(later, self.policy, read.salt, read.data).passed)

        lines = proof.split("\n")
        hash_line = next(i for i, line in enumerate(lines) if i > 2 and line and not line.startswith("index"))
        raw = bytearray(base64.b64decode(lines[hash_line]))
        raw[5] ^= 0x01
        lines[hash_line] = base64.b64encode(bytes(raw)).decode()
        flipped_proof = "\n".join(lines)
        self.assertEqual(check_event(flipped_proof, self.policy, salt, event).failed_parts(), ["inclusion"])

        self.assertEqual(check_event(proof, self.policy, salt, event + b"\x00").failed_parts(), ["commitment"])
        other_salt = base64.b64encode(secrets.token_bytes(32)).decode()
        self.assertEqual(check_event(proof, self.policy, other_salt, event).failed_parts(), ["commitment"])

        # Every pinned key but one replaced by a key nobody holds: fewer
        # valid signatures than the quorum.
        wrong_keys = list(self.policy.verifiers)
        for i in range(1, len(wrong_keys)):
            stranger = ed25519.public_key_of_scalar(secrets.randbelow(2**252) + 1)
            wrong_keys[i] = Verifier.of(wrong_keys[i].name, stranger)
        wrong_policy = Policy(self.policy.origin, tuple(wrong_keys), self.policy.quorum)
        check = check_event(proof, wrong_policy, salt, event)
        self.assertEqual(check.failed_parts(), ["quorum"], check)

        lines = proof.split("\n")
        signature_lines = [i for i, line in enumerate(lines) if line.startswith("\u2014 ")]
        self.assertGreaterEqual(len(signature_lines), self.policy.quorum)
        keep = self.policy.quorum - 1
        trimmed = "\n".join(line for i, line in enumerate(lines) if i not in signature_lines[keep:])
        if keep == 0:
            trimmed_check = check_event(trimmed, self.policy, salt, event)
            self.assertFalse(trimmed_check.quorum.passed)
        else:
            self.assertEqual(check_event(trimmed, self.policy, salt, event).failed_parts(), ["quorum"])

        # A forged signature of a pinned key fails the quorum too.
        lines = proof.split("\n")
        line = lines[signature_lines[0]]
        prefix, encoded = line.rsplit(" ", 1)
        raw = bytearray(base64.b64decode(encoded))
        raw[10] ^= 0x01
        lines[signature_lines[0]] = f"{prefix} {base64.b64encode(bytes(raw)).decode()}"
        self.assertEqual(check_event("\n".join(lines), self.policy, salt, event).failed_parts(), ["quorum"])

        self._same_as_vellum_proof_check(
            [
                (proof, salt, event, []),
                (flipped_proof, salt, event, ["inclusion"]),
                (proof, salt, event + b"\x00", ["commitment"]),
            ]
        )

    def _same_as_vellum_proof_check(self, cases):
        """`vellum proof check` agrees part by part (when VELLUM_BIN is set)."""
        vellum = os.environ.get("VELLUM_BIN")
        if not vellum:
            print("SKIP: VELLUM_BIN unset, not comparing with `vellum proof check`", file=sys.stderr)
            return
        with tempfile.TemporaryDirectory() as work:
            for number, (proof, salt, event, failed) in enumerate(cases):
                proof_path = os.path.join(work, f"proof{number}")
                event_path = os.path.join(work, f"event{number}")
                with open(proof_path, "w", encoding="utf-8") as file:
                    file.write(proof)
                with open(event_path, "wb") as file:
                    file.write(event)
                result = subprocess.run(
                    [vellum, "proof", "check", "--proof", proof_path, "--event", event_path, "--salt", salt,
                     "--policy", os.environ["VELLUM_POLICY"], "--json"],
                    capture_output=True, timeout=LIVE_WAIT_S, check=False,
                )
                verdict = json.loads(result.stdout)
                self.assertEqual(verdict["failed"], failed, result.stdout)
                ours = check_event(proof, self.policy, salt, event)
                self.assertEqual(ours.failed_parts(), failed)

    def test_unauthorized_forbidden_and_rate_limited(self):
        """Goal: no or unknown token is Unauthorized (401), a role that may
        not append is Forbidden (403), and a burst of failed logins is
        RateLimited (429) with a Retry-After in seconds."""
        stream = fresh_stream()
        with Client(self.urls, "", ca_file=self.ca) as nobody:
            with self.assertRaises(Unauthorized) as caught:
                nobody.read_stream(stream)
            self.assertEqual(caught.exception.status, 401)
        with Client(self.urls, os.environ["VELLUM_AUDITOR_TOKEN"], ca_file=self.ca) as auditor:
            with self.assertRaises(Forbidden) as caught:
                auditor.append(stream, [b"not allowed"])
            self.assertEqual(caught.exception.status, 403)
        limited = None
        # Bounded: the limit is 20 failures per minute and address.
        with Client(self.urls[:1], "vlm_" + secrets.token_hex(32), ca_file=self.ca) as stranger:
            for _ in range(40):
                try:
                    stranger.read_log()
                except RateLimited as error:
                    limited = error
                    break
                except Unauthorized:
                    continue
        self.assertIsNotNone(limited, "40 failed logins were never rate limited")
        self.assertEqual(limited.status, 429)
        self.assertIsNotNone(limited.retry_after)
        self.assertGreater(limited.retry_after, 0)
        # A valid token is still served.
        self.writer.append(stream, [b"still served"])

    def test_subscription_catches_up_then_goes_live(self):
        """Goal: a subscription from a position first delivers the events
        already committed, then events appended after it started, in
        position order, byte-exact."""
        stream = fresh_stream()
        backlog = [b"old-%d" % i for i in range(3)]
        receipt = self.writer.append(stream, backlog)
        live = [b"new-\x00\xff-%d" % i for i in range(2)]
        seen = []
        subscription = self.writer.subscribe(receipt.first_position, idle_timeout=LIVE_WAIT_S, heartbeats=True)
        deadline = time.monotonic() + LIVE_WAIT_S
        appender = None
        for event in subscription:
            # Heartbeats come every 2 s, so this bounds the wait.
            self.assertLess(time.monotonic(), deadline, f"subscription too slow; saw {len(seen)}")
            if isinstance(event, Heartbeat) or event.stream != stream:
                continue
            seen.append(event)
            if len(seen) == len(backlog) and appender is None:
                appender = threading.Thread(target=self.writer.append, args=(stream, live))
                appender.start()
            if len(seen) == len(backlog) + len(live):
                break
        subscription.close()
        self.assertIsNotNone(appender)
        appender.join(LIVE_WAIT_S)
        self.assertEqual([e.data for e in seen], backlog + live)
        self.assertEqual([e.offset for e in seen], list(range(len(backlog) + len(live))))
        positions = [e.position for e in seen]
        self.assertEqual(positions, sorted(positions))
        self.assertEqual(positions[0], receipt.first_position)
        for event in seen:
            self.assertEqual(len(event.salt), 32)


    # --- consumer groups -------------------------------------------------

    def _pull_until(self, client, group, consumer, count, max_events=10):
        """Pulls as `consumer` until `count` events came (bounded)."""
        got = []
        deadline = time.monotonic() + LIVE_WAIT_S
        while len(got) < count:
            self.assertLess(time.monotonic(), deadline, f"{consumer} pulled only {len(got)} of {count}")
            delivery = client.pull(group, consumer=consumer, max_events=max_events, wait_ms=1000)
            self.assertEqual((delivery.group, delivery.consumer), (group, consumer))
            got.extend(delivery.events)
        return got

    def test_group_two_consumers_ack_nack_park_replay(self):
        """Goal: two consumers of one group get disjoint events, byte-exact;
        ack counts once (a repeat is `already`); acking a position never
        delivered is NotDelivered; nack retry delivers again (attempt 2);
        nack park lists the event with its reason; replay delivers it afresh
        (attempt 1), a replay of a position not parked is NotParked; after
        everything is acked the group shows 4 acked, 0 parked, nothing in
        flight; a second create is GroupExists; delete, then NotFound."""
        stream = fresh_stream()
        name = f"py-{secrets.token_hex(6)}"
        info = self.writer.create_group(name, streams=str(stream), start="end", retry_max=3)
        self.assertEqual((info.name, info.streams, info.retry_max, info.acked, info.parked), (name, str(stream), 3, 0, 0))
        with self.assertRaises(GroupExists) as caught:
            self.writer.create_group(name, streams=str(stream))
        self.assertEqual((caught.exception.status, caught.exception.code), (409, "group_exists"))
        events = [b"g-\x00\xff-%d" % i for i in range(4)]
        receipt = self.writer.append(stream, events)
        positions = list(range(receipt.first_position, receipt.first_position + 4))
        by_position = dict(zip(positions, events))

        first = self._pull_until(self.writer, name, "consumer-a", 2, max_events=2)
        second = self._pull_until(self.writer, name, "consumer-b", 2)
        a = [d.position for d in first]
        b = [d.position for d in second]
        self.assertEqual(sorted(a + b), positions, "each event leased to exactly one consumer")
        self.assertFalse(set(a) & set(b))
        for delivered in first + second:
            self.assertEqual(delivered.event.data, by_position[delivered.position])
            self.assertEqual(delivered.attempt, 1)
            self.assertEqual(len(delivered.event.salt), 32)
        # Nothing more is due while both hold their leases.
        self.assertEqual(self.writer.pull(name, consumer="consumer-c", wait_ms=0).events, ())

        acked = self.writer.ack(name, [a[0]])
        self.assertEqual((acked.acked, acked.already), (1, 0))
        self.assertIsNotNone(acked.position)
        again = self.writer.ack(name, [a[0]])
        self.assertEqual((again.acked, again.already), (0, 1))
        with self.assertRaises(NotDelivered) as caught:
            self.writer.ack(name, [positions[-1] + 1000])
        self.assertEqual((caught.exception.status, caught.exception.code), (409, "not_delivered"))

        retried = self.writer.nack(name, [a[1]])
        self.assertEqual((retried.retried, retried.parked), (1, 0))
        redelivered = self._pull_until(self.writer, name, "consumer-b", 1)
        self.assertEqual([(d.position, d.attempt) for d in redelivered], [(a[1], 2)])
        parked = self.writer.nack(name, [a[1]], park=True, reason="poison \u2014 bad")
        self.assertEqual((parked.retried, parked.parked), (0, 1))
        self.writer.ack(name, b)
        listing = self.writer.parked(name)
        self.assertEqual([p.position for p in listing.parked], [a[1]])
        # The server keeps the reason given, prefixed with how it was parked.
        self.assertTrue(listing.parked[0].reason.endswith("poison \u2014 bad"), listing.parked[0].reason)
        self.assertEqual(self.writer.group(name).parked, 1)

        with self.assertRaises(NotParked) as caught:
            self.writer.replay(name, [a[0]])
        self.assertEqual((caught.exception.status, caught.exception.code), (409, "not_parked"))
        replayed = self.writer.replay(name, [a[1]])
        self.assertEqual(replayed.replayed, 1)
        back = self._pull_until(self.writer, name, "consumer-a", 1)
        self.assertEqual([(d.position, d.attempt, d.event.data) for d in back], [(a[1], 1, by_position[a[1]])])
        self.writer.ack(name, [a[1]])

        info = self.writer.group(name)
        self.assertEqual((info.acked, info.parked, info.in_flight), (4, 0, 0))
        self.assertGreater(info.checkpoint, positions[-1])
        self.assertEqual(self.writer.parked(name).parked, ())
        deleted = self.writer.delete_group(name)
        self.assertEqual(deleted.name, name)
        with self.assertRaises(NotFound):
            self.writer.group(name)

    # Short leases keep the suite's time bounded (a lease expiry costs
    # GROUP_LEASE_MS plus up to one reaper period, 250 ms, on the server),
    # yet long enough that a loaded CI machine settles a lease in time.
    GROUP_LEASE_MS = 1000

    def _parked_until(self, group, count):
        """The group's parked list once it holds `count` events (bounded)."""
        deadline = time.monotonic() + LIVE_WAIT_S
        while True:
            listing = self.writer.parked(group)
            if len(listing.parked) >= count:
                return listing
            self.assertLess(time.monotonic(), deadline, f"parked only {listing.parked}")
            time.sleep(0.05)

    def test_group_parks_past_retry_max_then_replays(self):
        """Goal: with retry_max=1 an event is delivered twice at most: one
        nacked twice is parked by the second nack, one whose lease expires
        twice is parked by the server; `parked()` lists both with their
        reasons, no third delivery comes, and `replay` delivers both again
        (attempt 1, same bytes)."""
        stream = fresh_stream()
        name = f"py-{secrets.token_hex(6)}"
        self.writer.create_group(name, streams=str(stream), start="end", retry_max=1, lease_ms=self.GROUP_LEASE_MS)
        try:
            events = [b"nacked-\x00", b"expired-\xff"]
            receipt = self.writer.append(stream, events)
            nacked, expired = receipt.first_position, receipt.first_position + 1
            # The lowest waiting position comes first: `expired` waits meanwhile.
            for attempt in (1, 2):
                got = self._pull_until(self.writer, name, f"nacker-{attempt}", 1, max_events=1)
                self.assertEqual([(d.position, d.attempt, d.event.data) for d in got], [(nacked, attempt, events[0])])
                answer = self.writer.nack(name, [nacked], reason="bad \u2014 row")
                self.assertEqual((answer.retried, answer.parked), (1, 0) if attempt == 1 else (0, 1))
            # Nobody settles `expired`: its leases run out, then the server parks it.
            for attempt in (1, 2):
                got = self._pull_until(self.writer, name, f"sleeper-{attempt}", 1)
                self.assertEqual([(d.position, d.attempt, d.event.data) for d in got], [(expired, attempt, events[1])])
            listing = self._parked_until(name, 2)
            reasons = {p.position: p.reason for p in listing.parked}
            self.assertEqual(sorted(reasons), [nacked, expired])
            self.assertTrue(reasons[nacked].startswith("nacked past the retry limit (1)"), reasons)
            self.assertTrue(reasons[nacked].endswith("bad \u2014 row"), reasons)
            self.assertIn("lease expired", reasons[expired])
            info = self.writer.group(name)
            self.assertEqual((info.parked, info.in_flight, info.acked), (2, 0, 0))
            self.assertGreater(info.checkpoint, expired, "parked events do not hold the checkpoint")
            # No third delivery, even after another lease period.
            quiet = self.writer.pull(name, consumer="sleeper-3", wait_ms=self.GROUP_LEASE_MS)
            self.assertEqual(quiet.events, ())

            self.assertEqual(self.writer.replay(name).replayed, 2)
            back = self._pull_until(self.writer, name, "consumer-4", 2)
            self.assertEqual(
                sorted((d.position, d.attempt, d.event.data) for d in back),
                [(nacked, 1, events[0]), (expired, 1, events[1])],
            )
            self.assertEqual(self.writer.ack(name, [nacked, expired]).acked, 2)
            info = self.writer.group(name)
            self.assertEqual((info.parked, info.in_flight, info.acked), (0, 0, 2))
            self.assertEqual(self.writer.parked(name).parked, ())
        finally:
            self.writer.delete_group(name)

    def test_group_expired_lease_goes_to_another_consumer(self):
        """Goal: an event whose consumer neither acks nor nacks is not
        given to a second consumer while the lease runs, and is delivered
        to it (attempt 2, same bytes) once the lease expired; the second
        consumer's ack settles it, the first one's late ack is `already`."""
        stream = fresh_stream()
        name = f"py-{secrets.token_hex(6)}"
        self.writer.create_group(name, streams=str(stream), start="end", retry_max=3, lease_ms=self.GROUP_LEASE_MS)
        try:
            data = b"\x00leased\xff"
            position = self.writer.append(stream, [data]).first_position
            before_lease = time.monotonic()
            first = self._pull_until(self.writer, name, "consumer-a", 1)
            self.assertEqual([(d.position, d.attempt) for d in first], [(position, 1)])
            early = self.writer.pull(name, consumer="consumer-b", wait_ms=0).events
            in_flight = self.writer.group(name).in_flight
            # The lease began after `before_lease`: it certainly ran at both
            # answers if they came within one lease period of it.
            if (time.monotonic() - before_lease) * 1000 < self.GROUP_LEASE_MS:
                self.assertEqual((early, in_flight), ((), 1))
            second = list(early) or self._pull_until(self.writer, name, "consumer-b", 1)
            waited_ms = (time.monotonic() - before_lease) * 1000
            self.assertGreaterEqual(waited_ms, self.GROUP_LEASE_MS, "redelivered before the lease expired")
            self.assertEqual([(d.position, d.attempt, d.event.data) for d in second], [(position, 2, data)])
            acked = self.writer.ack(name, [position])
            self.assertEqual((acked.acked, acked.already), (1, 0))
            late = self.writer.ack(name, [position])
            self.assertEqual((late.acked, late.already), (0, 1))
            info = self.writer.group(name)
            self.assertEqual((info.acked, info.parked, info.in_flight), (1, 0, 0))
        finally:
            self.writer.delete_group(name)

    def test_group_refusals_are_typed(self):
        """Goal: an auditor token may not create, pull from or ack a group
        (Forbidden, 403); an unknown group is NotFound (404) on every
        route; positions beyond 2^63-1, an empty or 1,001-long list and
        odd names are refused before anything is sent."""
        stream = fresh_stream()
        name = f"py-{secrets.token_hex(6)}"
        self.writer.create_group(name, streams=str(stream))
        try:
            with Client(self.urls, os.environ["VELLUM_AUDITOR_TOKEN"], ca_file=self.ca) as auditor:
                for call in [
                    lambda: auditor.create_group(f"{name}-x", streams=str(stream)),
                    lambda: auditor.pull(name),
                    lambda: auditor.ack(name, [1]),
                    lambda: auditor.replay(name),
                ]:
                    with self.assertRaises(Forbidden) as caught:
                        call()
                    self.assertEqual(caught.exception.status, 403)
            unknown = f"py-none-{secrets.token_hex(6)}"
            for call in [
                lambda: self.writer.group(unknown),
                lambda: self.writer.pull(unknown),
                lambda: self.writer.ack(unknown, [1]),
                lambda: self.writer.nack(unknown, [1], park=True),
                lambda: self.writer.parked(unknown),
                lambda: self.writer.replay(unknown),
                lambda: self.writer.delete_group(unknown),
            ]:
                with self.assertRaises(NotFound) as caught:
                    call()
                self.assertEqual(caught.exception.status, 404)
            with Client(["https://127.0.0.1:1"], "t", ca_file=self.ca, retries_max=0) as nowhere:
                for call in [
                    lambda: nowhere.ack(name, [2**64 - 1]),
                    lambda: nowhere.ack(name, []),
                    lambda: nowhere.nack(name, list(range(1001))),
                    lambda: nowhere.pull(name, wait_ms=5001),
                    lambda: nowhere.group("../v1/log"),
                    lambda: nowhere.group("g?x=1"),
                ]:
                    with self.assertRaises(BadRequest):
                        call()
        finally:
            self.writer.delete_group(name)

    # --- event envelope ----------------------------------------------------

    ENVELOPE_METADATA = '{"z": 1.50 , "a":[1e3], "s":"caf\\u00e9 \u89b3"}'

    def _append_enveloped(self):
        stream = fresh_stream()
        events = [
            NewEvent(
                b"\x00{payload}\xff",
                id=str(uuid.uuid4()),
                type="Observation\u2014\u89b3\u5bdf",
                content_type="application/fhir+json",
                metadata_json=self.ENVELOPE_METADATA,
            ),
            b"bare in an enveloped batch",
        ]
        receipt = self.writer.append(stream, events)
        return stream, events, receipt

    def test_type_filters_on_reads_subscriptions_and_groups(self):
        """Goal: `types=` (with `streams=`) filters on the server: a read,
        a subscription and a group deliver exactly the events of the named
        types, bytes equal, never an untyped one; a type holding a comma is
        named by a group's list; odd lists are typed refusals."""
        stream = fresh_stream()
        events = [
            NewEvent(b"p\xff", type="Patient"),
            NewEvent(b"o\x00", type="Obs ervation"),
            NewEvent(b"m", type="M\u00e9dication,x"),
            NewEvent(b"u", content_type="text/plain"),
        ]
        receipt = self.writer.append(stream, events)
        self.writer.append(stream, [b"bare"])
        first = receipt.first_position
        page = self.writer.read_log(first, 100, streams=str(stream), types=["Obs ervation", "patient"])
        self.assertEqual([(e.position, e.type, e.data) for e in page.events], [(first + 1, "Obs ervation", b"o\x00")])
        self.assertGreater(page.next_position, first + 1)
        deadline = time.monotonic() + LIVE_WAIT_S
        for event in self.writer.subscribe(first, streams=str(stream), types=["Patient"], idle_timeout=5.0):
            self.assertEqual((event.position, event.type, event.data), (first, "Patient", b"p\xff"))
            break
        self.assertLess(time.monotonic(), deadline)
        name = f"types-{secrets.token_hex(4)}"
        info = self.writer.create_group(name, streams=str(stream), types=["M\u00e9dication,x"], start=first)
        self.assertEqual(info.types, ("M\u00e9dication,x",))
        delivery = self.writer.pull(name, max_events=10, wait_ms=2000)
        self.assertEqual([(d.event.position, d.event.data) for d in delivery.events], [(first + 2, b"m")])
        self.writer.ack(name, [first + 2])
        self.writer.delete_group(name)
        with self.assertRaises(BadRequest):
            self.writer.read_log(first, 10, types=[])
        with self.assertRaises(ValueError):
            self.writer.read_log(first, 10, types=["a,b"])

    def test_enveloped_event_reads_back_and_proof_checks(self):
        """Goal: an enveloped append's receipt checks offline; read back,
        the fields are the ones sent (metadata as its exact text) and
        check_event of the read Event against a served proof passes, also
        for the fieldless event of the same batch, and for the event as a
        group pull delivers it; `vellum proof check` agrees on the rebuilt
        bytes."""
        stream, events, receipt = self._append_enveloped()
        for check in receipt.check(self.policy, events):
            self.assertTrue(check.passed, check)
        read = self.writer.read_stream(stream).events
        sent = events[0]
        self.assertEqual(
            (read[0].envelope, read[0].id, read[0].type, read[0].content_type, read[0].metadata_json, read[0].data),
            (True, sent.id, sent.type, sent.content_type, self.ENVELOPE_METADATA, sent.data),
        )
        self.assertEqual(
            (read[1].envelope, read[1].id, read[1].type, read[1].content_type, read[1].metadata_json, read[1].data),
            (True, None, None, None, None, events[1]),
        )
        cases = []
        for offset, event in enumerate(read):
            proof = self.writer.proof(stream, offset)
            self.assertTrue(check_event(proof, self.policy, event.salt, event).passed, offset)
            self.assertTrue(event.check(self.policy, proof).passed, offset)
            # The bare payload is not what was committed.
            self.assertEqual(check_event(proof, self.policy, event.salt, event.data).failed_parts(), ["commitment"])
            salt = base64.b64encode(event.salt).decode()
            cases.append((proof, salt, event.committed_bytes(), []))
            cases.append((proof, salt, event.data, ["commitment"]))
        # The same events through the global log, a subscription and a pull.
        logged = [e for e in self.writer.read_log(receipt.first_position, 2).events if e.stream == stream]
        self.assertEqual(logged, list(read))
        subscription = self.writer.subscribe(receipt.first_position, idle_timeout=LIVE_WAIT_S, heartbeats=True)
        streamed = []
        deadline = time.monotonic() + LIVE_WAIT_S
        for item in subscription:
            self.assertLess(time.monotonic(), deadline, "subscription too slow")
            if isinstance(item, Heartbeat) or item.stream != stream:
                continue
            streamed.append(item)
            if len(streamed) == 2:
                break
        subscription.close()
        self.assertEqual(streamed, list(read))
        name = f"py-{secrets.token_hex(6)}"
        self.writer.create_group(name, streams=str(stream))
        try:
            pulled = self._pull_until(self.writer, name, "env", 2)
            self.assertEqual([d.event for d in pulled], list(read))
            self.writer.ack(name, [d.position for d in pulled])
        finally:
            self.writer.delete_group(name)
        self._same_as_vellum_proof_check(cases)

    def test_tampered_envelope_fails_the_commitment(self):
        """Goal: one changed byte of the metadata text (or another id, type,
        content type, payload, or the envelope flag dropped) fails only the
        commitment part of the check of a served proof."""
        stream, _events, _receipt = self._append_enveloped()
        event = self.writer.read_stream(stream).events[0]
        proof = self.writer.proof(stream, 0)
        self.assertTrue(check_event(proof, self.policy, event.salt, event).passed)
        tampered = {
            "metadata byte": {"metadata_json": event.metadata_json.replace("1.50", "1.51")},
            "metadata spelling": {"metadata_json": event.metadata_json.replace("1.50", "1.5")},
            "metadata whitespace": {"metadata_json": event.metadata_json.replace(" ,", ",")},
            "id": {"id": str(uuid.uuid4())},
            "type": {"type": event.type + "x"},
            "content type": {"content_type": None},
            "payload": {"data": event.data + b"\x00"},
            "envelope flag": {"envelope": False},
            "not encodable": {"id": event.id.upper()},
        }
        for what, change in tampered.items():
            changed = dataclasses.replace(event, **change)
            self.assertEqual(check_event(proof, self.policy, event.salt, changed).failed_parts(), ["commitment"], what)


if __name__ == "__main__":
    unittest.main()
