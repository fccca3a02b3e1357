//! `vellum verify`: the auditor's tool. For one data directory: the offline
//! log checks of `vellum-audit`, plus the audit index checked row by row
//! against the log, plus (with `--since`) a checkpoint kept from an earlier
//! run. For a cluster: every replica's directory on its own, then the
//! replicas against each other (same op header chain, consistent
//! certificates, a quorum of distinct pinned keys on every certificate).
//! Keys always come from the auditor's policy, never from the data verified.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use vellum_audit::checkpoint::origin_for_cluster;
use vellum_audit::hash::to_hex;
use vellum_audit::key_history::{HistoryProblem, LoggedRotation};
use vellum_audit::policy::Policy;
use vellum_audit::report::{
    BreakGlassUse, Check, FailureKind, KeyHistoryKey, PolicySummary, Report, failure_source,
};
use vellum_audit::verify::{
    CommitFact, EventFact, LogFacts, LogVerification, ReplicaLog, check_since, compare_replicas,
    verify_log_dir,
};

pub mod key_listing;
mod stream;
mod tiles;

use crate::cluster::ClusterConfig;
use crate::datadir::DataDir;
use crate::index::{Index, IndexTarget};

/// Index rows read per query while checking, at most.
pub const INDEX_PAGE_ROWS_MAX: u32 = 10_000;

/// Cluster config files read from a cluster directory, at most (a cluster
/// has at most `REPLICAS_MAX` replicas; the bound keeps a wrong directory
/// from being read whole).
pub const CLUSTER_CONFIGS_MAX: usize = 16;

/// A checkpoint the auditor kept from an earlier run (`--since`).
#[derive(Debug, Clone)]
pub struct KeptCheckpoint {
    /// Where it came from, e.g. the file name; failures name it.
    pub source: String,
    /// The signed checkpoint text.
    pub text: String,
    /// The tree's frontier at its size, as an earlier JSON report keeps it
    /// (`reached_frontier`): what lets `--since` skip the old part.
    pub frontier: Option<Vec<String>>,
}

impl KeptCheckpoint {
    /// A kept checkpoint from a file's text: the certificate text itself,
    /// the JSON answer of `/v1/certificate` or the file `--checkpoint-out`
    /// writes ([`kept_checkpoint_file`]; `certificate` field), or an
    /// earlier JSON report (`reached.checkpoint`). Anything else is taken as
    /// certificate text, and the check says what is wrong with it.
    /// An earlier report and the `--checkpoint-out` file also keep the
    /// tree's frontier at that checkpoint (`reached_frontier`), which makes
    /// the run incremental.
    pub fn from_text(source: &str, text: &str) -> KeptCheckpoint {
        let json = text
            .trim_start()
            .starts_with('{')
            .then(|| serde_json::from_str::<serde_json::Value>(text).ok())
            .flatten();
        let from_json = json.as_ref().and_then(|value| {
            let field = value
                .get("certificate")
                .or_else(|| value.get("reached")?.get("checkpoint"))?;
            field.as_str().map(str::to_string)
        });
        let frontier = json.as_ref().and_then(|value| {
            value
                .get("reached_frontier")?
                .as_array()?
                .iter()
                .map(|node| node.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
        });
        KeptCheckpoint {
            source: source.to_string(),
            text: from_json.unwrap_or_else(|| text.to_string()),
            frontier,
        }
    }
}

/// Version of the kept checkpoint file `vellum verify --checkpoint-out`
/// writes (`docs/format.md`, "Kept checkpoint file").
pub const KEPT_CHECKPOINT_FILE_VERSION: u64 = 1;

/// What `vellum verify --checkpoint-out` writes for a run that passed: a
/// JSON object with the reached certificate's text (`certificate`, as
/// `/v1/certificate` answers it), its `tree_size`, and the tree's frontier
/// there (`reached_frontier`, when the run kept one), so that a later
/// `--since` of the file is incremental. `None` when nothing was reached.
pub fn kept_checkpoint_file(report: &Report) -> Option<String> {
    let reached = report.reached.as_ref()?;
    let mut file = serde_json::json!({
        "version": KEPT_CHECKPOINT_FILE_VERSION,
        "tree_size": reached.tree_size,
        "certificate": reached.checkpoint,
    });
    if let Some(frontier) = &report.reached_frontier {
        file["reached_frontier"] = serde_json::json!(frontier);
    }
    let text = serde_json::to_string_pretty(&file).expect("a JSON value always serializes");
    Some(format!("{text}\n"))
}

/// What a verification run checks beyond the log and the index.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The audit index URL of a single data directory (`None`: the SQLite
    /// file inside it). A cluster uses each replica's configured index.
    pub index_url: Option<String>,
    /// A checkpoint kept from an earlier run: the log must have only grown since.
    pub since: Option<KeptCheckpoint>,
    /// The replica may be running: see [`replica_checks`].
    pub live: bool,
    /// With `live`: most commits the index may lag behind the log's newest
    /// certificate before the index check fails (see [`LIVE_LAG_OPS_MAX_DEFAULT`]).
    pub live_lag_ops_max: u64,
    /// Keep every fact of the log in memory and compare afterwards (the
    /// way every run worked before the streaming walk), even where the
    /// streaming walk applies. The oracle the streaming walk is tested
    /// against; memory grows with the log.
    pub keep_facts: bool,
    /// Recent op records the streaming walk keeps (`None`: the default,
    /// `vellum_audit::verify::OPS_WINDOW_MAX`); tests make it small so that
    /// lookups of older ops re-read the log.
    pub ops_window: Option<usize>,
}

/// What the checks of one data directory give: the checks in order, what
/// the log walk learned, and what the access trail holds for the report.
pub type ReplicaChecks = (Vec<Check>, LogVerification, TrailFindings);

/// What the verified access trail gives the report, taken only from trail
/// rows whose payload opened its leaf's commitment (so a forged row can
/// neither add nor hide an entry).
#[derive(Debug, Clone, Default)]
pub struct TrailFindings {
    /// The trail was compared with the log (else the lists are empty
    /// because nothing was read).
    pub read: bool,
    /// The trail was read from a position after 0 only (`--since`).
    pub from_position: u64,
    /// Break-glass uses.
    pub break_glass: Vec<BreakGlassUse>,
    /// Signing-key rotations announced (`signing_key_rotated`), in trail order.
    pub rotations: Vec<LoggedRotation>,
}

/// How [`replica_checks`] walks the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkMode {
    /// Keep every fact and the full tree.
    Collect,
    /// Stream where possible (a stopped single replica), with these options.
    Stream(vellum_audit::verify::StreamOptions),
}

/// Default of `vellum verify --live --index-lag-max`: commits the audit
/// index may trail the log's newest certificate by. The index applies a
/// commit within a lazy record's sync delay (200 ms) of it; 1,000 commits
/// is seconds of full load, while a stopped index falls behind for good.
pub const LIVE_LAG_OPS_MAX_DEFAULT: u64 = 1_000;

