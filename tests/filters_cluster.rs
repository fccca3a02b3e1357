//! Filters by stream and event type, and a consumer-group member killed
//! with SIGKILL, on three real replica processes (issue 14).
//!
//! Filters: a generated matrix of streams × event types (typed, enveloped
//! without a type, no envelope at all) read through `/v1/log` (paged),
//! `/v1/subscribe` and consumer groups under several filters, streams and
//! types combined; each delivery is compared, bytes included, with the
//! filter computed here from what was appended. Strangers: no token, a
//! token scoped to one stream (a type filter never widens it), odd and huge
//! `types` values. The filter is in the access trail.
//!
//! Killed consumer: consumer A is a child process (this test binary run
//! again in the consumer role) that pulls a batch, acks part of it, nacks
//! the poison event, and is killed with SIGKILL while it holds the rest of
//! its leases. Consumer B gets A's unacked events once the leases expire;
//! every event is processed at least once, none is lost, and the poison
//! event is parked after the retry limit.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use vellum::api::EventIn;
use vellum::client::{Client, ClientConfig, LogFilter};
use vellum::local_cluster::LocalCluster;
use vellum::server::auth::{Role, Scope, generate_token, token_line};
use vellum_compliance::trail::{AccessAction, AccessEvent};

mod support;
use support::{TestDir, cluster_call as call, error_code as code};

const WAIT: Duration = Duration::from_secs(60);
/// The matrix's streams.
const STREAMS: [u64; 3] = [7101, 7102, 7103];
/// The event types appended on every stream (odd spellings included).
const TYPES: [&str; 5] = [
    "Patient",
    "patient",
    "Observation",
    "Observation ",
    "Médication,x",
];
/// Rounds of appends per stream.
const ROUNDS: u64 = 3;
/// The environment variable that makes this test binary the consumer child.
const CHILD_ENV: &str = "VELLUM_TEST_GROUP_CONSUMER";
/// The killed-consumer group's lease.
const LEASE_MS: u64 = 1500;
/// Events the child acks before it stalls, holding the rest of its leases.
const CHILD_ACKS: usize = 4;
/// Events the child pulls in its one batch.
const CHILD_BATCH: u64 = 10;

/// One appended event as the test knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    position: u64,
    stream: u64,
    event_type: Option<String>,
    payload: Vec<u8>,
}

/// One filter of the matrix: the `streams` text and the type list.
struct Case {
    streams: Option<&'static str>,
    types: Option<Vec<&'static str>>,
}

impl Case {
    fn ranges(&self) -> Vec<(u64, u64)> {
        let Some(text) = self.streams else {
            return Vec::new();
        };
        text.split(',')
            .map(|item| match item.split_once('-') {
                Some((a, b)) => (a.parse().expect("a"), b.parse().expect("b")),
                None => {
                    let s = item.parse().expect("stream");
                    (s, s)
                }
            })
            .collect()
    }

    /// The events of `sent` this filter passes, computed independently of
    /// the server's code.
    fn expected(&self, sent: &[Sent]) -> Vec<Sent> {
        let ranges = self.ranges();
        sent.iter()
            .filter(|e| {
                ranges.is_empty() || ranges.iter().any(|(a, b)| (*a..=*b).contains(&e.stream))
            })
            .filter(|e| {
                self.types
                    .as_ref()
                    .is_none_or(|types| e.event_type.as_deref().is_some_and(|t| types.contains(&t)))
            })
            .cloned()
            .collect()
    }

    fn log_filter(&self) -> LogFilter {
        let types = self.types.clone().unwrap_or_default();
        LogFilter::new(self.streams, &types).expect("a filter the query can name")
    }
}

fn decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

fn received(event: &vellum::api::LogEvent) -> Sent {
    Sent {
        position: event.position,
        stream: event.stream,
        event_type: event.event_type.clone(),
        payload: decode(&event.base64),
    }
}

fn received_json(event: &Value) -> Sent {
    Sent {
        position: event["position"].as_u64().expect("position"),
        stream: event["stream"].as_u64().expect("stream"),
        event_type: event["type"].as_str().map(str::to_string),
        payload: decode(event["base64"].as_str().expect("base64")),
    }
}

