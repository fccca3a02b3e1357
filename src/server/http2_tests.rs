//! Tests of the API's connection layer with HTTP/2: both protocols are
//! served over TLS and chosen by ALPN; misbehaving HTTP/2 clients (many
//! streams never read, oversized header lists, a plaintext h2c preface on
//! the TLS port) get bounded resources and do not stop other clients.
//!
//! The misbehaving client speaks raw HTTP/2 frames (RFC 9113 §4) with
//! HPACK literals (RFC 7541 §6.2.2), because a well-behaved client library
//! never opens more streams than the server allows, nor ignores flow
//! control.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::tests::{FakeNode, READER, WAIT, tls_config, tokens};
use super::{H2_HEADER_LIST_BYTES_MAX, H2_STREAMS_MAX};

const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
/// The client's flow-control window for the connection and each stream
/// (RFC 9113 §6.9.2: 65,535 until a WINDOW_UPDATE, which the raw client
/// never sends).
const DEFAULT_WINDOW_BYTES: usize = 65_535;
/// HPACK static table index 8: `:status 200`, as one indexed byte.
const STATUS_200_INDEXED: u8 = 0x88;

/// A served API over TLS with the production ALPN list, its address and
/// the test CA; events of `event_bytes` each in stream 1.
struct Served {
    addr: std::net::SocketAddr,
    pem: String,
    stop: tokio::sync::watch::Sender<bool>,
    handle: super::ServeHandle,
}

async fn serve(events: usize, event_bytes: usize) -> Served {
    let (tls, pem) = tls_config();
    let mut tls = (*tls).clone();
    tls.alpn_protocols = crate::api::ALPN_PROTOCOLS
        .iter()
        .map(|id| id.to_vec())
        .collect();
    let node = Arc::new(FakeNode::default());
    for i in 0..events {
        // Every byte value, shifted per event, so answers differ per event.
        let payload: Vec<u8> = (0..event_bytes).map(|j| (i + j) as u8).collect();
        node.push(1, &payload);
    }
    let config = super::ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls: Arc::new(tls),
        tokens: tokens(),
        peer_api: Vec::new(),
        ca_pem: pem.clone().into_bytes(),
        identity: None,
        client_certs: None,
        credential_files: None,
        tls_watcher: None,
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let handle = super::serve(config, node, shutdown).await.expect("serve");
    Served {
        addr: handle.local_addr,
        pem,
        stop,
        handle,
    }
}

impl Served {
    fn base(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// A reqwest client trusting the test CA; `http1_only` or ALPN h2 first.
    fn client(&self, http1_only: bool) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).expect("pem"))
            .resolve("localhost", self.addr)
            .timeout(WAIT);
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().expect("client")
    }

    /// A raw TLS connection offering exactly `alpn`.
    async fn raw_tls(
        &self,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|id| id.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake")
    }

    async fn stop(self) {
        self.stop.send(true).expect("server listening");
        tokio::time::timeout(WAIT, self.handle.join())
            .await
            .expect("server stops after shutdown");
    }
}

/// One HTTP/2 frame header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("small frame");
    assert!(length < 1 << 24, "frame payload fits 24 bits");
    let mut out = length.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `prefix_bits`-bit prefix (RFC 7541 §5.1).
fn hpack_integer(out: &mut Vec<u8>, value: usize, prefix_bits: u32) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128 + 128) as u8);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block of literals without indexing, new names, no Huffman.
fn hpack_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        hpack_integer(&mut out, name.len(), 7);
        out.extend_from_slice(name.as_bytes());
        hpack_integer(&mut out, value.len(), 7);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn get_headers<'a>(path: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<u8> {
    let mut headers = vec![
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
        ("authorization", "Bearer vlm_reader_token"),
    ];
    assert_eq!(
        READER, "vlm_reader_token",
        "the header above names the reader"
    );
    headers.extend_from_slice(extra);
    hpack_block(&headers)
}