/// Verifies a data directory's log against `policy` and its index against the log.
pub fn verify_data_dir(
    data_dir: &Path,
    policy: &Policy,
    index_url: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Report {
    let options = VerifyOptions {
        index_url: index_url.map(str::to_string),
        since: None,
        live: false,
        live_lag_ops_max: LIVE_LAG_OPS_MAX_DEFAULT,
        keep_facts: false,
        ops_window: None,
    };
    verify_data_dir_with(data_dir, policy, &options, progress)
}

/// [`verify_data_dir`] with options (a kept checkpoint to check against).
pub fn verify_data_dir_with(
    data_dir: &Path,
    policy: &Policy,
    options: &VerifyOptions,
    progress: &mut dyn FnMut(u64),
) -> Report {
    let started = SystemTime::now();
    // The log's certificate records carry no cosignatures: they are checked
    // against the replica quorum, and the witness quorum against the
    // cosignatures the replica kept (`cosignatures/`), below.
    let log_policy = policy.replicas_only();
    let since_size = options.since.as_ref().and_then(|kept| {
        let certificate = vellum_audit::checkpoint::Certificate::parse(&kept.text).ok()?;
        Some(certificate.checkpoint.size)
    });
    // The witness check needs the log's root at the cosigned size, which
    // only the whole tree gives (the stream keeps a few sizes' roots).
    let mode = match options.keep_facts || !policy.cosigners.is_empty() {
        true => WalkMode::Collect,
        false => WalkMode::Stream(vellum_audit::verify::StreamOptions {
            since_size,
            ops_window: options
                .ops_window
                .unwrap_or(vellum_audit::verify::OPS_WINDOW_MAX),
        }),
    };
    let (incremental, since_note) = incremental_run(data_dir, &log_policy, options, mode, progress);
    let (mut checks, log, findings) = match incremental {
        Some(walked) => walked,
        None => replica_checks(
            data_dir,
            &log_policy,
            options.index_url.as_deref(),
            options.live.then_some(options.live_lag_ops_max),
            mode,
            progress,
        ),
    };
    if !policy.cosigners.is_empty() {
        let found = load_kept(&[data_dir], policy);
        let place = data_dir
            .join(crate::witness::kept::DIR_NAME)
            .display()
            .to_string();
        checks.push(check_kept_cosignatures(&found, &place, policy, &log));
    }
    let since = options.since.as_ref().and_then(|kept| {
        let (mut check, kept) = check_since(&kept.text, &kept.source, &log_policy, &log);
        check.note = match (check.note.take(), since_note) {
            (Some(own), Some(how)) => Some(format!("{own}; {how}")),
            (own, how) => own.or(how),
        };
        checks.push(check);
        kept
    });
    let (key_check, key_history) = key_history_check(policy, &[&findings], last_op(&log));
    checks.extend(key_check);
    let mut report = Report::new(
        format!("data-dir {}", data_dir.display()),
        PolicySummary::from_policy(policy),
        checks,
        log.reached.clone(),
    );
    report.reached_frontier = log
        .reached
        .as_ref()
        .and_then(|reached| log.tree.frontier_at(reached.tree_size))
        .map(|frontier| frontier.nodes().iter().map(|node| to_hex(node)).collect());
    report.since = since;
    report
        .with_break_glass(findings.break_glass)
        .with_key_history(key_history)
        .with_times(started, SystemTime::now())
}

/// The checks of an incremental `--since` run (`None`: read the whole
/// log), and the note the kept-checkpoint check carries: what the run did
/// not re-read, or why it read the whole log.
fn incremental_run(
    data_dir: &Path,
    log_policy: &Policy,
    options: &VerifyOptions,
    mode: WalkMode,
    progress: &mut dyn FnMut(u64),
) -> (Option<ReplicaChecks>, Option<String>) {
    let Some(kept) = &options.since else {
        return (None, None);
    };
    let full = |why: String| {
        (
            None,
            Some(format!("not incremental: {why}; the whole log was read")),
        )
    };
    let start = match vellum_audit::since::SinceStart::new(
        &kept.text,
        kept.frontier.as_deref(),
        log_policy,
    ) {
        Ok(start) => start,
        Err(e) => return full(format!("the kept checkpoint: {e}")),
    };
    let WalkMode::Stream(stream_options) = mode else {
        return full("a witness policy (or an oracle run) reads the whole log".into());
    };
    if options.live {
        return full("--live".into());
    }
    let dir = DataDir::new(data_dir);
    // A replica of a cluster and a one-replica log walk their new part
    // differently; both take the same arguments.
    let checks = if log_policy.verifiers.len() > 1 {
        incremental_replica_checks
    } else {
        incremental_checks
    };
    match checks(
        &dir,
        log_policy,
        options.index_url.as_deref(),
        &start,
        &stream_options,
        progress,
    ) {
        Ok(walked) => (
            Some(walked),
            Some(vellum_audit::since::INCREMENTAL_NOTE.to_string()),
        ),
        Err(e) => full(e),
    }
}

/// One kept cosignature file of one pinned witness in one data directory,
/// read back (and its cosignature line checked) by `witness::kept::load`.
struct KeptFound {
    /// The file's path, the place a failure names.
    place: String,
    /// The witness it is pinned for.
    witness: vellum_audit::cosignature::CosignerKey,
    /// The cosigned certificate, or why the file does not hold a valid one.
    kept: Result<crate::witness::kept::Kept, crate::witness::kept::KeptError>,
}

/// Every kept cosignature of every pinned witness in `data_dirs` (a file
/// that does not exist is no finding).
fn load_kept(data_dirs: &[&Path], policy: &Policy) -> Vec<KeptFound> {
    let mut found = Vec::new();
    for data_dir in data_dirs {
        for key in &policy.cosigners {
            let place = crate::witness::kept::path_for(data_dir, key)
                .display()
                .to_string();
            let kept = match crate::witness::kept::load(data_dir, key) {
                Ok(None) => continue,
                Ok(Some(kept)) => Ok(kept),
                Err(e) => Err(e),
            };
            found.push(KeptFound {
                place,
                witness: key.clone(),
                kept,
            });
        }
    }
    found
}

/// The witness check (`--data-dir` and `--cluster` alike) over the kept
/// cosignatures `found`, against the log `log` (for a cluster, the replica
/// that got furthest; the others were compared with it). Every kept file
/// must hold a valid cosignature line of its witness (a forged or damaged
/// one fails at the file), on a certificate of the replica quorum whose
/// root is the root the log recomputed at its size (a rewritten history,
/// even re-signed by every replica key, fails there: the witness cosigned
/// the old one). At least `cosigner-quorum` distinct pinned witnesses must
/// have such a file, else the check fails at `quorum_place`. The cosigned
/// tree size counted is the largest size that many witnesses each cosigned
/// (a witness that cosigned size n vouches for every prefix of it).
fn check_kept_cosignatures(
    found: &[KeptFound],
    quorum_place: &str,
    policy: &Policy,
    log: &LogVerification,
) -> Check {
    let mut check = Check::start("witness cosignatures");
    let replica_policy = policy.replicas_only();
    // The largest size each witness cosigned consistently with the log.
    let mut sizes: Vec<(&vellum_audit::cosignature::CosignerKey, u64)> = Vec::new();
    for one in found {
        let kept = match &one.kept {
            Ok(kept) => kept,
            Err(e) => {
                check.fail(
                    FailureKind::CertificateInvalid,
                    &one.place,
                    format!("witness {}: {e}", one.witness.name()),
                );
                continue;
            }
        };
        if let Err(e) = kept.certificate.verify(&replica_policy) {
            check.fail(
                FailureKind::CertificateInvalid,
                &one.place,
                format!(
                    "the checkpoint {} cosigned is not a quorum certificate: {e}",
                    one.witness.name()
                ),
            );
            continue;
        }
        let size = kept.size;
        match log.tree.root_at(size) {
            Ok(root) if root == kept.certificate.checkpoint.root => {}
            Ok(_) => {
                check.fail(
                    FailureKind::RootMismatch,
                    &one.place,
                    format!(
                        "{} cosigned size {size} with a root that is not the root the log \
                         recomputed: the log is not the history the witness saw",
                        one.witness.name()
                    ),
                );
                continue;
            }
            Err(_) => {
                check.fail(
                    FailureKind::RootMismatch,
                    &one.place,
                    format!(
                        "{} cosigned size {size}, beyond this log",
                        one.witness.name()
                    ),
                );
                continue;
            }
        }
        match sizes.iter_mut().find(|(key, _)| *key == &one.witness) {
            Some((_, best)) => *best = (*best).max(size),
            None => sizes.push((&one.witness, size)),
        }
    }
    check.count("witness cosignatures", sizes.len() as u64);
    sizes.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    if sizes.len() < policy.cosigner_quorum {
        check.fail(
            FailureKind::CertificateInvalid,
            quorum_place,
            format!(
                "{} pinned witnesses cosigned a checkpoint of this log among the kept \
                 cosignatures ({} kept files), {} needed",
                sizes.len(),
                found.len(),
                policy.cosigner_quorum
            ),
        );
    } else if let Some((_, size)) = sizes.get(policy.cosigner_quorum.max(1) - 1) {
        check.count("cosigned tree size", *size);
    } else {
        check.note = Some("no kept cosignature (cosigner-quorum 0 needs none)".into());
    }
    check.finish()
}

/// Every check of one replica's data directory, in order, and what the log
/// walk learned. A new per-directory check (e.g. the access trail) plugs in
/// here, after the index check: it then runs for `--data-dir` and for every
/// replica of `--cluster` alike.
///
/// `live`: the replica may be appending while it is read (no lock is
/// taken). Then an incomplete record at the very end of the last segment is
/// a write in progress, not damage; and the index is compared with the log
/// only up to the newest commit both hold (rows of later commits are left
/// for the next run). Everything before that bound is checked as strictly
/// as on a stopped replica. `live` holds the most commits the index may lag
/// the log's newest certificate by: beyond it the index check fails.
///
/// Also returns the break-glass uses of the access trail, taken only from
/// trail rows whose payload opened its leaf's commitment (so a forged row
/// can neither add nor hide one).
///
/// A stopped single replica (not `live`, a policy of one key) is verified
/// in one streaming pass in bounded memory ([`streaming_checks`]; its tree
/// answers the kept checkpoint's size in `mode`, and the newest
/// certificate) unless `mode` is [`WalkMode::Collect`]. Otherwise every fact is kept and the tree is full: the
/// live bound and a cluster replica's certified prefix are known only at
/// the end of the walk, and `--cluster` compares replicas' trees.
pub fn replica_checks(
    data_dir: &Path,
    policy: &Policy,
    index_url: Option<&str>,
    live: Option<u64>,
    mode: WalkMode,
    progress: &mut dyn FnMut(u64),
) -> ReplicaChecks {
    let dir = DataDir::new(data_dir);
    let cluster = vellum_audit::verify::cluster_from_origin(&policy.origin);
    let checks = vec![check_meta(&dir, cluster)];
    if let WalkMode::Stream(options) = mode
        && live.is_none()
        && policy.verifiers.len() <= 1
    {
        return streaming_checks(&dir, policy, index_url, cluster, &options, checks, progress);
    }
    let mut log = verify_log_dir(&dir.segments(), policy, progress);
    if live.is_some()
        && relax_live_tail(&mut log.checks)
        && log.checks.first().is_some_and(Check::passed)
    {
        log.accept_live_tail();
    }
    collected_checks(&dir, policy, index_url, live, None, checks, log)
}

/// The checks after a walk that kept every fact (of the part read, from
/// `floor` on for an incremental run): uncovered ops relaxed for a replica
/// of a cluster or a live run, then the index and the trail compared with
/// the log up to its newest certificate (or the live bound).
fn collected_checks(
    dir: &DataDir,
    policy: &Policy,
    index_url: Option<&str>,
    live: Option<u64>,
    floor: Option<stream::Floor>,
    mut checks: Vec<Check>,
    mut log: LogVerification,
) -> ReplicaChecks {
    let cluster = vellum_audit::verify::cluster_from_origin(&policy.origin);
    if live.is_some() || policy.verifiers.len() > 1 {
        // A replica of a cluster may hold prepared ops its certificates do
        // not cover yet (uncommitted, or committed but the certificate not
        // received): the cluster comparison checks them against the others.
        relax_failures(
            &mut log.checks,
            FailureKind::Uncertified,
            "ops after the newest certificate are uncommitted here (prepared, or committed without the certificate yet); the replica comparison checks them",
        );
    }
    // A replica of a cluster keeps no index rows for ops its certificates
    // do not cover (rows wait for their certificate): its index and trail
    // are compared with the log up to its newest certificate. A live check
    // bounds them by the index's own progress instead (below).
    let certified_facts = (live.is_none() && policy.verifiers.len() > 1)
        .then(|| certified_prefix(&log.facts, floor))
        .flatten();
    let projected = certified_facts.as_ref().unwrap_or(&log.facts);
    checks.extend(log.checks.iter().cloned());
    // A whole walk of a stopped replica: a running one rewrites its tiles
    // meanwhile, and an incremental one did not read the leaves before.
    let tiles_audit = (live.is_none() && floor.is_none())
        .then(|| tiles::TileAudit::new(dir.tiles()))
        .flatten();
    if !log.complete && tiles_audit.is_some() {
        checks.push(Check::not_run(tiles::CHECK_NAME, tiles::NOT_READ));
    }
    if !log.complete {
        // The index and the trail are projections of the log: compared with
        // a part of it, every later row would fail as a knock-on.
        let why = "the log could not be read to its end (see records and hash chain), \
                   so the index cannot be compared with it";
        checks.push(Check::not_run("audit index", why));
        checks.push(Check::not_run("access trail", why));
        return (checks, log, TrailFindings::default());
    }
    if let Some(mut audit) = tiles_audit {
        for event in &log.facts.events {
            audit.leaf(event.leaf_hash);
        }
        checks.push(audit.finish());
    }
    let index_check = match (cluster, IndexTarget::parse(index_url, dir.root())) {
        (None, _) => Check::not_run("audit index", "the policy's origin names no vellum cluster"),
        (_, Err(e)) => {
            let mut check = Check::start("audit index");
            check.fail(FailureKind::Unreadable, "index url", e.to_string());
            check.finish()
        }
        (Some(cluster), Ok(target)) => {
            check_index_blocking(&target, cluster, projected, live, floor)
        }
    };
    checks.push(index_check);
    let mut findings = TrailFindings::default();
    if let (Some(cluster), Ok(target)) = (cluster, IndexTarget::parse(index_url, dir.root())) {
        let from = floor.map_or(0, |f| f.position);
        let (check, found) =
            check_trail_blocking(&target, cluster, projected, live.is_some(), from);
        checks.push(check);
        findings = found;
    }
    (checks, log, findings)
}

/// [`replica_checks`] of a stopped single replica in one pass over the log
/// and bounded memory: the index is compared while the log is read
/// (`stream::IndexSink`), with the same checks, failures and counts.
fn streaming_checks(
    dir: &DataDir,
    policy: &Policy,
    index_url: Option<&str>,
    cluster: Option<u128>,
    options: &vellum_audit::verify::StreamOptions,
    checks: Vec<Check>,
    progress: &mut dyn FnMut(u64),
) -> ReplicaChecks {
    let walked = walk_and_compare(dir, index_url, cluster, None, checks, &mut |sink| {
        Ok(vellum_audit::verify::verify_log_stream_with(
            &dir.segments(),
            policy,
            options,
            sink,
            progress,
        ))
    });
    walked.expect("a full walk always runs")
}

/// [`streaming_checks`] of only the part of the log after a kept
/// checkpoint (`--since`, see `vellum_audit::since`): the log walk starts
/// at the kept op, and the index and trail are compared from the kept
/// tree size on. `Err`: the kept op is not in the log as signed (the
/// caller then reads the whole log).
fn incremental_checks(
    dir: &DataDir,
    policy: &Policy,
    index_url: Option<&str>,
    start: &vellum_audit::since::SinceStart,
    options: &vellum_audit::verify::StreamOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplicaChecks, String> {
    let cluster = vellum_audit::verify::cluster_from_origin(&policy.origin);
    let checks = vec![check_meta(dir, cluster)];
    let floor = stream::Floor {
        position: start.size,
        op: start.head.op,
    };
    walk_and_compare(dir, index_url, cluster, Some(floor), checks, &mut |sink| {
        vellum_audit::verify::verify_log_since(
            &dir.segments(),
            policy,
            start,
            options,
            sink,
            progress,
        )
    })
}

/// [`incremental_checks`] of a replica of a cluster: the new part's
/// facts are kept (memory grows with the new part only) and compared up to
/// the replica's newest certificate, as [`replica_checks`] does for the
/// whole log.
fn incremental_replica_checks(
    dir: &DataDir,
    policy: &Policy,
    index_url: Option<&str>,
    start: &vellum_audit::since::SinceStart,
    options: &vellum_audit::verify::StreamOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplicaChecks, String> {
    let cluster = vellum_audit::verify::cluster_from_origin(&policy.origin);
    let checks = vec![check_meta(dir, cluster)];
    let mut facts = LogFacts::default();
    let mut log = vellum_audit::verify::verify_log_since(
        &dir.segments(),
        policy,
        start,
        options,
        &mut facts,
        progress,
    )?;
    // The walk counted every op (the kept ones too); the facts are of the new ones.
    log.facts = facts;
    let floor = stream::Floor {
        position: start.size,
        op: start.head.op,
    };
    Ok(collected_checks(
        dir,
        policy,
        index_url,
        None,
        Some(floor),
        checks,
        log,
    ))
}

/// The log check of `walk` with the audit index compared as the log is
/// read (from `floor` on), then the access trail.
fn walk_and_compare(
    dir: &DataDir,
    index_url: Option<&str>,
    cluster: Option<u128>,
    floor: Option<stream::Floor>,
    mut checks: Vec<Check>,
    walk: &mut dyn FnMut(&mut stream::IndexSink) -> Result<LogVerification, String>,
) -> Result<ReplicaChecks, String> {
    let target = IndexTarget::parse(index_url, dir.root());
    let (mut sink, open_failed) = match (cluster, &target) {
        (Some(cluster), Ok(target)) => match stream::IndexSink::open(target, cluster, floor) {
            Ok(sink) => (sink, None),
            Err(check) => (stream::IndexSink::idle(), Some(check)),
        },
        _ => (stream::IndexSink::idle(), None),
    };
    if floor.is_none() {
        sink.audit_tiles(dir.tiles());
    }
    let log = match walk(&mut sink) {
        Ok(log) => log,
        Err(e) => {
            sink.close();
            return Err(e);
        }
    };
    checks.extend(log.checks.iter().cloned());
    let tiles_check = sink.finish_tiles();
    if !log.complete {
        sink.close();
        if tiles_check.is_some() {
            checks.push(Check::not_run(tiles::CHECK_NAME, tiles::NOT_READ));
        }
        let why = "the log could not be read to its end (see records and hash chain), \
                   so the index cannot be compared with it";
        checks.push(Check::not_run("audit index", why));
        checks.push(Check::not_run("access trail", why));
        return Ok((checks, log, TrailFindings::default()));
    }
    checks.extend(tiles_check);
    let index_check = match (cluster, &target) {
        (None, _) => Check::not_run("audit index", "the policy's origin names no vellum cluster"),
        (_, Err(e)) => {
            let mut check = Check::start("audit index");
            check.fail(FailureKind::Unreadable, "index url", e.to_string());
            check.finish()
        }
        (Some(_), Ok(_)) => match (open_failed, sink.finish_index()) {
            (Some(check), _) => *check,
            (None, Some(check)) => check,
            (None, None) => unreachable!("an open sink finishes its check"),
        },
    };
    checks.push(index_check);
    let mut findings = TrailFindings::default();
    if let (Some(cluster), Ok(target)) = (cluster, &target) {
        let from = sink.first_position();
        let (check, found) = check_trail_blocking(target, cluster, sink.trail_facts(), false, from);
        checks.push(check);
        findings = found;
    }
    sink.close();
    Ok((checks, log, findings))
}

/// The facts of the log up to its newest certificate, when ops follow it
/// (`None` when the certificate covers the whole log).
fn certified_prefix(facts: &LogFacts, floor: Option<stream::Floor>) -> Option<LogFacts> {
    // An incremental walk's facts start after the kept op, which is certified.
    let base = floor.map_or((0, 0), |f| (f.op, f.position));
    let (op, events) = facts
        .commits
        .iter()
        .map(|c| (c.op, c.tree_size))
        .max()
        .unwrap_or(base)
        .max(base);
    (facts.ops + base.0 > op).then(|| trim_facts_after(facts, LiveBound { op, events }, base.0))
}

/// The access-trail check (P7), without keys: every trail event in the log
/// has exactly one access row, and every row's payload and salt open the
/// commitment of the leaf at its position (so a row can be neither invented,
/// edited nor dropped); the payload parses as a trail event.
fn check_trail_blocking(
    target: &IndexTarget,
    cluster: u128,
    facts: &LogFacts,
    live: bool,
    from_position: u64,
) -> (Check, TrailFindings) {
    let mut check = Check::start("access trail");
    let mut findings = TrailFindings {
        from_position,
        ..TrailFindings::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            check.fail(FailureKind::Unreadable, "runtime", e.to_string());
            return (check.finish(), findings);
        }
    };
    let rows = runtime.block_on(async {
        let index = Index::open_existing(target, cluster).await?;
        let bound = Some(live_bound(&index, facts).await?);
        let rows = index.access_projected().await;
        let unpositioned = index.access_unpositioned().await;
        index.close().await;
        Ok::<_, crate::index::IndexError>((rows?, unpositioned?, bound))
    });
    match rows {
        Ok((rows, unpositioned, bound)) => {
            // Incremental: rows of the trail before the part read are not compared.
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|r| r.position >= from_position)
                .collect();
            let trimmed;
            let (rows, facts) = match bound {
                Some(bound) if live => {
                    trimmed = trim_facts(facts, bound);
                    let rows: Vec<_> = rows
                        .into_iter()
                        .filter(|r| r.position < bound.events)
                        .collect();
                    check.note = Some(live_note(bound));
                    (rows, &trimmed)
                }
                // A stopped replica's index that ends before its log (see
                // `stopped_index_behind`): the trail events after its last
                // commit have no rows to open them yet; the rest is checked.
                Some(bound) if stopped_index_behind(facts, bound, &mut check) => {
                    trimmed = trim_facts(facts, bound);
                    (rows, &trimmed)
                }
                _ => (rows, facts),
            };
            if unpositioned > 0 {
                check.fail(FailureKind::TrailMismatch,
                    "index table access",
                    format!("{unpositioned} rows name no position: no access row may exist outside the trail"),
                );
            }
            let (uses, rotations) = compare_trail(&rows, facts, &mut check);
            findings.break_glass = uses;
            findings.rotations = rotations;
            findings.read = true;
        }
        Err(e) => check.fail(
            FailureKind::Unreadable,
            "index access",
            crate::log::error_chain(&e),
        ),
    }
    (check.finish(), findings)
}

/// The first column of an access row that its (committed) payload contradicts.
fn differing_column(
    event: &vellum_compliance::trail::AccessEvent,
    row: &crate::index::AccessRow,
) -> Option<&'static str> {
    let checks: [(&'static str, bool); 10] = [
        ("time_ns", event.time_ns == row.time_ns),
        ("principal", event.principal == row.principal),
        ("role", event.role == row.role),
        ("action", event.action.as_str() == row.action),
        ("stream", event.stream == row.stream),
        ("offset_from", event.from == row.offset_from),
        ("offset_to", event.to == row.offset_to),
        ("purpose", event.purpose == row.purpose),
        ("outcome", event.outcome == row.outcome),
        ("remote_addr", event.remote == row.remote_addr),
    ];
    checks.iter().find(|(_, same)| !same).map(|(name, _)| *name)
}

/// Compares the access rows with the trail in the log; returns the
/// break-glass uses and the signing-key rotations announced among the rows
/// that opened their leaf's commitment.
fn compare_trail(
    rows: &[crate::index::ProjectedAccess],
    facts: &LogFacts,
    check: &mut Check,
) -> (Vec<BreakGlassUse>, Vec<LoggedRotation>) {
    use vellum_compliance::trail::{ACCESS_TRAIL_STREAM, AccessEvent};
    let trail: std::collections::BTreeMap<u64, &vellum_audit::verify::EventFact> = facts
        .events
        .iter()
        .filter(|e| e.stream == ACCESS_TRAIL_STREAM)
        .map(|e| (e.position, e))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut decoded = std::collections::BTreeMap::new();
    for row in rows {
        let place = format!("index table access, position {}", row.position);
        let Some(fact) = trail.get(&row.position) else {
            check.fail(
                FailureKind::TrailMismatch,
                &place,
                "a row for a position that holds no access-trail event in the log",
            );
            continue;
        };
        seen.insert(row.position);
        let (Some(payload), Some(salt)) = (&row.payload, &row.salt) else {
            check.fail(
                FailureKind::TrailMismatch,
                &place,
                "the row lacks its payload or salt",
            );
            continue;
        };
        let Ok(salt) = <[u8; 32]>::try_from(salt.as_slice()) else {
            check.fail(
                FailureKind::TrailMismatch,
                &place,
                "the row's salt is not 32 bytes",
            );
            continue;
        };
        if vellum_audit::leaf::commitment(&salt, payload.as_bytes()) != fact.commitment {
            check.fail(
                FailureKind::TrailMismatch,
                &place,
                "the row's payload does not open the leaf's commitment: the row was edited",
            );
            continue;
        }
        match AccessEvent::from_payload(payload.as_bytes()) {
            Err(_) => check.fail(
                FailureKind::TrailMismatch,
                &place,
                "the committed payload is not an access-trail event",
            ),
            Ok(event) => {
                if let Some(column) = differing_column(&event, &row.columns) {
                    check.fail(FailureKind::TrailMismatch,
                        &place,
                        format!("column {column} differs from the committed trail event: the row was edited"),
                    );
                }
                decoded.insert(row.position, event);
            }
        }
    }
    check_groups_hold_their_trail(facts, &decoded, check);
    for position in trail.keys().filter(|p| !seen.contains(p)) {
        check.fail(
            FailureKind::TrailMismatch,
            format!("index table access, position {position}"),
            "the log holds an access-trail event with no row in the index",
        );
    }
    check.count("trail events", trail.len() as u64);
    check.count("rows", rows.len() as u64);
    let uses: Vec<BreakGlassUse> = decoded
        .iter()
        .filter_map(|(position, event)| break_glass_use(*position, event))
        .collect();
    check.count("break-glass uses", uses.len() as u64);
    let rotations: Vec<LoggedRotation> = decoded
        .iter()
        .filter(|(_, event)| {
            event.action == vellum_compliance::trail::AccessAction::SigningKeyRotated
        })
        .map(|(position, event)| LoggedRotation {
            position: *position,
            principal: event.principal.clone(),
            line: event.detail.clone().unwrap_or_default(),
        })
        .collect();
    if !rotations.is_empty() {
        check.count("signing-key rotations", rotations.len() as u64);
    }
    (uses, rotations)
}

/// The last op a walk read (ops are numbered from 1): the records
/// check's `ops` count. A certificate of any op from a rotation's `N` on
/// needs the rotated key, whether or not it verified here.
fn last_op(log: &LogVerification) -> Option<u64> {
    log.checks
        .iter()
        .find_map(|c| c.counts.get("ops").copied())
        .filter(|ops| *ops > 0)
}

/// The check *key history* (only when the policy pins a rotation or the
/// trail announces one): every rotation announced in the verified access
/// trails (`findings`, one per replica read) parses, is the replica's own
/// and verifies under its key in force and the new key
/// (`key_rotation_invalid`); every pinned rotation whose op the log
/// holds (`newest_op`: the last op read) is announced in the log
/// (`key_rotation_unlogged`). Also returns the report's `key_history`.
/// An incremental run did not read the trail before its kept checkpoint:
/// it cannot tell a pinned rotation announced there from one never
/// announced, so it names none as unlogged (its note says so).
fn key_history_check(
    policy: &Policy,
    findings: &[&TrailFindings],
    newest_op: Option<u64>,
) -> (Option<Check>, Vec<KeyHistoryKey>) {
    let mut logged: Vec<LoggedRotation> = findings
        .iter()
        .flat_map(|f| f.rotations.iter().cloned())
        .collect();
    if policy.rotations.is_empty() && logged.is_empty() {
        return (None, Vec::new());
    }
    const NAME: &str = "key history";
    if findings.is_empty() || findings.iter().any(|f| !f.read) {
        let why = "the access trail, where rotations are announced, was not compared with the log";
        return (Some(Check::not_run(NAME, why)), Vec::new());
    }
    // Every replica holds the same trail: by position, each once.
    logged.sort_by_key(|r| r.position);
    logged.dedup_by(|a, b| a.position == b.position && a.line == b.line);
    let partial = findings.iter().any(|f| f.from_position > 0);
    let (entries, problems) =
        vellum_audit::key_history::reconcile(policy, &logged, newest_op.filter(|_| !partial));
    let mut check = Check::start(NAME);
    if partial {
        check.note = Some(
            "incremental run: the trail before the kept checkpoint was not read, so a pinned rotation not found is not named"
                .to_string(),
        );
    }
    for problem in &problems {
        match problem {
            HistoryProblem::Invalid { position, why } => check.fail(
                FailureKind::KeyRotationInvalid,
                format!("access trail position {position}"),
                format!("the signing-key rotation announced here is refused: {why}"),
            ),
            HistoryProblem::Unlogged { rotation } => check.fail(
                FailureKind::KeyRotationUnlogged,
                format!("policy rotation of replica {} from op {}", rotation.replica, rotation.from_op),
                format!(
                    "pinned, and the log holds op {} or later (whose certificates need its key), but no announcement of it is in the log's access trail",
                    rotation.from_op
                ),
            ),
        }
    }
    check.count(
        "rotations announced",
        entries.iter().filter(|e| e.logged_at.is_some()).count() as u64,
    );
    check.count("rotations pinned", policy.rotations.len() as u64);
    check.count(
        "rotations announced, not pinned",
        entries.iter().filter(|e| !e.pinned).count() as u64,
    );
    let keys = entries
        .into_iter()
        .map(|e| KeyHistoryKey {
            replica: e.replica,
            from_op: e.from_op,
            name: e.key.name().to_string(),
            key_id: to_hex(&e.key.key_id()),
            pinned: e.pinned,
            logged_at: e.logged_at,
            line: e.line,
        })
        .collect();
    (Some(check.finish()), keys)
}

/// The report entry of a trail event made under (or opening) break-glass.
fn break_glass_use(
    position: u64,
    event: &vellum_compliance::trail::AccessEvent,
) -> Option<BreakGlassUse> {
    let grant = event.break_glass.as_ref()?;
    Some(BreakGlassUse {
        position,
        time_ns: event.time_ns,
        principal: event.principal.clone(),
        role: event.role.clone(),
        action: event.action.as_str().to_string(),
        stream: event.stream,
        outcome: event.outcome.clone(),
        reason: grant.reason.clone(),
        opened_ns: grant.opened_ns,
        expires_ns: grant.expires_ns,
    })
}

/// Atomic groups (docs/format.md): every append inside a group of more
/// than one op has its access-trail record in the trail op that closes
/// the group, naming its stream and offsets. So an append whose op
/// committed always has its trail record, committed with it. `decoded`:
/// the trail events, by position, whose rows opened their commitments.
fn check_groups_hold_their_trail(
    facts: &LogFacts,
    decoded: &std::collections::BTreeMap<u64, vellum_compliance::trail::AccessEvent>,
    check: &mut Check,
) {
    use vellum_compliance::trail::{ACCESS_TRAIL_STREAM, AccessAction};
    let mut trail_positions: std::collections::BTreeMap<u64, Vec<u64>> =
        std::collections::BTreeMap::new();
    for event in facts
        .events
        .iter()
        .filter(|e| e.stream == ACCESS_TRAIL_STREAM)
    {
        trail_positions
            .entry(event.op)
            .or_default()
            .push(event.position);
    }
    let mut group: Vec<&vellum_audit::verify::OpFact> = Vec::new();
    let mut appends = 0u64;
    for fact in &facts.op_headers {
        group.push(fact);
        if fact.group_continues {
            continue;
        }
        let closing = fact.op;
        let records: Vec<&vellum_compliance::trail::AccessEvent> = trail_positions
            .get(&closing)
            .map(|positions| positions.iter().filter_map(|p| decoded.get(p)).collect())
            .unwrap_or_default();
        for member in group
            .iter()
            .filter(|m| m.op != closing && m.stream != ACCESS_TRAIL_STREAM)
        {
            let to = member.stream_offset + u64::from(member.event_count);
            let recorded = records.iter().any(|e| {
                e.action == AccessAction::Append
                    && e.stream == Some(member.stream)
                    && e.from == Some(member.stream_offset)
                    && e.to == Some(to)
            });
            if recorded {
                appends += 1;
            } else {
                check.fail(
                    FailureKind::TrailMismatch,
                    format!("op {}", member.op),
                    format!(
                        "the append to stream {} offsets {}..{to} has no access-trail record in its atomic group (closed by op {closing})",
                        member.stream, member.stream_offset
                    ),
                );
            }
        }
        group.clear();
    }
    check.count("appends recorded in their own group", appends);
}

/// The cluster a `--cluster` run verifies: the configs found and the check
/// of how they were found and whether they fit the policy.
#[derive(Debug)]
pub struct ClusterSetup {
    /// What `--cluster` named.
    pub path: PathBuf,
    /// The configs that loaded, in replica order.
    pub configs: Vec<ClusterConfig>,
    /// The "cluster configuration" check.
    pub check: Check,
}

impl ClusterSetup {
    /// Every loaded replica's data directory, in replica order.
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.configs.iter().map(|c| c.data_dir.clone()).collect()
    }
}

