//! The auditor's reports of `vellum verify`, end to end through the binary
//! (so exit codes are tested too): the text, JSON and HTML formats of a
//! passing and a failing data directory, the HTML page being self-contained,
//! its golden rendering, and `--since` / `--checkpoint-out` (a kept
//! checkpoint passes while the log only grew, and fails for a rewritten
//! history, a log rolled back below it, or too few signatures). Also what a
//! broken input does to a report: checks that could not run say "not run"
//! (never "passed"), knock-on failures are grouped under their root cause,
//! and every format names the tool's version and the policy's SHA-256.

mod support;

use support::copy_dir;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use vellum::log::{LocalLog, load_policy};
use vellum_audit::checkpoint::Certificate;
use vellum_audit::note::Signer;
use vellum_audit::record::RecordKind;
use vellum_audit::report::{Check, FailureKind, PolicySummary, Reached, Report};
use vellum_audit::segment::{Chain, scan_segment_with, segment_file_name};
use vellum_audit::verify::cluster_from_origin;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vellum"))
}

/// What a `vellum` run printed and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn vellum(args: &[&str]) -> Run {
    let output = Command::new(exe()).args(args).output().expect("run vellum");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp paths")
}

fn append_to(data: &Path, tag: &str, appends: u64) {
    let (log, _) = LocalLog::open(data, support::wait_for_lock()).expect("open");
    for i in 0..appends {
        let stream = 16 + i % 2;
        let events: Vec<Bytes> = (0..2)
            .map(|j| {
                Bytes::from(format!(
                    "{{\"resourceType\":\"Note\",\"tag\":\"{tag}\",\"i\":{i},\"j\":{j}}}"
                ))
            })
            .collect();
        log.append(stream, &events, None, None).expect("append");
    }
    log.close().expect("close");
}

/// An initialized data directory (no events yet).
fn init(parent: &Path, name: &str) -> PathBuf {
    let data = parent.join(name);
    vellum::init::init_data_dir(&data, None).expect("init");
    data
}

/// Flips one byte inside the body of the first op record of segment 0 and
/// returns the record's file offset.
fn flip_first_op_body(data: &Path) -> u64 {
    let policy = load_policy(&data.join("policy.txt")).expect("policy");
    let cluster = cluster_from_origin(&policy.origin).expect("vellum origin");
    let path = data.join("segments").join(segment_file_name(0));
    let mut bytes = std::fs::read(&path).expect("segment");
    let scan = scan_segment_with(&bytes, 0, cluster, &mut Chain::genesis(cluster));
    let op = scan
        .records
        .iter()
        .find(|r| r.header.kind == RecordKind::Op)
        .expect("an op record");
    bytes[op.body_range.start + 40] ^= 0x10;
    std::fs::write(&path, bytes).expect("write");
    op.offset
}

/// Asserts an HTML page loads nothing and runs nothing: no script, no
/// element or style that references a URL.
fn assert_self_contained(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"), "a whole page");
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "no script");
    for tag in lower.split('<').skip(1).filter_map(|t| t.split('>').next()) {
        for banned in ["src=", "href=", "http://", "https://", "url(", "@import"] {
            assert!(!tag.contains(banned), "tag <{tag}> references {banned}");
        }
    }
    let style = lower
        .split("<style>")
        .nth(1)
        .and_then(|rest| rest.split("</style>").next())
        .expect("an inline style sheet");
    assert!(!style.contains("url(") && !style.contains("@import"));
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("JSON report: {e}\n{}\n{}", run.stdout, run.stderr))
}

fn check_of<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

