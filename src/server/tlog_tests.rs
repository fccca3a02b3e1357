//! Tests of the tlog-tiles routes over a real one-replica log served over
//! HTTP: a client that knows only the pinned policy fetches the checkpoint,
//! tiles and entry bundles and computes inclusion and consistency proofs
//! itself; the routes are for auditors only and every access is in the
//! trail; no path, however spelled, gets a 5xx.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use tower::ServiceExt as _;
use vellum_audit::checkpoint::Certificate;
use vellum_audit::error::DecodeError;
use vellum_audit::hash::Hash;
use vellum_audit::leaf::LeafPreimage;
use vellum_audit::policy::Policy;
use vellum_audit::proof::{ConsistencyProof, InclusionProof};
use vellum_audit::tiles::{
    EntryBundleId, TileId, TileReader, consistency_proof_from_tiles, decode_entry_bundle,
    decode_hash_tile, inclusion_proof_from_tiles, root_from_tiles, tiles_for_size,
};
use vellum_compliance::trail::{AccessAction, AccessEvent};

use super::auth::{Role, Scope, TokenStore, token_line};
use super::node::Node;
use super::routes::{AppState, router};
use crate::log::{LocalLog, LogOptions};
use crate::replica::ReplicaNode;

const WRITER: &str = "vlm_tlog_writer";
const READER: &str = "vlm_tlog_reader";
const AUDITOR: &str = "vlm_tlog_auditor";

/// A log served over HTTP on 127.0.0.1, with the router kept for raw paths.
struct Served {
    app: Router,
    base: String,
    log: Arc<LocalLog>,
    node: Arc<ReplicaNode>,
    _dir: tempfile::TempDir,
}

async fn serve_log() -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = tokio::task::spawn_blocking(move || {
        crate::init::init_data_dir(&data, None).expect("init");
        LocalLog::open(&data, LogOptions::default())
            .expect("open")
            .0
    })
    .await
    .expect("open task");
    let log = Arc::new(log);
    let custody = Arc::new(crate::replica::Custody::new(Arc::clone(&log)));
    let node = Arc::new(ReplicaNode::new(Arc::clone(&log), None, custody));
    let tokens = [
        token_line(WRITER, "alice", Role::Writer, &Scope::all()),
        token_line(READER, "bob", Role::Reader, &Scope::all()),
        token_line(AUDITOR, "carol", Role::Auditor, &Scope::all()),
    ]
    .join("\n");
    let tokens = TokenStore::from_lines(&tokens).expect("tokens");
    let node_dyn: Arc<dyn Node> = node.clone();
    let app = router(AppState::new(node_dyn, tokens, Vec::new(), b"").expect("state"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let served = app.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, served).await;
    });
    Served {
        app,
        base,
        log,
        node,
        _dir: dir,
    }
}

/// Appends `count` events to `stream` in batches of 100.
async fn append(log: &Arc<LocalLog>, stream: u64, count: usize) {
    let log = Arc::clone(log);
    tokio::task::spawn_blocking(move || {
        let events: Vec<Bytes> = (0..count)
            .map(|i| Bytes::from(format!("{{\"event\":{i}}}")))
            .collect();
        for batch in events.chunks(100) {
            log.append(stream, batch, None, None).expect("append");
        }
    })
    .await
    .expect("append task");
}

/// An HTTP client of the tlog prefix with one token.
#[derive(Debug, Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<&'static str>,
}

/// One answer: status, content type, cache control, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    cache_control: String,
    body: Vec<u8>,
}

