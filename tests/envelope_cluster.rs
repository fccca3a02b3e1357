//! The event envelope through the API of a live three-replica cluster:
//! fields round-trip byte for byte on every replica and open the leaf's
//! commitment, the duplicate-id rule holds through a backup and after a
//! `kill -9` of the primary, odd inputs get named errors, no envelope byte
//! is in clear in any file, and `vellum verify` passes on every replica.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::value::RawValue;
use vellum::api::{ErrorCode, EventIn, LogEvent};
use vellum::client::AppendError;
use vellum::local_cluster::LocalCluster;
use vellum_audit::proof::{InclusionProof, check_event};

mod support;
use support::{TestDir, client_of};

const WAIT: Duration = Duration::from_secs(60);
const STREAM: u64 = 300;
const MARKER: &str = "QZJMARKER-41c7";
/// Key order, number spellings, inner whitespace and escapes a
/// re-serializing server would change.
const METADATA: &str = r#"{"z": 1.50, "a" : [ 1e3, -0.0, "\u00e9" ], "m":"QZJMARKER-41c7"}"#;
const PAYLOAD: &str = r#"{"resourceType": "Observation", "valueQuantity": {"value": 1.50}}"#;

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).expect("valid JSON")
}

fn uuid(n: u8) -> String {
    format!("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a{n:02x}")
}

/// A FHIR-like event with every field, and a raw one with none.
fn batch() -> Vec<EventIn> {
    vec![
        EventIn {
            json: Some(raw(PAYLOAD)),
            id: Some(uuid(1)),
            event_type: Some(format!("Observation—観察 {MARKER}")),
            content_type: Some("application/fhir+json".to_string()),
            metadata: Some(raw(METADATA)),
            ..EventIn::default()
        },
        EventIn::bytes(b"\x00\xffraw"),
    ]
}

/// Two events that both carry ids.
fn id_batch() -> Vec<EventIn> {
    vec![
        EventIn {
            id: Some(uuid(4)),
            event_type: Some("MedicationRequest".to_string()),
            ..EventIn::bytes(b"four")
        },
        EventIn {
            id: Some(uuid(5)),
            ..EventIn::bytes(b"five")
        },
    ]
}

