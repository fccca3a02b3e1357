//! Key custody on three real replica processes (P6, P7): crypto-shredding
//! end to end, with a replica down during the shred and a wiped replica
//! rebuilt afterwards; legal holds and retention floors refusing a shred;
//! wrong roles and odd inputs refused and recorded. One cluster for all of
//! it, so the binary stays fast.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use vellum::local_cluster::{LocalCluster, wipe_replica_data};
use vellum_audit::record::RecordKind;
use vellum_audit::segment::scan_log_dir;
use vellum_compliance::trail::{AccessAction, AccessEvent};

mod support;
use support::TestDir;

const WAIT: Duration = Duration::from_secs(60);
const SHREDDED: u64 = 5001;
const KEPT: u64 = 5002;
const RETAINED: u64 = 5003;

/// POSTs `body` to `path` on replica `i` with `token` (None: no token).
async fn post(
    cluster: &LocalCluster,
    i: usize,
    token: Option<&str>,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem()).expect("dev CA"))
        .timeout(WAIT)
        .build()
        .expect("http client");
    let mut request = http
        .post(format!("{}{path}", cluster.dev.api_urls[i]))
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.expect("request");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

async fn get(cluster: &LocalCluster, i: usize, token: &str, path: &str) -> (u16, Value) {
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem()).expect("dev CA"))
        .timeout(WAIT)
        .build()
        .expect("http client");
    let answer = http
        .get(format!("{}{path}", cluster.dev.api_urls[i]))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// The key ids a replica's shred tombstone of `stream` lists, if it has one
/// (`vellum-shred-v1 stream=<s> shredded_at_ms=<t> keys=<id>,...`).
fn tombstone_keys(data: &Path, stream: u64) -> Option<Vec<u64>> {
    let path = data.join("keys").join(format!("shred-{stream:020}.tomb"));
    let text = std::fs::read_to_string(path).ok()?;
    let keys = text
        .trim_end()
        .split(' ')
        .find_map(|field| field.strip_prefix("keys="))
        .expect("a keys= field");
    Some(
        keys.split(',')
            .filter(|id| !id.is_empty())
            .map(|id| id.parse().expect("key id"))
            .collect(),
    )
}