impl Client {
    fn new(base: &str, token: Option<&'static str>) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.to_string(),
            token,
        }
    }

    /// GET `<base>/v1/tlog/<path>`.
    async fn get(&self, path: &str) -> Answer {
        let mut request = self.http.get(format!("{}/v1/tlog/{path}", self.base));
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("send");
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let (content_type, cache_control) =
            (header(header::CONTENT_TYPE), header(header::CACHE_CONTROL));
        Answer {
            status: response.status().as_u16(),
            content_type,
            cache_control,
            body: response.bytes().await.expect("body").to_vec(),
        }
    }

    /// The checkpoint, verified under `policy`: (certificate, size, root).
    async fn checkpoint(&self, policy: &Policy) -> (Certificate, u64, Hash) {
        let answer = self.get("checkpoint").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.content_type, "text/plain; charset=utf-8");
        assert_eq!(answer.cache_control, "private, no-store");
        let text = String::from_utf8(answer.body).expect("utf-8");
        let certificate = Certificate::parse(&text).expect("a signed checkpoint");
        let verified = certificate
            .verify(policy)
            .expect("verifies under the policy");
        let (size, root) = (verified.checkpoint.size, verified.checkpoint.root);
        (certificate, size, root)
    }
}

/// Why a tile could not be fetched.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{path}: status {status}")]
    Status { path: String, status: u16 },
    #[error("{path}: {source}")]
    Decode {
        path: String,
        #[source]
        source: DecodeError,
    },
}

/// A [`TileReader`] over HTTP (blocking: run it off the runtime's workers).
#[derive(Debug)]
struct HttpTiles {
    client: Client,
    runtime: tokio::runtime::Handle,
}

impl TileReader for HttpTiles {
    type Error = FetchError;

    fn tile(&self, id: TileId) -> Result<Vec<Hash>, FetchError> {
        let path = id.path();
        let answer = self.runtime.block_on(self.client.get(&path));
        if answer.status != 200 {
            return Err(FetchError::Status {
                path,
                status: answer.status,
            });
        }
        assert_eq!(answer.content_type, "application/octet-stream", "{path}");
        let cache = match id.is_partial() {
            true => "private, max-age=60",
            false => "private, max-age=31536000, immutable",
        };
        assert_eq!(answer.cache_control, cache, "{path}");
        decode_hash_tile(&answer.body).map_err(|source| FetchError::Decode { path, source })
    }
}

/// Every entry bundle of the tree of `size` fetched and decoded, each entry
/// checked to hash to its place in the level-0 tile: the preimages in order.
fn fetch_entries(tiles: &HttpTiles, size: u64) -> Vec<(Vec<u8>, LeafPreimage)> {
    let mut entries = Vec::new();
    for tile in tiles_for_size(size).filter(|t| t.level() == 0) {
        let bundle = tile.entry_bundle().expect("a level-0 tile has a bundle");
        let answer = tiles.runtime.block_on(tiles.client.get(&bundle.path()));
        assert_eq!(answer.status, 200, "{bundle}: {answer:?}");
        assert_eq!(answer.content_type, "application/octet-stream");
        let hashes = tiles.tile(tile).expect("level-0 tile");
        let decoded = decode_entry_bundle(bundle, &answer.body).expect("bundle decodes");
        for (i, entry) in decoded.into_iter().enumerate() {
            let preimage = LeafPreimage::decode(&entry).expect("a 97-byte leaf preimage");
            assert_eq!(preimage.leaf_hash(), hashes[i], "{bundle} entry {i}");
            assert_eq!(preimage.global_position, entries.len() as u64);
            entries.push((entry, preimage));
        }
    }
    entries
}

