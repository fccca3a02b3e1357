//! Bad input to every `vellum` command (DESIGN P8): each is refused with a
//! message naming the line, file, stream or field, and nothing stored is
//! harmed — after each bad call `vellum verify` still passes and `read`
//! returns exactly the events from before. Also: `verify` names the file and
//! byte of a flipped byte, in text and JSON, with a non-zero exit.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;

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
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn ok(args: &[&str], stdin: &[u8]) -> String {
    let run = vellum(args, stdin);
    assert_eq!(
        run.code, 0,
        "vellum {args:?} failed:\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// Runs a command that must fail; returns stderr after checking that it
/// names every one of `needles`.
fn refused(args: &[&str], stdin: &[u8], needles: &[&str]) -> String {
    let run = vellum(args, stdin);
    assert_ne!(
        run.code, 0,
        "vellum {args:?} should fail; stdout: {}",
        run.stdout
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "vellum {args:?}: stderr should name {needle:?}:\n{}",
            run.stderr
        );
    }
    assert!(
        !run.stderr.contains("panicked"),
        "vellum {args:?} panicked: {}",
        run.stderr
    );
    run.stderr
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temp paths are utf-8")
}

/// A data directory holding known events on streams 16 and 17.
struct Seeded {
    tmp: tempfile::TempDir,
    data: PathBuf,
}

const STREAM_16: &str = "{\"n\":1}\n{\"n\":2}\n";
const STREAM_17: &str = "\"x\"\n";

impl Seeded {
    fn new() -> Seeded {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data = tmp.path().join("data");
        ok(&["init", "--data-dir", s(&data)], b"");
        ok(
            &["append", "--data-dir", s(&data), "--stream", "16"],
            STREAM_16.as_bytes(),
        );
        ok(
            &["append", "--data-dir", s(&data), "--stream", "17"],
            STREAM_17.as_bytes(),
        );
        Seeded { tmp, data }
    }

    fn dir(&self) -> &str {
        s(&self.data)
    }

    /// Verify passes and both streams hold exactly what they held before.
    fn assert_unharmed(&self) {
        let run = vellum(&["verify", "--data-dir", self.dir()], b"");
        assert_eq!(
            run.code, 0,
            "verify after a bad call:\n{}{}",
            run.stdout, run.stderr
        );
        for (stream, events) in [("16", STREAM_16), ("17", STREAM_17)] {
            let read = ok(&["read", "--data-dir", self.dir(), "--stream", stream], b"");
            assert_eq!(read, events, "stream {stream} changed");
        }
    }

    fn key_files(&self) -> Vec<PathBuf> {
        let keys = self.data.join("keys");
        let dek = std::fs::read_dir(&keys)
            .expect("keys dir")
            .map(|e| e.expect("dir entry").path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("dek-"))
            })
            .expect("a dek file exists after an append");
        vec![keys.join("kek.key"), keys.join("signing.key"), dek]
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every command that opens the data directory, with harmless arguments.
fn data_dir_commands(dir: &str) -> Vec<(Vec<&str>, &'static [u8])> {
    vec![
        (
            vec!["append", "--data-dir", dir, "--stream", "16"],
            b"{\"new\":1}\n",
        ),
        (vec!["read", "--data-dir", dir, "--stream", "16"], b""),
        (
            vec![
                "proof",
                "--data-dir",
                dir,
                "--stream",
                "16",
                "--offset",
                "0",
            ],
            b"",
        ),
        (
            vec![
                "proof",
                "--data-dir",
                dir,
                "--consistency",
                "--from-size",
                "1",
            ],
            b"",
        ),
        (vec!["index", "rebuild", "--data-dir", dir], b""),
    ]
}

/// Goal: a malformed JSON value on line 3 of 5 is refused naming line 3, and
/// not even lines 1-2 are appended — from stdin and from --file.
#[test]
fn malformed_line_3_of_5_appends_nothing() {
    let seeded = Seeded::new();
    let input = b"{\"a\":1}\n{\"b\":2}\n{\"c\": tru}\n{\"d\":4}\n{\"e\":5}\n";
    let stderr = refused(
        &["append", "--data-dir", seeded.dir(), "--stream", "16"],
        input,
        &["stdin", "line 3", "nothing was appended"],
    );
    assert!(
        !stderr.contains("line 1 "),
        "only line 3 is named: {stderr}"
    );
    let file = seeded.tmp.path().join("bad.ndjson");
    std::fs::write(&file, input).expect("write file");
    refused(
        &[
            "append",
            "--data-dir",
            seeded.dir(),
            "--stream",
            "18",
            "--file",
            s(&file),
        ],
        b"",
        &[s(&file), "line 3"],
    );
    // Trailing garbage after a value, and two values on one line.
    refused(
        &["append", "--data-dir", seeded.dir(), "--stream", "16"],
        b"1\n2\n{} x\n",
        &["line 3"],
    );
    refused(
        &["append", "--data-dir", seeded.dir(), "--stream", "16"],
        b"1\n\"a\" \"b\"\n",
        &["line 2"],
    );
    refused(
        &["read", "--data-dir", seeded.dir(), "--stream", "18"],
        b"",
        &["stream 18"],
    );
    seeded.assert_unharmed();
}

/// Goal: empty input, blank-only input, invalid UTF-8 (naming its line), an
/// oversized line (naming its line and the limit) and a missing --file are
/// refused, appending nothing.
#[test]
fn empty_blank_non_utf8_oversized_inputs_are_refused() {
    let seeded = Seeded::new();
    let append = ["append", "--data-dir", seeded.dir(), "--stream", "16"];
    refused(&append, b"", &["no events", "stdin"]);
    refused(&append, b"\n  \n\t\r\n\n", &["no events", "blank"]);
    refused(
        &append,
        b"1\n\"ok\"\n\"bad \xff\xfe\"\n",
        &["line 3", "UTF-8"],
    );
    let mut big = b"1\n\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1024 * 1024 + 10));
    big.extend(b"\"\n2\n");
    refused(&append, &big, &["line 2", "1048576 bytes"]);
    // Without a final newline the oversized line is still refused.
    refused(&append, &big[..big.len() - 4], &["line 2", "1048576 bytes"]);
    let missing = seeded.tmp.path().join("no-such-file.ndjson");
    refused(
        &[
            "append",
            "--data-dir",
            seeded.dir(),
            "--stream",
            "16",
            "--file",
            s(&missing),
        ],
        b"",
        &[s(&missing)],
    );
    seeded.assert_unharmed();
}

/// Goal: streams below 16 are reserved: append to them is refused naming
/// the stream and the first user stream; bad numbers are refused by name.
#[test]
fn reserved_streams_and_bad_numbers_are_refused() {
    let seeded = Seeded::new();
    for stream in ["0", "1", "15"] {
        refused(
            &["append", "--data-dir", seeded.dir(), "--stream", stream],
            b"{}\n",
            &[&format!("stream {stream}"), "reserved", "16"],
        );
    }
    refused(
        &["append", "--data-dir", seeded.dir(), "--stream", "-1"],
        b"{}\n",
        &["--stream"],
    );
    refused(
        &["append", "--data-dir", seeded.dir(), "--stream", "abc"],
        b"{}\n",
        &["--stream", "abc"],
    );
    refused(
        &[
            "read",
            "--data-dir",
            seeded.dir(),
            "--stream",
            "16",
            "--max",
            "10001",
        ],
        b"",
        &["--max", "10001"],
    );
    seeded.assert_unharmed();
}

/// Goal: every numeric flag refuses values above i64::MAX and
/// non-canonical spellings (`+5001`, `05001`) naming the flag, with a
/// non-zero exit, and nothing is stored.
#[test]
fn numeric_flags_refuse_huge_and_non_canonical_numbers() {
    let seeded = Seeded::new();
    let dir = seeded.dir();
    let out = seeded.tmp.path().join("out");
    let out = s(&out);
    let api = ["--cluster", dir];
    let bad = [
        "18446744073709551615",
        "9223372036854775808",
        "+5001",
        "05001",
    ];
    for value in bad {
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (
                vec!["append", "--data-dir", dir, "--stream", value],
                "--stream",
            ),
            (
                vec![
                    "append",
                    "--data-dir",
                    dir,
                    "--stream",
                    "16",
                    "--expected-offset",
                    value,
                ],
                "--expected-offset",
            ),
            (
                vec!["read", "--data-dir", dir, "--stream", value],
                "--stream",
            ),
            (
                vec!["read", "--data-dir", dir, "--stream", "16", "--from", value],
                "--from",
            ),
            (
                vec!["read", "--data-dir", dir, "--stream", "16", "--max", value],
                "--max",
            ),
            (
                [
                    &["export", "events"][..],
                    &api,
                    &["--stream", value, "--out", out],
                ]
                .concat(),
                "--stream",
            ),
            (
                [
                    &["export", "events"][..],
                    &api,
                    &["--stream", "16", "--from", value, "--out", out],
                ]
                .concat(),
                "--from",
            ),
            (
                [
                    &["export", "events"][..],
                    &api,
                    &["--stream", "16", "--to", value, "--out", out],
                ]
                .concat(),
                "--to",
            ),
            (
                [
                    &["export", "audit"][..],
                    &api,
                    &["--stream", value, "--out", out],
                ]
                .concat(),
                "--stream",
            ),
            (
                [
                    &["export", "audit"][..],
                    &api,
                    &["--from", value, "--out", out],
                ]
                .concat(),
                "--from",
            ),
            (
                [&["export", "disclosures"][..], &api, &["--stream", value]].concat(),
                "--stream",
            ),
            (vec!["bench", "--dir", out, "--appends", value], "--appends"),
            (vec!["bench", "--dir", out, "--batch", value], "--batch"),
            (vec!["sim", "--seed", value], "--seed"),
            (vec!["sim", "--ticks", value], "--ticks"),
            (
                vec!["dev", "--data-dir", dir, "--replicas", value],
                "--replicas",
            ),
            (
                vec![
                    "verify",
                    "--data-dir",
                    dir,
                    "--live",
                    "--index-lag-max",
                    value,
                ],
                "--index-lag-max",
            ),
        ];
        for (args, flag) in cases {
            let stderr = refused(&args, b"{}\n", &[flag]);
            // The message says why, whichever way the flag was parsed.
            let why = ["canonical", "above the largest", "too large", "not in"];
            assert!(
                why.iter().any(|w| stderr.contains(w)),
                "vellum {args:?}: says why: {stderr}"
            );
        }
    }
    assert!(
        !seeded.tmp.path().join("out").exists(),
        "no export was written"
    );
    seeded.assert_unharmed();
}

