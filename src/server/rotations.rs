//! Records in the access trail the key rotations made while this replica
//! was stopped, once the replica serves: at the primary through its own
//! trail, at a backup through the relay (whose primary checks a signing-key
//! announcement under its own policy before it commits it).
//!
//! - key-encryption key rotations (`vellum keys rotate-kek` leaves them in
//!   `keys/kek-rotated.pending`), as `kek_rotated`;
//! - signing-key rotations (`vellum keys rotate-signing`: those in
//!   `keys/signing-rotations` beyond the count in
//!   `keys/signing-rotations.logged`), as `signing_key_rotated`, the
//!   announcement's pinned line in `detail`, so auditors read the key
//!   history from the log.
//!
//! A record leaves the pending set only after its commit was confirmed, so
//! a crash or a cluster without a primary delays the record, never loses it.

use std::time::Duration;

use tokio::sync::watch;

use vellum_compliance::trail::AccessEvent;

use super::node::{Node, TrailError};
use super::routes::{AppState, run_blocking};

/// Pause between two attempts to record the pending rotations.
pub const KEK_RECORD_RETRY_MS: u64 = 2_000;
/// Attempts before giving up until the next start (about ten minutes);
/// the records stay pending on disk.
pub const KEK_RECORD_ATTEMPTS_MAX: u32 = 300;

/// Records the pending KEK rotations, retrying while no primary confirms
/// them, until recorded, shut down, or out of attempts.
pub(crate) async fn record_kek_rotations(state: AppState, mut shutdown: watch::Receiver<bool>) {
    for attempt in 1..=KEK_RECORD_ATTEMPTS_MAX {
        if *shutdown.borrow() {
            return;
        }
        match record_once(&state).await {
            Ok(()) => return,
            Err(why) if attempt == KEK_RECORD_ATTEMPTS_MAX => {
                tracing::error!(%why, "key rotations not recorded in the access trail; they stay pending until the next start");
                return;
            }
            Err(why) => tracing::debug!(%why, attempt, "key rotations not recorded yet"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(KEK_RECORD_RETRY_MS)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn record_once(state: &AppState) -> Result<(), String> {
    record_kek_once(state).await?;
    record_signing_once(state).await
}

async fn record_signing_once(state: &AppState) -> Result<(), String> {
    record_pending(
        state,
        |node| node.pending_signing_rotations(),
        |node, count| node.signing_rotations_recorded(count),
        "signing-key",
    )
    .await
}

async fn record_kek_once(state: &AppState) -> Result<(), String> {
    record_pending(
        state,
        |node| node.pending_kek_rotations(),
        |node, count| node.kek_rotations_recorded(count),
        "kek",
    )
    .await
}

/// Records the trail events `pending` gives, then tells the node how many
/// were committed with `recorded` (the pending file moves only then).
async fn record_pending<P, R>(
    state: &AppState,
    pending: P,
    recorded: R,
    what: &'static str,
) -> Result<(), String>
where
    P: FnOnce(&dyn Node) -> Result<Vec<AccessEvent>, TrailError> + Send + 'static,
    R: FnOnce(&dyn Node, usize) -> Result<(), TrailError> + Send + 'static,
{
    let events = run_blocking(state, pending)
        .await
        .map_err(|e| format!("{e:?}"))?
        .map_err(|e| e.to_string())?;
    if events.is_empty() {
        return Ok(());
    }
    let count = events.len();
    super::relay::record_access(state, events)
        .await
        .map_err(|e| format!("{e:?}"))?
        .map_err(|e| e.to_string())?;
    run_blocking(state, move |node| recorded(node, count))
        .await
        .map_err(|e| format!("{e:?}"))?
        .map_err(|e| e.to_string())?;
    tracing::info!(count, "recorded {what} rotations in the access trail");
    Ok(())
}
