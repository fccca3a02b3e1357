//! The primary feeds outside witnesses by itself: for each `cosigner` of
//! the replica's trust policy that names a URL, one task on the replica's
//! tokio runtime submits the newest certificate (c2sp.org/tlog-witness
//! `add-checkpoint`, with the consistency proof from the size the witness
//! holds; a 409 teaches that size), checks the cosignature it gets back
//! against the policy's key for that witness, and keeps it
//! (`witness::kept`, a small file per witness, atomic and fsynced).
//!
//! Entirely off the append path: the tasks only read the log's newest
//! certificate and build consistency proofs from its in-memory tree (the
//! state lock, briefly), never the core's lock, and nothing an append does
//! waits for them. A witness that is down or slow delays cosignatures only.
//! Batched: each round submits only the newest certificate, whatever came
//! before it. Bounded: one certificate and one proof per witness in flight,
//! at most `SUBMIT_ATTEMPTS_MAX` requests a round, each with a deadline,
//! and a backoff that doubles up to [`BACKOFF_MS_MAX`] after a failed round.
//! Only the primary (normal status) submits; after a view change the new
//! primary's tasks find they lead and go on from what the witness holds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vellum_audit::checkpoint::Certificate;
use vellum_audit::cosignature::CosignerKey;
use vellum_audit::note::NoteSignature;
use vellum_audit::policy::Policy;

use crate::log::LocalLog;
use crate::server::node::WitnessMetrics;
use crate::witness::kept::{self, Kept};
use crate::witness::submit::{Answer, ExchangeError, SUBMIT_ATTEMPTS_MAX, add_checkpoint};

/// How often each witness task looks for a newer certificate.
pub const FEED_INTERVAL_MS: u64 = 100;
/// The longest wait after failed rounds (the backoff doubles up to it).
pub const BACKOFF_MS_MAX: u64 = 5_000;
/// Deadline of one request to a witness (connect included).
pub const WITNESS_REQUEST_MS_MAX: u64 = 5_000;

/// One witness the primary feeds, and what it kept from it.
#[derive(Debug)]
struct Fed {
    key: CosignerKey,
    url: String,
    kept: Mutex<Option<Kept>>,
    /// The size the witness last said it holds (or we kept), 0 if unknown.
    held: AtomicU64,
    cosignatures: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
}

impl Fed {
    fn kept(&self) -> Option<Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The witnesses of one replica's policy and their kept cosignatures.
#[derive(Debug)]
pub struct WitnessFeed {
    data_dir: PathBuf,
    witnesses: Vec<Arc<Fed>>,
}

/// Why a round ended without a cosignature.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("witness answer not kept: {0}")]
    Rejected(String),
    #[error("{0}")]
    Log(String),
}

impl WitnessFeed {
    /// The witnesses of `policy` that name a URL, each with the cosignature
    /// kept in `data_dir` (a kept file that does not verify is logged and
    /// ignored: the next round replaces it).
    pub fn open(data_dir: &Path, policy: &Policy) -> WitnessFeed {
        let witnesses = policy
            .cosigners_with_urls()
            .map(|(key, url)| {
                let kept = match kept::load(data_dir, key) {
                    Ok(kept) => kept,
                    Err(error) => {
                        tracing::warn!(witness = key.name(), %error, "kept cosignature ignored");
                        None
                    }
                };
                Arc::new(Fed {
                    key: key.clone(),
                    url: url.to_owned(),
                    held: AtomicU64::new(kept.as_ref().map_or(0, |k| k.size)),
                    kept: Mutex::new(kept),
                    cosignatures: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    rejected: AtomicU64::new(0),
                })
            })
            .collect();
        WitnessFeed {
            data_dir: data_dir.to_owned(),
            witnesses,
        }
    }

    /// True when the policy names no witness with a URL.
    pub fn is_empty(&self) -> bool {
        self.witnesses.is_empty()
    }

