//! Forwarding requests from a backup to the primary: the one forwarding
//! path of the server.
//!
//! Clients may talk to any replica; only the primary appends, and every
//! access is recorded in the trail there before it is answered (P7). So the
//! trail guard hands every protected request that reaches a backup to
//! [`forward_if_backup`], which relays it (same body, same Authorization
//! header; a client that authenticated with a certificate has its chain
//! relayed in `mtls::CLIENT_CERT_HEADER`, which the primary honours only
//! from a proven replica) to the primary's API and hands back its answer (status and body)
//! unchanged, so the client sees the primary's receipt or error. The relayed
//! request carries `x-vellum-forwarded: 1`; a replica that receives such a
//! request and is not the primary answers 503 instead of forwarding again,
//! so two replicas with stale views cannot bounce a request between them.
//!
//! Outcome semantics: if the request could not be delivered (connect
//! failure) nothing was appended (503 `unavailable`); if it was sent but no
//! answer came back (timeout, reset), the append may have happened (503
//! `indeterminate`: retry with the same idempotency key).

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::routes::ApiError;
use super::{FORWARD_TIMEOUT_MS, ServerError};

/// The header that marks a forwarded request.
pub const FORWARDED_HEADER: &str = "x-vellum-forwarded";
/// The header in which a forwarding backup names the client's address (the
/// primary records it in the access trail as "<client> via <backup>").
pub const CLIENT_ADDR_HEADER: &str = "x-vellum-client-addr";
/// A forwarded subscription is cut when the primary sends nothing (not even
/// a heartbeat) for this long.
const FORWARD_STREAM_IDLE_MS: u64 = 30_000;

/// At a backup, sends the whole request to the primary and returns its
/// answer (`Err`, to be sent as is); at the primary, gives the request back.
/// Reads and subscriptions go to the primary too, because every access is
/// recorded in the trail there before it is answered (P7).
pub async fn forward_if_backup(
    state: &super::routes::AppState,
    request: axum::extract::Request,
    relay_body: bool,
) -> Result<axum::extract::Request, Response> {
    let role = state.node.role();
    if role.is_primary {
        return Ok(request);
    }
    let replica = role.replica;
    if request.headers().contains_key(FORWARDED_HEADER) {
        return Err(ApiError::unavailable(format!(
            "replica {replica} is not the primary and the request was already forwarded once; retry"
        ))
        .into_response());
    }
    let Some(primary) = role.primary else {
        return Err(ApiError::unavailable(format!(
            "replica {replica} is in a view change or recovering and knows no primary right now; retry"
        ))
        .into_response());
    };
    Err(state
        .forwarder
        .get()
        .forward_request(replica, primary, request, body_relay(state, relay_body))
        .await
        .unwrap_or_else(IntoResponse::into_response))
}

/// Whether `path` has a `.` or `..` segment, also percent-encoded (URL
/// parsers read `%2e` as a dot): the HTTP client that forwards a request
/// would resolve it, so the primary would answer another path than the one
/// the caller sent (a catch-all route such as `/v1/tlog/tile/{*path}`
/// matches such paths at the backup).
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    })
}

/// Whether, and within what time, a forwarded request's body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRelay {
    /// The caller was refused (no token, unknown token, wrong role): the
    /// body is never read, and the primary gets the request without it, to
    /// refuse and record.
    Drop,
    /// Read it (at most `REQUEST_BODY_BYTES_MAX`) within `timeout_ms`, else 408.
    Read {
        /// The deadline for the whole body.
        timeout_ms: u64,
    },
}

fn body_relay(state: &super::routes::AppState, relay_body: bool) -> BodyRelay {
    match relay_body {
        true => BodyRelay::Read {
            timeout_ms: state.body_read_timeout_ms,
        },
        false => BodyRelay::Drop,
    }
}

/// The HTTP client used to relay requests, and the peers' API addresses.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// Relayed answers stream (a subscription stays open): no total
    /// timeout, an idle bound instead.
    streaming: reqwest::Client,
    peers: std::sync::Arc<Vec<(u8, String)>>,
    ca_pem: std::sync::Arc<Vec<u8>>,
}

