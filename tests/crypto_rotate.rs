//! KEK rotation (`crypto::rotate_kek`): every event sealed before reads back
//! byte for byte after, the old KEK is refused with a named error and its
//! file is gone, and a crash after any file operation (of the rotation, and
//! of the recovery after it) leaves a store that opens with exactly one of
//! the two KEKs and has lost no data key.

use std::path::{Path, PathBuf};

mod support;

use vellum::crypto::{
    CrashGate, CryptoError, EventAad, Kek, KeyHome, KeyStore, NewKek, ROTATED_RECORDS_FILE,
    ROTATION_JOURNAL_FILE, ROTATION_STAGING_DIR, Recovery, kek_fingerprint, open_event,
    pending_rotation_records, recover_kek_rotation, rotate_kek, seal_event,
};

/// Streams with one data key each; stream 19 is shredded before rotating.
const STREAMS: [u64; 4] = [16, 17, 18, 19];
const SHREDDED: u64 = 19;
/// The rotation's step that writes the commit journal: prepare journal, new
/// KEK, staging directory, the 4 kept keys, the staged marker, then it.
const COMMIT_STEP: u32 = 9;

/// One sealed event and what is needed to open it again.
struct Sealed {
    key_id: u64,
    nonce: [u8; 12],
    aad: EventAad,
    bytes: Vec<u8>,
    payload: Vec<u8>,
}

/// A key store with a file KEK (`keys/kek.key`), keys for [`STREAMS`] (one
/// stream rotated to a second key), one event sealed under each key, and a
/// second KEK file outside `keys/` to rotate to.
struct Fixture {
    _data: tempfile::TempDir,
    keys: PathBuf,
    kek_file: PathBuf,
    new_kek_file: PathBuf,
    old_line: Vec<u8>,
    new_line: Vec<u8>,
    sealed: Vec<Sealed>,
}

impl Fixture {
    fn new() -> Fixture {
        let data = tempfile::tempdir().expect("temp dir");
        let keys = data.path().join("keys");
        std::fs::create_dir(&keys).expect("keys dir");
        std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
        let kek_file = keys.join("kek.key");
        let new_kek_file = data.path().join("next-kek.key");
        let store =
            KeyStore::create(&keys, Kek::create_file(&kek_file).expect("kek"), 2).expect("store");
        Kek::create_file(&new_kek_file).expect("new kek");
        let mut sealed = Vec::new();
        for (n, stream) in STREAMS.iter().chain(&[17]).enumerate() {
            let (key_id, dek) = match n {
                4 => store.create_key(*stream).expect("a second key"),
                _ => store.ensure_key_for_stream(*stream).expect("key"),
            };
            let nonce = store.next_nonce(key_id).expect("nonce");
            let aad = EventAad {
                cluster: 7,
                stream: *stream,
                stream_offset: n as u64,
                key_id,
            };
            let payload =
                format!("{{\"resourceType\":\"Observation\",\"n\":{n}}}\u{e9}\0").into_bytes();
            let bytes = seal_event(&dek, nonce, &aad, &[n as u8; 32], &payload).expect("seal");
            sealed.push(Sealed {
                key_id,
                nonce,
                aad,
                bytes,
                payload,
            });
        }
        store.shred_stream(SHREDDED).expect("shred");
        drop(store);
        Fixture {
            old_line: std::fs::read(&kek_file).expect("kek line"),
            new_line: std::fs::read(&new_kek_file).expect("new kek line"),
            _data: data,
            keys,
            kek_file,
            new_kek_file,
            sealed,
        }
    }

