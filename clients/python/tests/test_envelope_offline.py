"""Offline checks of the event envelope: the encoder against the repo's
golden vector (tests/golden/event_envelope.bin, written by the reference
encoder audit/src/envelope.rs), a read answer's fields rebuilding exactly
those bytes (metadata kept as its JSON text), and every field change giving
other committed bytes. No network (the live suite checks real proofs)."""

import json
import os
import unittest
from pathlib import Path

from vellum_client import Event
from vellum_client import envelope
from vellum_client.client import _event, _loads_events
from vellum_client.proof import commitment

# The golden file's fields: `full()` in audit/src/envelope.rs's tests.
GOLDEN_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
GOLDEN_TYPE = "Observation"
GOLDEN_CONTENT_TYPE = "application/fhir+json"
GOLDEN_METADATA = '{"source":"lab-7","n":1.50}'
GOLDEN_PAYLOAD = b'{"resourceType":"Observation"}'


def golden_bytes() -> bytes:
    """The repo's golden file: found from VELLUM_REPO (set by
    .ci/python_client.sh, which runs a copy of this directory) or from this
    file's place in the repo. Missing is a failure, not a skip."""
    candidates = []
    if os.environ.get("VELLUM_REPO"):
        candidates.append(Path(os.environ["VELLUM_REPO"]) / "tests/golden/event_envelope.bin")
    candidates.append(Path(__file__).resolve().parents[3] / "tests/golden/event_envelope.bin")
    for path in candidates:
        if path.is_file():
            return path.read_bytes()
    raise AssertionError(f"golden file not found in {[str(p) for p in candidates]}; set VELLUM_REPO")


def golden_answer(metadata_text: str = GOLDEN_METADATA) -> str:
    """A read answer (as the server writes it: metadata spliced in raw)
    holding the golden event."""
    doc = {
        "position": 7,
        "stream": 5001,
        "offset": 0,
        "base64": "eyJyZXNvdXJjZVR5cGUiOiJPYnNlcnZhdGlvbiJ9",
        "salt": "",
        "envelope": True,
        "id": GOLDEN_ID,
        "type": GOLDEN_TYPE,
        "content_type": GOLDEN_CONTENT_TYPE,
        "metadata": "@META@",
    }
    text = json.dumps({"stream": 5001, "events": [doc], "next_offset": 1}, separators=(",", ":"))
    return text.replace('"@META@"', metadata_text)


class Golden(unittest.TestCase):
    def test_encoding_equals_the_golden_file(self):
        """Goal: the encoder's bytes of the golden fields equal
        tests/golden/event_envelope.bin byte for byte."""
        encoded = envelope.encode(
            GOLDEN_PAYLOAD,
            id=GOLDEN_ID,
            type=GOLDEN_TYPE,
            content_type=GOLDEN_CONTENT_TYPE,
            metadata_json=GOLDEN_METADATA,
        )
        self.assertEqual(encoded, golden_bytes())

    def test_read_answer_rebuilds_the_golden_bytes(self):
        """Goal: an enveloped event parsed from a read answer keeps its
        metadata as the exact text (`1.50` stays `1.50`) and its
        committed_bytes() are the golden file's bytes."""
        event = _event(_loads_events(golden_answer().encode())["events"][0])
        self.assertEqual(event.metadata_json, GOLDEN_METADATA)
        self.assertEqual(event.metadata(), {"source": "lab-7", "n": 1.5})
        self.assertEqual(event.data, GOLDEN_PAYLOAD)
        self.assertEqual(event.committed_bytes(), golden_bytes())

    def test_no_envelope_commits_the_bare_payload(self):
        """Goal: an event without `envelope` commits its payload as is."""
        event = Event(position=1, stream=2, offset=0, data=b"VLEV\x01\x00x", salt=b"")
        self.assertEqual(event.committed_bytes(), b"VLEV\x01\x00x")
        bare = Event(position=1, stream=2, offset=0, data=b"x", salt=b"", envelope=True)
        self.assertEqual(bare.committed_bytes(), b"VLEV\x01\x00x")


