//! `vellum bench --scale` (issue 11): how a replica and `vellum verify`
//! grow with the log. For each size it builds a log of 512-byte events
//! (batches of [`EVENTS_PER_APPEND_MAX`] as `vellum append` makes them, or
//! one event per op), then measures, each in a fresh process so that one
//! measurement's memory is not another's: a full `vellum verify` (time and
//! peak resident memory), `vellum verify --since` a checkpoint kept at 99%
//! of the log, and a replica open (time, resident memory and file
//! descriptors after the open and after appending more events), plus bytes
//! on disk per event against payload bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::log::{EVENTS_PER_APPEND_MAX, LocalLog, LogOptions};
use crate::types::StreamId;

/// Payload bytes of each event.
pub const SCALE_EVENT_BYTES: usize = 512;
/// The kept checkpoint of `--since` is the newest one at this share of the
/// log's events (per mille): the run re-proves the last 1%.
const SINCE_AT_PER_MILLE: u64 = 990;
/// Longest a measured child process may run.
const CHILD_SECONDS_MAX: u64 = 3600;

/// What `vellum bench --scale` builds and measures.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    /// Working directory (each log is removed after its measurements).
    pub dir: PathBuf,
    /// Sizes (events) of the logs built in CLI batches.
    pub sizes: Vec<u64>,
    /// Size of the log built one event per op (0: skip).
    pub per_op_events: u64,
    /// Events appended after the measured open.
    pub appends: u64,
    /// The `vellum` binary (its `verify` and `bench --scale-probe` run as children).
    pub exe: PathBuf,
}

/// One log's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    /// Events in the log.
    pub events: u64,
    /// Events per op.
    pub events_per_op: u64,
    /// Seconds to build it.
    pub build_s: f64,
    /// The replica's open, and after appending.
    pub probe: ProbeResult,
    /// Segment bytes per event.
    pub segment_bytes_per_event: f64,
    /// Data directory bytes (segments, index, keys) per event.
    pub dir_bytes_per_event: f64,
    /// Payload bytes per event.
    pub payload_bytes_per_event: u64,
    /// Full `vellum verify`: seconds and peak resident MiB.
    pub verify_s: f64,
    /// Peak resident memory of the full verify.
    pub verify_peak_mib: f64,
    /// `vellum verify --since` a checkpoint at 99% of the log: seconds.
    pub since_s: f64,
    /// Peak resident memory of the `--since` run.
    pub since_peak_mib: f64,
    /// Events after the kept checkpoint.
    pub since_new_events: u64,
    /// Whether the `--since` run skipped the old part (its report says so).
    pub since_incremental: bool,
}

/// What the probe process measured (`vellum bench --scale-probe DIR`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Seconds from `LocalLog::open` called to returned.
    pub open_s: f64,
    /// MiB the open read (`rchar` of `/proc/self/io`: every file read,
    /// page cache or not).
    pub open_read_mib: f64,
    /// Resident MiB after the open.
    pub rss_open_mib: f64,
    /// Open file descriptors after the open.
    pub fds_open: u64,
    /// Events appended after the open.
    pub appended: u64,
    /// Seconds to append them.
    pub append_s: f64,
    /// Resident MiB after appending.
    pub rss_appended_mib: f64,
    /// Open file descriptors after appending.
    pub fds_appended: u64,
}

/// The whole `--scale` report.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// One row per log.
    pub rows: Vec<ScaleRow>,
}

/// Builds and measures every log of `config`.
pub fn run(config: &ScaleConfig, progress: &dyn Fn(&str)) -> anyhow::Result<ScaleReport> {
    let mut logs: Vec<(u64, u64)> = config
        .sizes
        .iter()
        .map(|&n| (n, EVENTS_PER_APPEND_MAX as u64))
        .collect();
    if config.per_op_events > 0 {
        logs.push((config.per_op_events, 1));
    }
    let mut rows = Vec::new();
    for (events, per_op) in logs {
        rows.push(measure_log(config, events, per_op, progress)?);
    }
    Ok(ScaleReport { rows })
}