    fn home(&self) -> KeyHome<'_> {
        KeyHome {
            keys_dir: &self.keys,
            kek_file: &self.kek_file,
            writer_id: 2,
        }
    }

    fn old_kek(&self) -> Kek {
        kek_of_line(&self.old_line)
    }

    fn new_kek(&self) -> Kek {
        kek_of_line(&self.new_line)
    }

    fn rotate(&self, gate: &mut CrashGate) -> Result<vellum::crypto::RotationReport, CryptoError> {
        rotate_kek(
            self.home(),
            None,
            NewKek::CopyFile(&self.new_kek_file),
            &mut |_| panic!("a file kek rotated to a file kek never rewrites vellum.json"),
            gate,
        )
    }

    fn recover(&self, gate: &mut CrashGate) -> Result<Recovery, CryptoError> {
        recover_kek_rotation(
            self.home(),
            &mut |_| panic!("a file kek rotated to a file kek never rewrites vellum.json"),
            gate,
        )
    }

    /// Opens the store with `kek` and opens every sealed event of a kept
    /// stream byte for byte; the shredded stream stays shredded.
    fn check_every_event(&self, kek: Kek, what: &str) {
        let store = KeyStore::open(&self.keys, kek, 2).unwrap_or_else(|e| panic!("{what}: {e}"));
        for event in &self.sealed {
            if event.aad.stream == SHREDDED {
                assert!(
                    matches!(store.key(event.key_id), Err(CryptoError::Shredded { .. })),
                    "{what}: a shredded key stays destroyed"
                );
                continue;
            }
            let dek = store
                .key(event.key_id)
                .unwrap_or_else(|e| panic!("{what}: key {}: {e}", event.key_id))
                .unwrap_or_else(|| panic!("{what}: key {} lost", event.key_id));
            let opened = open_event(&dek, &event.nonce, &event.aad, &event.bytes)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                opened.payload[..],
                event.payload[..],
                "{what}: byte for byte"
            );
        }
        assert_eq!(
            store.held_keys().expect("held").len(),
            4,
            "{what}: every kept key"
        );
    }

    fn refused_with(&self, kek: Kek, what: &str) {
        match KeyStore::open(&self.keys, kek, 2) {
            Err(CryptoError::WrongKek { path }) => {
                assert!(path.ends_with("keystore"), "{what}: names the marker")
            }
            other => panic!("{what}: expected WrongKek, got {other:?}"),
        }
    }

    /// No file under `keys/` (any depth) holds the old KEK's line or bytes.
    fn old_kek_bytes_gone(&self) {
        let raw = old_raw_key(&self.old_line);
        for path in files_under(&self.keys) {
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                !contains(&bytes, &self.old_line) && !contains(&bytes, &raw),
                "{} still holds the old kek",
                path.display()
            );
        }
    }
}

fn kek_of_line(line: &[u8]) -> Kek {
    Kek::from_bytes(&old_raw_key(line))
}

/// The 32 raw bytes of a `vellum-kek-v1 <base64>\n` line.
fn old_raw_key(line: &[u8]) -> [u8; 32] {
    use base64::Engine as _;
    let text = std::str::from_utf8(line).expect("utf-8");
    let encoded = text
        .trim_end()
        .strip_prefix("vellum-kek-v1 ")
        .expect("kek line");
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64")
        .try_into()
        .expect("32 bytes")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Goal: after a rotation every event reads back byte for byte under the
/// new KEK, the old KEK is refused as `WrongKek`, the old KEK's file and
/// bytes are gone from `keys/`, nothing of the rotation is left behind,
/// and one audit record with both fingerprints waits for the trail.
#[test]
fn rotate_then_every_event_reads_back_and_the_old_kek_is_refused() {
    let fixture = Fixture::new();
    let old_fingerprint = kek_fingerprint(&fixture.keys).expect("fingerprint");
    let report = fixture.rotate(&mut CrashGate::never()).expect("rotate");
    assert_eq!(report.keys_rewrapped, 4, "every kept key rewrapped");
    assert_eq!(report.old_fingerprint, old_fingerprint);
    assert_eq!(
        report.new_fingerprint,
        kek_fingerprint(&fixture.keys).expect("fingerprint")
    );
    assert_ne!(report.old_fingerprint, report.new_fingerprint);
    fixture.check_every_event(fixture.new_kek(), "after rotation");
    fixture.refused_with(fixture.old_kek(), "the old kek after rotation");
    assert_eq!(
        std::fs::read(&fixture.kek_file).expect("kek.key"),
        fixture.new_line,
        "kek.key holds the new kek"
    );
    fixture.old_kek_bytes_gone();
    for leftover in [ROTATION_JOURNAL_FILE, ROTATION_STAGING_DIR, "kek.next"] {
        assert!(
            !fixture.keys.join(leftover).exists(),
            "{leftover} left behind"
        );
    }
    let records = pending_rotation_records(&fixture.keys).expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].old_fingerprint, report.old_fingerprint);
    assert_eq!(records[0].new_fingerprint, report.new_fingerprint);
    let text = std::fs::read(fixture.keys.join(ROTATED_RECORDS_FILE)).expect("records file");
    assert!(
        !contains(&text, &fixture.new_line) && !contains(&text, &old_raw_key(&fixture.new_line)),
        "the audit record holds no key material"
    );
}

