//! One outside witness beside a local dev cluster, for `vellum dev` and
//! `vellum demo`: a `vellum witness` process with its own data directory
//! (`<cluster dir>/witness/`), its key pinned in every replica's policy as a
//! `cosigner` with its URL and `cosigner-quorum 0` (so the primary feeds it
//! and the cluster never waits for it), and an auditor's policy that
//! requires it (`<cluster dir>/policy-witnessed.txt`, `cosigner-quorum 1`).
//! Its address is chosen once and kept in `witness/url.txt`, so a dev
//! cluster reopened later finds it where its replicas' policies say.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vellum_audit::cosignature::CosignerKey;
use vellum_audit::policy::Policy;

use crate::cluster::DevCluster;

/// The witness's key name in dev clusters.
pub const DEV_WITNESS_NAME: &str = "vellum.local/witness";
/// The auditor's policy requiring the witness, in the cluster directory.
pub const WITNESSED_POLICY_FILE: &str = "policy-witnessed.txt";
/// How long the witness process may take to listen.
const START_WAIT_MS_MAX: u64 = 10_000;

/// A witness process serving a dev cluster. Dropping it kills the process.
#[derive(Debug)]
pub struct LocalWitness {
    /// The witness's data directory.
    pub dir: PathBuf,
    /// Its submission URL (`http://127.0.0.1:<port>`).
    pub url: String,
    /// Its public key (pinned in the replicas' policies).
    pub key: CosignerKey,
    /// The auditor's policy with `cosigner-quorum 1` for this witness.
    pub witnessed_policy_path: PathBuf,
    exe: PathBuf,
    policy_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl LocalWitness {
    /// Prepares the witness of the dev cluster `dev` (key, address, pinned
    /// in every replica's policy, the witnessed auditor policy) without
    /// starting it. Replicas read their policy when they start, so call this
    /// before starting them.
    pub fn prepare(dev: &DevCluster, exe: &Path) -> anyhow::Result<LocalWitness> {
        let dir = dev.dir.join("witness");
        let cosigner = crate::witness::load_or_create_key(&dir, DEV_WITNESS_NAME)?;
        let key = cosigner.key();
        let url_path = dir.join("url.txt");
        let url = match std::fs::read_to_string(&url_path) {
            Ok(url) => url.trim_end().to_owned(),
            Err(_) => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                let url = format!("http://127.0.0.1:{port}");
                crate::fsutil::replace_durable(&url_path, format!("{url}\n").as_bytes(), 0o644)?;
                url
            }
        };
        crate::cluster::add_dev_cosigner(dev, &key, &url)?;
        let policy = Policy::parse(&std::fs::read_to_string(&dev.policy_path)?)?;
        let witnessed = policy.with_cosigners(vec![key.clone()], 1)?;
        let witnessed_policy_path = dev.dir.join(WITNESSED_POLICY_FILE);
        crate::fsutil::replace_durable(
            &witnessed_policy_path,
            witnessed.encode().as_bytes(),
            0o644,
        )?;
        Ok(LocalWitness {
            log_path: dev.dir.join("logs").join("witness.log"),
            dir,
            url,
            key,
            witnessed_policy_path,
            exe: exe.to_owned(),
            policy_path: dev.policy_path.clone(),
            child: None,
        })
    }

    /// Starts the witness process and waits until it accepts connections.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if let Some(parent) = self.log_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let listen = self.url.trim_start_matches("http://").to_owned();
        let child = Command::new(&self.exe)
            .arg("witness")
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--listen")
            .arg(&listen)
            .arg("--policy")
            .arg(&self.policy_path)
            .arg("--name")
            .arg(DEV_WITNESS_NAME)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_millis(START_WAIT_MS_MAX);
        while std::net::TcpStream::connect(&listen).is_err() {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!(
                    "the witness exited ({status}); see {}",
                    self.log_path.display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the witness did not listen on {listen} within {START_WAIT_MS_MAX} ms; see {}",
                self.log_path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the witness process (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The witness's process log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for LocalWitness {
    fn drop(&mut self) {
        self.stop();
    }
}
