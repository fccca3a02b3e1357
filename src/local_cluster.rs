//! A cluster of replica processes on loopback, run by this process: what
//! `vellum dev`, `vellum demo`, `vellum bench` and the real-process tests
//! share. It creates (or reopens) a dev cluster directory, starts one
//! `vellum start` process per replica, and answers "who is primary", "is
//! everyone caught up" through the client API, with bounded waits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::api::Health;
use crate::client::{Client, ClientConfig};
use crate::cluster::{DevCluster, Supervisor, open_or_create_dev_cluster};

/// Polling interval of the waits below.
const POLL_MS: u64 = 50;
/// How long a replica may take to stop on SIGTERM before it is killed.
const STOP_GRACE_MS: u64 = 5_000;

/// Why the local cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// Setup, process or client failure, with what and where.
    #[error("{0}")]
    Failed(String),
    /// A wait ran out of time.
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        ms: u64,
    },
}

fn failed(what: &str, error: impl std::fmt::Display) -> LocalClusterError {
    LocalClusterError::Failed(format!("{what}: {error}"))
}

/// A running local cluster. Dropping it kills the processes.
#[derive(Debug)]
pub struct LocalCluster {
    /// The cluster's files (configs, tokens, CA, policy).
    pub dev: DevCluster,
    supervisor: Supervisor,
    ca_pem: Vec<u8>,
}

impl LocalCluster {
    /// Creates (or reopens) the dev cluster in `dir` and starts every
    /// replica as a process of `exe` (the `vellum` binary).
    pub fn start(
        dir: &Path,
        replica_count: u8,
        exe: &Path,
    ) -> Result<LocalCluster, LocalClusterError> {
        Self::start_prepared(dir, replica_count, exe, |_| Ok(()))
    }

    /// [`LocalCluster::start`], running `prepare` on the cluster's files
    /// before any replica starts (e.g. [`crate::cluster::add_dev_cosigner`]).
    pub fn start_prepared(
        dir: &Path,
        replica_count: u8,
        exe: &Path,
        prepare: impl FnOnce(&DevCluster) -> anyhow::Result<()>,
    ) -> Result<LocalCluster, LocalClusterError> {
        let dev = open_or_create_dev_cluster(dir, replica_count, None)
            .map_err(|e| failed(&format!("dev cluster in {}", dir.display()), e))?;
        prepare(&dev).map_err(|e| failed(&format!("preparing {}", dir.display()), e))?;
        let ca_pem = std::fs::read(&dev.ca_pem_path)
            .map_err(|e| failed(&dev.ca_pem_path.display().to_string(), e))?;
        let logs = dev.dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| failed(&logs.display().to_string(), e))?;
        let mut supervisor = Supervisor::new(exe, dev.configs.clone(), &logs);
        supervisor
            .start_all()
            .map_err(|e| failed("starting replicas", e))?;
        Ok(LocalCluster {
            dev,
            supervisor,
            ca_pem,
        })
    }

    /// A client for every replica's API with `token` (the writer's by default).
    pub fn client(&self, token: Option<&str>) -> Result<Client, LocalClusterError> {
        let mut config = ClientConfig::new(
            self.dev.api_urls.clone(),
            token.unwrap_or(&self.dev.writer_token),
        );
        config.ca_pem = Some(self.ca_pem.clone());
        Client::new(config).map_err(|e| failed("client", e))
    }

    /// The CA certificate clients trust.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// Replicas in the cluster.
    pub fn replica_count(&self) -> usize {
        self.supervisor.replica_count()
    }

    /// The data directory of replica `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dev.dir.join(format!("r{i}"))
    }

    /// The log file of replica `i`'s process.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.supervisor.log_path(i)
    }

    /// Every replica's health (None where it does not answer).
    pub async fn health(&self) -> Vec<Option<Health>> {
        let client = match self.client(None) {
            Ok(client) => client,
            Err(_) => return vec![None; self.replica_count()],
        };
        client
            .health_all()
            .await
            .into_iter()
            .map(|(_, h)| h.ok())
            .collect()
    }

    /// One counter or gauge of every replica's `/metrics` (None where the
    /// replica does not answer or does not report it), read with the
    /// writer's token.
    pub async fn metric_all(&self, name: &str) -> Vec<Option<u64>> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .add_root_certificate(match reqwest::Certificate::from_pem(&self.ca_pem) {
                Ok(ca) => ca,
                Err(_) => return vec![None; self.replica_count()],
            })
            .build();
        let Ok(http) = http else {
            return vec![None; self.replica_count()];
        };
        let mut out = Vec::new();
        for url in &self.dev.api_urls {
            let text = http
                .get(format!("{url}/metrics"))
                .bearer_auth(&self.dev.writer_token)
                .send()
                .await;
            let text = match text {
                Ok(answer) if answer.status().is_success() => answer.text().await.ok(),
                _ => None,
            };
            out.push(text.and_then(|t| metric_value(&t, name)));
        }
        out
    }

    /// Waits until a primary in normal status is seen by a quorum and
    /// returns its index.
    pub async fn wait_primary(&self, timeout: Duration) -> Result<u8, LocalClusterError> {
        let quorum = self.replica_count() / 2 + 1;
        let deadline = Instant::now() + timeout;
        loop {
            let health = self.health().await;
            let normal: Vec<&Health> = health
                .iter()
                .flatten()
                .filter(|h| h.status == "normal")
                .collect();
            if let Some(primary) = normal.iter().find(|h| h.is_primary) {
                let agree = normal.iter().filter(|h| h.view == primary.view).count();
                if agree >= quorum {
                    return Ok(primary.replica);
                }
            }
            if let Err(timed_out) = wait_or_timeout(deadline, timeout, "a primary") {
                // What each replica said last and the end of its log, so a
                // timeout in CI can be explained from its output alone.
                return Err(LocalClusterError::Failed(format!(
                    "{timed_out}; {}",
                    self.describe(&health)
                )));
            }
            pause_poll().await;
        }
    }

    /// Each replica's last health answer (or none) and the last lines of
    /// its process log.
    fn describe(&self, health: &[Option<Health>]) -> String {
        const LOG_LINES: usize = 8;
        (0..self.replica_count())
            .map(|i| {
                let said = match health.get(i).and_then(Option::as_ref) {
                    Some(h) => format!(
                        "{} view {} primary {} commit {} op {}",
                        h.status, h.view, h.primary, h.commit, h.op
                    ),
                    None => "no health answer".to_string(),
                };
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_LINES)..].join("\n    ");
                format!("\nreplica {i}: {said}; log tail:\n    {tail}")
            })
            .collect()
    }

    /// Waits until every replica in `which` answers with commit >= `commit`.
    pub async fn wait_commit(
        &self,
        which: &[usize],
        commit: u64,
        timeout: Duration,
    ) -> Result<(), LocalClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let health = self.health().await;
            let done = which.iter().all(|&i| {
                health
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|h| h.commit >= commit)
            });
            if done {
                return Ok(());
            }
            let what = format!("replicas {which:?} to reach commit {commit}");
            wait_or_timeout(deadline, timeout, &what)?;
            pause_poll().await;
        }
    }

    /// `kill -9` of replica `i`.
    pub fn kill(&mut self, i: usize) -> Result<(), LocalClusterError> {
        self.supervisor.kill(i).map_err(|e| failed("kill", e))
    }

    /// Starts replica `i` again.
    pub fn restart(&mut self, i: usize) -> Result<(), LocalClusterError> {
        self.supervisor.restart(i).map_err(|e| failed("restart", e))
    }

    /// Starts replica `i` (after a kill).
    pub fn start_replica(&mut self, i: usize) -> Result<(), LocalClusterError> {
        self.supervisor.start(i).map_err(|e| failed("start", e))
    }

    /// SIGSTOP of replica `i`.
    pub fn pause(&mut self, i: usize) -> Result<(), LocalClusterError> {
        self.supervisor.pause(i).map_err(|e| failed("pause", e))
    }

    /// SIGCONT of replica `i`.
    pub fn resume(&mut self, i: usize) -> Result<(), LocalClusterError> {
        self.supervisor.resume(i).map_err(|e| failed("resume", e))
    }

    /// True while replica `i`'s process runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.supervisor.is_running(i)
    }

    /// Stops every replica (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self) -> Result<(), LocalClusterError> {
        self.supervisor
            .stop_all(Duration::from_millis(STOP_GRACE_MS))
            .map(|_| ())
            .map_err(|e| failed("stopping replicas", e))
    }
}