/// Appends the matrix: per stream and round, one enveloped batch (one
/// event of each type and one with a content type but no type) and one
/// bare batch (no envelope, so no type). Payloads hold non-UTF-8 bytes.
async fn append_matrix(client: &Client) -> Vec<Sent> {
    let mut sent = Vec::new();
    for round in 0..ROUNDS {
        for stream in STREAMS {
            let mut batch: Vec<(Option<String>, Vec<u8>)> = TYPES
                .iter()
                .enumerate()
                .map(|(k, t)| {
                    let mut payload = format!("{stream}/{round}/{k}").into_bytes();
                    payload.extend_from_slice(&[0xff, 0x00, 0xfe]);
                    (Some(t.to_string()), payload)
                })
                .collect();
            batch.push((None, format!("{stream}/{round}/untyped").into_bytes()));
            let events: Vec<EventIn> = batch
                .iter()
                .map(|(event_type, payload)| EventIn {
                    event_type: event_type.clone(),
                    content_type: Some("application/octet-stream".to_string()),
                    ..EventIn::bytes(payload)
                })
                .collect();
            let receipt = client
                .append_events(stream, events, None)
                .await
                .expect("append the typed batch");
            for (n, (event_type, payload)) in batch.into_iter().enumerate() {
                sent.push(Sent {
                    position: receipt.first_position + n as u64,
                    stream,
                    event_type,
                    payload,
                });
            }
            let bare = format!("{stream}/{round}/bare\u{1}").into_bytes();
            let receipt = client
                .append(stream, vec![Bytes::from(bare.clone())], None)
                .await
                .expect("append the bare batch");
            sent.push(Sent {
                position: receipt.first_position,
                stream,
                event_type: None,
                payload: bare,
            });
        }
    }
    sent
}

/// The global log through `filter` up to position `end`, paged in small
/// pages (so pages end on events left out, and `next_position` must carry
/// the reader on). Each read appends a trail record, so the log never
/// stops growing under a reader: it stops at `end`.
async fn read_filtered(client: &Client, filter: &LogFilter, end: u64) -> Vec<Sent> {
    let mut out = Vec::new();
    let mut from = 0;
    for _ in 0..10_000 {
        let page = client
            .read_log_filtered(from, 7, filter)
            .await
            .expect("filtered read");
        out.extend(
            page.events
                .iter()
                .map(received)
                .filter(|e| e.position < end),
        );
        if page.next_position >= end {
            return out;
        }
        assert!(page.next_position > from, "the read is stuck at {from}");
        from = page.next_position;
    }
    panic!("the filtered read never reached the end");
}

/// `expected.len()` events of a filtered subscription, then none more
/// within a short wait.
async fn subscribed(client: &Client, filter: LogFilter, expected: usize) -> Vec<Sent> {
    let mut stream = Box::pin(client.subscribe_with(0, Some(filter)));
    let mut out = Vec::new();
    while out.len() < expected {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the subscription delivers in time")
            .expect("the subscription goes on")
            .expect("an event");
        out.push(received(&event));
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(extra.is_err(), "an event beyond the filter's: {extra:?}");
    out
}

/// Everything group `name` delivers, acked as it comes, until a pull
/// comes back empty.
async fn drained(cluster: &LocalCluster, token: &str, name: &str) -> Vec<Sent> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let path = format!("/v1/groups/{name}/pull");
        let body = json!({ "consumer": "matrix", "max": 500, "wait_ms": 200 });
        let (status, answer) = call(cluster, 0, "POST", Some(token), &path, Some(&body)).await;
        assert_eq!(status, 200, "{name} pull: {answer}");
        let events = answer["events"].as_array().expect("events").clone();
        if events.is_empty() {
            return out;
        }
        let positions: Vec<u64> = events
            .iter()
            .map(|e| e["position"].as_u64().expect("position"))
            .collect();
        out.extend(events.iter().map(received_json));
        let path = format!("/v1/groups/{name}/ack");
        let body = json!({ "positions": positions });
        let (status, answer) = call(cluster, 0, "POST", Some(token), &path, Some(&body)).await;
        assert_eq!(status, 200, "{name} ack: {answer}");
    }
    panic!("group {name} never ran dry");
}

