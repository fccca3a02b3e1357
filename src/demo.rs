//! `vellum demo`: the end-to-end story on a fresh data directory, on a
//! single replica for now — init, append sample EHR events to a few
//! patients' streams, show a receipt, read back, prove an event and check the
//! proof offline with the policy alone, prove the log only grew, verify.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use vellum_audit::proof::InclusionProof;

use crate::log::{LocalLog, LocalPersister, LogOptions, receipt};
use crate::types::{EventPersister, StreamId};

/// The demo's patients: (stream id, display name used only in sample payloads).
const PATIENTS: [(u64, &str); 3] = [
    (1001, "patient-a"),
    (1002, "patient-b"),
    (1003, "patient-c"),
];
/// Sample events appended per patient.
pub const EVENTS_PER_PATIENT: u64 = 4;

/// What the demo showed, for `--json` and for tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoSummary {
    /// The data directory used.
    pub data_dir: String,
    /// Events appended.
    pub events_appended: u64,
    /// Events read back identical to what was appended.
    pub events_read_back: u64,
    /// The inclusion proof checked offline.
    pub proof_verified: bool,
    /// The consistency proof between the first and last certificate checked.
    pub consistency_verified: bool,
    /// `vellum verify` passed.
    pub verify_passed: bool,
    /// Tree size reached.
    pub tree_size: u64,
}

/// Runs the story in `data_dir` (which must not be initialized yet),
/// narrating to `out`.
pub fn run_demo(data_dir: &Path, out: &mut dyn Write) -> anyhow::Result<DemoSummary> {
    writeln!(
        out,
        "== 1. init: keys, trust policy, empty log and index in {}",
        data_dir.display()
    )?;
    let init = crate::init::init_data_dir(data_dir, None)?;
    writeln!(
        out,
        "   cluster {}  replica key {}",
        init.cluster, init.vkey
    )?;

    let (log, _) = LocalLog::open(data_dir, LogOptions::default())?;
    let log = Arc::new(log);
    let persister = LocalPersister::new(Arc::clone(&log));
    writeln!(
        out,
        "== 2. append sample EHR events through EventPersister::persist_blocking"
    )?;
    let mut appended = Vec::new();
    let mut first_checkpoint = None;
    for round in 0..EVENTS_PER_PATIENT {
        for (stream, name) in PATIENTS {
            let event = sample_event(name, round);
            let offset =
                persister.persist_blocking(StreamId(stream), vec![Bytes::from(event.clone())])?;
            appended.push((stream, offset.0 - 1, event));
        }
        if first_checkpoint.is_none() {
            first_checkpoint = log.latest_certificate();
        }
    }
    writeln!(
        out,
        "   {} events on {} streams",
        appended.len(),
        PATIENTS.len()
    )?;

    writeln!(
        out,
        "== 3. a receipt: offsets, positions, commit certificate, inclusion proof"
    )?;
    let last = log.append(
        PATIENTS[0].0,
        &[Bytes::from(sample_event(PATIENTS[0].1, 99))],
        None,
        None,
    )?;
    appended.push((
        PATIENTS[0].0,
        last.first_offset,
        sample_event(PATIENTS[0].1, 99),
    ));
    let receipt = receipt(&log, &last)?;
    writeln!(
        out,
        "   stream {} offset {} position {} op {}",
        receipt.stream, receipt.first_offset, receipt.first_position, receipt.op
    )?;
    for line in receipt.certificate.lines() {
        writeln!(out, "   | {line}")?;
    }

    writeln!(out, "== 4. read back, byte for byte")?;
    let mut read_back = 0u64;
    for (stream, _) in PATIENTS {
        let events = log.read(stream, 0, 1000)?;
        for event in events {
            let original = appended
                .iter()
                .find(|(s, o, _)| *s == stream && *o == event.offset);
            anyhow::ensure!(
                original.is_some_and(|(_, _, e)| e.as_bytes() == event.payload.as_ref()),
                "stream {stream} offset {} did not read back identical",
                event.offset
            );
            read_back += 1;
        }
    }
    writeln!(out, "   {read_back} of {} events identical", appended.len())?;

    writeln!(
        out,
        "== 5. prove one event; check the proof with the public policy alone"
    )?;
    let proof_text = log.inclusion_proof(PATIENTS[1].0, 0)?.encode();
    let policy = log.policy().clone();
    let parsed = InclusionProof::parse(&proof_text)?;
    let proof_verified = parsed.verify_event(&policy).is_ok();
    writeln!(
        out,
        "   leaf {} in tree of size {}: {}",
        parsed.index,
        parsed.checkpoint.checkpoint.size,
        if proof_verified { "verified" } else { "FAILED" }
    )?;

    writeln!(
        out,
        "== 6. prove the log only grew since the first checkpoint (consistency)"
    )?;
    let old = first_checkpoint.ok_or_else(|| anyhow::anyhow!("no first checkpoint"))?;
    let consistency = log.consistency_proof(old.checkpoint.size, None)?;
    let consistency_verified = consistency.verify(&old.checkpoint.root, &policy).is_ok();
    writeln!(
        out,
        "   size {} -> {}: {}",
        consistency.old_size,
        consistency.new_size,
        if consistency_verified {
            "verified"
        } else {
            "FAILED"
        }
    )?;
    let tree_size = consistency.new_size;
    drop(persister);
    Arc::into_inner(log)
        .ok_or_else(|| anyhow::anyhow!("log still shared"))?
        .close()?;

    writeln!(
        out,
        "== 7. vellum verify: records, chain, seals, roots, signatures, index"
    )?;
    let report = crate::verify::verify_data_dir(data_dir, &policy, None, &mut |_| {});
    for line in report.to_text().lines() {
        writeln!(out, "   {line}")?;
    }
    let summary = DemoSummary {
        data_dir: data_dir.display().to_string(),
        events_appended: appended.len() as u64,
        events_read_back: read_back,
        proof_verified,
        consistency_verified,
        verify_passed: report.passed,
        tree_size,
    };
    writeln!(
        out,
        "== summary: {} appended, {} read back, proof {}, consistency {}, verify {}",
        summary.events_appended,
        summary.events_read_back,
        ok(proof_verified),
        ok(consistency_verified),
        ok(report.passed)
    )?;
    writeln!(
        out,
        "   try: vellum verify --data-dir {0}   |   vellum read --data-dir {0} --stream {1}",
        data_dir.display(),
        PATIENTS[0].0
    )?;
    Ok(summary)
}

fn ok(passed: bool) -> &'static str {
    if passed { "ok" } else { "FAILED" }
}

/// A small FHIR-like observation; synthetic, no real person.
fn sample_event(patient: &str, round: u64) -> String {
    let codes = [
        ("8867-4", "Heart rate", "/min", 72),
        ("8310-5", "Body temperature", "Cel", 37),
        ("29463-7", "Body weight", "kg", 70),
        ("8480-6", "Systolic blood pressure", "mm[Hg]", 120),
    ];
    let (code, display, unit, base) = codes[usize::try_from(round % 4).unwrap_or(0)];
    serde_json::json!({
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": format!("Patient/{patient}")},
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "valueQuantity": {"value": base + round, "unit": unit},
    })
    .to_string()
}
