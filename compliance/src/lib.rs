//! Vellum compliance: the access trail's event format, export bundles and
//! the export writers (FHIR R4 AuditEvent, CSV, NDJSON, accounting of
//! disclosures), and the HIPAA control map (`CONTROLS.md`).
#![forbid(unsafe_code)]

pub mod trail;