/// Goal: read and proof of an unknown stream, and of offsets past the end,
/// fail naming the stream and offset; consistency proofs from size 0, from
/// beyond the tree, and to an unsigned size are refused naming the sizes.
#[test]
fn unknown_streams_offsets_and_sizes_are_refused() {
    let seeded = Seeded::new();
    let dir = seeded.dir();
    refused(
        &["read", "--data-dir", dir, "--stream", "99"],
        b"",
        &["stream 99"],
    );
    refused(
        &["read", "--data-dir", dir, "--stream", "16", "--from", "5"],
        b"",
        &["--from 5", "stream 16"],
    );
    refused(
        &[
            "proof",
            "--data-dir",
            dir,
            "--stream",
            "99",
            "--offset",
            "0",
        ],
        b"",
        &["stream 99", "offset 0"],
    );
    refused(
        &[
            "proof",
            "--data-dir",
            dir,
            "--stream",
            "16",
            "--offset",
            "2",
        ],
        b"",
        &["stream 16", "offset 2"],
    );
    refused(
        &[
            "proof",
            "--data-dir",
            dir,
            "--consistency",
            "--from-size",
            "0",
        ],
        b"",
        &["--from-size", "got 0", "3"],
    );
    refused(
        &[
            "proof",
            "--data-dir",
            dir,
            "--consistency",
            "--from-size",
            "4",
        ],
        b"",
        &["--from-size", "got 4", "3"],
    );
    refused(
        &[
            "proof",
            "--data-dir",
            dir,
            "--consistency",
            "--from-size",
            "1",
            "--to-size",
            "9",
        ],
        b"",
        &["tree size 9"],
    );
    refused(&["proof", "--data-dir", dir], b"", &["--stream"]);
    refused(
        &["proof", "--data-dir", dir, "--consistency"],
        b"",
        &["--from-size"],
    );
    seeded.assert_unharmed();
}