// Goal: `streams=` and `types=` filters (alone and combined) on
// /v1/log, /v1/subscribe and consumer groups deliver exactly the events a
// filter computed here from the appended matrix passes, bytes equal; a
// type filter never widens a token's scope; odd and huge `types` values
// get named 4xx; the filter is in the trail; and a consumer process
// killed with SIGKILL mid-batch loses no event (see the module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn type_filters_and_a_killed_consumer() {
    if let Ok(config) = std::env::var(CHILD_ENV) {
        child_consumer(&config).await;
        return;
    }
    let dir = TestDir::new("vellum-filters");
    let root = dir.path().join("cluster");
    let dev = vellum::cluster::create_dev_cluster(&root, 3, None).expect("dev cluster");
    let nurse = generate_token();
    let scope = Scope::parse("7101").expect("scope");
    let mut tokens = std::fs::read_to_string(dev.dir.join("tokens.txt")).expect("tokens");
    tokens.push_str(&token_line(&nurse, "nurse", Role::Writer, &scope));
    tokens.push('\n');
    std::fs::write(dev.dir.join("tokens.txt"), tokens).expect("write tokens");
    let mut cluster = LocalCluster::start(&root, 3, support::vellum_exe()).expect("cluster");
    cluster.wait_primary(WAIT).await.expect("primary");
    let writer = cluster.dev.writer_token.clone();
    let client = cluster.client(None).expect("client");
    let sent = append_matrix(&client).await;
    let end = sent.iter().map(|e| e.position).max().expect("events") + 1;

    let cases = [
        Case {
            streams: None,
            types: Some(vec!["Patient"]),
        },
        Case {
            streams: None,
            types: Some(vec!["Observation ", "patient"]),
        },
        Case {
            streams: Some("7101"),
            types: Some(vec!["Observation"]),
        },
        Case {
            streams: Some("7102-7103"),
            types: Some(vec!["Patient", "Observation", "Patient"]),
        },
        Case {
            streams: Some("7103"),
            types: None,
        },
        Case {
            streams: None,
            types: Some(vec!["NoSuchType"]),
        },
    ];
    for (n, case) in cases.iter().enumerate() {
        let expected = case.expected(&sent);
        let what = format!("case {n} streams={:?} types={:?}", case.streams, case.types);
        if case.types.as_ref().is_some_and(|t| t[0] != "NoSuchType") {
            assert!(
                !expected.is_empty(),
                "{what}: the matrix has matching events"
            );
        }
        let got = read_filtered(&client, &case.log_filter(), end).await;
        assert_eq!(got, expected, "/v1/log {what}");
        let got = subscribed(&client, case.log_filter(), expected.len()).await;
        assert_eq!(got, expected, "/v1/subscribe {what}");
        let mut create = json!({ "name": format!("m{n}"), "lease_ms": 10_000 });
        if let Some(streams) = case.streams {
            create["streams"] = json!(streams);
        }
        if let Some(types) = &case.types {
            create["types"] = json!(types);
        }
        let (status, info) = call(
            &cluster,
            1,
            "POST",
            Some(&writer),
            "/v1/groups",
            Some(&create),
        )
        .await;
        assert_eq!(status, 201, "{what}: {info}");
        if let Some(types) = &case.types {
            let sorted: BTreeSet<&str> = types.iter().copied().collect();
            assert_eq!(info["types"], json!(sorted), "{what}: {info}");
        } else {
            assert!(info.get("types").is_none(), "{what}: {info}");
        }
        let got = drained(&cluster, &writer, &format!("m{n}")).await;
        assert_eq!(got, expected, "group {what}");
    }
    // A type holding a comma: a group's JSON list names it; in a query the
    // list splits it (percent-encoded or not), so it matches nothing there.
    let comma = Case {
        streams: Some("7101-7102"),
        types: Some(vec!["Médication,x", "Observation"]),
    };
    let create = json!({ "name": "comma", "streams": "7101-7102", "types": ["Médication,x", "Observation"] });
    let (status, info) = call(
        &cluster,
        2,
        "POST",
        Some(&writer),
        "/v1/groups",
        Some(&create),
    )
    .await;
    assert_eq!(status, 201, "{info}");
    assert_eq!(
        drained(&cluster, &writer, "comma").await,
        comma.expected(&sent)
    );
    let (status, page) = call(
        &cluster,
        0,
        "GET",
        Some(&writer),
        "/v1/log?max=1000&types=M%C3%A9dication%2Cx",
        None,
    )
    .await;
    assert_eq!(
        (status, page["events"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{page}"
    );
    assert!(
        LogFilter::new(None, &["a,b"]).is_err(),
        "the client refuses what it cannot name"
    );

    strangers(&cluster, &writer, &nurse, &sent, end).await;
    trail_names_the_filters(&client).await;
    killed_consumer(&cluster, &client, &writer, &sent).await;

    cluster.stop().expect("stop");
    let policy = cluster.dev.policy_path.to_string_lossy().into_owned();
    let root_text = root.to_string_lossy().into_owned();
    let (status, out, err) =
        support::vellum_cli(&["verify", "--cluster", &root_text, "--policy", &policy]);
    assert_eq!(status, 0, "verify --cluster passes:\n{out}\n{err}");
}

/// No token, a token scoped to stream 7101, odd and huge `types` values.
async fn strangers(cluster: &LocalCluster, writer: &str, nurse: &str, sent: &[Sent], end: u64) {
    for path in ["/v1/log?types=Patient", "/v1/subscribe?types=Patient"] {
        let (status, body) = call(cluster, 1, "GET", None, path, None).await;
        assert_eq!(
            (status, code(&body)),
            (401, "unauthorized"),
            "{path}: {body}"
        );
    }
    let (status, body) = call(
        cluster,
        1,
        "POST",
        None,
        "/v1/groups",
        Some(&json!({ "name": "x", "types": ["Patient"] })),
    )
    .await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    // The scoped token: a type filter never reaches past its stream.
    let mut config = ClientConfig::new(cluster.dev.api_urls.clone(), nurse);
    config.ca_pem = Some(cluster.ca_pem().to_vec());
    let scoped = Client::new(config).expect("scoped client");
    for case in [
        Case {
            streams: None,
            types: Some(vec!["Patient"]),
        },
        Case {
            streams: Some("7101-7103"),
            types: Some(vec!["Patient", "Observation"]),
        },
        Case {
            streams: Some("7102"),
            types: Some(vec!["Patient"]),
        },
    ] {
        let inside: Vec<Sent> = case
            .expected(sent)
            .into_iter()
            .filter(|e| e.stream == 7101)
            .collect();
        let got = read_filtered(&scoped, &case.log_filter(), end).await;
        assert_eq!(
            got, inside,
            "scoped read {:?} {:?}",
            case.streams, case.types
        );
        let got = subscribed(&scoped, case.log_filter(), inside.len()).await;
        assert_eq!(
            got, inside,
            "scoped subscription {:?} {:?}",
            case.streams, case.types
        );
    }
    for (body, status, expected) in [
        (
            json!({ "name": "n1", "types": ["Patient"] }),
            403,
            "scope_denied",
        ),
        (
            json!({ "name": "n1", "streams": "7101-7102", "types": ["Patient"] }),
            403,
            "scope_denied",
        ),
        (
            json!({ "name": "n1", "streams": "7101", "types": ["Patient"] }),
            201,
            "",
        ),
    ] {
        let (got, answer) = call(cluster, 2, "POST", Some(nurse), "/v1/groups", Some(&body)).await;
        assert_eq!((got, code(&answer)), (status, expected), "{body}: {answer}");
    }
    let (got, answer) = call(
        cluster,
        2,
        "POST",
        Some(nurse),
        "/v1/groups/m0/pull",
        Some(&json!({})),
    )
    .await;
    assert_eq!((got, code(&answer)), (403, "scope_denied"), "{answer}");
    // Odd and huge values: named 4xx, the same on every replica.
    let long = "x".repeat(257);
    let most = vec!["T"; 32].join(",");
    let too_many = vec!["T"; 33].join(",");
    let long_list = vec!["y".repeat(250); 12].join(",");
    let huge = "y".repeat(60_000);
    let cases: Vec<(String, u16, &str)> = vec![
        ("types=".to_string(), 400, "bad_request"),
        ("types=,".to_string(), 400, "bad_request"),
        ("types=Patient,".to_string(), 400, "bad_request"),
        ("types=A,,B".to_string(), 400, "bad_request"),
        (format!("types={too_many}"), 400, "bad_request"),
        (
            "types=Patient&types=Observation".to_string(),
            400,
            "bad_request",
        ),
        ("types=%FF".to_string(), 400, "bad_request"),
        ("types=A%2".to_string(), 400, "bad_request"),
        (format!("types={long}"), 422, "refused"),
        (format!("types=Patient,{huge}"), 431, ""), // the HTTP layer's bound
        (format!("types={long_list},{long}"), 422, "refused"),
        ("types=%00".to_string(), 422, "refused"),
        ("types=A%0AB".to_string(), 422, "refused"),
        ("types=Patient,%7F".to_string(), 422, "refused"),
        ("types=%C2%85".to_string(), 422, "refused"),
        (format!("types={most}"), 200, ""),
        (format!("types={}", "x".repeat(256)), 200, ""),
    ];
    for (query, status, expected) in &cases {
        for route in ["/v1/log", "/v1/subscribe"] {
            if route == "/v1/subscribe" && *status == 200 {
                continue; // A subscription's 200 never ends.
            }
            let path = format!("{route}?{query}");
            let mut bodies = Vec::new();
            for i in 0..3 {
                let (got, body) = call(cluster, i, "GET", Some(writer), &path, None).await;
                let shown = &query[..query.len().min(60)];
                assert_eq!(
                    (got, code(&body)),
                    (*status, *expected),
                    "{route} {shown}: {body}"
                );
                bodies.push(body);
            }
            if *status != 200 {
                assert!(bodies.iter().all(|b| *b == bodies[0]), "{route} {query}");
            }
        }
    }
    let too_many: Vec<String> = (0..33).map(|i| format!("T{i}")).collect();
    for (types, status) in [
        (json!([]), 400),
        (json!(too_many), 400),
        (json!("Patient"), 400),
        (json!(null), 400),
        (json!([1]), 400),
        (json!([""]), 422),
        (json!(["a\u{0}"]), 422),
        (json!([long]), 422),
    ] {
        let body = json!({ "name": "odd", "types": types });
        let (got, answer) = call(cluster, 0, "POST", Some(writer), "/v1/groups", Some(&body)).await;
        assert_eq!(got, status, "{types}: {answer}");
    }
    let (got, body) = call(cluster, 0, "GET", Some(writer), "/v1/groups/odd", None).await;
    assert_eq!(
        (got, code(&body)),
        (404, "not_found"),
        "no refused create left a group"
    );
}

/// The trail records the filters: a global read, a subscription window
/// and a group's creation, in the canonical spelling.
async fn trail_names_the_filters(client: &Client) {
    let mut events = Vec::new();
    for _ in 0..1000 {
        let page = client
            .read_stream(
                vellum_compliance::trail::ACCESS_TRAIL_STREAM,
                events.len() as u64,
                1000,
            )
            .await
            .expect("read the trail");
        if page.events.is_empty() {
            break;
        }
        for e in &page.events {
            events.push(AccessEvent::from_payload(&decode(&e.base64)).expect("a trail event"));
        }
    }
    let has = |action: AccessAction, detail: &str| {
        events
            .iter()
            .any(|e| e.action == action && e.detail.as_deref() == Some(detail))
    };
    assert!(has(
        AccessAction::ReadLog,
        "filter streams=7101 types=Observation"
    ));
    assert!(has(
        AccessAction::ReadLog,
        "filter types=Observation%20,patient"
    ));
    assert!(has(
        AccessAction::Subscribe,
        "subscription window delivered; filter streams=7102-7103 types=Observation,Patient"
    ));
    assert!(
        events.iter().any(|e| e.detail.as_deref()
            == Some("group comma: create; filter streams=7101-7102 types=M%C3%A9dication%2Cx,Observation")),
        "the group's filter is in the trail"
    );
}

/// Where the child consumer finds the cluster and what it does.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildConfig {
    url: String,
    ca_pem_path: String,
    token: String,
    group: String,
    poison: u64,
}