fn measure_log(
    config: &ScaleConfig,
    events: u64,
    per_op: u64,
    progress: &dyn Fn(&str),
) -> anyhow::Result<ScaleRow> {
    let dir = config.dir.join(format!("scale-{events}-{per_op}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&config.dir)?;
    progress(&format!("building {events} events, {per_op} per op"));
    let started = Instant::now();
    let kept_path = config.dir.join("kept-report.json");
    let kept = build(&dir, events, per_op, &config.exe, &kept_path)?;
    let build_s = started.elapsed().as_secs_f64();
    let segment_bytes = dir_bytes(&dir.join(crate::storage::SEGMENTS_DIR))?;
    let all_bytes = dir_bytes(&dir)?;

    progress(&format!("verify of {events} events"));
    let data = dir.to_string_lossy().to_string();
    let (verify_s, verify_peak_mib) = run_measured(&config.exe, &["verify", "--data-dir", &data])?;
    progress(&format!("verify --since of {events} events"));
    let kept_arg = kept_path.to_string_lossy().to_string();
    let since_report = config.dir.join("since-report.json");
    let since_report_arg = since_report.to_string_lossy().to_string();
    let (since_s, since_peak_mib) = run_measured(
        &config.exe,
        &[
            "verify",
            "--data-dir",
            &data,
            "--since",
            &kept_arg,
            "--json",
            "--output",
            &since_report_arg,
        ],
    )?;
    let since_incremental = was_incremental(&since_report)?;
    progress(&format!(
        "open and {} appends at {events} events",
        config.appends
    ));
    let probe = run_probe(&config.exe, &dir, config.appends, per_op)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(ScaleRow {
        events,
        events_per_op: per_op,
        build_s,
        probe,
        segment_bytes_per_event: segment_bytes as f64 / events as f64,
        dir_bytes_per_event: all_bytes as f64 / events as f64,
        payload_bytes_per_event: SCALE_EVENT_BYTES as u64,
        verify_s,
        verify_peak_mib,
        since_s,
        since_peak_mib,
        since_new_events: events - kept.size,
        since_incremental,
    })
}

/// Whether a `--since` report says the run skipped the old part (the
/// kept-checkpoint check carries the incremental note).
fn was_incremental(report: &Path) -> anyhow::Result<bool> {
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(report)?)?;
    let checks = report["checks"]
        .as_array()
        .context("checks in the report")?;
    Ok(checks.iter().any(|check| {
        check["name"] == vellum_audit::verify::SINCE_CHECK
            && check["note"]
                .as_str()
                .is_some_and(|note| note.contains(vellum_audit::since::INCREMENTAL_NOTE))
    }))
}

/// The checkpoint kept at 99% of the log.
struct Kept {
    size: u64,
}

/// Appends `events` events of [`SCALE_EVENT_BYTES`] to a new data directory,
/// `per_op` per append, over 16 streams. Once 99% of them are in, the log
/// is closed and verified (`vellum verify --json`, as an auditor would),
/// and the report kept at `kept_report` (its checkpoint and frontier are
/// what the measured `--since` starts from); then the rest is appended.
fn build(
    dir: &Path,
    events: u64,
    per_op: u64,
    exe: &Path,
    kept_report: &Path,
) -> anyhow::Result<Kept> {
    crate::init::init_data_dir(dir, None)?;
    let since_at = u64::try_from(u128::from(events) * u128::from(SINCE_AT_PER_MILLE) / 1000)
        .expect("a share of a u64 fits a u64")
        .max(1);
    let mut append = 0u64;
    let (log, _) = LocalLog::open(dir, LogOptions::default())?;
    append_events(&log, since_at, per_op, &mut append)?;
    let size = log
        .latest_certificate()
        .context("a certificate after an append")?
        .checkpoint
        .size;
    log.close()?;
    let status = Command::new(exe)
        .arg("verify")
        .arg("--data-dir")
        .arg(dir)
        .arg("--json")
        .arg("--output")
        .arg(kept_report)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "the verify at 99% failed: {status}");
    let (log, _) = LocalLog::open(dir, LogOptions::default())?;
    append_events(&log, events.saturating_sub(since_at), per_op, &mut append)?;
    log.close()?;
    Ok(Kept { size })
}

/// Appends `events` events, `per_op` per append, over 16 streams.
fn append_events(log: &LocalLog, events: u64, per_op: u64, append: &mut u64) -> anyhow::Result<()> {
    let payload = Bytes::from(super::sample_payload(SCALE_EVENT_BYTES));
    let mut written = 0u64;
    while written < events {
        let n = per_op.max(1).min(events - written);
        let batch: Vec<Bytes> = (0..n).map(|_| payload.clone()).collect();
        let stream = StreamId::USER_MIN + *append % 16;
        log.append(stream, &batch, None, None)?;
        written += n;
        *append += 1;
    }
    Ok(())
}