/// Waits until replica `data` has applied the shred: its tombstone exists
/// and no key file it lists remains.
async fn wait_shredded_on_disk(data: &Path, what: &str) -> Vec<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(keys) = tombstone_keys(data, SHREDDED) {
            let left: Vec<u64> = keys
                .iter()
                .copied()
                .filter(|id| data.join("keys").join(format!("dek-{id:020}.key")).exists())
                .collect();
            if left.is_empty() {
                return keys;
            }
        }
        assert!(Instant::now() < deadline, "{what} never destroyed the key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tries every key the stopped replica's key store still holds (unwrapped
/// with its KEK) against every event frame of `stream` in its log; returns
/// (frames tried, keys tried, frames that decrypted).
fn try_every_key(data: &Path, stream: u64) -> (usize, usize, usize) {
    use vellum::crypto::{EventAad, KeyStore, open_event, open_kek};
    let dir = vellum::datadir::DataDir::new(data);
    let meta = vellum::datadir::NodeMeta::load(&dir).expect("vellum.json");
    let cluster = meta.cluster_id().expect("cluster id");
    let kek = open_kek(meta.kek.as_ref(), &dir.kek()).expect("the replica's KEK");
    let store = KeyStore::open(&dir.keys(), kek, meta.replica).expect("key store");
    let keys = store.held_keys().expect("every held key unwraps");
    let scan = scan_log_dir(&data.join("segments"), cluster).expect("the log scans clean");
    let (mut frames, mut opened) = (0, 0);
    for segment in &scan.segments {
        let bytes = std::fs::read(&segment.path).expect("segment file");
        for record in &segment.scan.records {
            let header = &record.header;
            if header.kind != RecordKind::Op || header.stream != stream {
                continue;
            }
            let body = &bytes[record.body_range.clone()];
            let events =
                vellum_audit::record::decode_events(body, header.event_count, record.offset)
                    .expect("frames decode");
            for (i, frame) in (0u64..).zip(events.iter()) {
                frames += 1;
                let aad = EventAad {
                    cluster,
                    stream,
                    stream_offset: header.stream_offset + i,
                    key_id: header.key_id,
                };
                for (_, _, dek) in &keys {
                    let plain = open_event(dek, &frame.nonce, &aad, frame.sealed);
                    opened += usize::from(plain.is_ok());
                }
            }
        }
    }
    (frames, keys.len(), opened)
}

async fn commit_of(cluster: &LocalCluster, i: usize) -> u64 {
    cluster.health().await[i].as_ref().map_or(0, |h| h.commit)
}

// Goal: a shred commits as an op; every replica (one down during the
// shred, one wiped and rebuilt afterwards) ends with no key of the stream,
// and no remaining key decrypts any of its frames; reads and appends of it
// answer 410 with the shred's position; holds and retention floors refuse
// it with their rule's code; wrong roles and odd inputs are refused and
// recorded; verify --cluster passes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shred_hold_and_retention_on_a_live_cluster() {
    let dir = TestDir::new("vellum-custody");
    let root = dir.path().join("cluster");
    let mut cluster = LocalCluster::start(&root, 3, support::vellum_exe()).expect("cluster");
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let (down, wiped) = ((primary + 1) % 3, (primary + 2) % 3);
    let officer = cluster
        .dev
        .privacy_officer_token
        .clone()
        .expect("vellum dev writes a privacy-officer token");
    let writer = cluster.dev.writer_token.clone();
    let auditor = cluster.dev.auditor_token.clone();
    let client = cluster.client(None).expect("client");
    for stream in [SHREDDED, KEPT, RETAINED] {
        for i in 0..3 {
            let event = Bytes::from(format!("{{\"chart\":{stream},\"n\":{i}}}"));
            client
                .append(stream, vec![event], None)
                .await
                .expect("append");
        }
    }
    cluster.kill(down).expect("stop a backup during the shred");

    // Wrong roles, no token, odd inputs: refused, nothing shredded.
    let reason = json!({ "reason": "patient asked for erasure" });
    let shred_path = format!("/v1/streams/{SHREDDED}/shred");
    for (token, status) in [(Some(&writer), 403), (Some(&auditor), 403), (None, 401)] {
        let (got, body) = post(
            &cluster,
            wiped,
            token.map(String::as_str),
            &shred_path,
            &reason,
        )
        .await;
        assert_eq!(got, status, "{body}");
    }
    let odd: [(String, Value, u16); 8] = [
        (
            format!("/v1/streams/{}/shred", u64::MAX),
            reason.clone(),
            400,
        ),
        ("/v1/streams/0/shred".into(), reason.clone(), 422),
        ("/v1/streams/1/shred".into(), reason.clone(), 422),
        ("/v1/streams/2/shred".into(), reason.clone(), 422),
        (shred_path.clone(), json!({ "reason": " \t\n" }), 400),
        (
            shred_path.clone(),
            json!({ "reason": "x".repeat(1 << 20) }),
            400,
        ),
        (
            format!("/v1/streams/{RETAINED}/retention"),
            json!({ "reason": "r", "retain_until_ms": u64::MAX }),
            400,
        ),
        (
            shred_path.clone(),
            json!({ "reason": "r", "retain_until_ms": 5 }),
            400,
        ),
    ];
    for (path, body, status) in &odd {
        let (got, answer) = post(&cluster, primary, Some(&officer), path, body).await;
        assert_eq!(got, *status, "{path}: {answer}");
    }

    // Retention floor: a shred before it is refused, naming the rule.
    let until = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
        + 3_600_000;
    let retain = json!({ "reason": "six-year rule", "retain_until_ms": until });
    let path = format!("/v1/streams/{RETAINED}/retention");
    let (got, body) = post(&cluster, primary, Some(&officer), &path, &retain).await;
    assert_eq!(got, 200, "{body}");
    let lower = json!({ "reason": "shorter", "retain_until_ms": until - 1 });
    let (got, body) = post(&cluster, primary, Some(&officer), &path, &lower).await;
    assert_eq!((got, code(&body)), (409, "retention_floor"), "{body}");
    let path = format!("/v1/streams/{RETAINED}/shred");
    let (got, body) = post(&cluster, wiped, Some(&officer), &path, &reason).await;
    assert_eq!((got, code(&body)), (409, "retention_floor"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("retention floor")
    );
    // The same through the command line (as the privacy officer of the
    // dev cluster): refused, exit code non-zero, the rule named; a hold
    // on that stream through `vellum hold` commits.
    let root_text = root.to_string_lossy().into_owned();
    let retained = RETAINED.to_string();
    let cli = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            support::vellum_cli(&args)
        })
    };
    let args = [
        "shred",
        "--cluster",
        &root_text,
        "--stream",
        &retained,
        "--reason",
        "erase",
    ];
    let (status, _, err) = cli(args.map(String::from).to_vec()).await.expect("cli");
    assert!(
        status != 0 && err.contains("retention_floor"),
        "{status}: {err}"
    );
    let args = [
        "hold",
        "--cluster",
        &root_text,
        "--stream",
        &retained,
        "--reason",
        "audit",
    ];
    let (status, out, err) = cli(args.map(String::from).to_vec()).await.expect("cli");
    assert_eq!(status, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("hold of stream {RETAINED} committed")),
        "{out}"
    );

    // Legal hold: refused while held, allowed once released.
    let hold = json!({ "reason": "litigation 2026-17" });
    let hold_path = format!("/v1/streams/{SHREDDED}/hold");
    let (got, body) = post(&cluster, primary, Some(&officer), &hold_path, &hold).await;
    assert_eq!(got, 200, "{body}");
    let (got, body) = post(&cluster, primary, Some(&officer), &hold_path, &hold).await;
    assert_eq!((got, code(&body)), (409, "custody_conflict"), "{body}");
    let (got, body) = post(&cluster, primary, Some(&officer), &shred_path, &reason).await;
    assert_eq!((got, code(&body)), (409, "legal_hold"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("litigation 2026-17")
    );
    let release_path = format!("/v1/streams/{SHREDDED}/hold/release");
    let (got, _) = post(&cluster, primary, Some(&writer), &release_path, &hold).await;
    assert_eq!(got, 403, "a writer cannot lift a hold");
    let (got, body) = post(
        &cluster,
        primary,
        Some(&officer),
        &release_path,
        &json!({ "reason": "" }),
    )
    .await;
    assert_eq!(got, 400, "lifting needs a reason: {body}");
    let lifted = json!({ "reason": "case closed" });
    let (got, body) = post(&cluster, primary, Some(&officer), &release_path, &lifted).await;
    assert_eq!(got, 200, "{body}");

    // The shred, through a backup (forwarded to the primary).
    let (got, done) = post(&cluster, wiped, Some(&officer), &shred_path, &reason).await;
    assert_eq!(got, 200, "{done}");
    let position = done["position"].as_u64().expect("position");
    assert!(
        done["keys_destroyed"].as_u64().expect("keys") >= 1,
        "{done}"
    );
    let (got, body) = post(&cluster, primary, Some(&officer), &shred_path, &reason).await;
    assert_eq!(
        (got, body["error"]["shred_position"].as_u64()),
        (410, Some(position))
    );
    for i in [primary, wiped] {
        let (got, body) = get(
            &cluster,
            i,
            &writer,
            &format!("/v1/streams/{SHREDDED}/events"),
        )
        .await;
        assert_eq!((got, code(&body)), (410, "shredded"), "{body}");
        assert_eq!(body["error"]["shred_position"].as_u64(), Some(position));
        let (got, _) = get(&cluster, i, &writer, &format!("/v1/streams/{KEPT}/events")).await;
        assert_eq!(got, 200, "another stream still reads");
        let (got, body) = get(&cluster, i, &writer, "/v1/log?max=1000").await;
        assert_eq!(
            got, 200,
            "the global log reads around the shredded stream: {body}"
        );
        let leaked = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["stream"].as_u64() == Some(SHREDDED));
        assert!(!leaked, "no event of the shredded stream in the global log");
        let (got, _) = get(
            &cluster,
            i,
            &auditor,
            &format!("/v1/streams/{SHREDDED}/events/0/proof"),
        )
        .await;
        assert_eq!(got, 200, "proofs of the shredded stream still serve");
    }
    let appended = client
        .append(SHREDDED, vec![Bytes::from_static(b"{}")], None)
        .await;
    assert!(
        appended.is_err(),
        "appends to a shredded stream are refused"
    );
    let (got, body) = post(
        &cluster,
        primary,
        Some(&writer),
        &format!("/v1/streams/{SHREDDED}/append"),
        &json!({ "events": [{ "json": {} }] }),
    )
    .await;
    assert_eq!((got, code(&body)), (410, "shredded"), "{body}");
    let keys = wait_shredded_on_disk(&cluster.data_dir(primary), "the primary").await;
    assert!(!keys.is_empty(), "the primary held the stream's key");
    assert_eq!(
        wait_shredded_on_disk(&cluster.data_dir(wiped), "a live backup").await,
        keys
    );
    assert!(
        tombstone_keys(&cluster.data_dir(down), SHREDDED).is_none(),
        "the stopped backup has not applied the shred yet"
    );

    // The backup that was down catches up and destroys its copy.
    cluster.start_replica(down).expect("restart");
    let commit = commit_of(&cluster, primary).await;
    cluster
        .wait_commit(&[down], commit, WAIT)
        .await
        .expect("catch-up");
    assert_eq!(
        wait_shredded_on_disk(&cluster.data_dir(down), "the restarted backup").await,
        keys
    );

    // A wiped backup rebuilds from its peers and never receives the key.
    cluster.kill(wiped).expect("stop");
    wipe_replica_data(&cluster.data_dir(wiped)).expect("wipe");
    assert!(tombstone_keys(&cluster.data_dir(wiped), SHREDDED).is_none());
    cluster
        .start_replica(wiped)
        .expect("restart on an empty disk");
    client
        .append(KEPT, vec![Bytes::from_static(b"{\"after\":1}")], None)
        .await
        .expect("append after the wipe");
    let commit = commit_of(&cluster, primary).await;
    cluster
        .wait_commit(&[0, 1, 2], commit, WAIT)
        .await
        .expect("rebuild");
    let rebuilt = wait_shredded_on_disk(&cluster.data_dir(wiped), "the wiped backup").await;
    assert_eq!(
        rebuilt,
        Vec::<u64>::new(),
        "the wiped replica never held the key"
    );

    // Every custody request, refused or not, is in the access trail.
    let (got, trail) = get(
        &cluster,
        primary,
        &officer,
        &format!("/v1/export/audit?stream={SHREDDED}"),
    )
    .await;
    assert_eq!(got, 200, "{trail}");
    let events: Vec<AccessEvent> = trail["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| serde_json::from_value(r["event"].clone()).expect("event"))
        .collect();
    let count = |action: AccessAction, outcome: &str| {
        events
            .iter()
            .filter(|e| e.action == action && e.outcome.starts_with(outcome))
            .count()
    };
    assert_eq!(count(AccessAction::Shred, "denied: 403"), 2, "{events:?}");
    assert_eq!(count(AccessAction::Shred, "refused: 409"), 1, "{events:?}");
    assert_eq!(count(AccessAction::Shred, "success"), 1, "{events:?}");
    assert_eq!(count(AccessAction::LegalHold, "success"), 1, "{events:?}");
    assert_eq!(
        count(AccessAction::LegalHoldRelease, "denied: 403"),
        1,
        "{events:?}"
    );
    assert_eq!(
        count(AccessAction::LegalHoldRelease, "success"),
        1,
        "{events:?}"
    );
    let shreds = cluster.metric_all("vellum_shreds_total").await;
    assert!(shreds.iter().all(|s| *s == Some(1)), "{shreds:?}");

    cluster.stop().expect("stop");
    for i in 0..3 {
        let data: PathBuf = cluster.data_dir(i);
        let (frames, keys_held, opened) =
            tokio::task::spawn_blocking(move || try_every_key(&data, SHREDDED))
                .await
                .expect("task");
        assert!(
            frames >= 3 && keys_held >= 1,
            "replica {i}: {frames} frames, {keys_held} keys"
        );
        assert_eq!(
            opened, 0,
            "replica {i}: a remaining key decrypts the shredded stream"
        );
        // The same search finds the keys of a stream that was not shredded
        // (the wiped replica got them back with its repairs).
        let data: PathBuf = cluster.data_dir(i);
        let (frames, _, opened) = tokio::task::spawn_blocking(move || try_every_key(&data, KEPT))
            .await
            .expect("task");
        assert_eq!(
            (frames, opened),
            (4, 4),
            "replica {i}: every kept frame opens once"
        );
    }
    let policy = cluster.dev.policy_path.to_string_lossy().into_owned();
    let root_text = root.to_string_lossy().into_owned();
    let (status, out, err) =
        support::vellum_cli(&["verify", "--cluster", &root_text, "--policy", &policy]);
    assert_eq!(
        status, 0,
        "verify --cluster passes after the shred:\n{out}\n{err}"
    );
}
