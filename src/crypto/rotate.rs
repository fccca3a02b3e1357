//! KEK rotation: every data key rewrapped under a new key-encryption key,
//! then the old KEK destroyed, crash-safe at every file operation.
//!
//! A rotation runs on a stopped replica's key store (the caller holds the
//! data directory's lock). It is driven by a journal, `keys/kek-rotation`,
//! whose phase decides what a restart does with a rotation a crash cut
//! short (docs/format.md, "KEK rotation", lists every crash case):
//!
//! 1. `prepare` journal written (names the old and the new KEK's home).
//! 2. The new KEK made: `keys/kek.next` (file) or a new token key (PKCS#11).
//! 3. Every DEK rewrapped under it into `keys/kek-rotation.d/dek-*.key`,
//!    and a new marker `keys/kek-rotation.d/keystore`, each fsynced.
//! 4. `commit` journal written: **the commit point**. Before it, recovery
//!    rolls back (staged files and the new KEK destroyed; the store opens
//!    with the old KEK); from it on, recovery rolls forward.
//! 5. Each staged file renamed over its live one (rename is atomic, so each
//!    key file is wholly old or wholly new, and the journal says which KEK
//!    wins).
//! 6. The new KEK installed (`kek.next` renamed to `kek.key` after the old
//!    file was overwritten with zeros, fsynced and deleted; or `vellum.json`
//!    pointed at the new token key), the rotation's audit record appended
//!    to `keys/kek-rotated.pending`, the old token key destroyed.
//! 7. The staging directory and the journal removed.
//!
//! [`KeyStore::open`] refuses a store with a journal
//! ([`CryptoError::RotationInterrupted`]): only [`recover_kek_rotation`],
//! which a replica runs before it opens its key store, may touch it. So
//! the store always opens with exactly one KEK, and every DEK is present
//! under it.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::kek::{KekConfig, KeyEncryptionKey, Pkcs11Config, open_kek};
use super::keys::Kek;
use super::pkcs11::Pkcs11Kek;
use super::record::KeyRecord;
use super::store::{self, KeyStore, MARKER_FILE};
use super::{CryptoError, fsutil};

/// The rotation journal in `keys/` (present only while a rotation runs).
pub const ROTATION_JOURNAL_FILE: &str = "kek-rotation";
/// The staging directory in `keys/` of the rewrapped key files.
pub const ROTATION_STAGING_DIR: &str = "kek-rotation.d";
/// The new file KEK until it is installed as `kek.key`.
pub const NEXT_KEK_FILE: &str = "kek.next";
/// Audit records of finished rotations not yet in the access trail.
pub const ROTATED_RECORDS_FILE: &str = "kek-rotated.pending";
/// Most rotation records waiting to be recorded: a rotation beyond it is
/// refused until the replica has started and recorded them.
pub const ROTATED_RECORDS_MAX: usize = 64;
/// Version of the journal and of a rotation record.
const ROTATION_FORMAT_VERSION: u32 = 1;
/// Domain tag of a KEK fingerprint.
const FINGERPRINT_TAG: &[u8] = b"vellum/kek-fingerprint/v1\0";

/// Where a rotation puts the new KEK.
#[derive(Debug)]
pub enum NewKek<'a> {
    /// A fresh random file KEK.
    GenerateFile,
    /// The file KEK in this file, copied in (the caller keeps the source):
    /// how every replica of a cluster rotates to the same new KEK.
    CopyFile(&'a Path),
    /// A new AES key generated on a token under this config's key label,
    /// which no key may carry yet.
    Pkcs11(Pkcs11Config),
}

/// The key store a rotation works on.
#[derive(Debug, Clone, Copy)]
pub struct KeyHome<'a> {
    /// `<data>/keys`.
    pub keys_dir: &'a Path,
    /// `<data>/keys/kek.key`, the file KEK's path.
    pub kek_file: &'a Path,
    /// The replica's writer id (its index).
    pub writer_id: u32,
}