/// Finds and loads a cluster's configs: `path` is a directory holding
/// `r<N>.json` files (as `vellum dev` writes them) or one config file, whose
/// siblings `r<N>.json` give the other replicas. Each must load, name the
/// policy's cluster, and pin only keys the policy pins.
pub fn load_cluster(path: &Path, policy: &Policy) -> ClusterSetup {
    let mut check = Check::start("cluster configuration");
    let mut configs: Vec<ClusterConfig> = Vec::new();
    for file in config_files(path, &mut check) {
        match ClusterConfig::load(&file) {
            Ok(config) if configs.iter().any(|c| c.replica == config.replica) => check.fail(
                FailureKind::ConfigMismatch,
                file.display().to_string(),
                format!("a second config of replica {}", config.replica),
            ),
            Ok(config) => {
                check_config(&file, &config, policy, &mut check);
                configs.push(config);
            }
            Err(e) => check.fail(
                FailureKind::Unreadable,
                file.display().to_string(),
                e.to_string(),
            ),
        }
    }
    configs.sort_by_key(|c| c.replica);
    check.count("configs", configs.len() as u64);
    if let Some(first) = configs.first() {
        for i in 0..first.replica_count() {
            if !configs.iter().any(|c| c.replica == i) {
                check.fail(
                    FailureKind::Unreadable,
                    path.display().to_string(),
                    format!("no config of replica {i} (r{i}.json) was found"),
                );
            }
        }
    }
    ClusterSetup {
        path: path.to_path_buf(),
        configs,
        check: check.finish(),
    }
}