/// Goal: a key file readable by others (kek, signing key, a data key) makes
/// every command that opens the data directory refuse, naming the file and
/// the chmod fix; verify warns the same way; after chmod 600 all works and
/// nothing — not even the audit index — was harmed.
#[test]
fn insecure_key_files_are_refused_until_fixed() {
    let seeded = Seeded::new();
    for key in seeded.key_files() {
        chmod(&key, 0o644);
        let fix = format!("chmod 600 {}", key.display());
        for (args, stdin) in data_dir_commands(seeded.dir()) {
            refused(&args, stdin, &[s(&key), &fix]);
        }
        refused(
            &["keys", "show", "--data-dir", seeded.dir()],
            b"",
            &[s(&key), &fix],
        );
        let verify = vellum(&["verify", "--data-dir", seeded.dir()], b"");
        assert!(
            verify.stderr.contains("warning") && verify.stderr.contains(&fix),
            "verify warns about {}: {}",
            key.display(),
            verify.stderr
        );
        chmod(&key, 0o600);
        seeded.assert_unharmed();
    }
}

/// Goal: a key directory open to others (0755) is refused with the chmod 700
/// fix by every command that opens the data directory, and works again after.
#[test]
fn insecure_keys_dir_is_refused_until_fixed() {
    let seeded = Seeded::new();
    let keys = seeded.data.join("keys");
    chmod(&keys, 0o755);
    let fix = format!("chmod 700 {}", keys.display());
    for (args, stdin) in data_dir_commands(seeded.dir()) {
        refused(&args, stdin, &[&fix]);
    }
    refused(&["keys", "show", "--data-dir", seeded.dir()], b"", &[&fix]);
    chmod(&keys, 0o700);
    seeded.assert_unharmed();
}

