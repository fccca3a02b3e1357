//! Persistent subscriptions (consumer groups) on three real replica
//! processes: competing consumers with one that stops mid-batch (its leases
//! expire and its events go to the other), the retry limit parking an
//! event that an operator lists and replays, dead consumers' leases taken
//! back (and parked at the limit) without any pull, the group's acked position
//! surviving a kill -9 of the primary, deliveries in the access trail and
//! `/metrics`, strangers and odd inputs refused with named codes, and
//! `vellum verify --cluster` passing at the end. One cluster for all of it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use vellum::local_cluster::LocalCluster;
use vellum_compliance::trail::{AccessAction, AccessEvent};

mod support;
use support::{TestDir, cluster_call as call, error_code as code};

const WAIT: Duration = Duration::from_secs(60);
/// The group's streams.
const STREAMS: [u64; 4] = [5001, 5002, 5003, 5004];
/// A stream outside the group's filter.
const OTHER: u64 = 6001;
/// The group's lease (short, so the test waits little for expiries).
const LEASE_MS: u64 = 1500;

/// A consumer's view of one pull: (position, stream, attempt, payload).
fn delivered(body: &Value) -> Vec<(u64, u64, u64, String)> {
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("a delivery: {body}"))
        .iter()
        .map(|e| {
            (
                e["position"].as_u64().expect("position"),
                e["stream"].as_u64().expect("stream"),
                e["attempt"].as_u64().expect("attempt"),
                e["base64"].as_str().expect("payload").to_string(),
            )
        })
        .collect()
}

struct Consumer<'a> {
    cluster: &'a LocalCluster,
    replica: usize,
    token: String,
    name: &'static str,
}

impl Consumer<'_> {
    async fn pull(&self, max: u64, wait_ms: u64) -> Vec<(u64, u64, u64, String)> {
        let body = json!({ "consumer": self.name, "max": max, "wait_ms": wait_ms });
        let (status, answer) = call(
            self.cluster,
            self.replica,
            "POST",
            Some(&self.token),
            "/v1/groups/proj/pull",
            Some(&body),
        )
        .await;
        assert_eq!(status, 200, "{} pull: {answer}", self.name);
        delivered(&answer)
    }

    async fn settle(&self, verb: &str, positions: &[u64], extra: Value) -> Value {
        let mut body = json!({ "positions": positions });
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        let path = format!("/v1/groups/proj/{verb}");
        let (status, answer) = call(
            self.cluster,
            self.replica,
            "POST",
            Some(&self.token),
            &path,
            Some(&body),
        )
        .await;
        assert_eq!(status, 200, "{} {verb}: {answer}", self.name);
        answer
    }
}

/// The metric `name{group="proj"}` on replica `i`.
async fn group_metric(cluster: &LocalCluster, i: usize, name: &str) -> Option<u64> {
    metric_of(cluster, i, name, "proj").await
}

