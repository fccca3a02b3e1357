//! Vellum compliance: the access trail's event format, export bundles and
//! the export writers (FHIR R4 AuditEvent, CSV, NDJSON, accounting of
//! disclosures), and the HIPAA control map (`CONTROLS.md`).
//!
//! Pure library code: it reads and writes files and nothing else (no
//! sockets, no SQL, no async runtime), so `vellum verify --bundle` runs
//! anywhere an auditor can copy a directory.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod custody;
pub mod disclosures;
pub mod fhir;
pub mod groups;
pub mod tabular;
pub mod trail;