/// Goal: a corrupt trust policy (garbage, a truncated vkey, quorum 0, quorum
/// above the keys) makes verify (default and --policy) and every command that
/// opens the data directory fail naming the file and the line.
#[test]
fn corrupt_policy_is_refused_naming_file_and_line() {
    let seeded = Seeded::new();
    let path = seeded.data.join("policy.txt");
    let good = std::fs::read_to_string(&path).expect("policy");
    let witness = good.lines().nth(1).expect("witness line");
    let truncated = good.replace(witness, &witness[..witness.len() - 10]);
    let cases = [
        ("garbage\n".to_string(), "line 1"),
        (truncated, "line 2"),
        (
            good.replace("group replicas 1 ", "group replicas 0 "),
            "line 3",
        ),
        (
            good.replace("group replicas 1 ", "group replicas 2 "),
            "line 3",
        ),
    ];
    let copy = seeded.tmp.path().join("pinned.txt");
    for (text, line) in cases {
        assert_ne!(text, good, "the case changes the policy");
        std::fs::write(&path, &text).expect("write policy");
        std::fs::write(&copy, &text).expect("write policy copy");
        refused(
            &["verify", "--data-dir", seeded.dir()],
            b"",
            &[s(&path), line],
        );
        refused(
            &[
                "verify",
                "--data-dir",
                seeded.dir(),
                "--policy",
                s(&copy),
                "--json",
            ],
            b"",
            &[s(&copy), line],
        );
        for (args, stdin) in data_dir_commands(seeded.dir()) {
            refused(&args, stdin, &[s(&path), line]);
        }
        std::fs::write(&path, &good).expect("restore policy");
        seeded.assert_unharmed();
    }
}

/// Goal: a well-formed policy pinning a different key fails verify in the
/// certificate signatures check, in text and JSON, with a non-zero exit.
#[test]
fn policy_with_another_key_fails_certificate_signatures() {
    let seeded = Seeded::new();
    let good = std::fs::read_to_string(seeded.data.join("policy.txt")).expect("policy");
    let origin = Policy::parse(&good).expect("policy parses").origin;
    let stranger = Signer::from_seed("stranger", [7u8; 32]).expect("signer");
    let other = Policy::new(&origin, vec![stranger.verifier()], 1).expect("policy");
    let path = seeded.tmp.path().join("other-policy.txt");
    std::fs::write(&path, other.encode()).expect("write policy");
    let text = vellum(
        &["verify", "--data-dir", seeded.dir(), "--policy", s(&path)],
        b"",
    );
    assert_ne!(text.code, 0, "verify must fail: {}", text.stdout);
    let failing: Vec<&str> = text
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert!(
        failing.iter().any(|l| l.contains("certificate signatures")),
        "the certificate signatures check fails: {}",
        text.stdout
    );
    let json = vellum(
        &[
            "verify",
            "--data-dir",
            seeded.dir(),
            "--policy",
            s(&path),
            "--json",
        ],
        b"",
    );
    assert_ne!(json.code, 0);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON report");
    assert_eq!(report["passed"], false);
    let check = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "certificate signatures")
        .expect("certificate signatures check");
    assert_eq!(check["outcome"], "fail", "{check}");
    seeded.assert_unharmed();
}

/// Goal: init on an initialized directory is refused naming it, and no file
/// in it changes.
#[test]
fn init_twice_refuses_and_changes_nothing() {
    let seeded = Seeded::new();
    let before = snapshot(&seeded.data);
    refused(
        &["init", "--data-dir", seeded.dir()],
        b"",
        &[seeded.dir(), "already initialized"],
    );
    assert_eq!(snapshot(&seeded.data), before, "init twice changed files");
    seeded.assert_unharmed();
}