impl Forwarder {
    /// One client trusting only the cluster CA (`ca_pem`; empty: no roots,
    /// so only plain `http://` peers work, which is for tests).
    pub fn new(peers: Vec<(u8, String)>, ca_pem: &[u8]) -> Result<Forwarder, ServerError> {
        let streaming = client_builder(ca_pem)?
            .connect_timeout(Duration::from_millis(FORWARD_TIMEOUT_MS))
            .read_timeout(Duration::from_millis(FORWARD_STREAM_IDLE_MS))
            .build()
            .map_err(|e| ServerError::Forwarder(e.to_string()))?;
        Ok(Forwarder {
            ca_pem: std::sync::Arc::new(ca_pem.to_vec()),
            streaming,
            peers: std::sync::Arc::new(peers),
        })
    }

    /// Relays any request to the primary; the answer streams back as it
    /// comes (a subscription stays open).
    pub async fn forward_request(
        &self,
        replica: u8,
        primary: u8,
        request: axum::extract::Request,
        relay: BodyRelay,
    ) -> Result<Response, ApiError> {
        let Some((_, base)) = self.peers.iter().find(|(index, _)| *index == primary) else {
            return Err(ApiError::unavailable(format!(
                "replica {replica} knows no API address for primary {primary}; retry on another replica"
            )));
        };
        let (parts, body) = request.into_parts();
        if has_dot_segment(parts.uri.path()) {
            return Err(ApiError::bad_request(
                "the path has a `.` or `..` segment, which forwarding to the primary would \
                 resolve into another path; send the path without it",
            ));
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let body = match relay {
            BodyRelay::Drop => axum::body::Bytes::new(),
            BodyRelay::Read { timeout_ms } => {
                let read = axum::body::to_bytes(body, crate::api::REQUEST_BODY_BYTES_MAX);
                tokio::time::timeout(Duration::from_millis(timeout_ms), read)
                    .await
                    .map_err(|_| ApiError::request_timeout(timeout_ms))?
                    .map_err(|_| ApiError::payload_too_large())?
            }
        };
        let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
            .map_err(|_| ApiError::bad_request("unsupported method"))?;
        let mut outgoing = self
            .streaming
            .request(method, &url)
            .header(FORWARDED_HEADER, "1")
            .body(body);
        for name in [
            header::AUTHORIZATION.as_str(),
            header::CONTENT_TYPE.as_str(),
            header::ACCEPT.as_str(),
            super::routes::PURPOSE_HEADER,
            super::routes::RECIPIENT_HEADER,
            super::routes::DESCRIPTION_HEADER,
        ] {
            if let Some(value) = parts.headers.get(name) {
                outgoing = outgoing.header(name, value.clone());
            }
        }
        if let Some(remote) = parts.extensions.get::<super::RemoteAddr>() {
            outgoing = outgoing.header(CLIENT_ADDR_HEADER, remote.0.to_string());
        }
        // A client that proved itself with a certificate here: the primary
        // verifies the chain again and maps it through its own table,
        // trusting the header only because this connection proves a replica.
        if let Some(cert) = parts.extensions.get::<super::mtls::PresentedCert>() {
            outgoing = outgoing.header(
                super::mtls::CLIENT_CERT_HEADER,
                super::mtls::encode_chain(&cert.chain),
            );
        }
        tracing::debug!(replica, primary, %url, "forwarding a request to the primary");
        let response = outgoing.send().await.map_err(|e| send_error(primary, &e))?;
        let status = StatusCode::from_u16(response.status().as_u16())
            .map_err(|_| ApiError::indeterminate("the primary answered with an invalid status"))?;
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let mut answer = Response::new(axum::body::Body::from_stream(response.bytes_stream()));
        *answer.status_mut() = status;
        if let Some(content_type) = content_type {
            answer
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
        }
        if let Some(retry_after) = retry_after {
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
        }
        Ok(answer)
    }
}

impl Forwarder {
    /// Posts access-trail events to the primary's relay route
    /// (`relay::RELAY_PATH`) and returns once it confirmed their commit;
    /// else why not (for humans).
    pub async fn relay_trail(
        &self,
        primary: u8,
        events: &[vellum_compliance::trail::AccessEvent],
        timeout: Duration,
    ) -> Result<(), String> {
        let Some((_, base)) = self.peers.iter().find(|(index, _)| *index == primary) else {
            return Err(format!("no API address is known for primary {primary}"));
        };
        let url = format!("{}{}", base.trim_end_matches('/'), super::relay::RELAY_PATH);
        let body = serde_json::to_vec(events).map_err(|e| e.to_string())?;
        let response = self
            .streaming
            .post(&url)
            .header(header::CONTENT_TYPE.as_str(), "application/json")
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("primary {primary}: {e}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let quoted: String = text.chars().take(300).collect();
            return Err(format!("primary {primary} answered {status}: {quoted}"));
        }
        let answer: super::relay::RelayAnswer = serde_json::from_str(&text)
            .map_err(|e| format!("primary {primary} answered a bad confirmation: {e}"))?;
        if answer.recorded != events.len() as u64 {
            return Err(format!(
                "primary {primary} confirmed {} of {} records",
                answer.recorded,
                events.len()
            ));
        }
        Ok(())
    }

