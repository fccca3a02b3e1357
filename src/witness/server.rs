//! The witness's HTTP shell: `POST /add-checkpoint` (c2sp.org/tlog-witness).
//! One lock around read, decide, persist and cosign, so two requests can
//! never interleave between the size check and the write (the spec's
//! rollback race).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;
use vellum_audit::cosignature::{Cosigner, TIMESTAMP_MAX};
use vellum_audit::policy::Policy;

use super::protocol::{self, REQUEST_BYTES_MAX, Refusal};
use super::store::Store;

/// The content type of a 409 answer carrying the witnessed size (the spec).
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// A running witness: its key, the logs it knows, its store.
#[derive(Debug)]
pub struct Witness {
    cosigner: Cosigner,
    policies: Vec<Policy>,
    store: Store,
    lock: tokio::sync::Mutex<()>,
}

impl Witness {
    /// A witness for the logs of `policies` (one per origin).
    pub fn new(cosigner: Cosigner, policies: Vec<Policy>, store: Store) -> Witness {
        Witness {
            cosigner,
            policies,
            store,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The witness's public key (vkey, type 0x04), for trust policies.
    pub fn vkey(&self) -> String {
        self.cosigner.key().to_vkey()
    }

    /// Handles one request body: the HTTP status and body to answer.
    pub async fn add_checkpoint(&self, body: &[u8]) -> Response {
        let request = match protocol::parse_request(body) {
            Ok(request) => request,
            Err(refusal) => return refuse(&refusal),
        };
        let origin = request.certificate.checkpoint.origin.clone();
        let _guard = self.lock.lock().await;
        let witnessed = match self.store.get(&origin).await {
            Ok(witnessed) => witnessed,
            Err(error) => return internal(&error),
        };
        let new = match protocol::decide(&self.policies, witnessed.as_ref(), &request) {
            Ok(new) => new,
            Err(refusal) => {
                if matches!(refusal, Refusal::BadProof(_) | Refusal::RootMismatch { .. }) {
                    // Signed by the log and inconsistent: evidence of a fork.
                    tracing::warn!(%origin, %refusal, checkpoint = %request.certificate.encode(),
                        "witness refused an inconsistent signed checkpoint");
                }
                return refuse(&refusal);
            }
        };
        if let Err(error) = self
            .store
            .put(&origin, &new, &request.certificate.encode())
            .await
        {
            return internal(&error);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .min(TIMESTAMP_MAX);
        match self.cosigner.cosign(&request.certificate.note.text, now) {
            Ok(line) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                line.line(),
            )
                .into_response(),
            Err(error) => internal(&error),
        }
    }
}

fn refuse(refusal: &Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status()).expect("refusal statuses are valid");
    if let Refusal::OldSizeMismatch { witnessed, .. } = refusal {
        return (
            status,
            [(header::CONTENT_TYPE, SIZE_CONTENT_TYPE)],
            format!("{witnessed}\n"),
        )
            .into_response();
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{refusal}\n"),
    )
        .into_response()
}

fn internal(error: &dyn std::fmt::Display) -> Response {
    tracing::error!(%error, "witness failed to handle a request");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
}

/// The witness's routes: `POST /add-checkpoint`, bodies of at most
/// [`REQUEST_BYTES_MAX`] bytes (larger: 413).
pub fn router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route(
            "/add-checkpoint",
            post(
                |State(witness): State<Arc<Witness>>, body: Bytes| async move {
                    witness.add_checkpoint(&body).await
                },
            ),
        )
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(witness)
}

/// Serves the witness on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, witness: Arc<Witness>) -> std::io::Result<()> {
    axum::serve(listener, router(witness)).await
}