/// The config files `path` names (see [`load_cluster`]).
fn config_files(path: &Path, check: &mut Check) -> Vec<PathBuf> {
    let (dir, given) = if path.is_dir() {
        (path.to_path_buf(), None)
    } else {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        (parent.unwrap_or(Path::new(".")).to_path_buf(), Some(path))
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            check.fail(
                FailureKind::Unreadable,
                dir.display().to_string(),
                format!("cannot read: {e}"),
            );
            return given.map(Path::to_path_buf).into_iter().collect();
        }
    };
    let mut numbered: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter_map(|p| replica_number(&p).map(|n| (n, p)))
        .collect();
    numbered.sort();
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    if let Some(given) = given
        && !files.iter().any(|f| f.file_name() == given.file_name())
    {
        files.insert(0, given.to_path_buf());
    }
    if files.is_empty() {
        check.fail(
            FailureKind::Unreadable,
            dir.display().to_string(),
            "no cluster config (r<N>.json) in this directory",
        );
    }
    if files.len() > CLUSTER_CONFIGS_MAX {
        check.fail(
            FailureKind::ConfigMismatch,
            dir.display().to_string(),
            format!("{} configs, more than {CLUSTER_CONFIGS_MAX}", files.len()),
        );
        files.truncate(CLUSTER_CONFIGS_MAX);
    }
    files
}