/// Runs `exe args`, polling its peak resident memory (VmHWM) until it
/// exits; (seconds, peak MiB). Fails unless it exits 0.
fn run_measured(exe: &Path, args: &[&str]) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(kib) = status_kib(&status_file, "VmHWM:") {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(CHILD_SECONDS_MAX),
            "vellum {} ran over {CHILD_SECONDS_MAX} s",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        status.success(),
        "vellum {} failed: {status}",
        args.join(" ")
    );
    Ok((seconds, peak_kib as f64 / 1024.0))
}

fn run_probe(exe: &Path, dir: &Path, appends: u64, per_op: u64) -> anyhow::Result<ProbeResult> {
    let output = Command::new(exe)
        .arg("bench")
        .arg("--scale-probe")
        .arg(dir)
        .args(["--scale-appends", &appends.to_string()])
        .args(["--scale-probe-batch", &per_op.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(output.status.success(), "the open probe failed");
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The probe (run in its own process): opens the replica's log at `dir`,
/// measures, appends `appends` events `per_op` per append, measures again.
pub fn probe(dir: &Path, appends: u64, per_op: u64) -> anyhow::Result<ProbeResult> {
    let read_before = read_bytes()?;
    let started = Instant::now();
    let (log, _) = LocalLog::open(dir, LogOptions::default())?;
    let open_s = started.elapsed().as_secs_f64();
    let open_read_mib = read_bytes()?.saturating_sub(read_before) as f64 / (1024.0 * 1024.0);
    let rss_open_mib = rss_mib()?;
    let fds_open = open_fds()?;
    let payload = Bytes::from(super::sample_payload(SCALE_EVENT_BYTES));
    let started = Instant::now();
    let mut written = 0u64;
    while written < appends {
        let n = per_op.max(1).min(appends - written);
        let batch: Vec<Bytes> = (0..n).map(|_| payload.clone()).collect();
        log.append(StreamId::USER_MIN, &batch, None, None)?;
        written += n;
    }
    let append_s = started.elapsed().as_secs_f64();
    let result = ProbeResult {
        open_s,
        open_read_mib,
        rss_open_mib,
        fds_open,
        appended: written,
        append_s,
        rss_appended_mib: rss_mib()?,
        fds_appended: open_fds()?,
    };
    log.close()?;
    Ok(result)
}

fn status_kib(file: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(file).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rss_mib() -> anyhow::Result<f64> {
    let kib = status_kib("/proc/self/status", "VmRSS:").context("VmRSS in /proc/self/status")?;
    Ok(kib as f64 / 1024.0)
}

/// Bytes this process read so far (`rchar` of `/proc/self/io`).
fn read_bytes() -> anyhow::Result<u64> {
    let io = std::fs::read_to_string("/proc/self/io")?;
    io.lines()
        .find_map(|line| line.strip_prefix("rchar:"))
        .and_then(|n| n.trim().parse().ok())
        .context("rchar in /proc/self/io")
}

fn open_fds() -> anyhow::Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64)
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += match meta.is_dir() {
            true => dir_bytes(&entry.path())?,
            false => meta.len(),
        };
    }
    Ok(total)
}

impl ScaleReport {
    /// The report as a table.
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "events     per-op  open s  read MiB  RSS open  RSS +appends  fds open/+app  disk B/ev (segs/dir, payload 512)  verify s  verify peak  --since s (new events, share of verify)\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{:<10} {:<7} {:<7.3} {:<9.1} {:<9} {:<13} {:<14} {:<34} {:<9.2} {:<12} {:.3} ({}, {:.1}%{})\n",
                r.events,
                r.events_per_op,
                r.probe.open_s,
                r.probe.open_read_mib,
                format!("{:.0} MiB", r.probe.rss_open_mib),
                format!("{:.0} MiB", r.probe.rss_appended_mib),
                format!("{}/{}", r.probe.fds_open, r.probe.fds_appended),
                format!(
                    "{:.0}/{:.0}",
                    r.segment_bytes_per_event, r.dir_bytes_per_event
                ),
                r.verify_s,
                format!("{:.0} MiB", r.verify_peak_mib),
                r.since_s,
                r.since_new_events,
                100.0 * r.since_s / r.verify_s.max(f64::MIN_POSITIVE),
                if r.since_incremental { "" } else { ", NOT incremental" },
            ));
        }
        out.push_str(
            "verify and --since run as `vellum verify` child processes (peak = VmHWM polled every 5 ms);\n\
             --since starts from the JSON report of a verify at 99% (checkpoint and frontier) and reads only the rest.\n",
        );
        out
    }
}