/// Goal: a missing data directory, and a directory without vellum.json, are
/// refused by every command naming the directory and how to create one.
#[test]
fn missing_or_uninitialized_data_dir_is_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let missing = tmp.path().join("nope");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    for dir in [&missing, &empty] {
        let d = s(dir);
        for (args, stdin) in data_dir_commands(d) {
            refused(&args, stdin, &[d, "vellum init"]);
        }
        refused(&["keys", "show", "--data-dir", d], b"", &[d, "vellum init"]);
    }
    refused(
        &["verify", "--data-dir", s(&missing)],
        b"",
        &[s(&missing), "does not exist"],
    );
    assert!(
        !missing.exists(),
        "no command creates a missing data directory"
    );
    assert_eq!(
        std::fs::read_dir(&empty).expect("read dir").count(),
        0,
        "nothing was created in the uninitialized directory"
    );
}

/// Goal: a corrupt vellum.json is refused by every command that opens the
/// data directory, naming the file; restoring it restores everything.
#[test]
fn corrupt_vellum_json_is_refused_naming_it() {
    let seeded = Seeded::new();
    let meta = seeded.data.join("vellum.json");
    let good = std::fs::read(&meta).expect("vellum.json");
    let cut = &good[..good.len() / 2];
    for bad in [cut, b"garbage" as &[u8], b"{\"layout_version\": 99}"] {
        std::fs::write(&meta, bad).expect("write vellum.json");
        for (args, stdin) in data_dir_commands(seeded.dir()) {
            refused(&args, stdin, &[s(&meta)]);
        }
        std::fs::write(&meta, &good).expect("restore vellum.json");
        seeded.assert_unharmed();
    }
}

/// Goal: an --index-url with an unsupported scheme is refused by every
/// command naming the URL (password hidden) and the accepted schemes; init
/// with it creates nothing.
#[test]
fn bad_index_url_scheme_is_refused() {
    let seeded = Seeded::new();
    let url = "mysql://user:secret@localhost/db";
    for (mut args, stdin) in data_dir_commands(seeded.dir()) {
        args.extend(["--index-url", url]);
        let stderr = refused(
            &args,
            stdin,
            &["mysql://user:***@localhost/db", "postgres://"],
        );
        assert!(!stderr.contains("secret"), "the password is never printed");
    }
    let verify = vellum(
        &["verify", "--data-dir", seeded.dir(), "--index-url", url],
        b"",
    );
    assert_ne!(verify.code, 0, "verify fails its index check");
    assert!(verify.stdout.contains("postgres://") && !verify.stdout.contains("secret"));
    let fresh = seeded.tmp.path().join("fresh");
    refused(
        &["init", "--data-dir", s(&fresh), "--index-url", url],
        b"",
        &["mysql://", "postgres://"],
    );
    assert!(!fresh.exists(), "init with a bad URL creates nothing");
    seeded.assert_unharmed();
}

/// Goal: one flipped byte in the middle of a segment makes verify exit
/// non-zero, name the segment file and byte offset in text, and report
/// `passed: false` in JSON.
#[test]
fn verify_names_file_and_byte_of_a_flipped_byte() {
    let seeded = Seeded::new();
    let segment = seeded.data.join("segments/00000000000000000000.vseg");
    let mut bytes = std::fs::read(&segment).expect("segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&segment, &bytes).expect("write segment");
    let text = vellum(&["verify", "--data-dir", seeded.dir()], b"");
    assert_ne!(
        text.code, 0,
        "verify passes a flipped byte: {}",
        text.stdout
    );
    assert!(text.stdout.contains("FAILED"), "{}", text.stdout);
    let named = text
        .stdout
        .lines()
        .any(|l| l.contains("00000000000000000000.vseg") && l.contains("byte "));
    assert!(named, "the failure names file and byte: {}", text.stdout);
    let json = vellum(&["verify", "--data-dir", seeded.dir(), "--json"], b"");
    assert_ne!(json.code, 0);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON report");
    assert_eq!(report["passed"], false);
    let located = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .flat_map(|c| c["failures"].as_array().cloned().unwrap_or_default())
        .any(|f| {
            let at = f["location"].as_str().unwrap_or_default();
            at.contains("00000000000000000000.vseg") && at.contains("byte")
        });
    assert!(located, "a JSON failure names file and byte: {report}");
}

/// Every file under `dir` with its bytes and mode.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).expect("read dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::metadata(&path).expect("metadata");
            if meta.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read file");
                out.push((path, bytes, meta.permissions().mode()));
            }
        }
    }
    out.sort();
    out
}