fn refusal_code(outcome: Result<vellum::api::AppendReceipt, AppendError>) -> ErrorCode {
    match outcome {
        Err(AppendError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn decoded(event: &LogEvent) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(&event.base64)
        .expect("base64")
}

/// Goal: envelope fields round-trip byte for byte through the API on every
/// replica; the duplicate-id rule (same request, later request, through a
/// backup, after the primary is killed) stores nothing twice; odd inputs
/// are refused by name; nothing is in clear on disk; verify passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envelopes_round_trip_and_ids_are_never_stored_twice() {
    let dir = TestDir::new("vellum-envelope");
    let exe = support::vellum_exe();
    let mut cluster =
        LocalCluster::start(&dir.path().join("cluster"), 3, exe).expect("cluster starts");
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let client = cluster.client(None).expect("client");
    let policy_text = std::fs::read_to_string(&cluster.dev.policy_path).expect("policy");
    let policy = vellum_audit::policy::Policy::parse(&policy_text).expect("policy parses");

    let receipt = client
        .append_events(STREAM, batch(), None)
        .await
        .expect("append with envelopes");
    assert!(!receipt.duplicate);
    assert_eq!((receipt.first_offset, receipt.next_offset), (0, 2));
    let commit = cluster.health().await[primary]
        .as_ref()
        .expect("health")
        .commit;
    cluster
        .wait_commit(&[0, 1, 2], commit, WAIT)
        .await
        .expect("every replica has the append");

    // Byte for byte on every replica, and the commitment opens.
    for replica in 0..3 {
        let page = client_of(&cluster, replica)
            .read_stream(STREAM, 0, 10)
            .await
            .expect("read");
        let [full, bare] = &page.events[..] else {
            panic!("replica {replica} holds two events: {:?}", page.events);
        };
        assert_eq!(full.id.as_deref(), Some(uuid(1).as_str()));
        assert_eq!(full.event_type.as_deref(), batch()[0].event_type.as_deref());
        assert_eq!(full.content_type.as_deref(), Some("application/fhir+json"));
        assert_eq!(
            full.metadata.as_deref(),
            Some(METADATA),
            "metadata bytes as sent"
        );
        assert_eq!(decoded(full), PAYLOAD.as_bytes());
        assert!(full.envelope && bare.envelope);
        assert_eq!((bare.id.as_ref(), bare.metadata.as_ref()), (None, None));
        assert_eq!(decoded(bare), b"\x00\xffraw");
        for (i, event) in [full, bare].into_iter().enumerate() {
            let proof = InclusionProof::parse(&receipt.proofs[i]).expect("proof parses");
            let salt: [u8; 32] = base64::engine::general_purpose::STANDARD
                .decode(&event.salt)
                .expect("salt")
                .try_into()
                .expect("32 bytes");
            let committed = event.committed_bytes().expect("encodes");
            let check = check_event(&proof, &policy, &salt, &committed);
            assert!(check.passed(), "event {i} opens its leaf: {check:?}");
            let payload_only = check_event(&proof, &policy, &salt, &decoded(event));
            assert!(
                !payload_only.passed(),
                "the leaf commits to the envelope too"
            );
        }
    }
    // Global reads (what subscriptions page through) carry the fields too.
    let global = client.read_log(0, 1000).await.expect("global read");
    let mine = global
        .events
        .iter()
        .find(|e| e.stream == STREAM && e.offset == 0)
        .expect("the event in the global log");
    assert_eq!(mine.metadata.as_deref(), Some(METADATA));
    assert_eq!(mine.id.as_deref(), Some(uuid(1).as_str()));
    // The raw JSON text of a read answer holds the metadata exactly.
    let answer =
        serde_json::to_string(&client.read_stream(STREAM, 0, 1).await.expect("read").events[0])
            .expect("json");
    assert!(answer.contains(METADATA), "{answer}");

    // A batch with an event without id is never a resend (docs/api.md).
    let code = refusal_code(client.append_events(STREAM, batch(), None).await);
    assert_eq!(
        code,
        ErrorCode::DuplicateEventId,
        "not a resend: event 1 has no id"
    );
    // Duplicates: a resend, through the primary and through each backup.
    let ids = id_batch();
    let first = client
        .append_events(STREAM, ids.clone(), None)
        .await
        .expect("append with ids");
    assert_eq!((first.first_offset, first.duplicate), (2, false));
    for replica in 0..3 {
        let resent = client_of(&cluster, replica)
            .append_events(STREAM, ids.clone(), None)
            .await
            .expect("resend");
        assert!(resent.duplicate, "resend through replica {replica}");
        assert_eq!((resent.first_offset, resent.op), (2, first.op));
    }
    let repeated = vec![
        EventIn {
            id: Some(uuid(6)),
            ..EventIn::bytes(b"once")
        },
        EventIn {
            id: Some(uuid(6)),
            ..EventIn::bytes(b"again")
        },
    ];
    let code = refusal_code(client.append_events(STREAM, repeated, None).await);
    assert_eq!(
        code,
        ErrorCode::DuplicateEventId,
        "same id twice in one request"
    );
    let partial = vec![id_batch().remove(1)];
    let code = refusal_code(client.append_events(STREAM, partial, None).await);
    assert_eq!(code, ErrorCode::DuplicateEventId, "a partial resend");

    // Odd inputs.
    let odd = |f: &dyn Fn(&mut EventIn)| {
        let mut event = EventIn::bytes(b"odd");
        f(&mut event);
        vec![event]
    };
    let cases: Vec<(Vec<EventIn>, ErrorCode)> = vec![
        (
            odd(&|e| e.id = Some(uuid(9).to_uppercase())),
            ErrorCode::InvalidEnvelope,
        ),
        (
            odd(&|e| e.id = Some(format!("{{{}}}", uuid(9)))),
            ErrorCode::InvalidEnvelope,
        ),
        (
            odd(&|e| e.id = Some("not-a-uuid".into())),
            ErrorCode::InvalidEnvelope,
        ),
        (
            odd(&|e| e.event_type = Some("a\nb".into())),
            ErrorCode::InvalidEnvelope,
        ),
        (
            odd(&|e| e.event_type = Some(String::new())),
            ErrorCode::InvalidEnvelope,
        ),
        (
            odd(&|e| e.content_type = Some("x".repeat(257))),
            ErrorCode::InvalidEnvelope,
        ),
        (
            odd(&|e| e.event_type = Some("t".repeat(257))),
            ErrorCode::InvalidEnvelope,
        ),
        (
            odd(&|e| e.metadata = Some(raw(&format!("\"{}\"", "m".repeat(1024 * 1024))))),
            ErrorCode::EnvelopeTooLarge,
        ),
    ];
    for (events, expected) in cases {
        let code = refusal_code(client.append_events(STREAM, events, None).await);
        assert_eq!(code, expected);
    }
    let huge = client
        .append_events(STREAM, odd(&|e| e.id = Some(uuid(8))), Some(u64::MAX))
        .await;
    assert!(huge.is_err(), "expected offset 2^64-1: {huge:?}");
    let read_far = client.read_stream(STREAM, u64::MAX, 10).await;
    assert!(read_far.is_err() || read_far.is_ok_and(|p| p.events.is_empty()));
    assert_eq!(
        client
            .read_stream(STREAM, 0, 100)
            .await
            .expect("read")
            .events
            .len(),
        4,
        "no refused request stored anything"
    );

    // kill -9 the primary: the new primary knows the ids from its log.
    cluster.kill(primary).expect("kill -9 the primary");
    let new_primary = usize::from(cluster.wait_primary(WAIT).await.expect("new primary"));
    assert_ne!(new_primary, primary);
    let resent = client
        .append_events(STREAM, id_batch(), None)
        .await
        .expect("resend to the new primary");
    assert!(resent.duplicate, "the new primary answers a duplicate");
    cluster.start_replica(primary).expect("restart");
    let fresh = client
        .append_events(STREAM, odd(&|e| e.id = Some(uuid(3))), None)
        .await
        .expect("a new id appends");
    assert_eq!(fresh.first_offset, 4);
    let commit = cluster.health().await[new_primary]
        .as_ref()
        .expect("health")
        .commit;
    cluster
        .wait_commit(&[0, 1, 2], commit, WAIT)
        .await
        .expect("the restarted replica catches up");
    let resent = client_of(&cluster, primary)
        .append_events(STREAM, odd(&|e| e.id = Some(uuid(3))), None)
        .await
        .expect("resend through the restarted replica");
    assert!(resent.duplicate);
    // An export bundle of the enveloped events verifies offline (its
    // plaintexts are the encoded envelopes the leaves commit to).
    let cluster_dir = cluster.dev.dir.clone();
    let policy_path = cluster.dev.policy_path.clone();
    let bundle = dir.path().join("out").join("bundle");
    tokio::task::spawn_blocking(move || {
        let s = |p: &Path| p.display().to_string();
        let (code, _, err) = support::vellum_cli(&[
            "export",
            "events",
            "--cluster",
            &s(&cluster_dir),
            "--stream",
            &STREAM.to_string(),
            "--from",
            "0",
            "--to",
            "5",
            "--purpose",
            "envelope test",
            "--out",
            &s(&bundle),
        ]);
        assert_eq!(code, 0, "export events: {err}");
        let (code, report, err) = support::vellum_cli(&[
            "verify",
            "--bundle",
            &s(&bundle),
            "--policy",
            &s(&policy_path),
        ]);
        assert_eq!(code, 0, "the bundle verifies offline:\n{report}\n{err}");
    })
    .await
    .expect("export task");
    cluster.stop().expect("stop");

    let dirs: Vec<PathBuf> = (0..3).map(|i| cluster.data_dir(i)).collect();
    for path in files_under(&dir.path().join("cluster")) {
        let bytes = std::fs::read(&path).expect("read file");
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{} holds envelope bytes in clear",
            path.display()
        );
    }
    tokio::task::spawn_blocking(move || {
        for dir in &dirs {
            let report = vellum::verify::verify_data_dir(dir, &policy, None, &mut |_| {});
            assert!(report.passed, "{} verifies:\n{report:?}", dir.display());
        }
    })
    .await
    .expect("verify task");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