/// Goal: a second rotation to the KEK in use is refused before anything
/// changes, and a rotation is refused while another's journal is present.
#[test]
fn rotation_to_the_same_kek_or_over_a_journal_is_refused() {
    let fixture = Fixture::new();
    let same = rotate_kek(
        fixture.home(),
        None,
        NewKek::CopyFile(&fixture.kek_file),
        &mut |_| Ok(()),
        &mut CrashGate::never(),
    );
    assert!(
        matches!(same, Err(CryptoError::RotationRefused(ref why)) if why.contains("in use")),
        "{same:?}"
    );
    fixture.check_every_event(fixture.old_kek(), "after the refusal");
    assert!(fixture.rotate(&mut CrashGate::after(3)).is_err(), "crash");
    let again = fixture.rotate(&mut CrashGate::never());
    assert!(
        matches!(again, Err(CryptoError::RotationInterrupted { .. })),
        "{again:?}"
    );
}

/// Goal: a crash after any step k of the rotation, then recovery (itself
/// crashed after any step j, then run again), always leaves a store that
/// opens with exactly one of the two KEKs (the old one before the commit
/// point, the new one from it on), holds every data key, and is refused
/// (`RotationInterrupted`) by a plain open before recovery ran.
#[test]
fn a_crash_at_every_step_keeps_exactly_one_kek_and_every_key() {
    let mut outcomes = (0, 0);
    let mut total_steps = None;
    for k in 1..100 {
        let fixture = Fixture::new();
        let mut gate = CrashGate::after(k);
        if fixture.rotate(&mut gate).is_ok() {
            total_steps = Some(k - 1);
            break;
        }
        // A crash after the last step (the journal's removal) is no
        // interruption: the rotation is complete.
        let interrupted = fixture.keys.join(ROTATION_JOURNAL_FILE).exists();
        if interrupted {
            assert!(
                matches!(
                    KeyStore::open(&fixture.keys, fixture.old_kek(), 2),
                    Err(CryptoError::RotationInterrupted { .. })
                ),
                "step {k}: a plain open refuses an interrupted rotation"
            );
        }
        let recovery_steps = crash_recovery_at_every_step(k);
        let recovery = fixture.recover(&mut CrashGate::never()).expect("recover");
        assert_eq!(
            !matches!(recovery, Recovery::RolledBack),
            k >= COMMIT_STEP,
            "step {k}: rolled forward exactly from the commit journal on"
        );
        let (kept, other) = match recovery {
            Recovery::RolledBack => {
                outcomes.0 += 1;
                (fixture.old_kek(), fixture.new_kek())
            }
            Recovery::Finished(_) => {
                outcomes.1 += 1;
                (fixture.new_kek(), fixture.old_kek())
            }
            Recovery::Nothing => {
                assert!(
                    !interrupted,
                    "step {k}: a journal present, yet nothing recovered"
                );
                (fixture.new_kek(), fixture.old_kek())
            }
        };
        let what = format!("crash after step {k} ({recovery_steps} recovery crash points)");
        fixture.check_every_event(kept, &what);
        fixture.refused_with(other, &what);
        if !matches!(recovery, Recovery::RolledBack) {
            fixture.old_kek_bytes_gone();
        }
    }
    let total_steps = total_steps.expect("the rotation finishes within 100 steps");
    assert!(total_steps >= 12, "{total_steps} steps");
    assert!(
        outcomes.0 > 0 && outcomes.1 > 0,
        "both sides of the commit point: {outcomes:?}"
    );
}

/// For a rotation crashed after step `k`: recovery crashed after each of
/// its steps j, then recovered again, ends like an uninterrupted recovery.
/// Returns how many recovery steps there were.
fn crash_recovery_at_every_step(k: u32) -> u32 {
    for j in 1..100 {
        let fixture = Fixture::new();
        assert!(fixture.rotate(&mut CrashGate::after(k)).is_err());
        if fixture.recover(&mut CrashGate::after(j)).is_ok() {
            return j - 1;
        }
        fixture
            .recover(&mut CrashGate::never())
            .expect("recover again");
        let what = format!("rotation crash {k}, recovery crash {j}");
        match k >= COMMIT_STEP {
            true => {
                fixture.check_every_event(fixture.new_kek(), &what);
                fixture.refused_with(fixture.old_kek(), &what);
            }
            false => {
                fixture.check_every_event(fixture.old_kek(), &what);
                fixture.refused_with(fixture.new_kek(), &what);
            }
        }
    }
    panic!("recovery never finished within 100 steps")
}