// Goal: a passing directory exits 0 in every format, and each format shows
// the verdict, the checks, the pinned keys and the checkpoint reached.
#[test]
fn every_format_of_a_passing_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path(), "data");
    append_to(&data, "pass", 5);
    let policy = data.join("policy.txt");
    let base = ["verify", "--data-dir", s(&data), "--policy", s(&policy)];
    let text = vellum(&[&base[..], &["--format", "text"]].concat());
    assert_eq!(text.code, 0, "{}{}", text.stdout, text.stderr);
    assert!(
        text.stdout.starts_with("verification PASSED"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("pinned key") && text.stdout.contains("reached tree size 10"));

    for args in [&["--format", "json"][..], &["--json"][..]] {
        let run = vellum(&[&base[..], args].concat());
        assert_eq!(run.code, 0, "{}", run.stderr);
        let report = json(&run);
        assert_eq!(report["passed"], true);
        assert_eq!(report["version"], 5);
        assert_eq!(report["break_glass"], serde_json::json!([]));
        assert_eq!(report["reached"]["tree_size"], 10);
        assert!(report["started"].as_str().is_some_and(|t| t.ends_with('Z')));
        let key = &report["policy"]["keys"][0];
        assert!(key["name"].is_string() && key["key_id"].as_str().is_some_and(|k| k.len() == 8));
        assert_eq!(
            report["reached"]["signed_by"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(
            check_of(&report, "records and hash chain")["outcome"],
            "pass"
        );
    }

    let html = vellum(&[&base[..], &["--format", "html"]].concat());
    assert_eq!(html.code, 0, "{}", html.stderr);
    assert_self_contained(&html.stdout);
    let report = json(&vellum(&[&base[..], &["--json"]].concat()));
    for needle in [
        "Verification PASSED",
        "records and hash chain",
        "audit index",
        report["policy"]["keys"][0]["key_id"]
            .as_str()
            .expect("key id"),
        report["reached"]["root"].as_str().expect("root"),
        "Checkpoint reached",
    ] {
        assert!(html.stdout.contains(needle), "the page shows {needle}");
    }
}

// Goal: a directory with one flipped body byte exits 1 in every format and
// each format names the segment file and the record's byte offset.
#[test]
fn every_format_of_a_failing_dir_names_the_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path(), "data");
    append_to(&data, "fail", 4);
    let offset = flip_first_op_body(&data);
    let place = format!(
        "{} at byte {offset}",
        data.join("segments").join(segment_file_name(0)).display()
    );
    let policy = data.join("policy.txt");
    let base = ["verify", "--data-dir", s(&data), "--policy", s(&policy)];
    let text = vellum(&base);
    assert_eq!(text.code, 1, "{}", text.stdout);
    assert!(text.stdout.starts_with("verification FAILED"));
    assert!(
        text.stdout.contains(&format!("at {place}")),
        "{}",
        text.stdout
    );

    let report = json(&vellum(&[&base[..], &["--format", "json"]].concat()));
    assert_eq!(report["passed"], false);
    let located = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .any(|c| {
            c["outcome"] == "fail"
                && c["failures"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f["location"] == place))
        });
    assert!(located, "a failure at {place}: {report}");

    let html = vellum(&[&base[..], &["--format", "html"]].concat());
    assert_eq!(html.code, 1);
    assert_self_contained(&html.stdout);
    assert!(html.stdout.contains("Verification FAILED"));
    assert!(html.stdout.contains("<h2>Failures</h2>"));
    assert!(html.stdout.contains(&place), "the page names {place}");
}

