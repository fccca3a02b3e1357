//! Replica signing-key rotation on a stopped replica: a new Ed25519 key,
//! the announcement signed by the old and the new key
//! (`vellum_audit::key_history`), the rotation pinned in the replica's own
//! policy, then the old key destroyed, crash-safe at every file operation.
//!
//! Driven by a journal, `keys/signing-rotation`, whose phase decides what a
//! restart does with a rotation a crash cut short (docs/format.md,
//! "Signing-key rotation", lists every crash case):
//!
//! 1. `prepare` journal written (origin, replica, first op of the new key).
//! 2. The new key made at `keys/signing.next` (0600, fsynced).
//! 3. `commit` journal written with the announcement's pinned line (both
//!    signatures): **the commit point**. Before it, recovery rolls back (the
//!    new key file destroyed; the old key stays in force); from it on,
//!    recovery rolls forward.
//! 4. The line appended to `keys/signing-rotations` (public: every rotation
//!    this replica made, for the operator to pin on every replica and give
//!    the auditors).
//! 5. The rotation pinned in the replica's `policy.txt` (the caller's
//!    `pin`, idempotent).
//! 6. The old key destroyed (overwritten with zeros, fsynced, deleted), then
//!    `signing.next` renamed to `signing.key`.
//! 7. The journal removed.
//!
//! At every point one key file holds the key the journal's phase puts in
//! force: `signing.key` (old) before the commit point; after it,
//! `signing.next` until its rename, then `signing.key` (new). Never
//! neither.

use std::path::Path;

use serde::{Deserialize, Serialize};
use vellum_audit::key_history::KeyRotation;
use vellum_audit::note::Signer;

use super::signing::{create_signing_key_file, load_signing_key_file};
use super::store::read_store_file;
use super::{CrashGate, CryptoError, fsutil};

/// The signing-key rotation journal in `keys/` (only while one runs).
pub const SIGNING_ROTATION_JOURNAL_FILE: &str = "signing-rotation";
/// The new signing key until it replaces `signing.key`.
pub const NEXT_SIGNING_KEY_FILE: &str = "signing.next";
/// Every rotation this replica made, one pinned line each (public).
pub const SIGNING_ROTATIONS_FILE: &str = "signing-rotations";
/// How many of the first rotations in `keys/signing-rotations` have their
/// announcement committed in the log (a decimal count and a newline;
/// absent: none). The rest are announced at the replica's next start.
pub const SIGNING_ROTATIONS_LOGGED_FILE: &str = "signing-rotations.logged";
/// Most rotations `keys/signing-rotations` holds.
pub const SIGNING_ROTATIONS_MAX: usize = 256;
/// Version of the journal.
const SIGNING_ROTATION_FORMAT_VERSION: u32 = 1;

/// The key files a signing-key rotation works on.
#[derive(Debug, Clone, Copy)]
pub struct SigningKeyHome<'a> {
    /// `<data>/keys`.
    pub keys_dir: &'a Path,
    /// `<data>/keys/signing.key`.
    pub key_file: &'a Path,
}

/// Pins a committed rotation where the replica reads its policy
/// (`policy.txt`); must do nothing when it is pinned already.
pub type PinRotation<'a> = dyn FnMut(&KeyRotation) -> Result<(), CryptoError> + 'a;

/// What [`recover_signing_rotation`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningRecovery {
    /// No rotation was in progress.
    Nothing,
    /// A rotation cut short before its commit point was undone.
    RolledBack,
    /// A committed rotation was finished: the new key is in force.
    Finished(Box<KeyRotation>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Prepare,
    Commit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    v: u32,
    phase: Phase,
    origin: String,
    replica: usize,
    from_op: u64,
    /// The pinned line, both signatures included (the commit journal's).
    rotation: Option<String>,
}