/// The `:status` of a response header block that starts with it, as hyper
/// writes it: indexed `:status 200` (0x88), or a literal with the indexed
/// name `:status` (static index 8) and a Huffman-coded value of digits
/// (RFC 7541 Appendix B: '0'-'2' are 5 bits, '3'-'9' 6 bits).
fn response_status(block: &[u8]) -> Option<u16> {
    if block.first() == Some(&STATUS_200_INDEXED) {
        return Some(200);
    }
    let (&first, rest) = block.split_first()?;
    if first & 0x0f != 8 && first & 0x3f != 8 {
        return None;
    }
    let (&length, rest) = rest.split_first()?;
    let value = rest.get(..usize::from(length & 0x7f))?;
    if length & 0x80 == 0 {
        return std::str::from_utf8(value).ok()?.parse().ok();
    }
    let bits: Vec<u8> = value
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1))
        .collect();
    let (mut at, mut status) = (0, 0u16);
    while at + 5 <= bits.len() {
        let code5 = bits[at..at + 5].iter().fold(0u8, |acc, b| acc << 1 | b);
        if code5 <= 2 {
            status = status * 10 + u16::from(code5);
            at += 5;
            continue;
        }
        let code6 = bits
            .get(at..at + 6)?
            .iter()
            .fold(0u8, |acc, b| acc << 1 | b);
        if !(0x19..=0x1f).contains(&code6) {
            break; // The all-ones padding (or a non-digit).
        }
        status = status * 10 + u16::from(code6 - 0x19 + 3);
        at += 6;
    }
    Some(status)
}

/// What the raw client saw, per stream and for the connection.
#[derive(Debug, Default)]
struct Seen {
    settings: BTreeMap<u16, u32>,
    /// Stream -> first byte of its response header block.
    responses: BTreeMap<u32, u8>,
    /// Stream -> RST_STREAM error code.
    resets: BTreeMap<u32, u32>,
    /// The response header blocks, whole, per stream.
    blocks: BTreeMap<u32, Vec<u8>>,
    data_bytes: usize,
    goaway: bool,
}

/// Reads frames until `done(seen)` holds or `limit` passes; ACKs the
/// server's SETTINGS, never sends a WINDOW_UPDATE (never "reads" data).
async fn read_frames<S>(stream: &mut S, limit: Duration, done: impl Fn(&Seen) -> bool) -> Seen
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut seen = Seen::default();
    let deadline = Instant::now() + limit;
    while !done(&seen) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let mut head = [0u8; 9];
        match tokio::time::timeout(left, stream.read_exact(&mut head)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        match tokio::time::timeout(left, stream.read_exact(&mut payload)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        match kind {
            FRAME_SETTINGS if flags & FLAG_ACK == 0 => {
                for setting in payload.chunks_exact(6) {
                    let key = u16::from_be_bytes([setting[0], setting[1]]);
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    seen.settings.insert(key, value);
                }
                let ack = frame(FRAME_SETTINGS, FLAG_ACK, 0, &[]);
                stream.write_all(&ack).await.expect("ack settings");
            }
            FRAME_HEADERS => {
                seen.responses
                    .insert(id, payload.first().copied().unwrap_or(0));
                seen.blocks.insert(id, payload);
            }
            FRAME_RST_STREAM => {
                let code = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                seen.resets.insert(id, code);
            }
            FRAME_DATA => seen.data_bytes += length,
            FRAME_GOAWAY => {
                seen.goaway = true;
                break;
            }
            _ => {}
        }
    }
    seen
}