/// Goal: `vellum keys rotate-kek` refuses bad input with a message naming
/// what is wrong, and changes nothing: a KEK file others may read, a
/// malformed one, a missing one, the KEK in use, a token flag on a file
/// KEK, a directory that is not a data directory. Then a good rotation
/// works, `--recover-only` finds nothing, and the events read back.
#[test]
fn rotate_kek_cli_refuses_bad_input_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = support::TestDir::new("vellum-rotate-cli");
    let data = dir.path().join("data");
    let d = data.to_str().expect("utf-8");
    let (code, _, err) = support::vellum_cli(&["init", "--data-dir", d]);
    assert_eq!(code, 0, "init: {err}");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"n\":1,\"t\":\"caf\u{e9}\"}\n{\"n\":2}\n").expect("events");
    let (code, _, err) = support::vellum_cli(&[
        "append",
        "--data-dir",
        d,
        "--stream",
        "16",
        "--file",
        events.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "append: {err}");
    let kek_before = std::fs::read(data.join("keys/kek.key")).expect("kek");

    let open_kek = dir.path().join("open.key");
    std::fs::copy(dir.path().join("data/keys/kek.key"), &open_kek).expect("copy");
    std::fs::set_permissions(&open_kek, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let in_use = dir.path().join("in-use.key");
    std::fs::copy(dir.path().join("data/keys/kek.key"), &in_use).expect("copy");
    std::fs::set_permissions(&in_use, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let malformed = dir.path().join("malformed.key");
    std::fs::write(&malformed, "vellum-kek-v1 not-base64\n").expect("write");
    std::fs::set_permissions(&malformed, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let p = |path: &Path| path.to_str().expect("utf-8").to_string();
    let missing = dir.path().join("missing.key");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--new-kek-file".into(), p(&open_kek)],
            "insecure permissions",
        ),
        (
            vec!["--new-kek-file".into(), p(&malformed)],
            "invalid base64",
        ),
        (vec!["--new-kek-file".into(), p(&missing)], "missing.key"),
        (vec!["--new-kek-file".into(), p(&in_use)], "in use"),
        (vec!["--new-key-label".into(), "x".into()], "pkcs11"),
    ];
    for (flags, says) in cases {
        let mut args = vec!["keys", "rotate-kek", "--data-dir", d];
        args.extend(flags.iter().map(String::as_str));
        let (code, out, err) = support::vellum_cli(&args);
        assert_ne!(code, 0, "{flags:?} must be refused: {out}");
        assert!(err.contains(says), "{flags:?}: {err}");
        assert_eq!(
            std::fs::read(data.join("keys/kek.key")).expect("kek"),
            kek_before,
            "{flags:?} changed the kek"
        );
        for leftover in [ROTATION_JOURNAL_FILE, ROTATION_STAGING_DIR, "kek.next"] {
            assert!(
                !data.join("keys").join(leftover).exists(),
                "{flags:?}: {leftover}"
            );
        }
    }
    let nowhere = dir.path().join("nowhere");
    let (code, _, err) = support::vellum_cli(&[
        "keys",
        "rotate-kek",
        "--data-dir",
        nowhere.to_str().expect("utf-8"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("nowhere"), "{err}");

    let (code, out, err) = support::vellum_cli(&["keys", "rotate-kek", "--data-dir", d, "--json"]);
    assert_eq!(code, 0, "rotate: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["keys_rewrapped"], 1, "{out}");
    assert_ne!(
        std::fs::read(data.join("keys/kek.key")).expect("kek"),
        kek_before
    );
    let (code, out, _) =
        support::vellum_cli(&["keys", "rotate-kek", "--data-dir", d, "--recover-only"]);
    assert_eq!((code, out.trim()), (0, "no kek rotation was in progress"));
    let (code, out, err) = support::vellum_cli(&["read", "--data-dir", d, "--stream", "16"]);
    assert_eq!(code, 0, "read: {err}");
    assert_eq!(
        out, "{\"n\":1,\"t\":\"caf\u{e9}\"}\n{\"n\":2}\n",
        "byte for byte"
    );
    let (code, out, err) = support::vellum_cli(&["verify", "--data-dir", d]);
    assert_eq!(code, 0, "verify: {out}\n{err}");
}