// Goal (issue 11): a client that fetches only the checkpoint, tiles and
// entry bundles over HTTP computes the root, an inclusion proof of an event
// and a consistency proof from an older checkpoint, and each verifies
// against the signed checkpoints under the pinned policy; entries hash to
// the level-0 tiles; an older checkpoint's partial tiles are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiles_over_http_prove_inclusion_and_consistency() {
    let served = serve_log().await;
    let policy = served.log.policy().clone();
    let client = Client::new(&served.base, Some(AUDITOR));
    append(&served.log, 20, 150).await;
    let (_, old_size, old_root) = client.checkpoint(&policy).await;
    assert!(old_size >= 150, "{old_size}");
    append(&served.log, 21, 500).await;
    let (new_certificate, new_size, new_root) = client.checkpoint(&policy).await;
    assert!(new_size >= old_size + 500, "{old_size} -> {new_size}");
    let tiles = HttpTiles {
        client: client.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    tokio::task::spawn_blocking(move || {
        // Both trees from the served tiles alone (the older one from its
        // partial tiles, served although the log has grown since).
        assert_eq!(root_from_tiles(&tiles, new_size).expect("root"), new_root);
        assert_eq!(root_from_tiles(&tiles, old_size).expect("root"), old_root);
        let hashes =
            consistency_proof_from_tiles(&tiles, old_size, new_size).expect("consistency proof");
        let consistency = ConsistencyProof {
            old_size,
            new_size,
            hashes,
            checkpoint: new_certificate.clone(),
        };
        consistency
            .verify(&old_root, &policy)
            .expect("the older checkpoint's tree is a prefix of the newer one");
        assert!(consistency.verify(&new_root, &policy).is_err());

        let entries = fetch_entries(&tiles, new_size);
        assert_eq!(entries.len() as u64, new_size);
        let (extra, leaf) = entries
            .iter()
            .find(|(_, leaf)| leaf.stream == 21 && leaf.stream_offset == 250)
            .expect("stream 21 offset 250 is in the entries")
            .clone();
        let stream_21 = entries.iter().filter(|(_, l)| l.stream == 21).count();
        assert_eq!(stream_21, 500);
        let index = leaf.global_position;
        let hashes = inclusion_proof_from_tiles(&tiles, index, new_size).expect("inclusion");
        let mut proof = InclusionProof {
            extra: Some(extra),
            index,
            hashes,
            checkpoint: new_certificate,
        };
        let (_, proved) = proof
            .verify_event(&policy)
            .expect("the event's proof verifies");
        assert_eq!((proved.stream, proved.stream_offset), (21, 250));
        proof.hashes.reverse();
        assert!(
            proof.verify_event(&policy).is_err(),
            "a wrong path verifies"
        );
    })
    .await
    .expect("client task");
}

fn trail_of(node: &ReplicaNode) -> Vec<AccessEvent> {
    let end = node.trail_snapshot().expect("snapshot").end;
    let mut events = Vec::new();
    let mut from = Some(0);
    while let Some(offset) = from {
        let page = node.trail_page(offset, end).expect("trail");
        events.extend(page.events);
        from = page.next;
    }
    events.into_iter().map(|(event, _)| event).collect()
}

