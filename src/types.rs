//! The contract every part of Vellum serves (DESIGN §1): stream ids, offsets,
//! and `EventPersister::persist_blocking`.

use std::fmt;

use bytes::Bytes;

/// Identifies one stream (typically one patient's record).
///
/// Stream ids are opaque numbers, not names, on purpose: a stream id appears
/// in Merkle leaves and proofs that auditors without keys see (P3), so it must
/// never encode PHI such as a medical record number. Ids below
/// [`StreamId::USER_MIN`] are reserved for Vellum's system streams.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The access trail (P7), a system stream.
    pub const ACCESS_TRAIL: StreamId = StreamId(0);
    /// The smallest id a client may append to.
    pub const USER_MIN: u64 = 16;

    /// True for ids reserved for Vellum's own streams.
    pub fn is_system(self) -> bool {
        self.0 < Self::USER_MIN
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A position within one stream. After an append, the returned offset is the
/// stream's new length: a batch of `n` events occupies `[offset - n, offset)`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Offset(pub u64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why `persist_blocking` did not return an offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersistError {
    /// Indeterminate: the batch may or may not have committed. Retrying with
    /// the same client session and request number never writes it twice.
    #[error("consensus failed, outcome unknown (retry with the same request): {0}")]
    ConsensusFailed(String),
    /// The batch was not written: the request was refused or storage failed.
    /// The message says which; nothing already stored was harmed.
    #[error("storage error: {0}")]
    StorageError(String),
    /// The persister is shutting down; the batch was not written.
    #[error("shutting down")]
    ShuttingDown,
}

/// Appends a batch of serialized events to a stream, durably.
pub trait EventPersister: Send + Sync + fmt::Debug {
    /// Returns the stream's new length once the whole batch is durable and
    /// committed. Callable from a plain thread and from a multi-thread tokio
    /// runtime; on a current-thread runtime it returns an error (never panics)
    /// because blocking there would stall every other task.
    fn persist_blocking(
        &self,
        stream_id: StreamId,
        events: Vec<Bytes>,
    ) -> Result<Offset, PersistError>;
}

/// Where a blocking call is being made from, as far as tokio is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockingContext {
    /// No tokio runtime on this thread: block freely.
    PlainThread,
    /// A multi-thread runtime worker: block inside `block_in_place`.
    MultiThreadRuntime,
    /// A current-thread runtime: blocking would stall it; refuse.
    CurrentThreadRuntime,
}

impl BlockingContext {
    /// Inspects the calling thread.
    pub fn current() -> Self {
        match tokio::runtime::Handle::try_current() {
            Err(_) => BlockingContext::PlainThread,
            Ok(handle) => match handle.runtime_flavor() {
                tokio::runtime::RuntimeFlavor::CurrentThread => {
                    BlockingContext::CurrentThreadRuntime
                }
                _ => BlockingContext::MultiThreadRuntime,
            },
        }
    }

    /// Runs `work`, which blocks, in the way this context allows.
    pub fn run_blocking<T>(
        work: impl FnOnce() -> Result<T, PersistError>,
    ) -> Result<T, PersistError> {
        match Self::current() {
            BlockingContext::PlainThread => work(),
            BlockingContext::MultiThreadRuntime => tokio::task::block_in_place(work),
            BlockingContext::CurrentThreadRuntime => Err(PersistError::StorageError(
                "persist_blocking called on a current-thread tokio runtime, where blocking would stall \
                 every task; nothing was written (call it from a plain thread, a multi-thread runtime, \
                 or spawn_blocking)"
                    .to_string(),
            )),
        }
    }
}