/// A report with fixed content and times, for the golden page.
fn fixed_report() -> Report {
    let signer = Signer::from_seed("replica-0", [5; 32]).expect("signer");
    let policy = vellum_audit::policy::Policy::new(
        "vellum.local/cluster/0123456789abcdef0123456789abcdef",
        vec![signer.verifier()],
        1,
    )
    .expect("policy");
    let mut records = Check::start("records and hash chain");
    records.count("records", 12);
    records.fail(
        FailureKind::Damaged,
        "segments/00000000.vseg at byte 320",
        "header <checksum> & body mismatch",
    );
    records.fail(
        FailureKind::ChainBroken,
        "segments/00000000.vseg at byte 512",
        "parent does not match the previous header",
    );
    let mut index = Check::start("audit index");
    index.count("event rows", 9);
    let skipped = Check::not_run("segment seals", "no sealed segment");
    let mut checks = vec![records.finish(), index.finish(), skipped];
    for (i, check) in checks.iter_mut().enumerate() {
        check.elapsed_ms = 10 * i as u64;
    }
    let reached = Reached {
        tree_size: 9,
        root: "ab".repeat(32),
        signed_by: vec![format!(
            "replica-0+{}",
            vellum_audit::hash::to_hex(&signer.key_id())
        )],
        checkpoint: "vellum.local/cluster/0123\n9\nq80=\n\n— replica-0 AAAA\n".into(),
    };
    Report::new(
        "data-dir /audit/copy".into(),
        PolicySummary::from_policy(&policy),
        checks,
        Some(reached),
    )
    .with_break_glass(vec![vellum_audit::report::BreakGlassUse {
        position: 7,
        time_ns: 1_700_000_000_000_000_000,
        principal: "dr-lee".into(),
        role: "reader".into(),
        action: "break_glass".into(),
        stream: Some(1001),
        outcome: "success".into(),
        reason: "code blue <b>&".into(),
        opened_ns: 1_700_000_000_000_000_000,
        expires_ns: 1_700_003_600_000_000_000,
    }])
    .with_times(
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
        UNIX_EPOCH + Duration::from_millis(1_700_000_001_250),
    )
    .with_tool(vellum_audit::report::Tool {
        name: "vellum".into(),
        version: "0.1.0".into(),
        commit: Some("0123456789ab".into()),
    })
    .with_policy_sha256("cd".repeat(32))
}

// Goal: the HTML page of a fixed report equals the committed golden file
// byte for byte (regenerate only with VELLUM_BLESS=1), so a change to the
// page is visible in review; the page is self-contained and escaped.
#[test]
fn html_of_a_fixed_report_matches_the_golden_file() {
    let html = fixed_report().to_html();
    assert_self_contained(&html);
    assert!(html.contains("header &lt;checksum&gt; &amp; body mismatch"));
    assert!(html.contains("2023-11-14T22:13:20.000Z") && html.contains("1250 ms"));
    assert!(html.contains("<h2>Break-glass (emergency access)</h2>"));
    assert!(
        html.contains("<td>code blue &lt;b&gt;&amp;</td>"),
        "escaped reason"
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/verify_report.html");
    if std::env::var_os("VELLUM_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &html).expect("write golden file");
    }
    let expected = std::fs::read_to_string(&path).expect("golden file exists");
    assert_eq!(
        expected, html,
        "the report page changed; rerun with VELLUM_BLESS=1 if intended"
    );
}

/// Runs verify with `--checkpoint-out` and returns the written checkpoint file.
fn keep_checkpoint(data: &Path, out: &Path) -> PathBuf {
    let run = vellum(&["verify", "--data-dir", s(data), "--checkpoint-out", s(out)]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(out.exists(), "--checkpoint-out writes the checkpoint");
    out.to_path_buf()
}

/// The certificate text of a file `--checkpoint-out` wrote.
fn kept_certificate(kept: &Path) -> String {
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kept).expect("kept")).expect("JSON");
    file["certificate"]
        .as_str()
        .expect("certificate text")
        .to_string()
}

fn verify_since(data: &Path, policy: &Path, kept: &Path) -> (Run, serde_json::Value) {
    let run = vellum(&[
        "verify",
        "--data-dir",
        s(data),
        "--policy",
        s(policy),
        "--since",
        s(kept),
        "--json",
    ]);
    let report = json(&run);
    (run, report)
}