/// Rotates the signing key of a stopped replica (index `replica` in the
/// log `origin`) so the new key signs every checkpoint from `from_op` on.
/// The caller holds the data directory's lock, has finished any rotation a
/// crash cut short ([`recover_signing_rotation`]), and picks `from_op`
/// after every op the old key may have signed (the log's last op + 1).
pub fn rotate_signing_key(
    home: SigningKeyHome<'_>,
    origin: &str,
    replica: usize,
    from_op: u64,
    pin: &mut PinRotation<'_>,
    gate: &mut CrashGate,
) -> Result<KeyRotation, CryptoError> {
    let refuse = |why: String| Err(CryptoError::RotationRefused(why));
    let journal_path = home.keys_dir.join(SIGNING_ROTATION_JOURNAL_FILE);
    if journal_path.exists() {
        return refuse(format!(
            "{} exists: a signing-key rotation was cut short; recover it first",
            journal_path.display()
        ));
    }
    let next = home.keys_dir.join(NEXT_SIGNING_KEY_FILE);
    if next.exists() {
        return refuse(format!(
            "{} exists without a rotation journal; it is not vellum's to remove",
            next.display()
        ));
    }
    if from_op == 0 {
        return refuse("a rotation starts at op 1 or later".to_string());
    }
    let made = signing_rotations(home.keys_dir)?;
    if made.len() >= SIGNING_ROTATIONS_MAX {
        return refuse(format!(
            "this replica made {SIGNING_ROTATIONS_MAX} rotations already"
        ));
    }
    if let Some(last) = made.iter().rfind(|r| r.replica == replica)
        && from_op <= last.from_op
    {
        return refuse(format!(
            "the last rotation took effect at op {}; a new one must start after it (op {from_op} does not)",
            last.from_op
        ));
    }
    let old = load_signing_key_file(home.key_file)?;
    let mut journal = Journal {
        v: SIGNING_ROTATION_FORMAT_VERSION,
        phase: Phase::Prepare,
        origin: origin.to_string(),
        replica,
        from_op,
        rotation: None,
    };
    write_journal(home.keys_dir, &journal)?;
    gate.step("prepare journal")?;
    let new = create_signing_key_file(&next, old.name())?;
    gate.step("new signing key")?;
    let rotation = KeyRotation::sign(origin, replica, from_op, &old, &new);
    drop((old, new));
    journal.phase = Phase::Commit;
    journal.rotation = Some(rotation.to_line());
    write_journal(home.keys_dir, &journal)?;
    gate.step("commit journal")?;
    let rotation = finish(home, &journal, pin, gate)?;
    tracing::info!(replica, from_op, new = %rotation.new.to_vkey(), "rotated the signing key");
    Ok(rotation)
}

/// Finishes or undoes a signing-key rotation a crash cut short, by its
/// journal; does nothing without one. Run before the signing key is loaded.
pub fn recover_signing_rotation(
    home: SigningKeyHome<'_>,
    pin: &mut PinRotation<'_>,
    gate: &mut CrashGate,
) -> Result<SigningRecovery, CryptoError> {
    let Some(journal) = read_journal(home.keys_dir)? else {
        return Ok(SigningRecovery::Nothing);
    };
    match journal.phase {
        Phase::Prepare => {
            tracing::warn!("rolling back a signing-key rotation cut short before its commit");
            let next = home.keys_dir.join(NEXT_SIGNING_KEY_FILE);
            if next.exists() {
                fsutil::overwrite_and_remove(&next)?;
                gate.step("new signing key destroyed")?;
            }
            remove_journal(home.keys_dir)?;
            gate.step("journal removed")?;
            Ok(SigningRecovery::RolledBack)
        }
        Phase::Commit => {
            tracing::warn!("finishing a committed signing-key rotation");
            finish(home, &journal, pin, gate).map(|r| SigningRecovery::Finished(Box::new(r)))
        }
    }
}