// Goal: only auditors may use the tlog routes (401 without a token, 403 for
// writers and readers), and every access, allowed or not, is in the access
// trail naming who, what and which tile (failed logins of one address
// after the first of a window are aggregated into one counted event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlog_routes_are_for_auditors_and_recorded_in_the_trail() {
    let served = serve_log().await;
    append(&served.log, 20, 10).await;
    let before = trail_of(&served.node).len();
    for (token, status) in [
        (None, 401),
        (Some("vlm_unknown"), 401),
        (Some(WRITER), 403),
        (Some(READER), 403),
    ] {
        let client = Client::new(&served.base, token);
        for path in ["checkpoint", "tile/0/000.p/1", "tile/entries/000.p/1"] {
            let answer = client.get(path).await;
            assert_eq!(answer.status, status, "{token:?} {path}");
            assert!(answer.body.starts_with(b"{\"error\""), "{answer:?}");
        }
    }
    let auditor = Client::new(&served.base, Some(AUDITOR));
    let (_, size, _) = auditor.checkpoint(&served.log.policy().clone()).await;
    let width = u16::try_from(size).expect("a small log");
    let tile = TileId::new(0, 0, width).expect("tile");
    let bundle = EntryBundleId::new(0, width).expect("bundle");
    assert_eq!(auditor.get(&tile.path()).await.status, 200);
    assert_eq!(auditor.get(&bundle.path()).await.status, 200);
    assert_eq!(auditor.get("tile/0/001").await.status, 404);
    assert_eq!(auditor.get("tile/0/0001").await.status, 400);

    let trail = trail_of(&served.node);
    let trail = &trail[before..];
    // The six failed logins come from one address: the first is recorded
    // at once, the other five are counted into one aggregate event that is
    // recorded when the address's window closes (src/server/logins.rs).
    assert_eq!(
        trail.len(),
        1 + 2 * 3 + 5,
        "one event per request, failed logins aggregated: {trail:#?}"
    );
    assert_eq!(trail[0].action, AccessAction::AuthFailed, "{:?}", trail[0]);
    assert!(
        trail[0].outcome.starts_with("denied: 401"),
        "{:?}",
        trail[0]
    );
    let principals = ["alice", "alice", "alice", "bob", "bob", "bob"];
    for (event, principal) in trail[1..7].iter().zip(principals) {
        assert_eq!(event.principal, principal, "{event:?}");
        assert!(event.outcome.starts_with("denied: 403"), "{event:?}");
    }
    let served_checkpoint = &trail[7];
    assert_eq!(
        (
            served_checkpoint.principal.as_str(),
            served_checkpoint.role.as_str(),
            served_checkpoint.action,
            served_checkpoint.outcome.as_str(),
        ),
        ("carol", "auditor", AccessAction::Certificate, "success")
    );
    assert_eq!(
        served_checkpoint.detail.as_deref(),
        Some(format!("tlog checkpoint size {size}").as_str())
    );
    let expected = [
        (format!("tlog {}", tile.path()), "success"),
        (format!("tlog {}", bundle.path()), "success"),
        ("".to_string(), "refused: 404"),
        ("".to_string(), "refused: 400"),
    ];
    for (event, (detail, outcome)) in trail[8..].iter().zip(expected) {
        assert_eq!(event.action, AccessAction::Proof, "{event:?}");
        assert_eq!(event.principal, "carol");
        assert_eq!(event.outcome, outcome, "{event:?}");
        match outcome {
            "success" => {
                assert_eq!(event.detail.as_deref(), Some(detail.as_str()));
                assert_eq!((event.from, event.to), (Some(0), Some(size)));
            }
            _ => assert_eq!(event.detail, None),
        }
    }
}

/// GET of a raw path (not normalized by any URL parser) through the
/// router; None if the path is not even a valid request target.
async fn raw_status(app: &Router, path: &str) -> Option<StatusCode> {
    let request = Request::builder()
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {AUDITOR}"))
        .body(Body::empty())
        .ok()?;
    Some(
        app.clone()
            .oneshot(request)
            .await
            .expect("infallible")
            .status(),
    )
}