// Goal: a checkpoint kept by --checkpoint-out (the certificate and the
// tree's frontier there) passes once the log grew, incrementally (the old
// part not re-read), with a consistency proof to the newest certificate,
// and the report names both the kept and the reached checkpoint; an
// earlier JSON report, a /v1/certificate answer and bare certificate text
// (both read the whole log) serve as kept checkpoints too.
#[test]
fn since_an_older_checkpoint_of_the_same_log_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path(), "data");
    append_to(&data, "first", 3);
    let kept = keep_checkpoint(&data, &dir.path().join("kept.json"));
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kept).expect("kept")).expect("JSON");
    let text = kept_certificate(&kept);
    assert!(Certificate::parse(&text).is_ok_and(|c| c.checkpoint.size == 6));
    assert_eq!(file["version"], 1);
    assert_eq!(file["tree_size"], 6);
    assert_eq!(
        file["reached_frontier"].as_array().map(Vec::len),
        Some(2),
        "one subtree per set bit of 6: {file}"
    );
    append_to(&data, "second", 4);
    let (run, report) = verify_since(&data, &data.join("policy.txt"), &kept);
    assert_eq!(run.code, 0, "{report}");
    assert_eq!(report["since"]["tree_size"], 6);
    assert_eq!(report["reached"]["tree_size"], 14);
    let since = check_of(&report, "kept checkpoint (--since)");
    assert_eq!(since["outcome"], "pass");
    assert!(
        since["counts"]["consistency proof hashes"].as_u64() > Some(0),
        "{since}"
    );
    let records = check_of(&report, "records and hash chain");
    assert_eq!(
        records["note"],
        vellum_audit::since::INCREMENTAL_NOTE,
        "--since of the --checkpoint-out file reads only the new part: {records}"
    );
    let bare = dir.path().join("kept.txt");
    std::fs::write(&bare, &text).expect("write certificate text");
    let (run, report) = verify_since(&data, &data.join("policy.txt"), &bare);
    assert_eq!(run.code, 0, "{report}");
    assert_eq!(report["since"]["tree_size"], 6);
    let note = check_of(&report, "kept checkpoint (--since)")["note"]
        .as_str()
        .unwrap_or("");
    assert!(
        note.contains("not incremental") && note.contains("the whole log was read"),
        "certificate text alone reads the whole log: {note}"
    );

    // An earlier JSON report and the /v1/certificate answer serve as well.
    let report_path = dir.path().join("report.json");
    std::fs::write(&report_path, &run.stdout).expect("write report");
    append_to(&data, "third", 1);
    let (run, report) = verify_since(&data, &data.join("policy.txt"), &report_path);
    assert_eq!(run.code, 0, "{report}");
    assert_eq!(report["since"]["tree_size"], 14);
    let answer = dir.path().join("answer.json");
    let body = serde_json::json!({ "size": 6, "certificate": text });
    std::fs::write(&answer, body.to_string()).expect("write answer");
    let (run, report) = verify_since(&data, &data.join("policy.txt"), &answer);
    assert_eq!(run.code, 0, "{report}");
    assert_eq!(report["since"]["tree_size"], 6);
}

// Goal: a checkpoint of another log with the same keys and cluster id (a
// rewritten history, validly signed) fails --since as rewritten history,
// while every other check passes; --checkpoint-out is then not written.
#[test]
fn since_a_checkpoint_of_a_rewritten_history_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let original = init(dir.path(), "original");
    let rewritten = dir.path().join("rewritten");
    copy_dir(&original, &rewritten);
    append_to(&original, "original", 5);
    append_to(&rewritten, "rewritten", 3);
    let kept = keep_checkpoint(&rewritten, &dir.path().join("kept.json"));
    let out = dir.path().join("next.txt");
    let run = vellum(&[
        "verify",
        "--data-dir",
        s(&original),
        "--since",
        s(&kept),
        "--json",
        "--checkpoint-out",
        s(&out),
    ]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let report = json(&run);
    for check in report["checks"].as_array().expect("checks") {
        let is_since = check["name"] == "kept checkpoint (--since)";
        assert_eq!(
            check["outcome"] == "fail",
            is_since,
            "only --since fails: {check}"
        );
    }
    let since = check_of(&report, "kept checkpoint (--since)");
    let message = since["failures"][0]["message"].as_str().expect("a failure");
    assert!(message.contains("history was rewritten"), "{message}");
    assert!(
        since["failures"][0]["location"]
            .as_str()
            .is_some_and(|l| l.contains("tree size 6"))
    );
    assert!(!out.exists(), "no checkpoint is kept from a failed run");
}