/// N of a file named `r<N>.json`.
fn replica_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_prefix('r')?.strip_suffix(".json")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A config must name the policy's cluster and pin no key the policy lacks.
fn check_config(file: &Path, config: &ClusterConfig, policy: &Policy, check: &mut Check) {
    let at = file.display().to_string();
    let origin = origin_for_cluster(config.cluster);
    if origin != policy.origin {
        check.fail(
            FailureKind::ConfigMismatch,
            &at,
            format!(
                "names cluster {:032x} but the policy's origin is {}",
                config.cluster, policy.origin
            ),
        );
    }
    for (i, replica) in config.replicas.iter().enumerate() {
        let pinned = policy
            .verifiers
            .iter()
            .any(|v| v.public_key() == replica.verifier.public_key());
        if !pinned {
            check.fail(
                FailureKind::ConfigMismatch,
                &at,
                format!(
                    "replicas[{i}].verifier {} is not pinned by the policy",
                    replica.verifier.to_vkey()
                ),
            );
        }
    }
}

/// Verifies every replica of a cluster on its own, then against each other.
///
/// With `since` an earlier JSON report (its checkpoint and
/// `reached_frontier`) and not `live`, each replica reads only the part of
/// its log after the kept checkpoint, as `--data-dir --since` does for a
/// replica of a cluster ([`incremental_replica_checks`]); a replica where
/// that cannot start (the kept op is not in its log as signed) is read
/// whole, and the `--since` check's note names it.
pub fn verify_cluster(
    setup: ClusterSetup,
    policy: &Policy,
    since: Option<&KeptCheckpoint>,
    live: Option<u64>,
    progress: &mut dyn FnMut(u64),
) -> Report {
    let started = SystemTime::now();
    // The logs' certificate records carry no cosignatures: the replicas are
    // checked against the replica quorum, and the witness quorum against
    // the cosignatures they kept, read before the logs so that a live run
    // never finds a kept checkpoint beyond the log it read.
    let log_policy = policy.replicas_only();
    let kept_found = match policy.cosigners.is_empty() {
        true => Vec::new(),
        false => {
            let dirs: Vec<&Path> = setup.configs.iter().map(|c| c.data_dir.as_path()).collect();
            load_kept(&dirs, policy)
        }
    };
    let mut checks = vec![setup.check];
    let mut logs: Vec<(String, LogVerification)> = Vec::new();
    let mut break_glass = Vec::new();
    let mut trails: Vec<TrailFindings> = Vec::new();
    let start = cluster_since_start(since, policy, live);
    let mut read_whole = Vec::new();
    for config in &setup.configs {
        let name = format!("replica {}", config.replica);
        let index_url = config.index_url.as_deref();
        let incremental = start.as_ref().ok().map(|start| {
            let options = vellum_audit::verify::StreamOptions {
                since_size: Some(start.size),
                ops_window: vellum_audit::verify::OPS_WINDOW_MAX,
            };
            let dir = DataDir::new(&config.data_dir);
            incremental_replica_checks(&dir, &log_policy, index_url, start, &options, progress)
        });
        let (replica, log, found) = match incremental {
            Some(Ok(walked)) => walked,
            other => {
                if let Some(Err(why)) = other {
                    read_whole.push(format!("{name}: {why}"));
                }
                replica_checks(
                    &config.data_dir,
                    &log_policy,
                    index_url,
                    live,
                    WalkMode::Collect,
                    progress,
                )
            }
        };
        // Every replica holds the same trail: the union by position lists
        // each use once (`with_break_glass` drops repeats).
        break_glass.extend(found.break_glass.iter().cloned());
        trails.push(found);
        checks.extend(replica.into_iter().map(|mut check| {
            check.name = format!("{name}: {}", check.name);
            check
        }));
        logs.push((name, log));
    }
    let views: Vec<ReplicaLog<'_>> = logs
        .iter()
        .map(|(name, log)| ReplicaLog { name, log })
        .collect();
    let replica_count = setup.configs.first().map_or(0, |c| c.replicas.len());
    if !views.is_empty() {
        checks.extend(compare_replicas(&views, &log_policy, replica_count));
    }
    let newest = logs
        .iter()
        .map(|(_, log)| log)
        .max_by_key(|log| log.reached.as_ref().map(|r| r.tree_size));
    if !policy.cosigners.is_empty() {
        let place = format!("{} cosignatures", setup.path.display());
        checks.push(match newest {
            Some(log) => check_kept_cosignatures(&kept_found, &place, policy, log),
            None => {
                let mut check = Check::start("witness cosignatures");
                check.fail(
                    FailureKind::Unreadable,
                    &place,
                    "no replica could be read to check the kept cosignatures against",
                );
                check.finish()
            }
        });
    }
    let kept = since.and_then(|kept| {
        let (mut check, kept) = since_in_cluster(kept, &log_policy, newest);
        let how = cluster_since_note(&start, &read_whole);
        check.note = match (check.note.take(), how) {
            (Some(own), Some(how)) => Some(format!("{own}; {how}")),
            (own, how) => own.or(how),
        };
        checks.push(check);
        kept
    });
    let scope = format!(
        "cluster {} ({} replicas)",
        setup.path.display(),
        setup.configs.len()
    );
    let newest_op = logs.iter().filter_map(|(_, log)| last_op(log)).max();
    let trail_refs: Vec<&TrailFindings> = trails.iter().collect();
    let (key_check, key_history) = key_history_check(policy, &trail_refs, newest_op);
    checks.extend(key_check);
    let reached = newest.and_then(|log| log.reached.clone());
    let mut report = Report::new(scope, PolicySummary::from_policy(policy), checks, reached);
    // The next `--since` of this report starts every replica from here.
    report.reached_frontier = newest.and_then(|log| {
        let reached = log.reached.as_ref()?;
        let frontier = log.tree.frontier_at(reached.tree_size)?;
        Some(frontier.nodes().iter().map(|node| to_hex(node)).collect())
    });
    report.since = kept;
    report
        .with_break_glass(break_glass)
        .with_key_history(key_history)
        .with_times(started, SystemTime::now())
}

