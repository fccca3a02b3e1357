//! Forwarding appends from a backup to the primary.
//!
//! Clients may talk to any replica; only the primary can append. A backup
//! that gets `NotPrimary { primary: Some(p) }` relays the request (same body,
//! same Authorization header) to replica `p`'s API and hands back its answer
//! (status and body) unchanged, so the client sees the primary's receipt or
//! error. The relayed request carries `x-vellum-forwarded: 1`; a replica that
//! receives such a request and is not the primary answers 503 instead of
//! forwarding again, so two replicas with stale views cannot bounce a request
//! between them.
//!
//! Outcome semantics: if the request could not be delivered (connect
//! failure) nothing was appended (503 `unavailable`); if it was sent but no
//! answer came back (timeout, reset), the append may have happened (503
//! `indeterminate`: retry with the same idempotency key).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::routes::ApiError;
use super::{FORWARD_ANSWER_BYTES_MAX, FORWARD_TIMEOUT_MS, ServerError};

/// The header that marks a forwarded request.
pub const FORWARDED_HEADER: &str = "x-vellum-forwarded";

/// Where a refused append should go.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The replica that refused (this one).
    pub replica: u8,
    /// The primary it believes in.
    pub primary: Option<u8>,
    /// The stream of the append.
    pub stream: u64,
}

/// The HTTP client used to relay appends, and the peers' API addresses.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    peers: std::sync::Arc<Vec<(u8, String)>>,
}

impl Forwarder {
    /// One client trusting only the cluster CA (`ca_pem`; empty: no roots,
    /// so only plain `http://` peers work, which is for tests).
    pub fn new(peers: Vec<(u8, String)>, ca_pem: &[u8]) -> Result<Forwarder, ServerError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_millis(FORWARD_TIMEOUT_MS))
            // A forwarded request must reach exactly the named replica.
            .redirect(reqwest::redirect::Policy::none());
        if !ca_pem.is_empty() {
            let ca = reqwest::Certificate::from_pem(ca_pem)
                .map_err(|e| ServerError::Forwarder(format!("bad cluster CA PEM: {e}")))?;
            builder = builder.add_root_certificate(ca);
        }
        let client = builder
            .build()
            .map_err(|e| ServerError::Forwarder(e.to_string()))?;
        Ok(Forwarder {
            client,
            peers: std::sync::Arc::new(peers),
        })
    }

    /// Relays an append refused with `NotPrimary` to the primary.
    pub async fn forward_append(
        &self,
        target: Target,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let replica = target.replica;
        if headers.contains_key(FORWARDED_HEADER) {
            return Err(ApiError::unavailable(format!(
                "replica {replica} is not the primary and the request was already forwarded once; retry"
            )));
        }
        let Some(primary) = target.primary else {
            return Err(ApiError::unavailable(
                "no primary right now (view change); retry",
            ));
        };
        let Some((_, base)) = self.peers.iter().find(|(index, _)| *index == primary) else {
            return Err(ApiError::unavailable(format!(
                "replica {replica} knows no API address for primary {primary}; retry on another replica"
            )));
        };
        let url = format!(
            "{}/v1/streams/{}/append",
            base.trim_end_matches('/'),
            target.stream
        );
        let mut request = self
            .client
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(FORWARDED_HEADER, "1")
            .body(body);
        if let Some(authorization) = headers.get(header::AUTHORIZATION) {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        tracing::debug!(replica, primary, %url, "forwarding append to the primary");
        let response = request.send().await.map_err(|e| send_error(primary, &e))?;
        relay(primary, response).await
    }
}

fn send_error(primary: u8, error: &reqwest::Error) -> ApiError {
    tracing::warn!(primary, error = %error, "forwarding an append failed");
    if error.is_connect() || error.is_builder() {
        ApiError::unavailable(format!("cannot reach primary {primary}: {error}; retry"))
    } else {
        ApiError::indeterminate(format!(
            "the append was sent to primary {primary} but no answer came back ({error}); \
             retry with the same idempotency key"
        ))
    }
}

/// Reads the primary's answer (bounded) and returns it unchanged.
async fn relay(primary: u8, mut response: reqwest::Response) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(response.status().as_u16())
        .map_err(|_| ApiError::indeterminate("the primary answered with an invalid status"))?;
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > FORWARD_ANSWER_BYTES_MAX {
                    return Err(ApiError::indeterminate(format!(
                        "primary {primary} answered with more than {FORWARD_ANSWER_BYTES_MAX} bytes; \
                         retry with the same idempotency key"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(send_error(primary, &e)),
        }
    }
    let mut answer = (status, body).into_response();
    let json = HeaderValue::from_static("application/json");
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type.unwrap_or(json));
    Ok(answer)
}