/// The metric `name{group="<group>"}` on replica `i`.
async fn metric_of(cluster: &LocalCluster, i: usize, name: &str, group: &str) -> Option<u64> {
    let http = support::dev_http(cluster, WAIT);
    let text = http
        .get(format!("{}/metrics", cluster.dev.api_urls[i]))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("{name}{{group=\"{group}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

// Goal: two competing consumers, one of which stops mid-batch, together
// process every event of the group's streams at least once and none is
// lost; an event nacked past the retry limit is parked, listed, replayed;
// a dead consumer's expired leases come back (then park) with no pull;
// the acked position survives a kill -9 of the primary (the new primary
// delivers only what was not acked); strangers and odd inputs get named
// 4xx codes; deliveries are in the access trail and /metrics; verify
// --cluster passes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_consumers_retries_parking_and_failover() {
    let dir = TestDir::new("vellum-groups");
    let root = dir.path().join("cluster");
    let mut cluster = LocalCluster::start(&root, 3, support::vellum_exe()).expect("cluster");
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let backup = (primary + 1) % 3;
    let writer = cluster.dev.writer_token.clone();
    let auditor = cluster.dev.auditor_token.clone();
    let officer = cluster
        .dev
        .privacy_officer_token
        .clone()
        .expect("vellum dev writes a privacy-officer token");
    let client = cluster.client(None).expect("client");
    let mut payloads = BTreeMap::new();
    for round in 0..10 {
        for stream in STREAMS.iter().copied().chain([OTHER]) {
            let payload = format!("{{\"chart\":{stream},\"n\":{round}}}");
            let receipt = client
                .append(stream, vec![Bytes::from(payload.clone())], None)
                .await
                .expect("append");
            if stream != OTHER {
                payloads.insert(receipt.first_position, payload);
            }
        }
    }

    strangers_are_refused(&cluster, backup, &auditor, &officer, &writer).await;
    let create =
        json!({ "name": "proj", "streams": "5001-5004", "retry_max": 2, "lease_ms": LEASE_MS });
    let (status, info) = call(
        &cluster,
        backup,
        "POST",
        Some(&writer),
        "/v1/groups",
        Some(&create),
    )
    .await;
    assert_eq!(status, 201, "create through a backup: {info}");
    assert_eq!(info["streams"], "5001-5004");
    let (status, again) = call(
        &cluster,
        primary,
        "POST",
        Some(&writer),
        "/v1/groups",
        Some(&create),
    )
    .await;
    assert_eq!((status, code(&again)), (409, "group_exists"), "{again}");

    // Two consumers compete; A stops after acking 5 of its 15 events.
    let a = Consumer {
        cluster: &cluster,
        replica: backup,
        token: writer.clone(),
        name: "a",
    };
    let b = Consumer {
        cluster: &cluster,
        replica: primary,
        token: writer.clone(),
        name: "b",
    };
    let batch_a = a.pull(15, 0).await;
    let batch_b = b.pull(15, 0).await;
    assert_eq!((batch_a.len(), batch_b.len()), (15, 15));
    let held_a: BTreeSet<u64> = batch_a.iter().map(|e| e.0).collect();
    assert!(
        batch_b.iter().all(|e| !held_a.contains(&e.0)),
        "a leased event went to two consumers"
    );
    let mut processed: BTreeMap<u64, u64> = BTreeMap::new();
    for event in batch_a.iter().chain(&batch_b) {
        assert!(
            STREAMS.contains(&event.1),
            "only the group's streams: {event:?}"
        );
        let payload = payloads
            .get(&event.0)
            .expect("a delivered position holds a group event");
        let decoded = base64_decode(&event.3);
        assert_eq!(&decoded, payload.as_bytes(), "bytes as appended");
        *processed.entry(event.0).or_default() += 1;
    }
    let acked_a: Vec<u64> = batch_a.iter().take(5).map(|e| e.0).collect();
    a.settle("ack", &acked_a, json!({})).await;
    let positions_b: Vec<u64> = batch_b.iter().map(|e| e.0).collect();
    b.settle("ack", &positions_b, json!({})).await;
    // B drains the rest; A's 10 unacked events come back once their lease expires.
    let deadline = Instant::now() + WAIT;
    let mut redelivered = 0;
    while processed.len() < payloads.len() || redelivered < 10 {
        assert!(
            Instant::now() < deadline,
            "events lost: {} of {} processed",
            processed.len(),
            payloads.len()
        );
        let batch = b.pull(50, 2000).await;
        for event in &batch {
            *processed.entry(event.0).or_default() += 1;
            if held_a.contains(&event.0) {
                assert_eq!(
                    event.2, 2,
                    "A's unacked event comes back as attempt 2: {event:?}"
                );
                redelivered += 1;
            }
        }
        let positions: Vec<u64> = batch.iter().map(|e| e.0).collect();
        if !positions.is_empty() {
            b.settle("ack", &positions, json!({})).await;
        }
    }
    assert_eq!(
        processed.keys().copied().collect::<Vec<_>>(),
        payloads.keys().copied().collect::<Vec<_>>()
    );
    assert_eq!(redelivered, 10, "every one of A's unacked events went to B");
    let (_, info) = call(
        &cluster,
        backup,
        "GET",
        Some(&writer),
        "/v1/groups/proj",
        None,
    )
    .await;
    let last = *payloads.keys().last().expect("events");
    assert!(
        info["checkpoint"].as_u64().expect("checkpoint") > last,
        "{info}"
    );
    assert_eq!(info["acked"], json!(payloads.len()), "{info}");

    bad_settlements(&cluster, backup, &writer, last).await;
    retry_limit_parks_and_replay_delivers(&cluster, &client, &b).await;
    dead_consumers_leases_come_back_without_a_pull(&cluster, &client, &writer, primary, backup)
        .await;

    // The acked position survives a kill -9 of the primary.
    let mut fresh = Vec::new();
    for n in 0..10 {
        let receipt = client
            .append(5002, vec![Bytes::from(format!("{{\"late\":{n}}}"))], None)
            .await
            .expect("append");
        fresh.push(receipt.first_position);
    }
    let batch = b.pull(10, 2000).await;
    assert_eq!(batch.iter().map(|e| e.0).collect::<Vec<_>>(), fresh);
    b.settle("ack", &fresh[..6], json!({})).await;
    cluster.kill(primary).expect("kill -9 the primary");
    let new_primary = usize::from(cluster.wait_primary(WAIT).await.expect("a new primary"));
    assert_ne!(new_primary, primary);
    let survivor = Consumer {
        cluster: &cluster,
        replica: (primary + 2) % 3,
        token: writer.clone(),
        name: "c",
    };
    let mut again = Vec::new();
    let deadline = Instant::now() + WAIT;
    while again.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the unacked events never came back: {again:?}"
        );
        let body = json!({ "consumer": "c", "max": 50, "wait_ms": 2000 });
        let (status, answer) = call(
            &cluster,
            survivor.replica,
            "POST",
            Some(&writer),
            "/v1/groups/proj/pull",
            Some(&body),
        )
        .await;
        if status == 503 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status, 200, "{answer}");
        again.extend(delivered(&answer).into_iter().map(|e| e.0));
    }
    assert_eq!(
        again,
        fresh[6..].to_vec(),
        "after the failover exactly the unacked events come again"
    );
    survivor.settle("ack", &again, json!({})).await;
    assert!(
        survivor.pull(50, 500).await.is_empty(),
        "nothing else is due"
    );

    // Deliveries are in the access trail as subscriptions naming the group.
    let (status, trail) = call(
        &cluster,
        new_primary,
        "GET",
        Some(&auditor),
        "/v1/export/audit?stream=5002",
        None,
    )
    .await;
    assert_eq!(status, 200, "{trail}");
    let events: Vec<AccessEvent> = trail["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| serde_json::from_value(r["event"].clone()).expect("event"))
        .collect();
    let pulls = events
        .iter()
        .filter(|e| e.action == AccessAction::Subscribe)
        .filter(|e| {
            e.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("group proj: pull"))
        })
        .count();
    assert!(pulls >= 3, "group deliveries recorded: {events:?}");
    assert_eq!(
        group_metric(&cluster, new_primary, "vellum_group_acked_total").await,
        Some((payloads.len() + 1 + 10) as u64)
    );

    cluster
        .start_replica(primary)
        .expect("restart the old primary");
    let commit = cluster.health().await[new_primary]
        .as_ref()
        .map_or(0, |h| h.commit);
    cluster
        .wait_commit(&[0, 1, 2], commit, WAIT)
        .await
        .expect("the cluster converges");
    cluster.stop().expect("stop");
    let policy = cluster.dev.policy_path.to_string_lossy().into_owned();
    let root_text = root.to_string_lossy().into_owned();
    let (status, out, err) =
        support::vellum_cli(&["verify", "--cluster", &root_text, "--policy", &policy]);
    assert_eq!(status, 0, "verify --cluster passes:\n{out}\n{err}");
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// No token 401, wrong roles 403, odd names 400, with nothing created.
async fn strangers_are_refused(
    cluster: &LocalCluster,
    i: usize,
    auditor: &str,
    officer: &str,
    writer: &str,
) {
    let create = json!({ "name": "proj" });
    for (token, status, expected) in [
        (None, 401, "unauthorized"),
        (Some(auditor), 403, "forbidden"),
        (Some(officer), 403, "forbidden"),
    ] {
        let (got, body) = call(cluster, i, "POST", token, "/v1/groups", Some(&create)).await;
        assert_eq!((got, code(&body)), (status, expected), "{body}");
        let (got, body) = call(
            cluster,
            i,
            "POST",
            token,
            "/v1/groups/proj/pull",
            Some(&json!({})),
        )
        .await;
        assert_eq!((got, code(&body)), (status, expected), "{body}");
    }
    let long = "x".repeat(65);
    let huge = "y".repeat(100_000);
    for name in [
        "", ".", "..", ".hidden", "a b", "a/b", "é", "a\u{0}", &long, &huge,
    ] {
        let (got, body) = call(
            cluster,
            i,
            "POST",
            Some(writer),
            "/v1/groups",
            Some(&json!({ "name": name })),
        )
        .await;
        assert_eq!(
            (got, code(&body)),
            (400, "bad_request"),
            "name {:?}: {body}",
            &name[..name.len().min(20)]
        );
    }
    for path in [
        "/v1/groups/%2e%2e",
        "/v1/groups/a%20b",
        "/v1/groups/%C3%A9",
        &format!("/v1/groups/{long}"),
    ] {
        let (got, body) = call(cluster, i, "GET", Some(writer), path, None).await;
        assert!(matches!(got, 400 | 404), "{path}: {got} {body}");
        assert!(
            matches!(code(&body), "bad_request" | "not_found"),
            "{path}: {body}"
        );
    }
    let (got, body) = call(cluster, i, "GET", Some(writer), "/v1/groups/nosuch", None).await;
    assert_eq!((got, code(&body)), (404, "not_found"), "{body}");
    for body in [
        json!({ "name": "g", "retry_max": 101 }),
        json!({ "name": "g", "lease_ms": 99 }),
        json!({ "name": "g", "start": "-1" }),
        json!({ "name": "g", "start": "9223372036854775808" }),
        json!({ "name": "g", "streams": "5-3" }),
        json!({ "name": "g", "surprise": true }),
        json!({ "name": "g", "streams": null }),
        json!({ "name": "g", "lease_ms": null }),
    ] {
        let (got, answer) = call(cluster, i, "POST", Some(writer), "/v1/groups", Some(&body)).await;
        assert!(matches!(got, 400 | 422), "{body}: {got} {answer}");
    }
    let (got, body) = call(cluster, i, "GET", Some(writer), "/v1/groups/g", None).await;
    assert_eq!(
        (got, code(&body)),
        (404, "not_found"),
        "no refused create left a group: {body}"
    );
}