/// Where an incremental `--cluster --since` run starts every replica:
/// the kept checkpoint and its frontier, checked against the replica keys
/// (a kept checkpoint carries no cosignatures). `Err`: why every replica
/// is read whole (no `since`, `--live`, or a kept checkpoint that cannot
/// start a walk).
fn cluster_since_start(
    since: Option<&KeptCheckpoint>,
    policy: &Policy,
    live: Option<u64>,
) -> Result<vellum_audit::since::SinceStart, String> {
    let kept = since.ok_or_else(|| "no kept checkpoint".to_string())?;
    if live.is_some() {
        return Err("--live".into());
    }
    // The witness check needs each log's root at the cosigned size, which
    // only the whole tree gives (as for `--data-dir`).
    if !policy.cosigners.is_empty() {
        return Err("a witness policy reads the whole log".into());
    }
    vellum_audit::since::SinceStart::new(
        &kept.text,
        kept.frontier.as_deref(),
        &policy.replicas_only(),
    )
    .map_err(|e| format!("the kept checkpoint: {e}"))
}

/// The `--since` check's note on what a cluster run read: the incremental
/// note when every replica started at the kept checkpoint, else which
/// replicas (or all) were read whole and why.
fn cluster_since_note(
    start: &Result<vellum_audit::since::SinceStart, String>,
    read_whole: &[String],
) -> Option<String> {
    match start {
        Err(why) => Some(format!(
            "not incremental: {why}; every replica's whole log was read"
        )),
        Ok(_) if read_whole.is_empty() => Some(vellum_audit::since::INCREMENTAL_NOTE.to_string()),
        Ok(_) => Some(format!(
            "{}; read whole, not incremental: {}",
            vellum_audit::since::INCREMENTAL_NOTE,
            read_whole.join("; ")
        )),
    }
}

/// The kept checkpoint against the replica that got furthest (the others
/// were compared with it already).
fn since_in_cluster(
    kept: &KeptCheckpoint,
    policy: &Policy,
    newest: Option<&LogVerification>,
) -> (Check, Option<vellum_audit::report::Reached>) {
    match newest {
        Some(log) => check_since(&kept.text, &kept.source, policy, log),
        None => {
            let mut check = Check::start(vellum_audit::verify::SINCE_CHECK);
            check.fail(
                FailureKind::HistoryRewritten,
                &kept.source,
                "no replica could be read to check the kept checkpoint against",
            );
            (check.finish(), None)
        }
    }
}