/// Records where the KEK lives now (the caller writes `vellum.json`):
/// `None` is the file KEK.
pub type PersistKekConfig<'a> = dyn FnMut(Option<&KekConfig>) -> Result<(), CryptoError> + 'a;

/// What a finished rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// Data keys rewrapped under the new KEK.
    pub keys_rewrapped: usize,
    /// The old KEK's fingerprint (see [`kek_fingerprint`]).
    pub old_fingerprint: String,
    /// The new KEK's fingerprint.
    pub new_fingerprint: String,
    /// Where the KEK lives now (`None`: the file KEK).
    pub config: Option<KekConfig>,
}

/// What [`recover_kek_rotation`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No rotation was in progress.
    Nothing,
    /// A rotation cut short before its commit point was undone: the old
    /// KEK stays.
    RolledBack,
    /// A committed rotation was finished: the new KEK is in force.
    Finished(RotationReport),
}

/// Where a crash test stops a rotation: every durable file operation is one
/// step, and the gate fails the operation after step `k` as a crash would
/// (nothing after it runs; everything before it is on disk).
#[derive(Debug, Default)]
pub struct CrashGate {
    stop_after: Option<u32>,
    done: u32,
}

impl CrashGate {
    /// A gate that never stops anything (production).
    pub fn never() -> CrashGate {
        CrashGate::default()
    }

    /// A gate that "crashes" right after step `steps` (1-based).
    pub fn after(steps: u32) -> CrashGate {
        CrashGate {
            stop_after: Some(steps),
            done: 0,
        }
    }

    /// Steps completed so far.
    pub fn steps_done(&self) -> u32 {
        self.done
    }