// Goal: over ALPN h2 a request is HTTP/2, over http/1.1 it is HTTP/1.1, and
// the same request answers the same bytes over both (and an append over h2
// reads back byte-exact over HTTP/1.1).
#[tokio::test]
async fn h2_and_http1_both_served_with_the_same_bytes() {
    let served = serve(300, 700).await;
    let h2 = served.client(false);
    let h1 = served.client(true);
    let url = format!("{}/v1/streams/1/events?from=3&max=250", served.base());
    let mut bodies = Vec::new();
    for (client, version) in [
        (&h2, reqwest::Version::HTTP_2),
        (&h1, reqwest::Version::HTTP_11),
    ] {
        let answer = client
            .get(&url)
            .bearer_auth(READER)
            .send()
            .await
            .expect("read");
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
        assert_eq!(answer.version(), version, "negotiated protocol");
        bodies.push(answer.bytes().await.expect("body"));
    }
    assert!(bodies[0].len() > 200_000, "a multi-frame answer");
    assert_eq!(bodies[0], bodies[1], "same bytes over h2 and http/1.1");
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let body = serde_json::json!({"events": [{"base64": base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD, &every_byte)}]});
    let appended = h2
        .post(format!("{}/v1/streams/9/append", served.base()))
        .bearer_auth(super::tests::WRITER)
        .json(&body)
        .send()
        .await
        .expect("append over h2");
    assert_eq!(appended.version(), reqwest::Version::HTTP_2);
    assert_eq!(appended.status(), reqwest::StatusCode::OK);
    let read: crate::api::StreamEvents = h1
        .get(format!("{}/v1/streams/9/events", served.base()))
        .bearer_auth(READER)
        .send()
        .await
        .expect("read over http/1.1")
        .json()
        .await
        .expect("events");
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        &read.events[0].base64,
    )
    .expect("base64");
    assert_eq!(bytes, every_byte);
    served.stop().await;
}