/// A consumer that fails on `poison` (nack) and stalls mid-batch, holding
/// the rest of its leases, until it is killed.
async fn killed_consumer(cluster: &LocalCluster, client: &Client, writer: &str, sent: &[Sent]) {
    let case = Case {
        streams: Some("7101-7103"),
        types: Some(vec!["Patient", "Observation"]),
    };
    let create = json!({
        "name": "killed", "streams": "7101-7103", "types": ["Patient", "Observation"],
        "retry_max": 2, "lease_ms": LEASE_MS,
    });
    let (status, info) = call(
        cluster,
        0,
        "POST",
        Some(writer),
        "/v1/groups",
        Some(&create),
    )
    .await;
    assert_eq!(status, 201, "{info}");
    // More events after the group exists, one of them the poison.
    let mut expected: BTreeMap<u64, Sent> = case
        .expected(sent)
        .into_iter()
        .map(|e| (e.position, e))
        .collect();
    let poison = *expected.keys().nth(2).expect("a third event");
    let late = client
        .append_events(
            7102,
            vec![EventIn {
                event_type: Some("Patient".to_string()),
                ..EventIn::bytes(b"late\xff")
            }],
            None,
        )
        .await
        .expect("append");
    expected.insert(
        late.first_position,
        Sent {
            position: late.first_position,
            stream: 7102,
            event_type: Some("Patient".to_string()),
            payload: b"late\xff".to_vec(),
        },
    );

    let config = ChildConfig {
        url: cluster.dev.api_urls[1].clone(),
        ca_pem_path: cluster.dev.ca_pem_path.to_string_lossy().into_owned(),
        token: writer.to_string(),
        group: "killed".to_string(),
        poison,
    };
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "type_filters_and_a_killed_consumer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, serde_json::to_string(&config).expect("json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the consumer process");
    let stdout = child.stdout.take().expect("piped");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut leased_by_a = Vec::new();
    let mut processed: BTreeMap<u64, u64> = BTreeMap::new();
    let mut acked_by_a = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines_rx
            .recv_timeout(left)
            .expect("the consumer reports in time");
        // libtest may print `test ... ` before the first line: find the mark.
        let Some(report) = line.split_once("consumer: ").map(|(_, r)| r) else {
            continue;
        };
        let words: Vec<&str> = report.split(' ').collect();
        match words[0] {
            "leased" => {
                leased_by_a = words[1..]
                    .iter()
                    .map(|w| w.parse::<u64>().expect("position"))
                    .collect()
            }
            "processed" => {
                let position: u64 = words[1].parse().expect("position");
                let payload = decode(words[2]);
                assert_eq!(
                    Some(&payload),
                    expected.get(&position).map(|e| &e.payload),
                    "A got the bytes appended"
                );
                *processed.entry(position).or_default() += 1;
            }
            "acked" => {
                acked_by_a.insert(words[1].parse::<u64>().expect("position"));
            }
            "stalled" => break,
            other => panic!("unknown report {other}"),
        }
    }
    child.kill().expect("SIGKILL the consumer mid-batch");
    child.wait().expect("reap the consumer");
    reader
        .join()
        .expect("the reader thread ends with the child");
    assert_eq!(leased_by_a.len() as u64, CHILD_BATCH, "A held a full batch");
    assert_eq!(acked_by_a.len(), CHILD_ACKS);
    let unacked_a: BTreeSet<u64> = leased_by_a
        .iter()
        .copied()
        .filter(|p| !acked_by_a.contains(p) && *p != poison)
        .collect();
    assert_eq!(unacked_a.len(), CHILD_BATCH as usize - CHILD_ACKS - 1);
    // Nobody pulls: the primary's reaper still takes A's leases back once
    // they expire (nothing stays in flight for a dead consumer).
    let reaped_by = Instant::now() + Duration::from_millis(LEASE_MS + 5000);
    loop {
        let (_, info) = call(cluster, 0, "GET", Some(writer), "/v1/groups/killed", None).await;
        if info["in_flight"] == json!(0) {
            break;
        }
        assert!(
            Instant::now() < reaped_by,
            "expired leases not taken back: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // B: processes everything else, nacks the poison every time.
    let b = |path: &str| format!("/v1/groups/killed/{path}");
    let mut poison_attempts = vec![1]; // A's delivery
    let mut back_from_a = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    let mut acked: BTreeSet<u64> = acked_by_a.clone();
    while acked.len() + 1 < expected.len() || poison_attempts.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "events lost: acked {} of {}",
            acked.len(),
            expected.len() - 1
        );
        let body = json!({ "consumer": "b", "max": 100, "wait_ms": 500 });
        let (status, answer) =
            call(cluster, 2, "POST", Some(writer), &b("pull"), Some(&body)).await;
        assert_eq!(status, 200, "{answer}");
        let mut ack = Vec::new();
        for event in answer["events"].as_array().expect("events") {
            let got = received_json(event);
            let attempt = event["attempt"].as_u64().expect("attempt");
            assert_eq!(
                Some(&got),
                expected.get(&got.position),
                "B got what was appended"
            );
            assert!(
                !acked.contains(&got.position),
                "an acked event came again: {got:?}"
            );
            *processed.entry(got.position).or_default() += 1;
            if unacked_a.contains(&got.position) {
                assert_eq!(attempt, 2, "A's unacked event comes back as attempt 2");
                back_from_a.insert(got.position);
            }
            match got.position == poison {
                true => {
                    poison_attempts.push(attempt);
                    let nack = json!({ "positions": [poison], "reason": "cannot parse" });
                    let (status, answer) =
                        call(cluster, 2, "POST", Some(writer), &b("nack"), Some(&nack)).await;
                    assert_eq!(status, 200, "{answer}");
                    assert_eq!(
                        answer["parked"],
                        json!(u64::from(attempt == 3)),
                        "attempt {attempt}: {answer}"
                    );
                }
                false => ack.push(got.position),
            }
        }
        if !ack.is_empty() {
            let (status, answer) = call(
                cluster,
                2,
                "POST",
                Some(writer),
                &b("ack"),
                Some(&json!({ "positions": ack })),
            )
            .await;
            assert_eq!(status, 200, "{answer}");
            acked.extend(ack);
        }
    }
    assert_eq!(back_from_a, unacked_a, "every event A held went to B");
    assert_eq!(
        poison_attempts,
        vec![1, 2, 3],
        "the poison: delivered retry_max + 1 times"
    );
    let all: BTreeSet<u64> = expected.keys().copied().collect();
    let seen: BTreeSet<u64> = processed.keys().copied().collect();
    assert_eq!(seen, all, "every event processed at least once");
    let mut done = acked.clone();
    done.insert(poison);
    assert_eq!(done, all, "none lost: each acked or parked");
    let body = json!({ "consumer": "b", "max": 100, "wait_ms": 300 });
    let (_, answer) = call(cluster, 2, "POST", Some(writer), &b("pull"), Some(&body)).await;
    assert_eq!(answer["events"], json!([]), "nothing else is due: {answer}");
    let (status, list) = call(cluster, 0, "GET", Some(writer), &b("parked"), None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["parked"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["parked"][0]["position"], json!(poison), "{list}");
    let (_, info) = call(cluster, 1, "GET", Some(writer), "/v1/groups/killed", None).await;
    assert_eq!(info["acked"], json!(expected.len() - 1), "{info}");
    assert_eq!(info["parked"], json!(1), "{info}");
    let last = *expected.keys().last().expect("events");
    assert!(
        info["checkpoint"].as_u64().expect("checkpoint") > last,
        "{info}"
    );
}