/// Acks and nacks of positions never delivered, 2^64-1, empty and
/// oversized lists: named 4xx, nothing written.
async fn bad_settlements(cluster: &LocalCluster, i: usize, writer: &str, last: u64) {
    let (_, before) = call(cluster, i, "GET", Some(writer), "/v1/groups/proj", None).await;
    let beyond = last + 1000;
    let too_many: Vec<u64> = (0..1001).collect();
    for (verb, body, status, expected) in [
        (
            "ack",
            json!({ "positions": [beyond] }),
            409,
            "not_delivered",
        ),
        (
            "nack",
            json!({ "positions": [beyond] }),
            409,
            "not_delivered",
        ),
        (
            "ack",
            json!({ "positions": [u64::MAX] }),
            400,
            "bad_request",
        ),
        ("ack", json!({ "positions": [] }), 400, "bad_request"),
        ("ack", json!({ "positions": too_many }), 400, "bad_request"),
        ("ack", json!({ "positions": [-1] }), 400, "bad_request"),
        (
            "nack",
            json!({ "positions": [beyond], "action": "explode" }),
            400,
            "bad_request",
        ),
        (
            "replay",
            json!({ "positions": [beyond] }),
            409,
            "not_parked",
        ),
    ] {
        let path = format!("/v1/groups/proj/{verb}");
        let (got, answer) = call(cluster, i, "POST", Some(writer), &path, Some(&body)).await;
        assert_eq!(
            (got, code(&answer)),
            (status, expected),
            "{verb} {body}: {answer}"
        );
    }
    let (_, after) = call(cluster, i, "GET", Some(writer), "/v1/groups/proj", None).await;
    assert_eq!(before, after, "refused settlements changed the group");
}

