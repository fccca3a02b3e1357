//! The `vellum` binary end to end, as a user runs it: init, append from stdin
//! and from a file, read back byte for byte, receipts and proofs that verify
//! with the data directory's trust policy alone, keys, verify, index rebuild,
//! the same flow on PostgreSQL (when `VELLUM_TEST_POSTGRES_URL` is set), and
//! every subcommand's `--help`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vellum_audit::checkpoint::Certificate;
use vellum_audit::note::Verifier;
use vellum_audit::policy::Policy;
use vellum_audit::proof::{ConsistencyProof, InclusionProof};

/// What one run of the binary gave back.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `vellum args...` with `stdin`, free of the caller's index settings.
fn vellum(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vellum"))
        .args(args)
        .env_remove("VELLUM_INDEX_URL")
        .env_remove("VELLUM_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vellum");
    let mut input = child.stdin.take().expect("stdin is piped");
    // A command that refuses early may close stdin before reading it all.
    let _ = input.write_all(stdin);
    drop(input);
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait for vellum");
    Run {
        code: status.code().expect("vellum exits, not killed by a signal"),
        stdout: String::from_utf8(stdout).expect("stdout is utf-8"),
        stderr: String::from_utf8(stderr).expect("stderr is utf-8"),
    }
}

/// Runs a command that must succeed and returns its stdout.
fn ok(args: &[&str], stdin: &[u8]) -> String {
    let run = vellum(args, stdin);
    assert_eq!(
        run.code, 0,
        "vellum {args:?} failed:\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// A fresh data directory inside a temp dir (the dir itself is created by init).
fn fresh() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    (tmp, data)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temp paths are utf-8")
}

/// `--data-dir D` plus `--index-url U` when a URL is given.
fn dir_args<'a>(data: &'a Path, url: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec!["--data-dir", s(data)];
    if let Some(url) = url {
        args.extend(["--index-url", url]);
    }
    args
}

fn cmd<'a>(
    head: &[&'a str],
    data: &'a Path,
    url: Option<&'a str>,
    tail: &[&'a str],
) -> Vec<&'a str> {
    let mut args = head.to_vec();
    args.extend(dir_args(data, url));
    args.extend(tail);
    args
}

fn policy_of(data: &Path) -> Policy {
    let text = std::fs::read_to_string(data.join("policy.txt")).expect("read policy.txt");
    Policy::parse(&text).expect("policy.txt parses")
}

/// Unusual but valid JSON, one value per line.
const UNUSUAL: &[&str] = &[
    r#"{"resourceType":"Patient","name":[{"family":"Müller","given":["Zoë"]}]}"#,
    r#""escapes: \" \\ \/ \b \f \n \r \t \u0000 \u00e9 \ud83d\ude00""#,
    "\"raw unicode: 日本語 \u{202b}עברית\u{202c} 🎉 e\u{301}\"",
    "123456789012345678901234567890123456789",
    "-0.0",
    "1e400",
    "[[[[[[[[[[[[[[[[[[[[{\"deep\":[1,{\"x\":null}]}]]]]]]]]]]]]]]]]]]]]",
    "  {\"spaces\" :  [ true , false ] }  ",
    "null",
    "{}",
];