/// `vellum.json` must parse and name the policy's cluster. It is not
/// signed, so this is what keeps a change to it from going unnoticed; an
/// auditor's copy without it is noted, not failed.
fn check_meta(dir: &DataDir, cluster: Option<u128>) -> Check {
    let mut check = Check::start("data directory");
    let path = dir.meta();
    if !path.exists() {
        check.note = Some(format!("{} is absent (an auditor's copy?)", path.display()));
        return check.finish();
    }
    match crate::datadir::NodeMeta::load(dir) {
        Err(e) => check.fail(
            FailureKind::Unreadable,
            path.display().to_string(),
            e.to_string(),
        ),
        Ok(meta) => {
            let ours = meta.cluster_id().ok();
            if ours.is_none() || ours != cluster {
                check.fail(
                    FailureKind::ConfigMismatch,
                    path.display().to_string(),
                    format!(
                        "names cluster {} but the policy's origin names {}",
                        meta.cluster,
                        cluster.map_or("none".into(), |c| format!("{c:032x}"))
                    ),
                );
            }
            check.count("files", 1);
        }
    }
    check.finish()
}

fn check_index_blocking(
    target: &IndexTarget,
    cluster: u128,
    facts: &LogFacts,
    live: Option<u64>,
    floor: Option<stream::Floor>,
) -> Check {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let mut check = Check::start("audit index");
            check.fail(FailureKind::Unreadable, "runtime", e.to_string());
            return check.finish();
        }
    };
    runtime.block_on(check_index(target, cluster, facts, live, floor))
}

/// Compares every index row with the log: missing, extra and altered rows
/// are failures naming the table and key. `live` (the most commits the
/// index may lag by): compare up to the newest commit both hold, and fail
/// when the index lags the log's newest certificate by more than that.
/// `floor`: an incremental walk's facts start there; rows before it are
/// not compared.
async fn check_index(
    target: &IndexTarget,
    cluster: u128,
    facts: &LogFacts,
    live: Option<u64>,
    floor: Option<stream::Floor>,
) -> Check {
    let mut check = Check::start("audit index");
    let index = match Index::open_existing(target, cluster).await {
        Ok(index) => index,
        Err(e) => {
            check.fail(
                FailureKind::Unreadable,
                "index",
                crate::log::error_chain(&e),
            );
            return check.finish();
        }
    };
    let newest = match live_bound(&index, facts).await {
        Ok(bound) => bound,
        Err(e) => {
            check.fail(
                FailureKind::Unreadable,
                "index commits",
                crate::log::error_chain(&e),
            );
            return check.finish();
        }
    };
    let bound = match live {
        None => None,
        Some(lag_max) => {
            check_lag(facts, newest, lag_max, &mut check);
            Some(newest)
        }
    };
    // A stopped replica's index may end before its log (killed before the
    // indexer caught up; it catches up at the next open): one failure that
    // says so, and the rows it holds compared with the log up to its last
    // commit, instead of a "missing" failure per row of the lag (which
    // reads as rows deleted). Rows past its last commit are still extra.
    let behind = live.is_none() && stopped_index_behind(facts, newest, &mut check);
    let trimmed;
    let facts = match (bound, behind) {
        (Some(bound), _) => {
            trimmed = trim_facts(facts, bound);
            check.note = Some(live_note(bound));
            &trimmed
        }
        (None, true) => {
            trimmed = trim_facts(facts, newest);
            &trimmed
        }
        (None, false) => facts,
    };
    let from = floor.map_or(0, |f| f.position);
    let below = bound.map(|b| b.events);
    if let Err(e) = compare_events(&index, facts, &mut check, below, from).await {
        check.fail(
            FailureKind::Unreadable,
            "index events",
            crate::log::error_chain(&e),
        );
    }
    let commits: Vec<CommitKey> = facts.commits.iter().map(CommitKey::of).collect();
    let after_op = floor.map_or(0, |f| f.op);
    let through_op = bound.map(|b| b.op);
    if let Err(e) = compare_commits(&index, &commits, &mut check, through_op, after_op).await {
        check.fail(
            FailureKind::Unreadable,
            "index commits",
            crate::log::error_chain(&e),
        );
    }
    let keys: std::collections::BTreeMap<u64, u64> = facts.keys.iter().copied().collect();
    let relaxed = bound.is_some() || floor.is_some();
    if let Err(e) = compare_keys(&index, &keys, &mut check, relaxed).await {
        check.fail(
            FailureKind::Unreadable,
            "index keys",
            crate::log::error_chain(&e),
        );
    }
    index.close().await;
    check.finish()
}

async fn compare_events(
    index: &Index,
    facts: &LogFacts,
    check: &mut Check,
    below: Option<u64>,
    from_position: u64,
) -> Result<(), crate::index::IndexError> {
    let mut expected = facts.events.iter().peekable();
    let mut from = from_position;
    loop {
        let rows = index.events_after(from, INDEX_PAGE_ROWS_MAX).await?;
        let Some(last) = rows.last() else { break };
        from = last.position + 1;
        for row in rows.iter().filter(|r| below.is_none_or(|b| r.position < b)) {
            check.count("event rows", 1);
            while let Some(fact) = expected.next_if(|f| f.position < row.position) {
                missing_event(fact, check);
            }
            match expected.next_if(|f| f.position == row.position) {
                None => extra_event(row, check),
                Some(fact) => compare_event(fact, row, check),
            }
        }
    }
    for fact in expected {
        missing_event(fact, check);
    }
    Ok(())
}

/// An event of the log without its index row.
fn missing_event(fact: &EventFact, check: &mut Check) {
    check.fail(
        FailureKind::IndexMismatch,
        format!("index row events.position={}", fact.position),
        "missing: the log has this event",
    );
}

/// An index row at a position where the log has no event.
fn extra_event(row: &crate::index::EventRow, check: &mut Check) {
    check.fail(
        FailureKind::IndexMismatch,
        format!("index row events.position={}", row.position),
        "extra: the log has no event at this position",
    );
}

/// An event and its index row (same position) must say the same.
fn compare_event(fact: &EventFact, row: &crate::index::EventRow, check: &mut Check) {
    let same = fact.stream == row.stream
        && fact.stream_offset == row.stream_offset
        && fact.op == row.op
        && fact.leaf_hash == row.leaf_hash
        && fact.segment == row.segment
        && fact.file_offset == row.file_offset;
    if !same {
        check.fail(FailureKind::IndexMismatch, format!("index row events.position={}", row.position), format!(
            "differs from the log (log: stream {} offset {} op {} leaf {}; row: stream {} offset {} op {} leaf {})",
            fact.stream, fact.stream_offset, fact.op, to_hex(&fact.leaf_hash),
            row.stream, row.stream_offset, row.op, to_hex(&row.leaf_hash)
        ));
    }
}

/// What the index comparison needs of a certificate record: its text only
/// as a hash, so a streaming run keeps 88 bytes per certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CommitKey {
    pub(super) op: u64,
    view: u64,
    pub(super) tree_size: u64,
    root: vellum_audit::hash::Hash,
    certificate_sha256: vellum_audit::hash::Hash,
}

impl CommitKey {
    fn of(fact: &CommitFact) -> CommitKey {
        CommitKey {
            op: fact.op,
            view: fact.view,
            tree_size: fact.tree_size,
            root: fact.root,
            certificate_sha256: vellum_audit::hash::sha256(&[fact.certificate.as_bytes()]),
        }
    }
}

/// Compares the commits table with the log's certificates of ops after
/// `after_op` (0: all) and up to `through_op` (`None`: all).
async fn compare_commits(
    index: &Index,
    commits: &[CommitKey],
    check: &mut Check,
    through_op: Option<u64>,
    after_op: u64,
) -> Result<(), crate::index::IndexError> {
    let mut rows = Vec::new();
    let mut from = after_op.saturating_add(1);
    loop {
        let page = index.commits_after(from, INDEX_PAGE_ROWS_MAX).await?;
        let Some(last) = page.last() else { break };
        from = last.op + 1;
        rows.extend(
            page.into_iter()
                .filter(|r| through_op.is_none_or(|t| r.op <= t)),
        );
    }
    check.count("commit rows", rows.len() as u64);
    let by_op: std::collections::BTreeMap<u64, &CommitKey> =
        commits.iter().map(|c| (c.op, c)).collect();
    for row in &rows {
        let at = format!("index row commits.op={}", row.op);
        match by_op.get(&row.op) {
            None => check.fail(
                FailureKind::IndexMismatch,
                at,
                "extra: the log holds no certificate for this commit",
            ),
            Some(fact)
                if fact.tree_size != row.tree_size
                    || fact.view != row.view
                    || fact.root != row.root
                    || fact.certificate_sha256
                        != vellum_audit::hash::sha256(&[row.certificate.as_bytes()]) =>
            {
                check.fail(
                    FailureKind::IndexMismatch,
                    at,
                    "differs from the certificate in the log",
                )
            }
            Some(_) => {}
        }
    }
    let in_index: std::collections::BTreeSet<u64> = rows.iter().map(|r| r.op).collect();
    for fact in commits.iter().filter(|c| c.op > after_op) {
        if !in_index.contains(&fact.op) {
            check.fail(
                FailureKind::IndexMismatch,
                format!("index row commits.op={}", fact.op),
                "missing: the log holds this certificate",
            );
        }
    }
    Ok(())
}