class MetadataText(unittest.TestCase):
    def test_metadata_text_is_kept_byte_for_byte(self):
        """Goal: whitespace, key order, duplicate keys, number spellings,
        escapes and raw non-ASCII of the metadata come back exactly; a
        nested `metadata` key does not confuse the outer one; other members
        parse as json.loads would."""
        for text in [
            '{"z": 1.50 , "a":[1e3, -0.0]}',
            '{"k":1,"k":2}',
            '"caf\\u00e9 \\/ \\ud83d\\ude00"',
            '"Observation\u2014\u89b3\u5bdf"',
            '{"metadata":{"metadata":  [ ]}}',
            "12.000",
            "[ ]",
            "true",
        ]:
            answer = golden_answer(text)
            parsed = _loads_events(answer.encode("utf-8"))
            event = _event(parsed["events"][0])
            self.assertEqual(event.metadata_json, text)
            self.assertEqual(event.metadata(), json.loads(text))
            self.assertEqual(
                envelope.encode(event.data, id=event.id, type=event.type, content_type=event.content_type,
                                metadata_json=text),
                event.committed_bytes(),
            )
            expected = json.loads(answer)
            del expected["events"][0]["metadata"]
            del parsed["events"][0]["metadata"]
            self.assertEqual(parsed, expected)


class Tampering(unittest.TestCase):
    def test_every_field_change_changes_the_commitment(self):
        """Goal: changing any one field (id, type, content type, one byte of
        metadata, payload, the envelope flag) gives other committed bytes,
        so the leaf's commitment no longer opens."""
        base = _event(_loads_events(golden_answer())["events"][0])
        salt = bytes(range(32))
        good = commitment(salt, base.committed_bytes())
        fields = dict(
            position=base.position, stream=base.stream, offset=base.offset, data=base.data, salt=salt,
            envelope=True, id=base.id, type=base.type, content_type=base.content_type,
            metadata_json=base.metadata_json,
        )
        changes = {
            "id": {"id": GOLDEN_ID[:-1] + "c"},
            "id absent": {"id": None},
            "type": {"type": "Observatioo"},
            "content_type": {"content_type": "application/fhir+xml"},
            "content_type absent": {"content_type": None},
            "metadata byte": {"metadata_json": GOLDEN_METADATA.replace("1.50", "1.51")},
            "metadata spelling": {"metadata_json": GOLDEN_METADATA.replace("1.50", "1.5")},
            "metadata absent": {"metadata_json": None},
            "payload": {"data": GOLDEN_PAYLOAD + b" "},
            "no envelope": {"envelope": False},
        }
        for name, change in changes.items():
            event = Event(**{**fields, **change})
            self.assertNotEqual(commitment(salt, event.committed_bytes()), good, name)
        self.assertEqual(commitment(salt, Event(**fields).committed_bytes()), good)

    def test_fields_the_server_never_stores_are_refused(self):
        """Goal: what the reference encoder's check refuses is a ValueError
        here, never other bytes: a non-canonical id, an empty, oversized or
        control-character type, metadata not one JSON value or over 16 KiB."""
        bad = [
            {"id": GOLDEN_ID.upper()},
            {"id": "{" + GOLDEN_ID + "}"},
            {"id": GOLDEN_ID.replace("-", "")},
            {"type": ""},
            {"type": "a\x00b"},
            {"content_type": "a\u0085b"},
            {"type": "x" * 257},
            {"metadata_json": ""},
            {"metadata_json": "{"},
            {"metadata_json": "1 2"},
            {"metadata_json": "NaN"},
            {"metadata_json": '"' + "x" * (16 * 1024) + '"'},
        ]
        for fields in bad:
            with self.assertRaises(ValueError, msg=repr(fields)[:80]):
                envelope.encode(b"p", **fields)
        # The limits themselves are fine.
        envelope.encode(b"p", type="x" * 256, metadata_json='"' + "x" * (16 * 1024 - 2) + '"')


if __name__ == "__main__":
    unittest.main()
