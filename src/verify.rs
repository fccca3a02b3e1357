//! `vellum verify` for one data directory: the offline log checks of
//! `vellum-audit`, plus the audit index checked row by row against the log.

use std::path::Path;

use vellum_audit::hash::to_hex;
use vellum_audit::policy::Policy;
use vellum_audit::report::{Check, PolicySummary, Report};
use vellum_audit::verify::{LogFacts, verify_log_dir};

use crate::datadir::DataDir;
use crate::index::{Index, IndexTarget};

/// Index rows read per query while checking, at most.
pub const INDEX_PAGE_ROWS_MAX: u32 = 10_000;

/// Verifies a data directory's log against `policy` and its index against the log.
pub fn verify_data_dir(
    data_dir: &Path,
    policy: &Policy,
    index_url: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Report {
    let dir = DataDir::new(data_dir);
    let cluster = vellum_audit::verify::cluster_from_origin(&policy.origin);
    let mut checks = vec![check_meta(&dir, cluster)];
    let log = verify_log_dir(&dir.segments(), policy, progress);
    checks.extend(log.checks);
    let index_check = match (cluster, IndexTarget::parse(index_url, dir.root())) {
        (None, _) => Check::skipped("audit index", "the policy's origin names no vellum cluster"),
        (_, Err(e)) => {
            let mut check = Check::start("audit index");
            check.fail("index url", e.to_string());
            check.finish()
        }
        (Some(cluster), Ok(target)) => check_index_blocking(&target, cluster, &log.facts),
    };
    checks.push(index_check);
    let summary = PolicySummary {
        origin: policy.origin.clone(),
        quorum: policy.quorum,
        vkeys: policy.verifiers.iter().map(|v| v.to_vkey()).collect(),
    };
    Report::new(
        format!("data-dir {}", data_dir.display()),
        summary,
        checks,
        log.reached,
    )
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
        Err(e) => check.fail(path.display().to_string(), e.to_string()),
        Ok(meta) => {
            let ours = meta.cluster_id().ok();
            if ours.is_none() || ours != cluster {
                check.fail(
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

fn check_index_blocking(target: &IndexTarget, cluster: u128, facts: &LogFacts) -> Check {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let mut check = Check::start("audit index");
            check.fail("runtime", e.to_string());
            return check.finish();
        }
    };
    runtime.block_on(check_index(target, cluster, facts))
}

/// Compares every index row with the log: missing, extra and altered rows
/// are failures naming the table and key.
pub async fn check_index(target: &IndexTarget, cluster: u128, facts: &LogFacts) -> Check {
    let mut check = Check::start("audit index");
    let index = match Index::open_existing(target, cluster).await {
        Ok(index) => index,
        Err(e) => {
            check.fail("index", crate::log::error_chain(&e));
            return check.finish();
        }
    };
    if let Err(e) = compare_events(&index, facts, &mut check).await {
        check.fail("index events", crate::log::error_chain(&e));
    }
    if let Err(e) = compare_commits(&index, facts, &mut check).await {
        check.fail("index commits", crate::log::error_chain(&e));
    }
    if let Err(e) = compare_keys(&index, facts, &mut check).await {
        check.fail("index keys", crate::log::error_chain(&e));
    }
    index.close().await;
    check.finish()
}

async fn compare_events(
    index: &Index,
    facts: &LogFacts,
    check: &mut Check,
) -> Result<(), crate::index::IndexError> {
    let mut expected = facts.events.iter().peekable();
    let mut from = 0u64;
    loop {
        let rows = index.events_after(from, INDEX_PAGE_ROWS_MAX).await?;
        let Some(last) = rows.last() else { break };
        from = last.position + 1;
        for row in &rows {
            check.count("event rows", 1);
            let at = format!("index row events.position={}", row.position);
            while let Some(fact) = expected.next_if(|f| f.position < row.position) {
                check.fail(
                    format!("index row events.position={}", fact.position),
                    "missing: the log has this event",
                );
            }
            match expected.next_if(|f| f.position == row.position) {
                None => check.fail(at, "extra: the log has no event at this position"),
                Some(fact) => {
                    let same = fact.stream == row.stream
                        && fact.stream_offset == row.stream_offset
                        && fact.op == row.op
                        && fact.leaf_hash == row.leaf_hash
                        && fact.segment == row.segment
                        && fact.file_offset == row.file_offset;
                    if !same {
                        check.fail(at, format!(
                            "differs from the log (log: stream {} offset {} op {} leaf {}; row: stream {} offset {} op {} leaf {})",
                            fact.stream, fact.stream_offset, fact.op, to_hex(&fact.leaf_hash),
                            row.stream, row.stream_offset, row.op, to_hex(&row.leaf_hash)
                        ));
                    }
                }
            }
        }
    }
    for fact in expected {
        check.fail(
            format!("index row events.position={}", fact.position),
            "missing: the log has this event",
        );
    }
    Ok(())
}

async fn compare_commits(
    index: &Index,
    facts: &LogFacts,
    check: &mut Check,
) -> Result<(), crate::index::IndexError> {
    let mut rows = Vec::new();
    let mut from = 0u64;
    loop {
        let page = index.commits_after(from, INDEX_PAGE_ROWS_MAX).await?;
        let Some(last) = page.last() else { break };
        from = last.op + 1;
        rows.extend(page);
    }
    check.count("commit rows", rows.len() as u64);
    let by_op: std::collections::BTreeMap<u64, &vellum_audit::verify::CommitFact> =
        facts.commits.iter().map(|c| (c.op, c)).collect();
    for row in &rows {
        let at = format!("index row commits.op={}", row.op);
        match by_op.get(&row.op) {
            None => check.fail(at, "extra: the log holds no certificate for this commit"),
            Some(fact)
                if fact.tree_size != row.tree_size
                    || fact.view != row.view
                    || fact.root != row.root
                    || fact.certificate != row.certificate =>
            {
                check.fail(at, "differs from the certificate in the log")
            }
            Some(_) => {}
        }
    }
    let in_index: std::collections::BTreeSet<u64> = rows.iter().map(|r| r.op).collect();
    for fact in &facts.commits {
        if !in_index.contains(&fact.op) {
            check.fail(
                format!("index row commits.op={}", fact.op),
                "missing: the log holds this certificate",
            );
        }
    }
    Ok(())
}

async fn compare_keys(
    index: &Index,
    facts: &LogFacts,
    check: &mut Check,
) -> Result<(), crate::index::IndexError> {
    let rows = index.keys().await?;
    check.count("key rows", rows.len() as u64);
    let expected: std::collections::BTreeMap<u64, u64> = facts.keys.iter().copied().collect();
    for row in &rows {
        match expected.get(&row.key_id) {
            Some(&stream) if stream == row.stream => {}
            Some(&stream) => check.fail(
                format!("index row keys.key_id={}", row.key_id),
                format!(
                    "names stream {} but the log uses it for stream {stream}",
                    row.stream
                ),
            ),
            None => check.fail(
                format!("index row keys.key_id={}", row.key_id),
                "extra: no op in the log uses this key",
            ),
        }
    }
    let in_index: std::collections::BTreeSet<u64> = rows.iter().map(|r| r.key_id).collect();
    for key_id in expected.keys() {
        if !in_index.contains(key_id) {
            check.fail(
                format!("index row keys.key_id={key_id}"),
                "missing: ops in the log use this key",
            );
        }
    }
    Ok(())
}