async fn compare_keys(
    index: &Index,
    expected: &std::collections::BTreeMap<u64, u64>,
    check: &mut Check,
    live: bool,
) -> Result<(), crate::index::IndexError> {
    let rows = index.keys().await?;
    check.count("key rows", rows.len() as u64);
    for row in &rows {
        match expected.get(&row.key_id) {
            Some(&stream) if stream == row.stream => {}
            Some(&stream) => check.fail(
                FailureKind::IndexMismatch,
                format!("index row keys.key_id={}", row.key_id),
                format!(
                    "names stream {} but the log uses it for stream {stream}",
                    row.stream
                ),
            ),
            // Live: a key first used after the bound is not in the facts yet.
            None if live => {}
            None => check.fail(
                FailureKind::IndexMismatch,
                format!("index row keys.key_id={}", row.key_id),
                "extra: no op in the log uses this key",
            ),
        }
    }
    let in_index: std::collections::BTreeSet<u64> = rows.iter().map(|r| r.key_id).collect();
    for key_id in expected.keys() {
        if !in_index.contains(key_id) {
            check.fail(
                FailureKind::IndexMismatch,
                format!("index row keys.key_id={key_id}"),
                "missing: ops in the log use this key",
            );
        }
    }
    Ok(())
}

/// Fails when the index's newest commit lags the log's newest certificate
/// by more than `lag_max` commits: a frozen index must not pass as "live".
fn check_lag(facts: &LogFacts, bound: LiveBound, lag_max: u64, check: &mut Check) {
    let log_last = facts.commits.iter().map(|c| c.op).max().unwrap_or(0);
    let lag = log_last.saturating_sub(bound.op);
    if lag > lag_max {
        check.fail(FailureKind::IndexLag,
            "index commits",
            format!(
                "the index lags the log by {lag} commits (index at commit {}, log certified through commit {log_last}); at most {lag_max} allowed (--index-lag-max)",
                bound.op
            ),
        );
    }
}

/// Without `--live`: fails `index_lag` when the index's newest commit
/// (`newest`, from [`live_bound`]) is below the log's newest certificate,
/// naming both and the remedy. Returns whether it is behind.
fn stopped_index_behind(facts: &LogFacts, newest: LiveBound, check: &mut Check) -> bool {
    let Some(log_last) = facts.commits.iter().max_by_key(|c| c.op) else {
        return false;
    };
    if newest.op >= log_last.op {
        return false;
    }
    index_behind(newest, (log_last.op, log_last.tree_size), check);
    true
}

/// The one `index_lag` failure of a stopped replica's index that ends at
/// `index` (its newest commit) before the log's newest certificate `log`
/// (op, tree size).
pub(super) fn index_behind(index: LiveBound, log: (u64, u64), check: &mut Check) {
    check.fail(
        FailureKind::IndexLag,
        "index commits",
        format!(
            "the index ends at commit {} ({} events) but the log is certified through commit {} ({} events): the replica stopped before its index caught up, which it does when the replica next opens (or rebuild it: vellum index rebuild); the rows after commit {} cannot be checked until then, the rows before it were",
            index.op, index.events, log.0, log.1, index.op
        ),
    );
}

/// How far a live run compares the index with the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LiveBound {
    /// The newest commit both the log and the index hold.
    pub(super) op: u64,
    /// Events up to that commit (positions below this).
    pub(super) events: u64,
}

/// The newest commit that both the log (as read) and the index hold: each
/// index commit is written in one transaction with its events, so the index
/// is complete up to its last commit row.
async fn live_bound(
    index: &Index,
    facts: &LogFacts,
) -> Result<LiveBound, crate::index::IndexError> {
    let log_last = facts.commits.iter().max_by_key(|c| c.op);
    let index_last = index.last_commit().await?;
    let bound = match (log_last, index_last) {
        (Some(log), Some(index)) if index.op < log.op => LiveBound {
            op: index.op,
            events: index.tree_size,
        },
        (Some(log), Some(_)) => LiveBound {
            op: log.op,
            events: log.tree_size,
        },
        _ => LiveBound { op: 0, events: 0 },
    };
    Ok(bound)
}

fn live_note(bound: LiveBound) -> String {
    format!(
        "live: compared up to commit {} ({} events); newer rows are left for the next run",
        bound.op, bound.events
    )
}

/// The facts of the log up to `bound`.
fn trim_facts(facts: &LogFacts, bound: LiveBound) -> LogFacts {
    trim_facts_after(facts, bound, 0)
}

/// [`trim_facts`] of facts whose first op is `floor_op + 1` (an
/// incremental walk's).
fn trim_facts_after(facts: &LogFacts, bound: LiveBound, floor_op: u64) -> LogFacts {
    let ops = usize::try_from(bound.op.saturating_sub(floor_op)).unwrap_or(usize::MAX);
    LogFacts {
        events: facts
            .events
            .iter()
            .filter(|e| e.position < bound.events)
            .cloned()
            .collect(),
        commits: facts
            .commits
            .iter()
            .filter(|c| c.op <= bound.op)
            .cloned()
            .collect(),
        keys: facts.keys.iter().take(ops).copied().collect(),
        ops: facts.ops.min(bound.op.saturating_sub(floor_op)),
        // By op number: the streamed walk keeps only the ops of atomic
        // groups here, so the list need not hold one header per op.
        op_headers: facts
            .op_headers
            .iter()
            .filter(|h| h.op <= bound.op)
            .cloned()
            .collect(),
    }
}

/// Drops the failures of `kind` from every check, leaving `note` on each
/// check that had one.
fn relax_failures(checks: &mut [Check], kind: FailureKind, note: &str) {
    for check in checks.iter_mut() {
        if check.drop_failures(|f| f.kind == kind) > 0 {
            check.note = Some(note.to_string());
        }
    }
}

/// A live log's last segment may end in a record being written: that is
/// not damage. Drops exactly that failure (a [`FailureKind::Torn`] tail in
/// the newest segment file that has one) from the record check; true when
/// it dropped one.
fn relax_live_tail(checks: &mut [Check]) -> bool {
    let mut relaxed = false;
    for check in checks.iter_mut() {
        let last_torn = check
            .failures
            .iter()
            .filter(|f| f.kind == FailureKind::Torn)
            .map(|f| failure_source(&f.location))
            .max();
        let Some(file) = last_torn else { continue };
        let dropped = check
            .drop_failures(|f| f.kind == FailureKind::Torn && failure_source(&f.location) == file);
        if dropped > 0 {
            relaxed = true;
            check.note =
                Some("live: the record being written at the tail was not read".to_string());
        }
    }
    relaxed
}

#[cfg(test)]
mod tests {
    use super::*;
    use vellum_audit::report::Outcome;

    /// Goal: `--live` accepts exactly the torn tail of the newest segment,
    /// decided by kind: a damaged record that says the same words, or a
    /// torn tail of an older segment, still fails.
    #[test]
    fn live_tail_is_relaxed_by_kind_not_by_text() {
        let same_words = "12 bytes that are not a complete record (torn write or damage)";
        let mut records = Check::start("records and hash chain");
        records.fail(FailureKind::Damaged, "s/0.vseg at byte 64", same_words);
        records.fail(FailureKind::Torn, "s/1.vseg at byte 900", same_words);
        let mut checks = vec![records];
        assert!(relax_live_tail(&mut checks));
        let left: Vec<FailureKind> = checks[0].failures.iter().map(|f| f.kind).collect();
        assert_eq!(left, vec![FailureKind::Damaged]);
        assert_eq!(checks[0].outcome, Outcome::Fail);

        let mut only_torn = Check::start("records and hash chain");
        only_torn.fail(FailureKind::Torn, "s/1.vseg at byte 900", "anything at all");
        let mut checks = vec![only_torn];
        assert!(relax_live_tail(&mut checks));
        assert_eq!(checks[0].outcome, Outcome::Pass);
        assert!(checks[0].note.is_some());
    }

    /// Goal: uncovered ops are relaxed by kind; a log with no certificate
    /// at all, or a bad certificate, is not.
    #[test]
    fn uncertified_ops_are_relaxed_by_kind() {
        let mut certificates = Check::start("certificate signatures");
        certificates.fail(FailureKind::Uncertified, "s at byte 1", "ops 4 to 5");
        certificates.fail(
            FailureKind::CertificateInvalid,
            "s at byte 2",
            "not covered by any valid certificate",
        );
        let mut none = Check::start("certificate signatures");
        none.fail(
            FailureKind::NoCertificate,
            "s at byte 1",
            "no valid certificate covers any of them",
        );
        let mut checks = vec![certificates, none];
        relax_failures(&mut checks, FailureKind::Uncertified, "note");
        assert_eq!(checks[0].failures.len(), 1);
        assert_eq!(checks[0].failures[0].kind, FailureKind::CertificateInvalid);
        assert_eq!(checks[1].outcome, Outcome::Fail);
    }
}