/// An event nacked past the retry limit (2) is parked, listed, not
/// delivered, then replayed and delivered again.
async fn retry_limit_parks_and_replay_delivers(
    cluster: &LocalCluster,
    client: &vellum::client::Client,
    b: &Consumer<'_>,
) {
    let receipt = client
        .append(5003, vec![Bytes::from_static(b"{\"poison\":true}")], None)
        .await
        .expect("append");
    let poison = receipt.first_position;
    for attempt in 1..=3u64 {
        let batch = b.pull(10, 2000).await;
        assert_eq!(
            batch.iter().map(|e| (e.0, e.2)).collect::<Vec<_>>(),
            vec![(poison, attempt)]
        );
        let answer = b
            .settle("nack", &[poison], json!({ "reason": "cannot parse" }))
            .await;
        let parked = u64::from(attempt == 3);
        assert_eq!(
            answer["parked"],
            json!(parked),
            "attempt {attempt}: {answer}"
        );
    }
    assert!(
        b.pull(10, 300).await.is_empty(),
        "a parked event is not delivered"
    );
    let (status, list) = call(
        cluster,
        b.replica,
        "GET",
        Some(&b.token),
        "/v1/groups/proj/parked",
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["parked"][0]["position"], json!(poison), "{list}");
    assert!(
        list["parked"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("cannot parse"),
        "{list}"
    );
    assert_eq!(
        group_metric(cluster, b.replica, "vellum_group_parked").await,
        Some(1)
    );
    let (status, replayed) = call(
        cluster,
        b.replica,
        "POST",
        Some(&b.token),
        "/v1/groups/proj/replay",
        Some(&json!({})),
    )
    .await;
    assert_eq!(
        (status, replayed["replayed"].clone()),
        (200, json!(1)),
        "{replayed}"
    );
    let batch = b.pull(10, 2000).await;
    assert_eq!(
        batch.iter().map(|e| (e.0, e.2)).collect::<Vec<_>>(),
        vec![(poison, 1)]
    );
    b.settle("ack", &[poison], json!({})).await;
    assert_eq!(
        group_metric(cluster, b.replica, "vellum_group_parked").await,
        Some(0)
    );
}

/// The reaped group's stream (outside `proj`'s filter) and lease.
const REAPED_STREAM: u64 = 5005;
const REAPED_LEASE_MS: u64 = 1000;

/// `GroupInfo` of `group` through replica `i`, once `done` holds for it
/// (polled every 50 ms until `deadline`).
async fn info_once(
    cluster: &LocalCluster,
    i: usize,
    writer: &str,
    group: &str,
    deadline: Instant,
    done: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let (status, info) = call(
            cluster,
            i,
            "GET",
            Some(writer),
            &format!("/v1/groups/{group}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{info}");
        if done(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "not reached in time: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Goal: a consumer that leases events and dies (no ack, no nack, no
/// further pull) holds them only until the lease ends: without any pull,
/// the group soon shows nothing in flight and the events due again (and,
/// after their last delivery, parked), as the primary's reaper takes
/// expired leases back.
async fn dead_consumers_leases_come_back_without_a_pull(
    cluster: &LocalCluster,
    client: &vellum::client::Client,
    writer: &str,
    primary: usize,
    backup: usize,
) {
    let create = json!({
        "name": "reaped", "streams": REAPED_STREAM.to_string(), "retry_max": 1,
        "lease_ms": REAPED_LEASE_MS,
    });
    let (status, info) = call(
        cluster,
        backup,
        "POST",
        Some(writer),
        "/v1/groups",
        Some(&create),
    )
    .await;
    assert_eq!(status, 201, "{info}");
    let mut positions = Vec::new();
    for n in 0..3 {
        let receipt = client
            .append(
                REAPED_STREAM,
                vec![Bytes::from(format!("{{\"reaped\":{n}}}"))],
                None,
            )
            .await
            .expect("append");
        positions.push(receipt.first_position);
    }
    // Two consumers in turn lease everything and die; nobody else pulls.
    for (consumer, attempt) in [("dies-first", 1u64), ("dies-second", 2)] {
        let body = json!({ "consumer": consumer, "max": 10, "wait_ms": 2000 });
        let leased = Instant::now(); // the lease starts after this
        let (status, answer) = call(
            cluster,
            backup,
            "POST",
            Some(writer),
            "/v1/groups/reaped/pull",
            Some(&body),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let got: Vec<(u64, u64)> = delivered(&answer).iter().map(|e| (e.0, e.2)).collect();
        let want: Vec<(u64, u64)> = positions.iter().map(|p| (*p, attempt)).collect();
        assert_eq!(got, want, "{consumer}: every event, attempt {attempt}");
        let deadline = leased + Duration::from_millis(REAPED_LEASE_MS + 5000);
        let info = info_once(cluster, backup, writer, "reaped", deadline, |info| {
            info["in_flight"] == json!(0)
        })
        .await;
        assert!(
            leased.elapsed() >= Duration::from_millis(REAPED_LEASE_MS),
            "{consumer}: a lease was taken back before it ended: {info}"
        );
        let nacked = metric_of(cluster, primary, "vellum_group_nacked_total", "reaped").await;
        assert_eq!(
            nacked,
            Some(3 * attempt),
            "{consumer}: expired leases counted"
        );
        if attempt == 1 {
            assert_eq!(info["parked"], json!(0), "due again, not parked: {info}");
        }
    }
    // The second expiry was the last delivery (retry_max 1): parked,
    // committed, without a pull.
    let deadline = Instant::now() + Duration::from_secs(5);
    let info = info_once(cluster, backup, writer, "reaped", deadline, |info| {
        info["parked"] == json!(3)
    })
    .await;
    let last = *positions.last().expect("events");
    assert!(
        info["checkpoint"].as_u64().expect("checkpoint") > last,
        "{info}"
    );
    let (status, list) = call(
        cluster,
        backup,
        "GET",
        Some(writer),
        "/v1/groups/reaped/parked",
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let parked: Vec<(u64, String)> = list["parked"]
        .as_array()
        .expect("parked")
        .iter()
        .map(|p| {
            (
                p["position"].as_u64().expect("position"),
                p["reason"].as_str().expect("reason").to_string(),
            )
        })
        .collect();
    let reason = "lease expired on its last of 2 deliveries".to_string();
    let want: Vec<(u64, String)> = positions.iter().map(|p| (*p, reason.clone())).collect();
    assert_eq!(parked, want, "{list}");
    let body = json!({ "consumer": "late", "max": 10, "wait_ms": 0 });
    let (status, answer) = call(
        cluster,
        backup,
        "POST",
        Some(writer),
        "/v1/groups/reaped/pull",
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(delivered(&answer).is_empty(), "parked: none due: {answer}");
}