// Goal: a checkpoint kept beyond the log (the log was rolled back to an
// older copy) fails --since saying so.
#[test]
fn since_a_checkpoint_beyond_the_log_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path(), "data");
    append_to(&data, "first", 2);
    let older = dir.path().join("older");
    copy_dir(&data, &older);
    append_to(&data, "second", 3);
    let kept = keep_checkpoint(&data, &dir.path().join("kept.json"));
    let (run, report) = verify_since(&older, &older.join("policy.txt"), &kept);
    assert_eq!(run.code, 1);
    let since = check_of(&report, "kept checkpoint (--since)");
    let message = since["failures"][0]["message"].as_str().expect("a failure");
    assert!(message.contains("beyond the log"), "{message}");
}

// Goal: a kept checkpoint whose signatures do not meet the policy's quorum
// (re-signed by a key the policy does not pin) fails --since.
#[test]
fn since_a_checkpoint_signed_by_too_few_keys_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path(), "data");
    append_to(&data, "first", 2);
    let kept = keep_checkpoint(&data, &dir.path().join("kept.json"));
    let certificate = Certificate::parse(&kept_certificate(&kept)).expect("certificate");
    let stranger = Signer::from_seed("stranger", [9; 32]).expect("signer");
    let forged = Certificate::sign(certificate.checkpoint, &[&stranger]).expect("sign");
    let forged_path = dir.path().join("forged.txt");
    std::fs::write(&forged_path, forged.encode()).expect("write");
    let (run, report) = verify_since(&data, &data.join("policy.txt"), &forged_path);
    assert_eq!(run.code, 1);
    let since = check_of(&report, "kept checkpoint (--since)");
    let message = since["failures"][0]["message"].as_str().expect("a failure");
    assert!(
        message.contains("not certified")
            && message.contains("0 valid signatures of pinned keys, 1 needed"),
        "{message}"
    );
    let garbage = dir.path().join("garbage.txt");
    std::fs::write(&garbage, "not a checkpoint\n").expect("write");
    let (run, report) = verify_since(&data, &data.join("policy.txt"), &garbage);
    assert_eq!(run.code, 1);
    let since = check_of(&report, "kept checkpoint (--since)");
    assert!(
        since["failures"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a signed checkpoint"))
    );
}

/// SHA-256 of a file, lowercase hex.
fn file_sha256(path: &Path) -> String {
    use sha2::Digest as _;
    vellum_audit::hash::to_hex(&sha2::Sha256::digest(
        std::fs::read(path).expect("read file"),
    ))
}

// Goal: a replica whose segment file cannot be read fails, and the checks
// that depend on reading it (seals, merkle roots, certificate signatures,
// audit index, access trail) are "not run" in every format, never passed.
#[test]
fn an_unreadable_segment_shows_not_run_checks_and_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path(), "data");
    append_to(&data, "unreadable", 3);
    // A directory in place of the segment file: reading it fails for any
    // user, root included (a mode of 000 would not stop root).
    let segment = data.join("segments").join(segment_file_name(0));
    std::fs::remove_file(&segment).expect("remove segment");
    std::fs::create_dir(&segment).expect("a directory in its place");
    let policy = data.join("policy.txt");
    let base = ["verify", "--data-dir", s(&data), "--policy", s(&policy)];
    let run = vellum(&[&base[..], &["--json"]].concat());
    assert_eq!(run.code, 1, "{}", run.stdout);
    let report = json(&run);
    assert_eq!(report["passed"], false);
    let records = check_of(&report, "records and hash chain");
    assert_eq!(records["outcome"], "fail");
    assert!(
        records["failures"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot read")),
        "{records}"
    );
    let dependent = [
        "segment seals",
        "merkle roots",
        "certificate signatures",
        "audit index",
        "access trail",
    ];
    for name in dependent {
        let check = check_of(&report, name);
        assert_eq!(check["outcome"], "not_run", "{name} did not run: {check}");
        assert!(
            check["note"]
                .as_str()
                .is_some_and(|n| n.contains("could not be read"))
        );
    }
    let text = vellum(&base);
    assert_eq!(text.code, 1);
    for name in dependent {
        let line = text
            .stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("a line for {name}: {}", text.stdout));
        assert!(line.starts_with("not run"), "{line}");
    }
    assert!(
        !text
            .stdout
            .lines()
            .any(|l| l.starts_with("ok ") && dependent.iter().any(|d| l.contains(d)))
    );
    let html = vellum(&[&base[..], &["--format", "html"]].concat());
    assert_eq!(html.code, 1);
    assert!(
        html.stdout
            .contains("<td class=\"not_run\">not run</td><td>merkle roots</td>"),
        "{}",
        html.stdout
    );
    assert!(html.stdout.contains("5 not run"), "the summary counts them");
}