    pub(crate) fn step(&mut self, what: &str) -> Result<(), CryptoError> {
        self.done += 1;
        if self.stop_after == Some(self.done) {
            return Err(CryptoError::io(
                what,
                io::Error::other(format!("injected crash after step {}", self.done)),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Prepare,
    Commit,
}

/// The journal: what a restart needs to finish or undo the rotation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    v: u32,
    phase: Phase,
    /// The KEK being retired (`None`: the file KEK).
    old: Option<KekConfig>,
    /// The KEK being installed (`None`: a file KEK, staged at `kek.next`).
    new: Option<KekConfig>,
    old_fingerprint: String,
    /// Known once the new marker is staged (the commit journal has it).
    new_fingerprint: Option<String>,
    /// The new KEK's home, for the audit record (names only).
    new_description: String,
    started_ns: u64,
}

/// One finished rotation, as kept in `keys/kek-rotated.pending` until the
/// replica records it in the access trail. No key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotatedRecord {
    /// Format version (1).
    pub v: u32,
    /// When the rotation started, unix nanoseconds.
    pub started_ns: u64,
    /// The retired KEK's fingerprint.
    pub old_fingerprint: String,
    /// The new KEK's fingerprint.
    pub new_fingerprint: String,
    /// Where the new KEK lives (names only, never a PIN).
    pub kek: String,
}

/// The fingerprint of the KEK a key store was opened with: 32 hex digits of
/// SHA-256 over a domain tag and the store's marker (`keys/keystore`, a
/// nonce and the KEK's check value under it). Public: it identifies the
/// KEK and reveals nothing of it.
pub fn kek_fingerprint(keys_dir: &Path) -> Result<String, CryptoError> {
    let marker = store::read_store_file(&keys_dir.join(MARKER_FILE))?;
    Ok(fingerprint_of_marker(&marker))
}

fn fingerprint_of_marker(marker: &[u8]) -> String {
    let digest = vellum_audit::sha256(&[FINGERPRINT_TAG, marker]);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses to open a key store whose rotation journal is present.
pub(crate) fn refuse_interrupted(keys_dir: &Path) -> Result<(), CryptoError> {
    let journal = keys_dir.join(ROTATION_JOURNAL_FILE);
    match journal.exists() {
        true => Err(CryptoError::RotationInterrupted { journal }),
        false => Ok(()),
    }
}

/// Rotates the KEK of the store at `home`, whose KEK lives where `current`
/// says: every DEK is rewrapped under the new KEK `new`, then the old KEK
/// is destroyed (a file overwritten with zeros, fsynced and deleted; a
/// token key destroyed). `persist` records the new home in `vellum.json`.
/// Refused, with nothing changed, when a rotation is already in progress,
/// a key does not unwrap, or the new home is taken.
pub fn rotate_kek(
    home: KeyHome<'_>,
    current: Option<&KekConfig>,
    new: NewKek<'_>,
    persist: &mut PersistKekConfig<'_>,
    gate: &mut CrashGate,
) -> Result<RotationReport, CryptoError> {
    refuse_interrupted(home.keys_dir)?;
    let old_kek = open_kek(current, home.kek_file)?;
    let store = KeyStore::open(home.keys_dir, old_kek, home.writer_id)?;
    let records = store.key_records()?;
    let mut deks = Vec::with_capacity(records.len());
    for record in &records {
        let dek = store
            .key(record.key_id)?
            .ok_or(CryptoError::KeyNotFound(record.key_id))?;
        deks.push(dek);
    }
    let (new_config, new_description) = preflight(home, current, &new)?;
    let mut journal = Journal {
        v: ROTATION_FORMAT_VERSION,
        phase: Phase::Prepare,
        old: current.cloned(),
        new: new_config,
        old_fingerprint: kek_fingerprint(home.keys_dir)?,
        new_fingerprint: None,
        new_description,
        started_ns: now_ns(),
    };
    write_journal(home.keys_dir, &journal)?;
    gate.step("prepare journal")?;
    let new_kek = make_new_kek(home, new)?;
    gate.step("new kek")?;
    let staging = home.keys_dir.join(ROTATION_STAGING_DIR);
    fsutil::create_private_dir(&staging)?;
    gate.step("staging dir")?;
    for (record, dek) in records.iter().zip(&deks) {
        let (wrap_nonce, wrapped) = new_kek.wrap_dek(dek, record.key_id, record.stream)?;
        let unwrapped = new_kek
            .unwrap_dek(&wrap_nonce, &wrapped, record.key_id, record.stream)?
            .filter(|back| back.secret() == dek.secret());
        if unwrapped.is_none() {
            return Err(CryptoError::RotationRefused(format!(
                "data key {} does not unwrap under the new kek as it was wrapped; nothing committed",
                record.key_id
            )));
        }
        let rewrapped = KeyRecord {
            wrap_nonce,
            wrapped,
            ..record.clone()
        };
        let name = file_name(&store::key_path(home.keys_dir, record.key_id));
        fsutil::create_new_private(&staging.join(name), &rewrapped.encode())?;
        gate.step("staged key file")?;
    }
    drop((deks, store));
    let marker = store::marker_line(new_kek.as_ref())?;
    fsutil::create_new_private(&staging.join(MARKER_FILE), marker.as_bytes())?;
    gate.step("staged marker")?;
    drop(new_kek);
    journal.phase = Phase::Commit;
    journal.new_fingerprint = Some(fingerprint_of_marker(marker.as_bytes()));
    write_journal(home.keys_dir, &journal)?;
    gate.step("commit journal")?;
    let report = finish(home, &journal, persist, gate)?;
    tracing::info!(
        keys = report.keys_rewrapped,
        old = %report.old_fingerprint,
        new = %report.new_fingerprint,
        "rotated the key-encryption key"
    );
    Ok(report)
}

/// Finishes or undoes a rotation a crash cut short, by its journal; does
/// nothing without one. Run before the key store is opened.
pub fn recover_kek_rotation(
    home: KeyHome<'_>,
    persist: &mut PersistKekConfig<'_>,
    gate: &mut CrashGate,
) -> Result<Recovery, CryptoError> {
    let Some(journal) = read_journal(home.keys_dir)? else {
        return Ok(Recovery::Nothing);
    };
    match journal.phase {
        Phase::Prepare => {
            tracing::warn!(
                "rolling back a key-encryption key rotation cut short before its commit"
            );
            roll_back(home, &journal, gate)?;
            Ok(Recovery::RolledBack)
        }
        Phase::Commit => {
            tracing::warn!("finishing a committed key-encryption key rotation");
            finish(home, &journal, persist, gate).map(Recovery::Finished)
        }
    }
}

/// The rotation records waiting for the access trail, oldest first.
pub fn pending_rotation_records(keys_dir: &Path) -> Result<Vec<RotatedRecord>, CryptoError> {
    let path = keys_dir.join(ROTATED_RECORDS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = store::read_store_file(&path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        CryptoError::format(&path, format!("not utf-8 at byte {}", e.valid_up_to()))
    })?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| CryptoError::format(&path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// Removes the first `recorded` rotation records (now in the trail),
/// durably; records appended since stay.
pub fn clear_rotation_records(keys_dir: &Path, recorded: usize) -> Result<(), CryptoError> {
    let path = keys_dir.join(ROTATED_RECORDS_FILE);
    let records = pending_rotation_records(keys_dir)?;
    let rest = records.get(recorded..).unwrap_or_default();
    if rest.is_empty() {
        std::fs::remove_file(&path).map_err(|e| CryptoError::io(&path, e))?;
        return fsutil::sync_dir(keys_dir);
    }
    fsutil::replace_private(&path, records_text(rest).as_bytes())
}

/// Checks the new home before anything is written; returns its config and
/// a description for the audit record.
fn preflight(
    home: KeyHome<'_>,
    current: Option<&KekConfig>,
    new: &NewKek<'_>,
) -> Result<(Option<KekConfig>, String), CryptoError> {
    let refuse = |why: String| Err(CryptoError::RotationRefused(why));
    let next = home.keys_dir.join(NEXT_KEK_FILE);
    let staging = home.keys_dir.join(ROTATION_STAGING_DIR);
    for leftover in [&next, &staging] {
        if leftover.exists() {
            return refuse(format!(
                "{} exists without a rotation journal; it is not vellum's to remove",
                leftover.display()
            ));
        }
    }
    if pending_rotation_records(home.keys_dir)?.len() >= ROTATED_RECORDS_MAX {
        return refuse(format!(
            "{ROTATED_RECORDS_MAX} rotations wait to be recorded in the access trail; start the replica first"
        ));
    }
    match new {
        NewKek::GenerateFile => Ok((None, "file key-encryption key".to_string())),
        NewKek::CopyFile(source) => {
            let new_kek = Kek::load_file(source)?;
            if store::check_marker(home.keys_dir, &new_kek).is_ok() {
                return refuse(format!(
                    "{} holds the kek in use; a rotation needs a new one",
                    source.display()
                ));
            }
            Ok((None, "file key-encryption key".to_string()))
        }
        NewKek::Pkcs11(config) => {
            if let Some(KekConfig::Pkcs11(old)) = current
                && old.module == config.module
                && old.token_label == config.token_label
                && old.key_label == config.key_label
            {
                return refuse(format!(
                    "the new key label {:?} is the one in use; choose a new label",
                    config.key_label
                ));
            }
            if Pkcs11Kek::key_exists(config)? {
                return refuse(format!(
                    "a key labelled {:?} is already on token {:?}; choose a new label",
                    config.key_label, config.token_label
                ));
            }
            let description = format!(
                "pkcs11 token {:?} key {:?}",
                config.token_label, config.key_label
            );
            Ok((Some(KekConfig::Pkcs11(config.clone())), description))
        }
    }
}

fn make_new_kek(
    home: KeyHome<'_>,
    new: NewKek<'_>,
) -> Result<Box<dyn KeyEncryptionKey>, CryptoError> {
    let next = home.keys_dir.join(NEXT_KEK_FILE);
    Ok(match new {
        NewKek::GenerateFile => Box::new(Kek::create_file(&next)?),
        NewKek::CopyFile(source) => {
            let bytes = fsutil::read_private(source)?;
            fsutil::create_new_private(&next, &bytes)?;
            Box::new(Kek::load_file(&next)?)
        }
        NewKek::Pkcs11(config) => Box::new(Pkcs11Kek::generate(&config)?),
    })
}

/// Rolls forward from the commit point; each step is skipped when a crash
/// after it left it done, so running this again is harmless.
fn finish(
    home: KeyHome<'_>,
    journal: &Journal,
    persist: &mut PersistKekConfig<'_>,
    gate: &mut CrashGate,
) -> Result<RotationReport, CryptoError> {
    let staging = home.keys_dir.join(ROTATION_STAGING_DIR);
    let new_fingerprint = journal.new_fingerprint.clone().ok_or_else(|| {
        CryptoError::format(
            home.keys_dir.join(ROTATION_JOURNAL_FILE),
            "a commit journal without the new kek's fingerprint",
        )
    })?;
    let mut staged = staged_files(&staging)?;
    // The marker last: until it moves, a key file already moved is the only
    // sign of the new KEK besides the journal.
    staged.sort_by_key(|name| name == MARKER_FILE);
    let keys_rewrapped = staged.iter().filter(|name| *name != MARKER_FILE).count();
    for name in &staged {
        let live = home.keys_dir.join(name);
        std::fs::rename(staging.join(name), &live).map_err(|e| CryptoError::io(&live, e))?;
        fsutil::sync_dir(home.keys_dir)?;
        gate.step("staged file moved")?;
    }
    install_new_kek(home, journal, persist, gate)?;
    append_record(home.keys_dir, journal, &new_fingerprint)?;
    gate.step("rotation record")?;
    if let Some(KekConfig::Pkcs11(old)) = &journal.old {
        Pkcs11Kek::destroy(old)?;
        gate.step("old token key destroyed")?;
    }
    if staging.exists() {
        std::fs::remove_dir(&staging).map_err(|e| CryptoError::io(&staging, e))?;
        fsutil::sync_dir(home.keys_dir)?;
        gate.step("staging dir removed")?;
    }
    remove_journal(home.keys_dir)?;
    gate.step("journal removed")?;
    Ok(RotationReport {
        keys_rewrapped,
        old_fingerprint: journal.old_fingerprint.clone(),
        new_fingerprint,
        config: journal.new.clone(),
    })
}

/// Puts the new KEK where the replica finds it and destroys an old file KEK.
fn install_new_kek(
    home: KeyHome<'_>,
    journal: &Journal,
    persist: &mut PersistKekConfig<'_>,
    gate: &mut CrashGate,
) -> Result<(), CryptoError> {
    let next = home.keys_dir.join(NEXT_KEK_FILE);
    let old_is_file = journal.old.is_none();
    match &journal.new {
        None => {
            if next.exists() {
                if old_is_file && home.kek_file.exists() {
                    fsutil::overwrite_and_remove(home.kek_file)?;
                    gate.step("old kek file destroyed")?;
                }
                std::fs::rename(&next, home.kek_file)
                    .map_err(|e| CryptoError::io(home.kek_file, e))?;
                fsutil::sync_dir(home.keys_dir)?;
                gate.step("new kek file installed")?;
            }
            if !old_is_file {
                persist(None)?;
                gate.step("config written")?;
            }
        }
        Some(config) => {
            persist(Some(config))?;
            gate.step("config written")?;
            if old_is_file && home.kek_file.exists() {
                fsutil::overwrite_and_remove(home.kek_file)?;
                gate.step("old kek file destroyed")?;
            }
        }
    }
    Ok(())
}

/// Undoes a rotation cut short before its commit point: staged files and
/// the new KEK destroyed, the journal removed; the old KEK stays.
fn roll_back(
    home: KeyHome<'_>,
    journal: &Journal,
    gate: &mut CrashGate,
) -> Result<(), CryptoError> {
    let staging = home.keys_dir.join(ROTATION_STAGING_DIR);
    for name in staged_files(&staging)? {
        fsutil::overwrite_and_remove(&staging.join(name))?;
        gate.step("staged file destroyed")?;
    }
    if staging.exists() {
        std::fs::remove_dir(&staging).map_err(|e| CryptoError::io(&staging, e))?;
        fsutil::sync_dir(home.keys_dir)?;
        gate.step("staging dir removed")?;
    }
    match &journal.new {
        None => {
            let next = home.keys_dir.join(NEXT_KEK_FILE);
            if next.exists() {
                fsutil::overwrite_and_remove(&next)?;
                gate.step("new kek file destroyed")?;
            }
        }
        Some(KekConfig::Pkcs11(config)) => {
            if Pkcs11Kek::destroy(config)? {
                gate.step("new token key destroyed")?;
            }
        }
    }
    remove_journal(home.keys_dir)?;
    gate.step("journal removed")
}

/// Names of the files in the staging directory, sorted (none if absent).
fn staged_files(staging: &Path) -> Result<Vec<String>, CryptoError> {
    if !staging.exists() {
        return Ok(Vec::new());
    }
    fsutil::check_private(staging)?;
    let mut names = Vec::new();
    for item in std::fs::read_dir(staging).map_err(|e| CryptoError::io(staging, e))? {
        let item = item.map_err(|e| CryptoError::io(staging, e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let staged_key = name.starts_with("dek-") && name.ends_with(".key");
        if !(staged_key || name == MARKER_FILE) {
            return Err(CryptoError::format(
                item.path(),
                "not a file a kek rotation stages; refusing to guess",
            ));
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

fn append_record(
    keys_dir: &Path,
    journal: &Journal,
    new_fingerprint: &str,
) -> Result<(), CryptoError> {
    let mut records = pending_rotation_records(keys_dir)?;
    if records.iter().any(|r| r.new_fingerprint == new_fingerprint) {
        return Ok(());
    }
    records.push(RotatedRecord {
        v: ROTATION_FORMAT_VERSION,
        started_ns: journal.started_ns,
        old_fingerprint: journal.old_fingerprint.clone(),
        new_fingerprint: new_fingerprint.to_string(),
        kek: journal.new_description.clone(),
    });
    fsutil::replace_private(
        &keys_dir.join(ROTATED_RECORDS_FILE),
        records_text(&records).as_bytes(),
    )
}

fn records_text(records: &[RotatedRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).expect("a rotation record always serializes") + "\n")
        .collect()
}

fn write_journal(keys_dir: &Path, journal: &Journal) -> Result<(), CryptoError> {
    let text = serde_json::to_string(journal).expect("a rotation journal always serializes");
    fsutil::replace_private(
        &keys_dir.join(ROTATION_JOURNAL_FILE),
        format!("{text}\n").as_bytes(),
    )
}

fn read_journal(keys_dir: &Path) -> Result<Option<Journal>, CryptoError> {
    let path = keys_dir.join(ROTATION_JOURNAL_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = store::read_store_file(&path)?;
    let journal: Journal = serde_json::from_slice(&bytes)
        .map_err(|e| CryptoError::format(&path, format!("not a rotation journal: {e}")))?;
    if journal.v != ROTATION_FORMAT_VERSION {
        return Err(CryptoError::format(
            &path,
            format!("journal version {} is not supported", journal.v),
        ));
    }
    Ok(Some(journal))
}

fn remove_journal(keys_dir: &Path) -> Result<(), CryptoError> {
    let path = keys_dir.join(ROTATION_JOURNAL_FILE);
    std::fs::remove_file(&path).map_err(|e| CryptoError::io(&path, e))?;
    fsutil::sync_dir(keys_dir)
}

fn file_name(path: &Path) -> PathBuf {
    PathBuf::from(path.file_name().expect("a key path ends in its file name"))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