/// Goal: events appended from stdin and from --file read back byte for byte,
/// unusual JSON included, and the data directory then verifies.
#[test]
fn append_stdin_and_file_read_back_byte_for_byte() {
    let (tmp, data) = fresh();
    ok(&["init", "--data-dir", s(&data)], b"");
    let stdin_text = UNUSUAL.join("\n") + "\n";
    let out = ok(
        &["append", "--data-dir", s(&data), "--stream", "16"],
        stdin_text.as_bytes(),
    );
    assert_eq!(
        out.trim(),
        UNUSUAL.len().to_string(),
        "prints the new length"
    );

    // A file with CRLF line ends, blank lines and no final newline.
    let file = tmp.path().join("events.ndjson");
    std::fs::write(&file, "{\"from\":\"file\"}\r\n\r\n[1,2,3]\r\n\"last\"").expect("write file");
    let out = ok(
        &[
            "append",
            "--data-dir",
            s(&data),
            "--stream",
            "16",
            "--file",
            s(&file),
            "--json",
        ],
        b"",
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(json["next_offset"], UNUSUAL.len() + 3);
    assert_eq!(json["first_offset"], UNUSUAL.len());
    assert_eq!(json["events"], 3);
    assert_eq!(json["stream"], 16);

    let mut expected: Vec<&str> = UNUSUAL.to_vec();
    expected.extend([r#"{"from":"file"}"#, "[1,2,3]", "\"last\""]);
    let read = ok(&["read", "--data-dir", s(&data), "--stream", "16"], b"");
    assert_eq!(
        read,
        expected.join("\n") + "\n",
        "read returns the events byte for byte"
    );

    let part = ok(
        &[
            "read",
            "--data-dir",
            s(&data),
            "--stream",
            "16",
            "--from",
            "2",
            "--max",
            "3",
        ],
        b"",
    );
    assert_eq!(
        part,
        expected[2..5].join("\n") + "\n",
        "--from and --max select a range"
    );
    let at_end = ok(
        &[
            "read",
            "--data-dir",
            s(&data),
            "--stream",
            "16",
            "--from",
            &expected.len().to_string(),
        ],
        b"",
    );
    assert_eq!(at_end, "", "reading at the stream's end gives nothing");
    assert_verify_passes(&data, None);
}

/// Goal: `--receipt` prints offsets, positions, the certificate and one
/// inclusion proof per event, and each proof verifies against policy.txt.
#[test]
fn receipt_proofs_verify_against_the_policy() {
    let (_tmp, data) = fresh();
    ok(&["init", "--data-dir", s(&data)], b"");
    ok(
        &["append", "--data-dir", s(&data), "--stream", "17"],
        b"{\"a\":1}\n",
    );
    let out = ok(
        &[
            "append",
            "--data-dir",
            s(&data),
            "--stream",
            "16",
            "--receipt",
        ],
        b"{\"b\":1}\n{\"b\":2}\n{\"b\":3}\n",
    );
    let receipts: serde_json::Value = serde_json::from_str(&out).expect("receipt is JSON");
    let receipts = receipts.as_array().expect("a list of receipts");
    assert_eq!(receipts.len(), 1, "one batch, one receipt");
    let receipt = &receipts[0];
    assert_eq!(receipt["stream"], 16);
    assert_eq!(receipt["first_offset"], 0);
    assert_eq!(receipt["next_offset"], 3);
    assert_eq!(
        receipt["first_position"], 1,
        "stream 17's event is at position 0"
    );
    let policy = policy_of(&data);
    let certificate =
        Certificate::parse(receipt["certificate"].as_str().expect("certificate text"))
            .expect("certificate parses");
    let verified = certificate.verify(&policy).expect("certificate verifies");
    assert!(
        verified.checkpoint.size >= 4,
        "the certificate covers the batch"
    );
    let proofs = receipt["proofs"].as_array().expect("proofs list");
    assert_eq!(proofs.len(), 3, "one proof per event");
    for (i, proof) in proofs.iter().enumerate() {
        let proof =
            InclusionProof::parse(proof.as_str().expect("proof text")).expect("proof parses");
        assert_eq!(
            proof.index,
            1 + i as u64,
            "proof {i} is of the event's global position"
        );
        proof.verify(&policy).expect("receipt proof verifies");
    }
}

/// Goal: `proof` prints inclusion proofs that verify, and a consistency
/// proof from a checkpoint kept after the first append to the latest verifies.
#[test]
fn proof_command_inclusion_and_consistency_verify() {
    let (_tmp, data) = fresh();
    ok(&["init", "--data-dir", s(&data)], b"");
    let first = ok(
        &[
            "append",
            "--data-dir",
            s(&data),
            "--stream",
            "16",
            "--receipt",
        ],
        b"1\n2\n",
    );
    let first: serde_json::Value = serde_json::from_str(&first).expect("receipt JSON");
    let kept = Certificate::parse(first[0]["certificate"].as_str().expect("certificate"))
        .expect("certificate parses");
    let (old_size, old_root) = (kept.checkpoint.size, kept.checkpoint.root);
    assert_eq!(old_size, 2);
    for stream in ["16", "18", "16"] {
        ok(
            &["append", "--data-dir", s(&data), "--stream", stream],
            b"3\n4\n5\n",
        );
    }
    let policy = policy_of(&data);
    for (stream, offset, position) in [
        ("16", "0", 0),
        ("16", "4", 4),
        ("18", "2", 7),
        ("16", "7", 10),
    ] {
        let text = ok(
            &[
                "proof",
                "--data-dir",
                s(&data),
                "--stream",
                stream,
                "--offset",
                offset,
            ],
            b"",
        );
        let proof = InclusionProof::parse(&text).expect("inclusion proof parses");
        assert_eq!(proof.index, position, "stream {stream} offset {offset}");
        let verified = proof.verify(&policy).expect("inclusion proof verifies");
        assert_eq!(
            verified.checkpoint.size, 11,
            "proved against the latest certificate"
        );
    }
    let text = ok(
        &[
            "proof",
            "--data-dir",
            s(&data),
            "--consistency",
            "--from-size",
            &old_size.to_string(),
        ],
        b"",
    );
    let proof = ConsistencyProof::parse(&text, old_size).expect("consistency proof parses");
    let verified = proof
        .verify(&old_root, &policy)
        .expect("consistency proof verifies");
    assert_eq!(verified.checkpoint.size, 11);
    let wrong_root = [7u8; 32];
    assert!(
        proof.verify(&wrong_root, &policy).is_err(),
        "the proof binds the kept root"
    );
    let to_size = ok(
        &[
            "proof",
            "--data-dir",
            s(&data),
            "--consistency",
            "--from-size",
            "2",
            "--to-size",
            "5",
        ],
        b"",
    );
    let proof = ConsistencyProof::parse(&to_size, 2).expect("parses");
    assert_eq!(
        proof
            .verify(&old_root, &policy)
            .expect("verifies")
            .checkpoint
            .size,
        5
    );
}

/// Goal: `keys show --vkeys` prints the pinned vkey that parses; `--json`
/// and the text form show the same key and never a secret.
#[test]
fn keys_show_prints_the_pinned_vkey() {
    let (_tmp, data) = fresh();
    ok(&["init", "--data-dir", s(&data)], b"");
    let out = ok(&["keys", "show", "--data-dir", s(&data), "--vkeys"], b"");
    let line = out.trim_end();
    assert_eq!(line.lines().count(), 1, "one replica, one vkey line");
    let verifier = Verifier::parse_vkey(line).expect("vkey parses");
    assert!(
        policy_of(&data).verifiers.contains(&verifier),
        "the vkey is pinned"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(
        &["keys", "show", "--data-dir", s(&data), "--json"],
        b"",
    ))
    .expect("--json prints JSON");
    assert_eq!(json["vkey"], line);
    assert_eq!(json["name"], verifier.name());
    let text = ok(&["keys", "show", "--data-dir", s(&data)], b"");
    assert!(text.contains(line), "text form shows the vkey: {text}");
    let signing = std::fs::read_to_string(data.join("keys/signing.key")).expect("signing key");
    for secret_line in signing.lines().filter(|l| l.len() > 20) {
        assert!(
            !text.contains(secret_line) && !out.contains(secret_line),
            "no secret printed"
        );
    }
}

/// Goal: `--expected-offset` equal to the stream's length appends; a wrong
/// one is refused naming the expected and the actual length, writing nothing.
#[test]
fn expected_offset_right_appends_wrong_refuses() {
    let (_tmp, data) = fresh();
    ok(&["init", "--data-dir", s(&data)], b"");
    let append = |expected: &str, body: &[u8]| {
        vellum(
            &[
                "append",
                "--data-dir",
                s(&data),
                "--stream",
                "16",
                "--expected-offset",
                expected,
            ],
            body,
        )
    };
    assert_eq!(append("0", b"\"a\"\n").code, 0, "empty stream, expected 0");
    assert_eq!(
        append("1", b"\"b\"\n\"c\"\n").code,
        0,
        "expected 1 after one event"
    );
    let wrong = append("1", b"\"d\"\n");
    assert_ne!(wrong.code, 0, "a stale expected offset is refused");
    assert!(
        wrong.stderr.contains("expected 1")
            && wrong.stderr.contains("has 3 events")
            && wrong.stderr.contains("stream 16"),
        "the message names stream, expected and actual: {}",
        wrong.stderr
    );
    assert_eq!(
        ok(&["read", "--data-dir", s(&data), "--stream", "16"], b""),
        "\"a\"\n\"b\"\n\"c\"\n",
        "the refused event was not written"
    );
    assert_verify_passes(&data, None);
}

/// Goal: `vellum verify` passes on a healthy directory (exit 0, text says
/// PASSED, `--json` has `passed: true`), also after `index rebuild` and with
/// `--policy` pointing at a copy of the policy.
#[test]
fn verify_and_index_rebuild_pass() {
    let (tmp, data) = fresh();
    ok(&["init", "--data-dir", s(&data)], b"");
    ok(
        &["append", "--data-dir", s(&data), "--stream", "16"],
        b"1\n2\n",
    );
    ok(
        &["append", "--data-dir", s(&data), "--stream", "40"],
        b"3\n",
    );
    assert_verify_passes(&data, None);
    let out = ok(&["index", "rebuild", "--data-dir", s(&data)], b"");
    assert!(
        out.contains("3 events"),
        "rebuild reports what it rebuilt: {out}"
    );
    assert_verify_passes(&data, None);
    let copy = tmp.path().join("pinned-policy.txt");
    std::fs::copy(data.join("policy.txt"), &copy).expect("copy policy");
    let run = vellum(
        &["verify", "--data-dir", s(&data), "--policy", s(&copy)],
        b"",
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        !run.stderr.contains("note: using the policy inside"),
        "no note with --policy"
    );
}

/// Goal: several `vellum append` processes on one data directory at once
/// all land, each batch whole, and the log still verifies (they take turns).
#[test]
fn concurrent_appends_from_processes_all_land() {
    let (_tmp, data) = fresh();
    ok(&["init", "--data-dir", s(&data)], b"");
    let writers = 6;
    let batch: String = (0..200).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let children: Vec<_> = (0..writers)
        .map(|w| {
            let mut child = Command::new(env!("CARGO_BIN_EXE_vellum"))
                .args([
                    "append",
                    "--data-dir",
                    s(&data),
                    "--stream",
                    &(16 + w % 2).to_string(),
                ])
                .env_remove("VELLUM_INDEX_URL")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn vellum");
            child
                .stdin
                .take()
                .expect("stdin is piped")
                .write_all(batch.as_bytes())
                .expect("write stdin");
            child
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for stream in ["16", "17"] {
        let read = ok(&["read", "--data-dir", s(&data), "--stream", stream], b"");
        assert_eq!(
            read,
            batch.repeat(writers / 2),
            "stream {stream} holds whole batches"
        );
    }
    assert_verify_passes(&data, None);
}

/// Goal: `vellum demo` runs its whole story and reports success as JSON.
#[test]
fn demo_succeeds() {
    let (_tmp, data) = fresh();
    let out = ok(&["demo", "--data-dir", s(&data), "--json"], b"");
    let json: serde_json::Value = serde_json::from_str(&out).expect("demo --json is JSON");
    assert_eq!(json["verify_passed"], true);
    assert_eq!(json["replicas"], 3);
    assert_eq!(json["replicas_agree"], true);
    assert_eq!(json["bundle_verified"], true);
    assert!(json["trail_events"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(json["restarted_caught_up"], true);
    assert_eq!(json["proof_verified"], true);
    assert_ne!(json["killed_primary"], json["new_primary"]);
    assert_eq!(json["events_appended"], json["events_read_back"]);
    // The witness: a proof with replica signatures and its cosignature
    // passes `vellum proof check` under a policy requiring it, and a
    // rewritten history signed by every replica key is refused.
    assert_eq!(json["witness_proof_checked"], true);
    assert_eq!(json["fork_refused_by_witness"], true);
    assert_eq!(json["fork_refused_by_policy"], true);
    // Break-glass: a reader scoped to another stream is refused, opens
    // emergency access with a reason and reads the stream byte for byte;
    // the trail holds the refusal, the opening and the read under it.
    assert_eq!(json["break_glass_read"], true);
    assert_eq!(json["break_glass_in_trail"], true);
    // Crypto-shredding: after the shred a read answers 410 `shredded`
    // naming the shred's position, and the shred is in the trail.
    assert_eq!(json["shred_refuses_reads"], true);
    assert_eq!(json["shred_in_trail"], true);
    let shred_position = json["shred_position"].as_u64().expect("shred_position");
    assert!(
        shred_position > 0
            && json["tree_size"]
                .as_u64()
                .is_some_and(|n| n > shred_position),
        "{json}"
    );
    // The whole cluster still verifies after the shred, and the report's
    // break-glass section lists the opening and the read made under it.
    let out = ok(
        &[
            "verify",
            "--cluster",
            s(&data),
            "--policy",
            s(&data.join("policy.txt")),
        ],
        b"",
    );
    assert!(out.starts_with("verification PASSED"), "{out}");
    assert!(
        out.contains("break-glass: 2 uses in the verified access trail"),
        "{out}"
    );
    for action in [
        "break_glass stream 1001 success",
        "read_stream stream 1001 success",
    ] {
        assert!(
            out.contains(&format!("demo-clinician (reader) {action}")),
            "{action}: {out}"
        );
    }
    let witnessed = data.join("policy-witnessed.txt");
    let out = ok(
        &[
            "verify",
            "--bundle",
            s(&data.join("export-patient-a")),
            "--policy",
            s(&witnessed),
        ],
        b"",
    );
    assert!(out.contains("witness cosignatures=1"), "{out}");
    // The proof of step 4b carries a quorum of replica signatures and the
    // witness's cosignature; the bundle verifies under the witnessed policy
    // in the demo itself too.
    assert!(
        json["witness_proof_replica_signatures"]
            .as_u64()
            .is_some_and(|n| n >= 2),
        "{json}"
    );
    assert_eq!(json["witness_proof_cosignatures"], 1, "{json}");
    assert_eq!(json["bundle_verified_witnessed"], true, "{json}");
    assert_eq!(json["bundle_witness_cosignatures"], 1, "{json}");
    // The page the demo leaves for the auditor is this repository's page,
    // byte for byte, and it verifies the demo's bundle in a browser.
    let page = data.join("vellum-verify.html");
    assert_eq!(json["verifier_page"], page.display().to_string(), "{json}");
    assert_eq!(
        std::fs::read(&page).expect("the demo wrote the verifier page"),
        std::fs::read(browser::page_path()).expect("verifier/vellum-verify.html"),
        "the demo's page is verifier/vellum-verify.html"
    );
    page_verifies(&page, &data.join("export-patient-a"), &witnessed);
    // The whole cluster under the policy requiring the witness: the kept
    // cosignatures verify and match the replicas' logs.
    let out = ok(
        &["verify", "--cluster", s(&data), "--policy", s(&witnessed)],
        b"",
    );
    assert!(out.starts_with("verification PASSED"), "{out}");
    assert!(out.contains("witness cosignatures"), "{out}");
    for replica in ["r0", "r1", "r2"] {
        let policy = data.join("policy.txt");
        let out = ok(
            &[
                "verify",
                "--data-dir",
                s(&data.join(replica)),
                "--policy",
                s(&policy),
            ],
            b"",
        );
        assert!(
            out.contains("passed") || out.contains("PASS") || out.contains("ok"),
            "{out}"
        );
    }
}

/// Goal: every command and subcommand answers `--help` with exit 0 and text.
#[test]
fn help_of_every_subcommand_exits_zero() {
    let commands: &[&[&str]] = &[
        &[],
        &["init"],
        &["append"],
        &["read"],
        &["proof"],
        &["keys"],
        &["keys", "show"],
        &["verify"],
        &["index"],
        &["index", "rebuild"],
        &["bench"],
        &["demo"],
        &["dev"],
        &["start"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let run = vellum(&args, b"");
        assert_eq!(run.code, 0, "vellum {args:?}: {}", run.stderr);
        assert!(
            run.stdout.contains("Usage:"),
            "vellum {args:?} prints usage"
        );
    }
}

/// Goal: the whole flow works with the PostgreSQL index (`--index-url`):
/// init, append, read, proof, verify, index rebuild, verify.
#[test]
fn postgres_index_end_to_end() {
    let Some(base) = std::env::var("VELLUM_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        println!("skipping: VELLUM_TEST_POSTGRES_URL not set");
        return;
    };
    let schema = format!(
        "vellum_cli_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos()
    );
    postgres_sql(&base, &format!("CREATE SCHEMA {schema}"));
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options[search_path]={schema}");
    let outcome = std::panic::catch_unwind(|| postgres_flow(&url));
    postgres_sql(&base, &format!("DROP SCHEMA {schema} CASCADE"));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn postgres_flow(url: &str) {
    let (_tmp, data) = fresh();
    let u = Some(url);
    ok(&cmd(&["init"], &data, u, &[]), b"");
    ok(
        &cmd(&["append"], &data, u, &["--stream", "16"]),
        b"{\"pg\":1}\n{\"pg\":2}\n",
    );
    ok(&cmd(&["append"], &data, u, &["--stream", "17"]), b"\"x\"\n");
    let read = ok(&cmd(&["read"], &data, u, &["--stream", "16"]), b"");
    assert_eq!(read, "{\"pg\":1}\n{\"pg\":2}\n");
    let proof = ok(
        &cmd(&["proof"], &data, u, &["--stream", "16", "--offset", "1"]),
        b"",
    );
    InclusionProof::parse(&proof)
        .expect("parses")
        .verify(&policy_of(&data))
        .expect("verifies");
    assert_verify_passes(&data, u);
    ok(&cmd(&["index", "rebuild"], &data, u, &[]), b"");
    assert_verify_passes(&data, u);
    assert!(
        !data.join("index.sqlite3").exists(),
        "with --index-url no SQLite index is created"
    );
}

fn postgres_sql(url: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let pool = sqlx::postgres::PgPool::connect(url)
            .await
            .expect("connect to the test server");
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&pool)
            .await
            .expect("run schema statement");
        pool.close().await;
    });
}

/// Verify must pass: exit 0, text PASSED, JSON `passed: true`.
fn assert_verify_passes(data: &Path, url: Option<&str>) {
    let text = vellum(&cmd(&["verify"], data, url, &[]), b"");
    assert_eq!(
        text.code, 0,
        "verify failed:\n{}\n{}",
        text.stdout, text.stderr
    );
    assert!(text.stdout.contains("PASSED"), "{}", text.stdout);
    let json = ok(&cmd(&["verify"], data, url, &["--json"]), b"");
    let json: serde_json::Value = serde_json::from_str(&json).expect("verify --json is JSON");
    assert_eq!(json["passed"], true, "{json}");
}

#[path = "../compliance/tests/browser/mod.rs"]
mod browser;

/// The verifier page at `page` in headless Chromium checks `bundle` under `policy`
/// as an auditor with nothing installed would, and must pass it with the
/// witness's cosignature counted. Says SKIP without chromium and
/// chromedriver (`.ci/run` installs them).
fn page_verifies(page: &std::path::Path, bundle: &std::path::Path, policy: &std::path::Path) {
    let chromium = browser::find_program("VELLUM_CHROMIUM", &["chromium", "chromium-browser"]);
    let chromedriver = browser::find_program("VELLUM_CHROMEDRIVER", &["chromedriver"]);
    let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
        eprintln!("SKIP: the verifier page on the demo bundle needs chromium and chromedriver");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let session = browser::Browser::start(&chromium, &chromedriver).await;
        let report = session
            .verify_with(page, &browser::listing(bundle), policy)
            .await;
        session.quit().await;
        assert_eq!(report["passed"], serde_json::json!(true), "{report}");
        let certificate = report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == "bundle certificate")
            .cloned()
            .expect("certificate check");
        assert_eq!(
            certificate["counts"]["witness cosignatures"],
            serde_json::json!(1),
            "{report}"
        );
    });
}
