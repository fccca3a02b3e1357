//! `EventPersister` over the HTTP client: the contract of DESIGN §1 for
//! applications that reach a cluster over the network.
//!
//! `persist_blocking` is [`Client::append`] without an expected offset, run to
//! completion from synchronous code:
//!
//! - from a plain thread it blocks on the persister's own small runtime;
//! - on a multi-thread tokio runtime it blocks inside `block_in_place` on the
//!   caller's runtime;
//! - on a current-thread runtime it returns `StorageError` (blocking there
//!   would stall every task) and never panics.
//!
//! Outcomes (after the client's own same-key retries, see `client` docs):
//!
//! | client result ([`AppendError`]) | `persist_blocking` | written? |
//! |---|---|---|
//! | `Ok(receipt)` | `Ok(Offset(receipt.next_offset))` | yes, once |
//! | `Indeterminate` | `ConsensusFailed` | unknown |
//! | `Unavailable` | `ConsensusFailed` | no, but the caller's remedy is the same: retry later |
//! | `Protocol` | `ConsensusFailed` | unknown (a garbled 200 may follow a commit) |
//! | `Refused`, `WrongExpectedOffset`, `IdempotencyKeyReused` | `StorageError` | no |
//! | `NotFound`, `Unauthorized` | `StorageError` | no |
//! | `Local` | `StorageError` | no (nothing was sent) |
//!
//! The trait carries no idempotency key, so a caller that retries after
//! `ConsensusFailed` by calling `persist_blocking` again sends a NEW request
//! (a new request number): if the first one did commit, the batch is written
//! twice. The client already retried the first request with its own key
//! before giving up; callers that need exactly-once across their own retries
//! use [`ClientPersister::persist_with_key`] with a key they keep.

use std::fmt;
use std::future::Future;

use bytes::Bytes;

use super::{AppendError, Client, ClientError};
use crate::api::IdempotencyKey;
use crate::types::{BlockingContext, EventPersister, Offset, PersistError, StreamId};

/// Worker threads of the persister's own runtime (plain-thread callers only
/// wait on network I/O, so two are plenty).
pub const PERSISTER_WORKER_THREADS: usize = 2;

/// Persists batches through a [`Client`].
pub struct ClientPersister {
    client: Client,
    /// Drives calls made from plain threads. An `Option` so `Drop` can shut
    /// it down without blocking (dropping a runtime inside another runtime
    /// would panic).
    runtime: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for ClientPersister {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientPersister")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl ClientPersister {
    /// Wraps a client and starts the small runtime for plain-thread callers.
    pub fn new(client: Client) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(PERSISTER_WORKER_THREADS)
            .thread_name("vellum-client-persister")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Local(format!("starting the persister runtime: {e}")))?;
        Ok(Self {
            client,
            runtime: Some(runtime),
        })
    }

    /// The client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Like `persist_blocking`, under the caller's idempotency key: calling
    /// it again with the same key after `ConsensusFailed` never writes the
    /// batch twice.
    pub fn persist_with_key(
        &self,
        stream_id: StreamId,
        events: Vec<Bytes>,
        key: IdempotencyKey,
    ) -> Result<Offset, PersistError> {
        self.block_on(async {
            self.client
                .append_with_key(stream_id.0, events, None, key)
                .await
                .map(|receipt| Offset(receipt.next_offset))
                .map_err(to_persist_error)
        })
    }

    /// Runs `work` to completion in the way the calling thread allows.
    fn block_on<T>(
        &self,
        work: impl Future<Output = Result<T, PersistError>>,
    ) -> Result<T, PersistError> {
        BlockingContext::run_blocking(|| match tokio::runtime::Handle::try_current() {
            // Inside `block_in_place` on a multi-thread runtime worker.
            Ok(handle) => handle.block_on(work),
            Err(_) => match &self.runtime {
                Some(runtime) => runtime.block_on(work),
                None => Err(PersistError::ShuttingDown),
            },
        })
    }
}

impl EventPersister for ClientPersister {
    fn persist_blocking(
        &self,
        stream_id: StreamId,
        events: Vec<Bytes>,
    ) -> Result<Offset, PersistError> {
        self.block_on(async {
            self.client
                .append(stream_id.0, events, None)
                .await
                .map(|receipt| Offset(receipt.next_offset))
                .map_err(to_persist_error)
        })
    }
}

impl Drop for ClientPersister {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so it is safe inside an async context too.
            runtime.shutdown_background();
        }
    }
}

/// Maps a client failure onto the contract's outcomes (table in the module
/// docs): whatever may have written, or may succeed on a later retry, is
/// `ConsensusFailed`; a definite refusal is `StorageError`.
pub fn to_persist_error(error: AppendError) -> PersistError {
    match error {
        AppendError::Indeterminate(_) | AppendError::Unavailable(_) | AppendError::Protocol(_) => {
            PersistError::ConsensusFailed(error.to_string())
        }
        AppendError::WrongExpectedOffset { .. }
        | AppendError::IdempotencyKeyReused { .. }
        | AppendError::Refused { .. }
        | AppendError::NotFound(_)
        | AppendError::Unauthorized(_)
        | AppendError::Local(_) => PersistError::StorageError(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a reused idempotency key is a definite refusal (nothing was
    /// written, retrying cannot help), never `ConsensusFailed`.
    #[test]
    fn reused_key_is_a_storage_error_not_consensus_failed() {
        let key = crate::api::IdempotencyKey {
            session: format!("{:032x}", 7),
            request: 1,
        };
        let error = to_persist_error(AppendError::IdempotencyKeyReused { stream: 20, key });
        assert!(
            matches!(&error, PersistError::StorageError(m) if m.contains("idempotency key reused")),
            "{error:?}"
        );
    }
}