/// The consumer child: pulls one batch, processes it in order (acking
/// each, nacking the poison) and after [`CHILD_ACKS`] acks starts on the
/// next event but stalls, holding its leases, until it is killed. Reports
/// each step on stdout as `consumer: ...` lines.
async fn child_consumer(config: &str) {
    let config: ChildConfig = serde_json::from_str(config).expect("the child's config");
    let ca = std::fs::read(&config.ca_pem_path).expect("the dev CA");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("dev CA"))
        .timeout(WAIT)
        .build()
        .expect("http client");
    let post = |verb: &str, body: Value| {
        http.post(format!("{}/v1/groups/{}/{verb}", config.url, config.group))
            .bearer_auth(&config.token)
            .json(&body)
            .send()
    };
    let answer: Value = post(
        "pull",
        json!({ "consumer": "a", "max": CHILD_BATCH, "wait_ms": 2000 }),
    )
    .await
    .expect("pull")
    .json()
    .await
    .expect("a delivery");
    let events = answer["events"].as_array().expect("events").clone();
    let positions: Vec<String> = events
        .iter()
        .map(|e| e["position"].as_u64().expect("position").to_string())
        .collect();
    println!("consumer: leased {}", positions.join(" "));
    let mut acks = 0;
    for event in &events {
        let position = event["position"].as_u64().expect("position");
        println!(
            "consumer: processed {position} {}",
            event["base64"].as_str().expect("base64")
        );
        if acks == CHILD_ACKS {
            break; // Mid-batch: this one is processed but never acked.
        }
        if position == config.poison {
            let answer = post("nack", json!({ "positions": [position] }))
                .await
                .expect("nack");
            assert_eq!(answer.status().as_u16(), 200);
            continue;
        }
        let answer = post("ack", json!({ "positions": [position] }))
            .await
            .expect("ack");
        assert_eq!(answer.status().as_u16(), 200);
        println!("consumer: acked {position}");
        acks += 1;
    }
    println!("consumer: stalled");
    tokio::time::sleep(WAIT).await;
    panic!("the consumer was not killed");
}