// Goal: every spelling of a tile path but the canonical one is a 400, a
// canonical tile no checkpoint's tree has is a 404, and no path at all,
// however long or odd, makes the server answer 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tile_paths_are_4xx_never_5xx() {
    let served = serve_log().await;
    append(&served.log, 20, 300).await;
    let long = format!("/v1/tlog/tile/0/{}000", "x001/".repeat(5000));
    let cases: &[(&str, u16)] = &[
        ("/v1/tlog/tile/0/000", 200),
        ("/v1/tlog/tile/0/000.p/7", 200),
        ("/v1/tlog/tile/1/000.p/1", 200),
        ("/v1/tlog/tile/entries/000", 200),
        ("/v1/tlog/tile/entries/000.p/9", 200),
        ("/v1/tlog/tile/0/000?width=3", 200),
        ("/v1/tlog/tile/0/001", 404),
        ("/v1/tlog/tile/0/002.p/1", 404),
        ("/v1/tlog/tile/1/000", 404),
        ("/v1/tlog/tile/2/000.p/1", 404),
        ("/v1/tlog/tile/63/000.p/1", 404),
        ("/v1/tlog/tile/0/x018/x446/x744/x073/x709/x551/615", 404),
        (
            "/v1/tlog/tile/63/x018/x446/x744/x073/x709/x551/615.p/255",
            404,
        ),
        ("/v1/tlog/tile/entries/001", 404),
        (
            "/v1/tlog/tile/entries/x018/x446/x744/x073/x709/x551/615",
            404,
        ),
        ("/v1/tlog/tile/64/000", 400),
        ("/v1/tlog/tile/255/000", 400),
        ("/v1/tlog/tile/99999999999999999999999/000", 400),
        ("/v1/tlog/tile/0/x018/x446/x744/x073/x709/x551/616", 400),
        (
            "/v1/tlog/tile/0/x999/x999/x999/x999/x999/x999/x999/999",
            400,
        ),
        (&long, 400),
        ("/v1/tlog/tile/0/000.p/0", 400),
        ("/v1/tlog/tile/0/000.p/256", 400),
        ("/v1/tlog/tile/0/000.p/07", 400),
        ("/v1/tlog/tile/0/000.p/-1", 400),
        ("/v1/tlog/tile/0/000.p/1.p/1", 400),
        ("/v1/tlog/tile/0/000.p/5/", 400),
        ("/v1/tlog/tile/0/000.p", 400),
        ("/v1/tlog/tile/0/1", 400),
        ("/v1/tlog/tile/0/0000", 400),
        ("/v1/tlog/tile/0/-01", 400),
        ("/v1/tlog/tile/0/x000/000", 400),
        ("/v1/tlog/tile/0/X001/000", 400),
        ("/v1/tlog/tile/0/x001", 400),
        ("/v1/tlog/tile/0/001/x001", 400),
        ("/v1/tlog/tile/00/000", 400),
        ("/v1/tlog/tile/-1/000", 400),
        ("/v1/tlog/tile/0/000/", 400),
        ("/v1/tlog/tile/0//000", 400),
        ("/v1/tlog/tile/0/../000", 400),
        ("/v1/tlog/tile/0/./000", 400),
        ("/v1/tlog/tile/../checkpoint", 400),
        ("/v1/tlog/tile/0/%30%30%30", 400),
        ("/v1/tlog/tile/0%2F000", 400),
        ("/v1/tlog/tile/%30/000", 400),
        ("/v1/tlog/tile/0/%D9%A0%D9%A0%D9%A0", 400),
        ("/v1/tlog/tile/entries", 400),
        ("/v1/tlog/tile/entries/", 400),
        ("/v1/tlog/tile/entries/000.p/0", 400),
        ("/v1/tlog/tile/entries/000.p/256", 400),
        ("/v1/tlog/tile/entries/x000/000", 400),
        ("/v1/tlog/tile/entries/entries/000", 400),
        ("/v1/tlog/tile/0/entries/000", 400),
        ("/v1/tlog/tile/", 404),
        ("/v1/tlog/tile", 404),
        ("/v1/tlog/checkpoint/", 404),
        ("/v1/tlog/tiles/0/000", 404),
    ];
    for (path, expected) in cases {
        let status = raw_status(&served.app, path).await.expect("a valid target");
        assert_eq!(
            status.as_u16(),
            *expected,
            "{}",
            &path[..path.len().min(80)]
        );
    }
    // Odd paths from a seeded generator: never a 5xx.
    let alphabet = b"0123456789x/.p%entri-";
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    for _ in 0..200 {
        let len = next(24);
        let tail: String = (0..len)
            .map(|_| char::from(alphabet[next(alphabet.len() as u64) as usize]))
            .collect();
        let path = format!("/v1/tlog/tile/{tail}");
        if let Some(status) = raw_status(&served.app, &path).await {
            assert!(
                status.is_client_error() || status.is_success(),
                "{path}: {status}"
            );
        }
    }
}
