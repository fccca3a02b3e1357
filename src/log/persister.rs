//! `EventPersister` over the local log: the contract of DESIGN §1 for a
//! one-replica cluster.

use std::sync::Arc;

use bytes::Bytes;

use super::{LocalLog, LogError};
use crate::types::{BlockingContext, EventPersister, Offset, PersistError, StreamId};

/// Persists batches through a [`LocalLog`]; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct LocalPersister {
    log: Arc<LocalLog>,
}

impl LocalPersister {
    /// Wraps an open log.
    pub fn new(log: Arc<LocalLog>) -> Self {
        Self { log }
    }

    /// The log underneath.
    pub fn log(&self) -> &Arc<LocalLog> {
        &self.log
    }
}

impl EventPersister for LocalPersister {
    fn persist_blocking(
        &self,
        stream_id: StreamId,
        events: Vec<Bytes>,
    ) -> Result<Offset, PersistError> {
        BlockingContext::run_blocking(|| {
            let appended = self
                .log
                .append(stream_id.0, &events, None, None)
                .map_err(to_persist_error)?;
            Ok(Offset(appended.next_offset))
        })
    }
}

/// Maps a log failure onto the contract's three outcomes. Only a commit that
/// did not come within the wait bound is indeterminate (`ConsensusFailed`:
/// retry with the same client request); every other failure wrote nothing.
pub fn to_persist_error(error: LogError) -> PersistError {
    match error {
        LogError::Indeterminate(reason) => PersistError::ConsensusFailed(reason),
        LogError::Poisoned(reason) => {
            PersistError::StorageError(format!("log handle poisoned: {reason}"))
        }
        LogError::Storage(crate::storage::StorageError::Closed) => PersistError::ShuttingDown,
        other => PersistError::StorageError(other.to_string()),
    }
}