fn wait_or_timeout(
    deadline: Instant,
    timeout: Duration,
    what: &str,
) -> Result<(), LocalClusterError> {
    if Instant::now() >= deadline {
        return Err(LocalClusterError::Timeout {
            what: what.to_string(),
            ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        });
    }
    Ok(())
}

/// The value of an unlabelled sample `name` in Prometheus exposition text.
fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
}

async fn pause_poll() {
    tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
}

/// Removes what a wiped disk would lose: the log, the view state, the
/// index, the data keys and shred tombstones (the replica keeps its
/// identity: config, signing key, KEK, TLS). Used by tests and drills.
pub fn wipe_replica_data(data_dir: &Path) -> std::io::Result<()> {
    let remove_dir = |p: PathBuf| match std::fs::remove_dir_all(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    let remove_file = |p: PathBuf| match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    remove_dir(data_dir.join("segments"))?;
    remove_file(data_dir.join(crate::log::VSR_STATE_FILE))?;
    for entry in std::fs::read_dir(data_dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with("index.sqlite3")) {
            remove_file(path)?;
        }
    }
    for entry in std::fs::read_dir(data_dir.join("keys"))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with("dek-") || n.starts_with("shred-")) {
            remove_file(path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    // Goal: the bench reads exactly the named unlabelled sample, never a
    // prefix of another name, a comment or a malformed value.
    #[test]
    fn metric_value_reads_only_the_named_sample() {
        let text = "# HELP vellum_syncs_total Storage fdatasyncs.\n\
                    # TYPE vellum_syncs_total counter\n\
                    vellum_syncs_total_extra 7\n\
                    vellum_syncs_total 42\n\
                    vellum_view x\n";
        assert_eq!(metric_value(text, "vellum_syncs_total"), Some(42));
        assert_eq!(metric_value(text, "vellum_syncs"), None);
        assert_eq!(metric_value(text, "vellum_view"), None);
        assert_eq!(metric_value(text, "vellum_commit"), None);
    }
}