// Goal: an h2 client that opens more streams than allowed and never reads
// (no WINDOW_UPDATE) gets the advertised limits, its extra streams refused,
// at most one flow-control window of data, and other clients (h2 and
// HTTP/1.1) are served meanwhile within a short bound.
#[tokio::test]
async fn h2_client_opening_many_unread_streams_is_bounded() {
    // Each answer (~550 KB of base64) is far beyond the 64 KiB window.
    let served = serve(100, 4096).await;
    let mut raw = served.raw_tls(&[b"h2"]).await;
    assert_eq!(raw.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let opened = H2_STREAMS_MAX as usize + 20;
    let mut out = super::H2_PREFACE.to_vec();
    out.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
    for i in 0..opened {
        let id = 1 + 2 * i as u32;
        let block = get_headers("/v1/streams/1/events?from=0&max=100", &[]);
        out.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            id,
            &block,
        ));
    }
    raw.write_all(&out).await.expect("send streams");
    let extra = opened - H2_STREAMS_MAX as usize;
    let seen = read_frames(&mut raw, WAIT, |seen| {
        seen.resets
            .values()
            .filter(|code| **code == REFUSED_STREAM)
            .count()
            >= extra
            && !seen.responses.is_empty()
    })
    .await;
    assert_eq!(
        seen.settings.get(&SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(&H2_STREAMS_MAX)
    );
    assert_eq!(
        seen.settings.get(&SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(&H2_HEADER_LIST_BYTES_MAX)
    );
    let refused: Vec<u32> = seen
        .resets
        .iter()
        .filter(|(_, code)| **code == REFUSED_STREAM)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        refused.len(),
        extra,
        "streams beyond the limit are refused: {seen:?}"
    );
    let first_refused = 1 + 2 * H2_STREAMS_MAX;
    assert!(refused.iter().all(|id| *id >= first_refused), "{refused:?}");
    assert!(
        seen.data_bytes <= DEFAULT_WINDOW_BYTES,
        "{} data bytes sent past the client's window",
        seen.data_bytes
    );
    // Meanwhile, with the raw connection still open and unread, others are served.
    let started = Instant::now();
    for http1_only in [false, true] {
        let answer = served
            .client(http1_only)
            .get(format!(
                "{}/v1/streams/1/events?from=0&max=2",
                served.base()
            ))
            .bearer_auth(READER)
            .send()
            .await
            .expect("another client is served");
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
        answer.bytes().await.expect("whole answer");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(raw);
    served.stop().await;
}

// Goal: a header list above the advertised limit is refused (431 or a
// reset) before any handler runs, and the same connection still serves a
// normal request afterwards.
#[tokio::test]
async fn h2_oversized_header_list_is_refused() {
    let served = serve(1, 10).await;
    let mut raw = served.raw_tls(&[b"h2"]).await;
    // 600 small headers: well under one frame encoded, but each counts 32
    // bytes more when decoded (RFC 9113 §6.5.2), so the list is > 16 KiB.
    let names: Vec<String> = (0..600).map(|i| format!("x-h{i}")).collect();
    let extra: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let big = get_headers("/v1/health", &extra);
    assert!(big.len() < 16_384, "fits one frame: {}", big.len());
    let decoded: usize = extra.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    assert!(decoded > H2_HEADER_LIST_BYTES_MAX as usize);
    let mut out = super::H2_PREFACE.to_vec();
    out.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
    out.extend(frame(
        FRAME_HEADERS,
        FLAG_END_HEADERS | FLAG_END_STREAM,
        1,
        &big,
    ));
    let small = get_headers("/v1/health", &[]);
    out.extend(frame(
        FRAME_HEADERS,
        FLAG_END_HEADERS | FLAG_END_STREAM,
        3,
        &small,
    ));
    raw.write_all(&out).await.expect("send");
    let seen = read_frames(&mut raw, WAIT, |seen| seen.responses.contains_key(&3)).await;
    assert_eq!(
        seen.responses.get(&3),
        Some(&STATUS_200_INDEXED),
        "the connection still serves: {seen:?}"
    );
    let status = seen.blocks.get(&1).and_then(|block| response_status(block));
    assert!(
        status == Some(431) || seen.resets.contains_key(&1),
        "the oversized request is refused: {seen:?}"
    );
    assert_ne!(seen.responses.get(&1), Some(&STATUS_200_INDEXED));
    served.stop().await;
}

// Goal: a plaintext prior-knowledge h2c preface on the TLS port is dropped
// at once (no HTTP is spoken without TLS), and so is an HTTP/2 preface over
// TLS without ALPN h2 (that connection is HTTP/1.1); a normal client is
// served right after.
#[tokio::test]
async fn h2c_and_h2_without_alpn_are_refused() {
    let served = serve(1, 10).await;
    let mut preface = super::H2_PREFACE.to_vec();
    preface.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
    let mut tcp = tokio::net::TcpStream::connect(served.addr)
        .await
        .expect("connect");
    tcp.write_all(&preface).await.expect("send h2c preface");
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the h2c connection is closed at once");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        !answer.starts_with(&[0, 0]) || answer.get(3) != Some(&FRAME_SETTINGS),
        "no HTTP/2 frame answered in plaintext: {answer:?}"
    );
    let mut tls = served.raw_tls(&[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    tls.write_all(&preface)
        .await
        .expect("send h2 preface without ALPN");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection without ALPN h2 ends at once");
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
        "answered as HTTP/1.1 only: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let health = served
        .client(false)
        .get(format!("{}/v1/health", served.base()))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    served.stop().await;
}

// Goal: a client that negotiates h2 and then sends only part of the
// preface is closed at the preface deadline (hyper alone would wait for
// ever), not before it, and the server keeps serving others meanwhile.
#[tokio::test]
async fn h2_client_silent_after_the_handshake_is_closed_at_the_deadline() {
    let served = serve(1, 10).await;
    let mut silent = served.raw_tls(&[b"h2"]).await;
    silent
        .write_all(&super::H2_PREFACE[..10])
        .await
        .expect("part of the preface");
    let started = Instant::now();
    let health = served
        .client(false)
        .get(format!("{}/v1/health", served.base()))
        .send()
        .await
        .expect("another client is served");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let deadline = Duration::from_millis(super::H2_PREFACE_TIMEOUT_MS);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(deadline + WAIT, silent.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the silent connection was never closed");
    let waited = started.elapsed();
    assert!(
        waited + Duration::from_millis(500) >= deadline,
        "closed after {waited:?}, before the {deadline:?} deadline"
    );
    served.stop().await;
}