/// The rotations this replica made, oldest first (`keys/signing-rotations`).
pub fn signing_rotations(keys_dir: &Path) -> Result<Vec<KeyRotation>, CryptoError> {
    let path = keys_dir.join(SIGNING_ROTATIONS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = read_store_file(&path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        CryptoError::format(&path, format!("not utf-8 at byte {}", e.valid_up_to()))
    })?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            KeyRotation::parse_line(line)
                .map_err(|e| CryptoError::format(&path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// The rotations this replica made whose announcement is not yet
/// committed in the log, oldest first: those in `keys/signing-rotations`
/// after the count in `keys/signing-rotations.logged`. Durable by
/// construction (the rotation wrote them before it destroyed the old key),
/// so a crash at any point delays an announcement, never loses it.
pub fn pending_signing_announcements(keys_dir: &Path) -> Result<Vec<KeyRotation>, CryptoError> {
    let made = signing_rotations(keys_dir)?;
    let logged = logged_announcements(keys_dir)?;
    Ok(made.get(logged..).unwrap_or_default().to_vec())
}

/// Marks the first `recorded` pending announcements as committed in the
/// log, durably (an atomic replace of `keys/signing-rotations.logged`). A
/// crash between the commit and this leaves them pending: the next start
/// announces them again, and the log holds the same line twice (verifiers
/// take identical announcements as one).
pub fn signing_announcements_logged(keys_dir: &Path, recorded: usize) -> Result<(), CryptoError> {
    let made = signing_rotations(keys_dir)?.len();
    let logged = logged_announcements(keys_dir)?
        .saturating_add(recorded)
        .min(made);
    fsutil::replace_private(
        &keys_dir.join(SIGNING_ROTATIONS_LOGGED_FILE),
        format!("{logged}\n").as_bytes(),
    )
}

fn logged_announcements(keys_dir: &Path) -> Result<usize, CryptoError> {
    let path = keys_dir.join(SIGNING_ROTATIONS_LOGGED_FILE);
    if !path.exists() {
        return Ok(0);
    }
    let bytes = read_store_file(&path)?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.strip_suffix('\n'))
        .and_then(|count| count.parse::<usize>().ok())
        .filter(|count| *count <= SIGNING_ROTATIONS_MAX)
        .ok_or_else(|| CryptoError::format(&path, "not a count of logged rotations"))
}

/// Rolls forward from the commit point; each step is skipped when a crash
/// after it left it done, so running this again is harmless.
fn finish(
    home: SigningKeyHome<'_>,
    journal: &Journal,
    pin: &mut PinRotation<'_>,
    gate: &mut CrashGate,
) -> Result<KeyRotation, CryptoError> {
    let journal_path = home.keys_dir.join(SIGNING_ROTATION_JOURNAL_FILE);
    let line = journal.rotation.as_deref().ok_or_else(|| {
        CryptoError::format(&journal_path, "a commit journal without the rotation")
    })?;
    let rotation = KeyRotation::parse_line(line)
        .map_err(|e| CryptoError::format(&journal_path, e.to_string()))?;
    let mut made = signing_rotations(home.keys_dir)?;
    if !made.contains(&rotation) {
        made.push(rotation.clone());
        let text: String = made.iter().map(|r| r.to_line() + "\n").collect();
        fsutil::replace_private(&home.keys_dir.join(SIGNING_ROTATIONS_FILE), text.as_bytes())?;
        gate.step("rotation recorded")?;
    }
    pin(&rotation)?;
    gate.step("rotation pinned")?;
    let next = home.keys_dir.join(NEXT_SIGNING_KEY_FILE);
    if next.exists() {
        let staged: Signer = load_signing_key_file(&next)?;
        if staged.verifier() != rotation.new {
            return Err(CryptoError::format(
                &next,
                "is not the key the committed rotation announces; refusing to guess",
            ));
        }
        if home.key_file.exists() {
            fsutil::overwrite_and_remove(home.key_file)?;
            gate.step("old signing key destroyed")?;
        }
        std::fs::rename(&next, home.key_file).map_err(|e| CryptoError::io(home.key_file, e))?;
        fsutil::sync_dir(home.keys_dir)?;
        gate.step("new signing key installed")?;
    }
    remove_journal(home.keys_dir)?;
    gate.step("journal removed")?;
    Ok(rotation)
}

fn write_journal(keys_dir: &Path, journal: &Journal) -> Result<(), CryptoError> {
    let text = serde_json::to_string(journal).expect("a rotation journal always serializes");
    fsutil::replace_private(
        &keys_dir.join(SIGNING_ROTATION_JOURNAL_FILE),
        format!("{text}\n").as_bytes(),
    )
}

fn read_journal(keys_dir: &Path) -> Result<Option<Journal>, CryptoError> {
    let path = keys_dir.join(SIGNING_ROTATION_JOURNAL_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read_store_file(&path)?;
    let journal: Journal = serde_json::from_slice(&bytes)
        .map_err(|e| CryptoError::format(&path, format!("not a rotation journal: {e}")))?;
    if journal.v != SIGNING_ROTATION_FORMAT_VERSION {
        return Err(CryptoError::format(
            &path,
            format!("journal version {} is not supported", journal.v),
        ));
    }
    Ok(Some(journal))
}

fn remove_journal(keys_dir: &Path) -> Result<(), CryptoError> {
    let path = keys_dir.join(SIGNING_ROTATION_JOURNAL_FILE);
    std::fs::remove_file(&path).map_err(|e| CryptoError::io(&path, e))?;
    fsutil::sync_dir(keys_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vellum_audit::key_history::KeyHistoryError;
    use vellum_audit::policy::Policy;

    const ORIGIN: &str = "vellum.local/cluster/00112233445566778899aabbccddeeff";
    const NAME: &str = "vellum-00112233-r1";
    /// Durable steps of an uninterrupted rotation: prepare journal, new
    /// key, commit journal, recorded, pinned, old key destroyed, new key
    /// installed, journal removed.
    const ROTATION_STEPS: u32 = 8;
    /// The step whose completion is the commit point.
    const COMMIT_STEP: u32 = 3;

    struct Fixture {
        _dir: tempfile::TempDir,
        keys: std::path::PathBuf,
        key_file: std::path::PathBuf,
        old: Signer,
        pinned: Vec<KeyRotation>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("temp dir");
            let keys = dir.path().join("keys");
            fsutil::create_private_dir(&keys).expect("keys dir");
            let key_file = keys.join("signing.key");
            let old = create_signing_key_file(&key_file, NAME).expect("old key");
            Fixture {
                _dir: dir,
                keys,
                key_file,
                old,
                pinned: Vec::new(),
            }
        }

        fn rotate(
            &mut self,
            from_op: u64,
            gate: &mut CrashGate,
        ) -> Result<KeyRotation, CryptoError> {
            let home = SigningKeyHome {
                keys_dir: &self.keys,
                key_file: &self.key_file,
            };
            let pinned = &mut self.pinned;
            rotate_signing_key(
                home,
                ORIGIN,
                1,
                from_op,
                &mut |r| {
                    if !pinned.contains(r) {
                        pinned.push(r.clone());
                    }
                    Ok(())
                },
                gate,
            )
        }

        fn recover(&mut self, gate: &mut CrashGate) -> Result<SigningRecovery, CryptoError> {
            let home = SigningKeyHome {
                keys_dir: &self.keys,
                key_file: &self.key_file,
            };
            let pinned = &mut self.pinned;
            recover_signing_rotation(
                home,
                &mut |r| {
                    if !pinned.contains(r) {
                        pinned.push(r.clone());
                    }
                    Ok(())
                },
                gate,
            )
        }

        /// The history a policy pinning the old key accepts the rotation into.
        fn history_accepts(&self, rotation: &KeyRotation) -> Result<(), KeyHistoryError> {
            let other = Signer::from_seed("vellum-00112233-r0", [7; 32]).expect("name");
            let policy = Policy::new(ORIGIN, vec![other.verifier(), self.old.verifier()], 2)
                .expect("policy");
            let mut history = vellum_audit::key_history::KeyHistory::new(policy);
            history.add(rotation.clone())
        }

        fn files(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.keys)
                .expect("keys dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }

        /// The old secret key's seed line appears in no file under keys/.
        fn old_secret_gone(&self) -> bool {
            let secret = self.old.to_skey();
            std::fs::read_dir(&self.keys).expect("keys dir").all(|e| {
                let bytes = std::fs::read(e.expect("entry").path()).expect("read");
                !String::from_utf8_lossy(&bytes).contains(&secret)
            })
        }
    }

    /// Goal: a rotation installs a new key under the same name, records and
    /// pins an announcement that a history pinning the old key accepts, and
    /// leaves no journal, no staged key and no trace of the old secret.
    #[test]
    fn rotation_installs_a_new_key_and_pins_a_verifiable_announcement() {
        let mut fixture = Fixture::new();
        let rotation = fixture.rotate(43, &mut CrashGate::never()).expect("rotate");
        let installed = load_signing_key_file(&fixture.key_file).expect("new key loads");
        assert_eq!(installed.name(), NAME);
        assert_ne!(installed.verifier(), fixture.old.verifier());
        assert_eq!(installed.verifier(), rotation.new);
        assert_eq!((rotation.replica, rotation.from_op), (1, 43));
        fixture
            .history_accepts(&rotation)
            .expect("signed by old and new");
        assert_eq!(fixture.pinned, vec![rotation.clone()]);
        assert_eq!(
            signing_rotations(&fixture.keys).expect("read"),
            vec![rotation]
        );
        assert_eq!(fixture.files(), vec![SIGNING_ROTATIONS_FILE, "signing.key"]);
        assert!(fixture.old_secret_gone());
    }

    /// Goal: a crash after any step leaves a key in force (the old one
    /// before the commit point, the new one from it on; never neither), and
    /// recovery, itself cut short at any step and run again, ends with
    /// exactly that key installed, pinned iff committed, nothing staged.
    #[test]
    fn a_crash_at_every_step_leaves_the_old_key_or_the_new_one() {
        for k in 1..=ROTATION_STEPS {
            // Recovery takes at most 5 steps (the roll forward).
            for j in 0..=5 {
                let mut fixture = Fixture::new();
                assert!(
                    fixture.rotate(9, &mut CrashGate::after(k)).is_err(),
                    "k={k}"
                );
                let journal = read_journal(&fixture.keys).expect("journal reads");
                let committed = journal.as_ref().is_some_and(|j| j.phase == Phase::Commit)
                    || (journal.is_none() && k >= COMMIT_STEP);
                assert_eq!(committed, k >= COMMIT_STEP, "k={k}");
                // Never neither: the key the journal puts in force is on disk.
                let on_disk: Vec<Signer> = [
                    fixture.key_file.clone(),
                    fixture.keys.join(NEXT_SIGNING_KEY_FILE),
                ]
                .iter()
                .filter(|p| p.exists())
                .map(|p| load_signing_key_file(p).expect("a whole key file"))
                .collect();
                let old_on_disk = on_disk
                    .iter()
                    .any(|s| s.verifier() == fixture.old.verifier());
                assert!(
                    committed || old_on_disk,
                    "k={k}: the old key must stay before the commit"
                );
                let new = journal
                    .as_ref()
                    .and_then(|j| j.rotation.as_deref())
                    .map(|line| KeyRotation::parse_line(line).expect("line").new);
                if let Some(new) = &new {
                    assert!(
                        on_disk.iter().any(|s| &s.verifier() == new),
                        "k={k}: new key lost"
                    );
                }
                if j > 0 {
                    // Recovery itself may crash; it must be safe to run again.
                    let _ = fixture.recover(&mut CrashGate::after(j));
                }
                fixture.recover(&mut CrashGate::never()).expect("recover");
                let installed = load_signing_key_file(&fixture.key_file).expect("a key in force");
                let names = fixture.files();
                if committed {
                    assert_ne!(installed.verifier(), fixture.old.verifier(), "k={k} j={j}");
                    assert_eq!(fixture.pinned.len(), 1, "k={k} j={j}");
                    assert_eq!(fixture.pinned[0].new, installed.verifier());
                    assert!(fixture.old_secret_gone(), "k={k} j={j}");
                    assert_eq!(
                        names,
                        vec![SIGNING_ROTATIONS_FILE, "signing.key"],
                        "k={k} j={j}"
                    );
                } else {
                    assert_eq!(installed.verifier(), fixture.old.verifier(), "k={k} j={j}");
                    assert!(fixture.pinned.is_empty(), "k={k} j={j}");
                    assert_eq!(names, vec!["signing.key"], "k={k} j={j}");
                }
            }
        }
    }

    /// Goal: every rotation made is pending for the log until marked
    /// logged, marking is cumulative and bounded by the rotations made, and
    /// a later rotation is pending again (nothing is lost or repeated).
    #[test]
    fn announcements_stay_pending_until_logged() {
        let mut fixture = Fixture::new();
        assert!(
            pending_signing_announcements(&fixture.keys)
                .expect("none")
                .is_empty()
        );
        let first = fixture.rotate(10, &mut CrashGate::never()).expect("first");
        let second = fixture.rotate(20, &mut CrashGate::never()).expect("second");
        assert_eq!(
            pending_signing_announcements(&fixture.keys).expect("pending"),
            vec![first, second.clone()]
        );
        signing_announcements_logged(&fixture.keys, 1).expect("mark");
        assert_eq!(
            pending_signing_announcements(&fixture.keys).expect("pending"),
            vec![second]
        );
        signing_announcements_logged(&fixture.keys, 5).expect("mark beyond");
        assert!(
            pending_signing_announcements(&fixture.keys)
                .expect("none")
                .is_empty()
        );
        let third = fixture.rotate(30, &mut CrashGate::never()).expect("third");
        assert_eq!(
            pending_signing_announcements(&fixture.keys).expect("pending"),
            vec![third]
        );
        std::fs::write(fixture.keys.join(SIGNING_ROTATIONS_LOGGED_FILE), b"x\n").expect("garble");
        assert!(pending_signing_announcements(&fixture.keys).is_err());
    }

    /// Goal: the steps counted above are all the steps there are (so the
    /// crash test covers each one).
    #[test]
    fn an_uninterrupted_rotation_takes_the_counted_steps() {
        let mut fixture = Fixture::new();
        let mut gate = CrashGate::never();
        fixture.rotate(9, &mut gate).expect("rotate");
        assert_eq!(gate.steps_done(), ROTATION_STEPS);
    }

    /// Goal: each refusal changes nothing: op 0, an op not after this
    /// replica's last rotation, a journal left by a crash, a stray staged
    /// key file.
    #[test]
    fn refused_rotations_change_nothing() {
        let mut fixture = Fixture::new();
        let refused =
            |r: Result<KeyRotation, CryptoError>| matches!(r, Err(CryptoError::RotationRefused(_)));
        assert!(refused(fixture.rotate(0, &mut CrashGate::never())));
        assert_eq!(fixture.files(), vec!["signing.key"]);
        fixture.rotate(10, &mut CrashGate::never()).expect("first");
        let first = load_signing_key_file(&fixture.key_file).expect("key");
        for op in [1, 10] {
            assert!(
                refused(fixture.rotate(op, &mut CrashGate::never())),
                "op {op}"
            );
        }
        assert!(fixture.rotate(11, &mut CrashGate::after(1)).is_err());
        assert!(
            refused(fixture.rotate(12, &mut CrashGate::never())),
            "journal"
        );
        fixture.recover(&mut CrashGate::never()).expect("roll back");
        std::fs::write(fixture.keys.join(NEXT_SIGNING_KEY_FILE), b"x").expect("stray");
        assert!(
            refused(fixture.rotate(12, &mut CrashGate::never())),
            "stray next"
        );
        let still = load_signing_key_file(&fixture.key_file).expect("key");
        assert_eq!(still.verifier(), first.verifier());
        assert_eq!(fixture.pinned.len(), 1);
    }
}