    /// The same forwarder, presenting `identity_pem` (certificate chain and
    /// key, PEM) to the primary, so the primary trusts the client address
    /// it names.
    pub fn with_identity(self, identity_pem: &[u8]) -> Result<Forwarder, ServerError> {
        let identity = reqwest::Identity::from_pem(identity_pem)
            .map_err(|e| ServerError::Forwarder(format!("bad forwarding identity PEM: {e}")))?;
        let streaming = client_builder(&self.ca_pem)?
            .identity(identity)
            .connect_timeout(Duration::from_millis(FORWARD_TIMEOUT_MS))
            .read_timeout(Duration::from_millis(FORWARD_STREAM_IDLE_MS))
            .build()
            .map_err(|e| ServerError::Forwarder(e.to_string()))?;
        Ok(Forwarder { streaming, ..self })
    }

    /// A forwarder to the same peers trusting the cluster CA of `material`
    /// and presenting its certificate (after the TLS files changed).
    pub fn with_tls(
        &self,
        material: &crate::net::tls::TlsMaterial,
    ) -> Result<Forwarder, ServerError> {
        let peers = self.peers.as_ref().clone();
        Forwarder::new(peers, &material.ca_pem)?.with_identity(&identity_pem(material))
    }
}

/// A certificate chain and its key in one PEM (what reqwest's identity reads).
pub(crate) fn identity_pem(material: &crate::net::tls::TlsMaterial) -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(
        [
            material.cert_pem.as_slice(),
            b"\n",
            material.key_pem.as_slice(),
        ]
        .concat(),
    )
}

/// A client trusting only the cluster CA (`ca_pem`; empty: no roots, so
/// only plain `http://` peers work, which is for tests).
fn client_builder(ca_pem: &[u8]) -> Result<reqwest::ClientBuilder, ServerError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        // HTTP/1.1, one connection per relayed request, as before the API
        // offered HTTP/2: over one multiplexed connection a backup's relayed
        // subscriptions (up to SUBSCRIPTIONS_MAX) would queue behind the
        // primary's H2_STREAMS_MAX instead of being served.
        .http1_only()
        // A forwarded request must reach exactly the named replica.
        .redirect(reqwest::redirect::Policy::none());
    if !ca_pem.is_empty() {
        let ca = reqwest::Certificate::from_pem(ca_pem)
            .map_err(|e| ServerError::Forwarder(format!("bad cluster CA PEM: {e}")))?;
        builder = builder.add_root_certificate(ca);
    }
    Ok(builder)
}

fn send_error(primary: u8, error: &reqwest::Error) -> ApiError {
    tracing::warn!(primary, error = %error, "forwarding a request failed");
    if error.is_connect() || error.is_builder() {
        ApiError::unavailable(format!("cannot reach primary {primary}: {error}; retry"))
    } else {
        ApiError::indeterminate(format!(
            "the append was sent to primary {primary} but no answer came back ({error}); \
             retry with the same idempotency key"
        ))
    }
}
