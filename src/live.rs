//! Values replaced whole while the process runs, and the file stamps that
//! tell when the files behind them changed.
//!
//! Why it exists: credentials (`crate::server::credentials`) and TLS
//! material (`crate::net::tls_reload`) are both reloaded from files without
//! a restart, by the same rule: a reader takes the value current when it
//! asks and keeps it for the rest of its work (a request, a handshake); a
//! new version replaces the old one in one step or not at all. One type for
//! the swap, one for "has this file changed", used by both.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

/// How often reloadable files (tokens, client certificates, TLS material)
/// are checked for a change, in milliseconds.
pub const RELOAD_CHECK_MS: u64 = 1_000;

/// A value that is replaced whole: readers get the value current when
/// they ask, and keep it for as long as they hold the `Arc`.
#[derive(Debug, Default)]
pub struct Live<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Live<T> {
    /// A live value holding `value`.
    pub fn new(value: T) -> Live<T> {
        Live {
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&guard)
    }

    /// Replaces the value in one step.
    pub fn replace(&self, value: T) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(value);
    }
}

/// What identifies one version of a file without reading it: any write
/// (in place or by rename) changes one of these. None: the file is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    device: u64,
    inode: u64,
    bytes: u64,
    modified_ns: i64,
    changed_ns: i64,
}

impl FileStamp {
    /// The stamp of `path` now (None when it cannot be read).
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            device: meta.dev(),
            inode: meta.ino(),
            bytes: meta.size(),
            modified_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            changed_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        })
    }
}

/// Runs `check` on tokio's blocking pool (it reads files) every
/// [`RELOAD_CHECK_MS`] until `shutdown` flips or its sender is dropped.
/// `what` names the files in the log if a check task fails.
pub async fn check_every_second<C>(
    mut check: C,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
) where
    C: FnMut() + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_millis(RELOAD_CHECK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {
                let checked = tokio::task::spawn_blocking(move || {
                    check();
                    check
                })
                .await;
                match checked {
                    Ok(back) => check = back,
                    Err(e) => {
                        tracing::error!(error = %e, files = what, "reload check task failed; reloading stops");
                        break;
                    }
                }
            }
            changed = shutdown.changed() => if changed.is_err() { break },
        }
    }
}