// Goal: one flipped byte early in a long log is reported as one root
// cause: a handful of failure groups in the report, not a line per later
// record or index row (the index and trail checks do not run on a log that
// could not be read to its end).
#[test]
fn a_flipped_byte_early_in_a_log_is_one_root_cause() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path(), "data");
    append_to(&data, "long", 120);
    let offset = flip_first_op_body(&data);
    let policy = data.join("policy.txt");
    let base = ["verify", "--data-dir", s(&data), "--policy", s(&policy)];
    let run = vellum(&[&base[..], &["--json"]].concat());
    assert_eq!(run.code, 1);
    let report = json(&run);
    let groups: usize = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["groups"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(
        groups <= 2,
        "a few top-level failures, got {groups}: {report}"
    );
    assert_eq!(report["root_causes"], groups);
    let first = &check_of(&report, "records and hash chain")["groups"][0]["first"];
    assert!(
        first["location"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!("at byte {offset}"))),
        "the root cause is the flipped record: {first}"
    );
    assert_eq!(check_of(&report, "audit index")["outcome"], "not_run");
    let text = vellum(&base);
    let failure_lines = text
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("at "))
        .count();
    assert!(
        (1..=2).contains(&failure_lines),
        "one failure line per root cause: {}",
        text.stdout
    );
}

// Goal: a run that does find many failures in one place groups them: the
// first failure of each index table is shown with the count of the
// further ones, and the JSON still lists each.
#[test]
fn many_failures_in_one_place_are_grouped_under_the_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path(), "data");
    append_to(&data, "rows", 30);
    support::tamper_index(
        &data,
        &(0..30)
            .map(|p| format!("UPDATE events SET op = op + 1000 WHERE position = {p}"))
            .collect::<Vec<_>>(),
    );
    let policy = data.join("policy.txt");
    let base = ["verify", "--data-dir", s(&data), "--policy", s(&policy)];
    let report = json(&vellum(&[&base[..], &["--json"]].concat()));
    let index = check_of(&report, "audit index");
    assert_eq!(index["failures"].as_array().map(Vec::len), Some(30));
    assert_eq!(index["groups"].as_array().map(Vec::len), Some(1));
    assert_eq!(index["groups"][0]["more"], 29);
    let text = vellum(&base).stdout;
    assert!(
        text.contains("+ 29 further failures in index row events.position=N after this one"),
        "{text}"
    );
}

// Goal: every format names the tool (vellum and its version) and the
// SHA-256 of the policy file the run pinned.
#[test]
fn every_format_carries_version_and_policy_sha256() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path(), "data");
    append_to(&data, "tool", 2);
    let policy = data.join("policy.txt");
    let sha = file_sha256(&policy);
    let version = format!("vellum {}", env!("CARGO_PKG_VERSION"));
    let base = ["verify", "--data-dir", s(&data), "--policy", s(&policy)];
    let report = json(&vellum(&[&base[..], &["--json"]].concat()));
    assert_eq!(report["tool"]["name"], "vellum");
    assert_eq!(report["tool"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["policy"]["sha256"], sha.as_str());
    for format in ["text", "html"] {
        let run = vellum(&[&base[..], &["--format", format]].concat());
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stdout.contains(&version), "{format} names {version}");
        assert!(
            run.stdout.contains(&sha),
            "{format} names the policy's sha256"
        );
    }
    // The policy inside the data directory (no --policy) is hashed too.
    let run = vellum(&["verify", "--data-dir", s(&data), "--json"]);
    assert_eq!(json(&run)["policy"]["sha256"], sha.as_str());
}
