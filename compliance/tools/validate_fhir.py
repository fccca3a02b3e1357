#!/usr/bin/env python3
"""Validates `vellum export audit --format fhir` output with an independent
FHIR implementation: the `fhir.resources` models (pydantic), so the check
does not rely on Vellum's own understanding of the AuditEvent definition.

fhir.resources 6.5 ships the FHIR 4.3.0 (R4B) models; AuditEvent is the
same resource in R4 (4.0.1) and R4B. Setup, once:

    python3 -m venv /tmp/fhirvenv
    /tmp/fhirvenv/bin/pip install "fhir.resources<7" "pydantic<2"

Usage: /tmp/fhirvenv/bin/python compliance/tools/validate_fhir.py audit.ndjson
Exits non-zero and names the line of the first invalid resource.
"""
import json
import sys

from fhir.resources.auditevent import AuditEvent


def main(path: str) -> int:
    count = 0
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                AuditEvent.parse_obj(json.loads(line))
            except Exception as error:  # report any failure with its line
                print(f"{path}:{number}: not a valid AuditEvent: {error}")
                return 1
            count += 1
    print(f"{path}: {count} valid AuditEvent resources")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
