//! `vellum verify`: checks one data directory (`--data-dir`), every
//! replica of a cluster (`--cluster`) or an export bundle (`--bundle`), prints the report as text, JSON or
//! one self-contained HTML page, and exits non-zero on any failure.
//! Progress goes to stderr so the report on stdout stays clean.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use vellum_audit::policy::Policy;
use vellum_audit::report::Report;

use crate::verify::{KeptCheckpoint, VerifyOptions};

/// The largest kept checkpoint file read by `--since`, in bytes (a
/// certificate of a 7-replica cluster is well under 2 KiB).
const KEPT_CHECKPOINT_BYTES_MAX: u64 = 64 * 1024;

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Lines for a terminal.
    Text,
    /// The report model as JSON, for machines.
    Json,
    /// One self-contained HTML page for a browser (no scripts, no external resources).
    Html,
}

/// `vellum verify`
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["data_dir", "cluster", "bundle"]))]
pub struct VerifyArgs {
    /// The replica's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Verify every replica of a cluster and compare them: a directory of
    /// r<N>.json configs (as `vellum dev` writes) or one config file.
    /// Requires --policy.
    #[arg(long, value_name = "C", requires = "policy")]
    cluster: Option<PathBuf>,
    /// Verify an export bundle offline (no cluster, no keys): every event's
    /// plaintext opens its leaf commitment, every proof verifies against the
    /// bundle's certificate, which has its quorum; the manifest is signed by
    /// a pinned replica and lists every file. Requires --policy.
    #[arg(long, value_name = "B", requires = "policy")]
    bundle: Option<PathBuf>,
    /// The trust policy to pin (keys and quorum). Default with --data-dir:
    /// the policy written at init inside the data directory — pass your own
    /// copy for an independent audit, since keys should never come from the
    /// data verified.
    #[arg(long, value_name = "P")]
    policy: Option<PathBuf>,
    /// Audit index URL (postgres://...); default: SQLite file in the data directory.
    #[arg(long, value_name = "URL", env = "VELLUM_INDEX_URL")]
    index_url: Option<String>,
    /// A checkpoint kept from an earlier run: the file --checkpoint-out
    /// writes or an earlier JSON report (both keep the tree's frontier: only
    /// the log after the checkpoint is read), the JSON of /v1/certificate,
    /// or certificate text (the whole log is read). The log must have only
    /// grown since.
    #[arg(long, value_name = "CHECKPOINT_FILE")]
    since: Option<PathBuf>,
    /// Write the newest verified checkpoint here when verification passes,
    /// for the next run's --since: JSON with the certificate text
    /// (`certificate`) and the tree's frontier at it (`reached_frontier`).
    #[arg(long, value_name = "FILE")]
    checkpoint_out: Option<PathBuf>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Print the report as JSON (the same as --format json).
    #[arg(long)]
    json: bool,
    /// Write the report to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Verify replicas while they run: take no lock; an incomplete record at
    /// the very end of the last segment is a write in progress, and the index
    /// is compared with the log up to the newest commit both hold (later rows
    /// are left for the next run). Everything before is checked in full.
    #[arg(long)]
    live: bool,
    /// With --live: fail when a replica's audit index lags its log's newest
    /// certificate by more than this many commits.
    #[arg(
        long,
        value_name = "COMMITS",
        default_value_t = crate::verify::LIVE_LAG_OPS_MAX_DEFAULT,
        value_parser = crate::cli::number_flag,
        requires = "live"
    )]
    index_lag_max: u64,
    /// Record this run (scope, result, SHA-256 of the report, checkpoint
    /// reached) in the cluster's access trail, through the API of the
    /// `vellum dev` cluster in DIR.
    #[arg(long, value_name = "DIR")]
    record_to: Option<PathBuf>,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let since = args.since.as_deref().map(read_kept).transpose()?;
    let (report, policy_sha256) = match (&args.cluster, &args.data_dir) {
        _ if args.bundle.is_some() => {
            let bundle = args.bundle.as_deref().context("--bundle")?;
            let policy_path = args.policy.as_deref().context("--bundle needs --policy")?;
            anyhow::ensure!(
                bundle.is_dir(),
                "{} is not a directory (an export bundle is a directory)",
                bundle.display()
            );
            let (policy, sha256) = load_policy(policy_path)?;
            (
                vellum_compliance::bundle::verify_bundle(bundle, &policy),
                sha256,
            )
        }
        (Some(cluster), _) => {
            let policy_path = args.policy.as_deref().context("--cluster needs --policy")?;
            if args.index_url.is_some() {
                // Also set through VELLUM_INDEX_URL, so a note, not a refusal.
                eprintln!(
                    "note: --index-url is not used with --cluster: each replica's config names its index"
                );
            }
            let (policy, sha256) = load_policy(policy_path)?;
            let live = args.live.then_some(args.index_lag_max);
            (verify_cluster(cluster, &policy, since, live)?, sha256)
        }
        (None, Some(data_dir)) => verify_dir(data_dir, &args, since)?,
        (None, None) => anyhow::bail!("give --data-dir DIR or --cluster C"),
    };
    let report = report.with_tool(tool()).with_policy_sha256(policy_sha256);
    let format = if args.json { Format::Json } else { args.format };
    let rendered = match format {
        Format::Text => report.to_text(),
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&report)?),
        Format::Html => report.to_html(),
    };
    match &args.output {
        Some(path) => std::fs::write(path, &rendered)
            .with_context(|| format!("{}: cannot write the report", path.display()))?,
        None => print!("{rendered}"),
    }
    if let Some(dir) = &args.record_to {
        record_run(dir, &args, &report, rendered.as_bytes())?;
    }
    if let Some(path) = &args.checkpoint_out {
        write_checkpoint(path, &report)?;
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Records the run in the access trail of the dev cluster in `dir`.
fn record_run(
    dir: &Path,
    args: &VerifyArgs,
    report: &Report,
    rendered: &[u8],
) -> anyhow::Result<()> {
    use sha2::Digest as _;
    let dev = crate::cluster::DevCluster::load(dir)?;
    let mut config =
        crate::client::ClientConfig::new(dev.api_urls.clone(), dev.auditor_token.clone());
    config.ca_pem = Some(std::fs::read(&dev.ca_pem_path)?);
    let client = crate::client::Client::new(config)?;
    let scope = match (&args.bundle, &args.cluster, &args.data_dir) {
        (Some(b), _, _) => format!("bundle {}", b.display()),
        (_, Some(c), _) => format!("cluster {}", c.display()),
        (_, _, Some(d)) => format!("data-dir {}", d.display()),
        _ => "unknown".to_string(),
    };
    let record = crate::api::VerificationRecord {
        scope,
        passed: report.passed,
        report_sha256: vellum_audit::hash::to_hex(&sha2::Sha256::digest(rendered)),
        checkpoint_size: report.reached.as_ref().map(|r| r.tree_size),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(client.record_verification(&record))?;
    eprintln!(
        "recorded in the access trail: report sha256 {}",
        record.report_sha256
    );
    Ok(())
}

fn verify_dir(
    data_dir: &Path,
    args: &VerifyArgs,
    since: Option<KeptCheckpoint>,
) -> anyhow::Result<(Report, String)> {
    // An auditor's copy may hold no keys and no vellum.json: only the log
    // and the policy are needed, so only the directory must exist.
    super::check_data_dir(data_dir, false)?;
    let dir = crate::datadir::DataDir::new(data_dir);
    if dir.keys().exists()
        && let Err(e) = super::check_key_permissions(&dir)
    {
        // Verification needs no secret, so it goes on; but say it loudly.
        eprintln!("warning: {e}");
    }
    let _lock = match args.live {
        true => None,
        false => lock_if_replica(data_dir)?,
    };
    let policy_path = match &args.policy {
        Some(path) => path.clone(),
        None => {
            let path = dir.policy();
            eprintln!(
                "note: using the policy inside the data directory ({}); pass --policy with your own copy for an independent audit",
                path.display()
            );
            path
        }
    };
    let (policy, policy_sha256) = load_policy(&policy_path)?;
    let options = VerifyOptions {
        index_url: args.index_url.clone(),
        since,
        live: args.live,
        live_lag_ops_max: args.index_lag_max,
        keep_facts: false,
        ops_window: None,
    };
    let progress = progress_bar(dir_bytes(&dir.segments()));
    let report =
        crate::verify::verify_data_dir_with(data_dir, &policy, &options, &mut |n| progress.inc(n));
    progress.finish_and_clear();
    Ok((report, policy_sha256))
}

fn verify_cluster(
    cluster: &Path,
    policy: &Policy,
    since: Option<KeptCheckpoint>,
    live: Option<u64>,
) -> anyhow::Result<Report> {
    if !cluster.exists() {
        anyhow::bail!(
            "{}: no such cluster directory or config file",
            cluster.display()
        );
    }
    let setup = crate::verify::load_cluster(cluster, policy);
    let dirs = setup.data_dirs();
    // Hold every replica's writer lock: a running replica's appends would
    // look like torn records (stop the cluster, or verify a copy).
    // With --live the replicas keep running and the checks allow for it.
    let mut locks = Vec::with_capacity(dirs.len());
    for dir in dirs.iter().filter(|_| live.is_none()) {
        locks.push(lock_if_replica(dir)?);
    }
    let total = dirs
        .iter()
        .map(|d| dir_bytes(&crate::datadir::DataDir::new(d).segments()))
        .sum();
    let progress = progress_bar(total);
    let report = crate::verify::verify_cluster(setup, policy, since.as_ref(), live, &mut |n| {
        progress.inc(n)
    });
    progress.finish_and_clear();
    drop(locks);
    Ok(report)
}

/// The writer's lock of a replica's directory (none for an auditor's copy
/// without `vellum.json`), so an append running now is not mistaken for a
/// torn record.
fn lock_if_replica(data_dir: &Path) -> anyhow::Result<Option<crate::datadir::DirLock>> {
    if crate::datadir::DataDir::new(data_dir).meta().exists() {
        Ok(Some(super::lock_data_dir(data_dir)?))
    } else {
        Ok(None)
    }
}

/// The policy in `path` and the SHA-256 (lowercase hex) of the file's
/// bytes, which every report carries so a reader knows which keys it pinned.
fn load_policy(path: &Path) -> anyhow::Result<(Policy, String)> {
    use sha2::Digest as _;
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the trust policy", path.display()))?;
    let sha256 = vellum_audit::hash::to_hex(&sha2::Sha256::digest(&bytes));
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{}: the trust policy is not utf-8 text", path.display()))?;
    let policy = Policy::parse(&text).with_context(|| path.display().to_string())?;
    Ok((policy, sha256))
}

/// This binary as reports name it: version and the git commit it was
/// built from (when `build.rs` could tell).
fn tool() -> vellum_audit::report::Tool {
    vellum_audit::report::Tool {
        name: "vellum".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit: option_env!("VELLUM_GIT_COMMIT").map(str::to_string),
    }
}

fn read_kept(path: &Path) -> anyhow::Result<KeptCheckpoint> {
    let length = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read the kept checkpoint", path.display()))?
        .len();
    if length > KEPT_CHECKPOINT_BYTES_MAX {
        anyhow::bail!(
            "{}: {length} bytes, more than the {KEPT_CHECKPOINT_BYTES_MAX} a checkpoint may have",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the kept checkpoint", path.display()))?;
    Ok(KeptCheckpoint::from_text(
        &path.display().to_string(),
        &text,
    ))
}

/// Writes the newest verified checkpoint for the next `--since`, only when
/// everything passed: a checkpoint from a failed run is not worth keeping.
fn write_checkpoint(path: &Path, report: &Report) -> anyhow::Result<()> {
    match (crate::verify::kept_checkpoint_file(report), report.passed) {
        (Some(text), true) => crate::fsutil::replace_durable(path, text.as_bytes(), 0o644)
            .with_context(|| format!("{}: cannot write the checkpoint", path.display())),
        (None, true) => {
            eprintln!(
                "note: no certificate was verified (empty log); {} not written",
                path.display()
            );
            Ok(())
        }
        (_, false) => {
            eprintln!("note: verification failed; {} not written", path.display());
            Ok(())
        }
    }
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let progress = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "verifying {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("the progress template is valid"),
    );
    progress
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