    /// Each witness's counters and cosigned size.
    pub fn status(&self) -> Vec<WitnessMetrics> {
        self.witnesses
            .iter()
            .map(|fed| WitnessMetrics {
                name: fed.key.name().to_owned(),
                cosigned_size: fed.kept().map_or(0, |k| k.size),
                cosignatures: fed.cosignatures.load(Ordering::Relaxed),
                failures: fed.failures.load(Ordering::Relaxed),
                rejected: fed.rejected.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The kept tree sizes, newest first, without repeats.
    pub fn cosigned_sizes(&self) -> Vec<u64> {
        let mut sizes: Vec<u64> = self
            .witnesses
            .iter()
            .filter_map(|fed| fed.kept().map(|k| k.size))
            .collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.dedup();
        sizes
    }

    /// The newest kept cosigned certificate, with the cosignature line of
    /// every witness that kept that same checkpoint.
    pub fn newest_cosigned(&self) -> Option<Certificate> {
        let size = *self.cosigned_sizes().first()?;
        let mut certificate = self
            .witnesses
            .iter()
            .filter_map(|fed| fed.kept())
            .find(|k| k.size == size)?
            .certificate;
        certificate
            .note
            .signatures
            .retain(|s| !self.witnesses.iter().any(|fed| fed.key.matches(s)));
        for line in self.cosignatures_for(&certificate) {
            if certificate.note.signatures.len() < vellum_audit::note::SIGNATURES_MAX {
                certificate.note.signatures.push(line);
            }
        }
        Some(certificate)
    }

    /// The kept cosignature lines over exactly `certificate`'s checkpoint
    /// (same note text), one per witness.
    pub fn cosignatures_for(&self, certificate: &Certificate) -> Vec<NoteSignature> {
        self.witnesses
            .iter()
            .filter_map(|fed| fed.kept())
            .filter(|k| k.certificate.note.text == certificate.note.text)
            .map(|k| k.line)
            .collect()
    }

    /// Starts one feeding task per witness on `runtime`; they end when
    /// `shutdown` turns true (or the runtime stops).
    pub fn spawn(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        log: Arc<LocalLog>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        for fed in &self.witnesses {
            let task = feed(
                Arc::clone(fed),
                Arc::clone(&log),
                self.data_dir.clone(),
                shutdown.clone(),
            );
            runtime.spawn(task);
        }
    }
}

/// One witness's task: a round whenever the newest certificate is above
/// what the witness cosigned, while this replica is the primary.
async fn feed(
    fed: Arc<Fed>,
    log: Arc<LocalLog>,
    data_dir: PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_millis(WITNESS_REQUEST_MS_MAX))
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(witness = fed.key.name(), %error, "no http client: not feeding");
            return;
        }
    };
    let mut backoff_ms = 0u64;
    loop {
        let wait = Duration::from_millis(FEED_INTERVAL_MS + backoff_ms);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if !log.role().is_primary {
            continue;
        }
        let Some(latest) = log.latest_certificate() else {
            continue;
        };
        if fed.kept().is_some_and(|k| k.size >= latest.checkpoint.size) {
            continue;
        }
        match round(&fed, &http, &log, &latest).await {
            Ok(kept) => match keep(&fed, &data_dir, kept).await {
                Ok(()) => backoff_ms = 0,
                Err(error) => {
                    fed.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(witness = fed.key.name(), %error, "cannot keep a cosignature");
                    backoff_ms = next_backoff(backoff_ms);
                }
            },
            Err(error) => {
                fed.failures.fetch_add(1, Ordering::Relaxed);
                if matches!(error, RoundError::Rejected(_)) {
                    fed.rejected.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(witness = fed.key.name(), %error, "witness round failed");
                backoff_ms = next_backoff(backoff_ms);
            }
        }
    }
}

fn next_backoff(ms: u64) -> u64 {
    (ms * 2).clamp(FEED_INTERVAL_MS, BACKOFF_MS_MAX)
}

/// Writes the cosignature durably, then publishes it (what `/metrics`,
/// proofs and bundles see is always on disk).
async fn keep(fed: &Arc<Fed>, data_dir: &Path, kept: Kept) -> std::io::Result<()> {
    let (dir, key, saved) = (data_dir.to_owned(), fed.key.clone(), kept.clone());
    tokio::task::spawn_blocking(move || kept::save(&dir, &key, &saved))
        .await
        .map_err(std::io::Error::other)??;
    fed.held.store(kept.size, Ordering::Relaxed);
    *fed.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
    fed.cosignatures.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Submits `latest` from the size the witness holds, learning that size
/// from a 409 (at most `SUBMIT_ATTEMPTS_MAX` requests), and checks the
/// answer under the pinned key.
async fn round(
    fed: &Fed,
    http: &reqwest::Client,
    log: &LocalLog,
    latest: &Certificate,
) -> Result<Kept, RoundError> {
    let size = latest.checkpoint.size;
    let text = latest.encode();
    let mut old = fed.held.load(Ordering::Relaxed);
    for _ in 0..SUBMIT_ATTEMPTS_MAX {
        if old > size {
            return Err(RoundError::Rejected(format!(
                "the witness holds size {old}, above the newest certificate's {size}"
            )));
        }
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            log.consistency_proof(old, Some(size))
                .map_err(|e| RoundError::Log(format!("consistency proof {old}..{size}: {e}")))?
                .hashes
        };
        match add_checkpoint(http, &fed.url, old, &proof, &text).await {
            Ok(Answer::Cosigned(lines)) => {
                return kept::accept(&fed.key, latest, &lines)
                    .map_err(|e| RoundError::Rejected(e.to_string()));
            }
            Ok(Answer::Size(held)) if held == old => {
                return Err(RoundError::Rejected(format!(
                    "409 with the size it was sent ({held})"
                )));
            }
            Ok(Answer::Size(held)) => {
                fed.held.store(held, Ordering::Relaxed);
                old = held;
            }
            Err(ExchangeError::Malformed(why)) => return Err(RoundError::Rejected(why)),
            Err(error) => return Err(error.into()),
        }
    }
    Err(RoundError::Rejected(format!(
        "the witness kept moving: {SUBMIT_ATTEMPTS_MAX} requests"
    )))
}
