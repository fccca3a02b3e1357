//! The key store: one directory, `<data_dir>/keys/`, beside the log and never
//! inside it (P6), holding each data key wrapped by the KEK, the nonce
//! counters, and shred tombstones.
//!
//! Files (formats in `record`): `keystore` (marker with a KEK check value),
//! `dek-<key_id>.key` (one per DEK), `shred-<stream>.tomb`. Every file is
//! 0600, the directory 0700, and `open` refuses anything group or others can
//! read. Every change is written to a temp file, fsynced, renamed and the
//! directory fsynced before the call returns.
//!
//! Nonces (`writer_id u32 LE || counter u64 LE`) never repeat under one key:
//! counters are reserved in blocks of [`NONCE_BLOCK`], and a block is durable
//! in the key file before its first nonce is handed out. A restart continues
//! at the end of the last reserved block, skipping whatever was unused, so a
//! crash can never hand out a nonce twice.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::kek::KeyEncryptionKey;
use super::keys::{DataKey, NONCE_BYTES, TAG_BYTES, random_fill};
use super::record::{KEY_FILE_BYTES, KeyRecord, TOMBSTONE_KEYS_MAX, Tombstone};
use super::{CryptoError, fsutil};

/// Nonce counters reserved (and persisted) at once per data key.
pub const NONCE_BLOCK: u64 = 65536;
/// Default bound of unwrapped data keys kept in memory.
pub const DEK_CACHE_MAX_DEFAULT: usize = 1024;
/// Most data keys (rotations) one stream may have.
pub const KEYS_PER_STREAM_MAX: usize = TOMBSTONE_KEYS_MAX;

pub(crate) const MARKER_FILE: &str = "keystore";
const MARKER_TAG: &str = "vellum-keystore-v1";
const KEK_CHECK_AAD: &[u8] = b"vellum/kek-check/v1\0";
/// Largest file the store reads (key files are 136 bytes, tombstones small).
const STORE_FILE_BYTES_MAX: u64 = 256 * 1024;

/// The directory of data keys of one replica. Thread-safe.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    kek: Box<dyn KeyEncryptionKey>,
    writer_id: u32,
    dek_cache_max: usize,
    inner: Mutex<Inner>,
    /// Serializes "create the stream's first key" so racing callers of
    /// [`KeyStore::ensure_key_for_stream`] never create two.
    creating: Mutex<()>,
}

#[derive(Debug, Default)]
struct Inner {
    next_key_id: u64,
    keys: BTreeMap<u64, KeyEntry>,
    latest_by_stream: HashMap<u64, u64>,
    shredded_keys: HashMap<u64, u64>,
    tombstones: HashMap<u64, Tombstone>,
    cache: HashMap<u64, (Arc<DataKey>, u64)>,
    cache_tick: u64,
    failed: bool,
}

#[derive(Debug)]
struct KeyEntry {
    record: KeyRecord,
    next_counter: u64,
}

impl KeyStore {
    /// Creates a new, empty key store in `keys_dir` (created 0700 if absent).
    pub fn create(
        keys_dir: &Path,
        kek: impl Into<Box<dyn KeyEncryptionKey>>,
        writer_id: u32,
    ) -> Result<KeyStore, CryptoError> {
        let kek = kek.into();
        fsutil::create_private_dir(keys_dir)?;
        let marker = keys_dir.join(MARKER_FILE);
        let line = marker_line(kek.as_ref())?;
        fsutil::create_new_private(&marker, line.as_bytes())?;
        tracing::info!(dir = %keys_dir.display(), writer_id, kek = %kek.describe(), "created key store");
        KeyStore::open(keys_dir, kek, writer_id)
    }

    /// Opens the key store in `keys_dir` with the default cache bound.
    pub fn open(
        keys_dir: &Path,
        kek: impl Into<Box<dyn KeyEncryptionKey>>,
        writer_id: u32,
    ) -> Result<KeyStore, CryptoError> {
        KeyStore::open_with(keys_dir, kek, writer_id, DEK_CACHE_MAX_DEFAULT)
    }

    /// Opens the key store in `keys_dir`, keeping at most `dek_cache_max`
    /// unwrapped keys in memory. Refuses an insecure directory or file, a
    /// different KEK, and any corrupt file; finishes an interrupted shred.
    pub fn open_with(
        keys_dir: &Path,
        kek: impl Into<Box<dyn KeyEncryptionKey>>,
        writer_id: u32,
        dek_cache_max: usize,
    ) -> Result<KeyStore, CryptoError> {
        let kek = kek.into();
        assert!(dek_cache_max > 0, "dek_cache_max must be at least 1");
        fsutil::check_private(keys_dir)?;
        super::rotate::refuse_interrupted(keys_dir)?;
        check_marker(keys_dir, kek.as_ref())?;
        let mut inner = load_dir(keys_dir)?;
        inner.next_key_id = own_next_key_id(&inner, writer_id);
        tracing::info!(
            dir = %keys_dir.display(),
            keys = inner.keys.len(),
            shredded_streams = inner.tombstones.len(),
            "opened key store"
        );
        Ok(KeyStore {
            dir: keys_dir.to_path_buf(),
            kek,
            writer_id,
            dek_cache_max,
            inner: Mutex::new(inner),
            creating: Mutex::new(()),
        })
    }

    /// The directory of this store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest data key of `stream`, if it has one.
    pub fn key_for_stream(&self, stream: u64) -> Result<Option<(u64, Arc<DataKey>)>, CryptoError> {
        let mut inner = self.lock()?;
        if inner.tombstones.contains_key(&stream) {
            return Err(CryptoError::Shredded { stream });
        }
        let Some(&key_id) = inner.latest_by_stream.get(&stream) else {
            return Ok(None);
        };
        let dek = self.unwrapped(&mut inner, key_id)?;
        Ok(Some((key_id, dek)))
    }

    /// The data key `key_id`: `None` if it never existed,
    /// [`CryptoError::Shredded`] if it was destroyed.
    pub fn key(&self, key_id: u64) -> Result<Option<Arc<DataKey>>, CryptoError> {
        let mut inner = self.lock()?;
        if let Some(&stream) = inner.shredded_keys.get(&key_id) {
            return Err(CryptoError::Shredded { stream });
        }
        if !inner.keys.contains_key(&key_id) {
            return Ok(None);
        }
        self.unwrapped(&mut inner, key_id).map(Some)
    }

    /// The newest data key of `stream`, created (durably) if it has none.
    /// Atomic: two callers racing for a new stream get the same key.
    pub fn ensure_key_for_stream(&self, stream: u64) -> Result<(u64, Arc<DataKey>), CryptoError> {
        if let Some(found) = self.key_for_stream(stream)? {
            return Ok(found);
        }
        let _creating = self
            .creating
            .lock()
            .expect("key creation mutex poisoned: a panic while holding it is a bug");
        match self.key_for_stream(stream)? {
            Some(found) => Ok(found),
            None => self.create_key(stream),
        }
    }

    /// The stream a data key belongs to, if this store holds the key.
    pub fn stream_of_key(&self, key_id: u64) -> Result<Option<u64>, CryptoError> {
        let inner = self.lock()?;
        if let Some(&stream) = inner.shredded_keys.get(&key_id) {
            return Err(CryptoError::Shredded { stream });
        }
        Ok(inner.keys.get(&key_id).map(|e| e.record.stream))
    }

    /// Creates a new data key for `stream` (its first, or a rotation) and
    /// makes it durable before returning. Refused for a shredded stream.
    pub fn create_key(&self, stream: u64) -> Result<(u64, Arc<DataKey>), CryptoError> {
        let mut inner = self.lock()?;
        if inner.tombstones.contains_key(&stream) {
            return Err(CryptoError::Shredded { stream });
        }
        let existing = inner
            .keys
            .values()
            .filter(|e| e.record.stream == stream)
            .count();
        if existing >= KEYS_PER_STREAM_MAX {
            return Err(CryptoError::TooManyKeys {
                stream,
                max: KEYS_PER_STREAM_MAX,
            });
        }
        let key_id = inner.next_key_id;
        let dek = Arc::new(DataKey::generate()?);
        let (wrap_nonce, wrapped) = self.kek.wrap_dek(&dek, key_id, stream)?;
        let record = KeyRecord {
            key_id,
            stream,
            created_unix_ms: now_unix_ms(),
            nonce_reserved_until: NONCE_BLOCK,
            wrap_nonce,
            wrapped,
        };
        let path = self.key_path(key_id);
        if path.exists() {
            return Err(CryptoError::AlreadyExists { path });
        }
        self.write_or_fail(&mut inner, &path, &record.encode())?;
        inner.next_key_id = key_id + 1;
        inner.keys.insert(
            key_id,
            KeyEntry {
                record,
                next_counter: 0,
            },
        );
        inner.latest_by_stream.insert(stream, key_id);
        self.cache_insert(&mut inner, key_id, Arc::clone(&dek));
        tracing::info!(key_id, stream, "created data key");
        Ok((key_id, dek))
    }

    /// The next nonce for `key_id`: `writer_id u32 LE || counter u64 LE`.
    /// Never returns the same nonce twice for one key, across restarts.
    pub fn next_nonce(&self, key_id: u64) -> Result<[u8; NONCE_BYTES], CryptoError> {
        let mut inner = self.lock()?;
        if let Some(&stream) = inner.shredded_keys.get(&key_id) {
            return Err(CryptoError::Shredded { stream });
        }
        let entry = inner
            .keys
            .get(&key_id)
            .ok_or(CryptoError::KeyNotFound(key_id))?;
        if entry.next_counter >= entry.record.nonce_reserved_until {
            let mut record = entry.record.clone();
            record.nonce_reserved_until = record
                .nonce_reserved_until
                .checked_add(NONCE_BLOCK)
                .ok_or(CryptoError::NonceExhausted { key_id })?;
            // Durable before any nonce of the new block is used.
            self.write_or_fail(&mut inner, &self.key_path(key_id), &record.encode())?;
            let entry = inner
                .keys
                .get_mut(&key_id)
                .expect("entry looked up above, lock held");
            entry.record = record;
        }
        let entry = inner
            .keys
            .get_mut(&key_id)
            .expect("entry looked up above, lock held");
        let counter = entry.next_counter;
        assert!(
            counter < entry.record.nonce_reserved_until,
            "nonce outside reserved block"
        );
        entry.next_counter = counter + 1;
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..4].copy_from_slice(&self.writer_id.to_le_bytes());
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        Ok(nonce)
    }

    /// The key file of `key_id` as it travels between replicas (the data key
    /// wrapped by the KEK, never in the clear): `None` if this store lacks it
    /// or it was shredded.
    pub fn export_key(&self, key_id: u64) -> Result<Option<Vec<u8>>, CryptoError> {
        let inner = self.lock()?;
        Ok(inner.keys.get(&key_id).map(|e| e.record.encode().to_vec()))
    }

    /// Stores a key file another replica exported (`export_key`), durably,
    /// after checking it unwraps under this store's KEK. Returns false when
    /// the key was already here or its stream was shredded (a shred wins:
    /// a late copy never brings a destroyed key back).
    pub fn import_key(&self, bytes: &[u8]) -> Result<bool, CryptoError> {
        let mut inner = self.lock()?;
        let record = KeyRecord::decode(bytes)
            .map_err(|reason| CryptoError::format(&self.dir, format!("imported key: {reason}")))?;
        let key_id = record.key_id;
        if inner.keys.contains_key(&key_id)
            || inner.shredded_keys.contains_key(&key_id)
            || inner.tombstones.contains_key(&record.stream)
        {
            return Ok(false);
        }
        let dek = self
            .kek
            .unwrap_dek(&record.wrap_nonce, &record.wrapped, key_id, record.stream)?
            .ok_or_else(|| CryptoError::Unwrap {
                path: self.key_path(key_id),
                key_id,
            })?;
        self.write_or_fail(&mut inner, &self.key_path(key_id), &record.encode())?;
        // A key this writer made in an earlier life (a replica whose disk
        // was wiped gets its own keys back from its peers): the next key it
        // creates must come after it, or `create_key` would find its file.
        if key_id >> KEY_ID_WRITER_SHIFT == u64::from(self.writer_id) {
            inner.next_key_id = inner.next_key_id.max(key_id.saturating_add(1));
        }
        let stream = record.stream;
        // Counters are ours to use from the reservation on (our nonces carry
        // our writer id, so they never meet the creator's).
        let next_counter = record.nonce_reserved_until;
        inner.keys.insert(
            key_id,
            KeyEntry {
                record,
                next_counter,
            },
        );
        let latest = inner.latest_by_stream.entry(stream).or_insert(key_id);
        *latest = (*latest).max(key_id);
        self.cache_insert(&mut inner, key_id, Arc::new(dek));
        tracing::info!(key_id, stream, "imported data key from a peer");
        Ok(true)
    }

    /// Every data key this store holds, unwrapped: (key id, stream, key).
    /// For tools and tests that must show what a store can still decrypt
    /// (after a shred: nothing of the shredded stream).
    pub fn held_keys(&self) -> Result<Vec<(u64, u64, Arc<DataKey>)>, CryptoError> {
        let mut inner = self.lock()?;
        let ids: Vec<(u64, u64)> = inner
            .keys
            .values()
            .map(|e| (e.record.key_id, e.record.stream))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for (key_id, stream) in ids {
            out.push((key_id, stream, self.unwrapped(&mut inner, key_id)?));
        }
        Ok(out)
    }

    /// Destroys every data key of `stream` for good: a durable tombstone
    /// first, then each key file overwritten with zeros, fsynced and
    /// deleted. Returns the destroyed key ids. Idempotent.
    ///
    /// `Arc<DataKey>` handles already given out stay usable until dropped;
    /// callers must not keep them across a shred.
    pub fn shred_stream(&self, stream: u64) -> Result<Vec<u64>, CryptoError> {
        let mut inner = self.lock()?;
        if let Some(tombstone) = inner.tombstones.get(&stream) {
            return Ok(tombstone.key_ids.clone());
        }
        let key_ids: Vec<u64> = inner
            .keys
            .values()
            .filter(|e| e.record.stream == stream)
            .map(|e| e.record.key_id)
            .collect();
        let tombstone = Tombstone {
            stream,
            shredded_at_ms: now_unix_ms(),
            key_ids: key_ids.clone(),
        };
        let tomb_path = tombstone_path(&self.dir, stream);
        self.write_or_fail(&mut inner, &tomb_path, tombstone.encode().as_bytes())?;
        for &key_id in &key_ids {
            inner.cache.remove(&key_id);
            inner.keys.remove(&key_id);
            inner.shredded_keys.insert(key_id, stream);
            if let Err(error) = fsutil::overwrite_and_remove(&self.key_path(key_id)) {
                inner.failed = true;
                return Err(error);
            }
        }
        inner.latest_by_stream.remove(&stream);
        inner.tombstones.insert(stream, tombstone);
        tracing::info!(stream, keys = key_ids.len(), "shredded stream keys");
        Ok(key_ids)
    }

    /// Every key file this store holds, as records (wrapped, never in the
    /// clear), in key id order: what a KEK rotation rewraps.
    pub(crate) fn key_records(&self) -> Result<Vec<KeyRecord>, CryptoError> {
        let inner = self.lock()?;
        Ok(inner.keys.values().map(|e| e.record.clone()).collect())
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, CryptoError> {
        let inner = self
            .inner
            .lock()
            .expect("key store mutex poisoned: a panic while holding it is a bug");
        if inner.failed {
            return Err(CryptoError::StoreFailed {
                path: self.dir.clone(),
            });
        }
        Ok(inner)
    }

    /// Replaces `path` durably; on failure the store refuses further work
    /// (a failed fsync leaves the file's state unknown, never retry it).
    fn write_or_fail(
        &self,
        inner: &mut Inner,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(), CryptoError> {
        fsutil::replace_private(path, bytes).inspect_err(|_| inner.failed = true)
    }

    fn key_path(&self, key_id: u64) -> PathBuf {
        key_path(&self.dir, key_id)
    }

    fn unwrapped(&self, inner: &mut Inner, key_id: u64) -> Result<Arc<DataKey>, CryptoError> {
        inner.cache_tick += 1;
        let tick = inner.cache_tick;
        if let Some((dek, last_use)) = inner.cache.get_mut(&key_id) {
            *last_use = tick;
            return Ok(Arc::clone(dek));
        }
        let record = &inner
            .keys
            .get(&key_id)
            .ok_or(CryptoError::KeyNotFound(key_id))?
            .record;
        let dek = self
            .kek
            .unwrap_dek(&record.wrap_nonce, &record.wrapped, key_id, record.stream)?
            .ok_or_else(|| CryptoError::Unwrap {
                path: self.key_path(key_id),
                key_id,
            })?;
        let dek = Arc::new(dek);
        self.cache_insert(inner, key_id, Arc::clone(&dek));
        Ok(dek)
    }

    /// Caches `dek`, evicting the least recently used key when full.
    fn cache_insert(&self, inner: &mut Inner, key_id: u64, dek: Arc<DataKey>) {
        if inner.cache.len() >= self.dek_cache_max {
            let oldest = inner
                .cache
                .iter()
                .min_by_key(|(_, (_, last_use))| *last_use)
                .map(|(&id, _)| id);
            if let Some(oldest) = oldest {
                inner.cache.remove(&oldest);
            }
        }
        inner.cache_tick += 1;
        let tick = inner.cache_tick;
        inner.cache.insert(key_id, (dek, tick));
        assert!(
            inner.cache.len() <= self.dek_cache_max,
            "dek cache over its bound"
        );
    }
}

pub(crate) fn key_path(dir: &Path, key_id: u64) -> PathBuf {
    dir.join(format!("dek-{key_id:020}.key"))
}

fn tombstone_path(dir: &Path, stream: u64) -> PathBuf {
    dir.join(format!("shred-{stream:020}.tomb"))
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The marker file's one line for `kek`: a fresh random nonce and the
/// KEK's check value under it (proves the KEK without revealing it).
pub(crate) fn marker_line(kek: &dyn KeyEncryptionKey) -> Result<String, CryptoError> {
    let mut check_nonce = [0u8; NONCE_BYTES];
    random_fill(&mut check_nonce)?;
    let tag = kek.check_tag(&check_nonce, KEK_CHECK_AAD)?;
    let mut raw = check_nonce.to_vec();
    raw.extend_from_slice(&tag);
    Ok(format!("{MARKER_TAG} {}\n", BASE64.encode(raw)))
}

pub(crate) fn check_marker(dir: &Path, kek: &dyn KeyEncryptionKey) -> Result<(), CryptoError> {
    let path = dir.join(MARKER_FILE);
    let contents = read_store_file(&path)?;
    let text = std::str::from_utf8(&contents).map_err(|e| {
        CryptoError::format(&path, format!("not utf-8 at byte {}", e.valid_up_to()))
    })?;
    let encoded = text
        .strip_suffix('\n')
        .and_then(|line| line.strip_prefix(MARKER_TAG))
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| {
            CryptoError::format(
                &path,
                format!("expected \"{MARKER_TAG} <base64>\\n\" at byte 0"),
            )
        })?;
    let at = MARKER_TAG.len() + 1;
    let raw = BASE64
        .decode(encoded)
        .map_err(|_| CryptoError::format(&path, format!("invalid base64 at byte {at}")))?;
    if raw.len() != NONCE_BYTES + TAG_BYTES {
        return Err(CryptoError::format(
            &path,
            format!("kek check value has the wrong length at byte {at}"),
        ));
    }
    let nonce: [u8; NONCE_BYTES] = raw[..NONCE_BYTES].try_into().expect("length checked");
    if kek.check_tag(&nonce, KEK_CHECK_AAD)?[..] != raw[NONCE_BYTES..] {
        return Err(CryptoError::WrongKek { path });
    }
    Ok(())
}

pub(crate) fn read_store_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    let length = std::fs::metadata(path)
        .map_err(|e| CryptoError::io(path, e))?
        .len();
    if length > STORE_FILE_BYTES_MAX {
        return Err(CryptoError::format(
            path,
            format!("file is {length} bytes, more than {STORE_FILE_BYTES_MAX}"),
        ));
    }
    fsutil::read_private(path)
}

/// What a directory entry of the key store is.
enum Entry {
    Key(u64),
    Tombstone(u64),
    Temp,
    Marker,
    Unknown,
}

fn classify(name: &str) -> Entry {
    let number = |s: &str| (s.len() == 20).then(|| s.parse::<u64>().ok()).flatten();
    if name == MARKER_FILE {
        Entry::Marker
    } else if name.ends_with(fsutil::TEMP_SUFFIX) {
        Entry::Temp
    } else if let Some(id) = name
        .strip_prefix("dek-")
        .and_then(|s| s.strip_suffix(".key"))
        .and_then(number)
    {
        Entry::Key(id)
    } else if let Some(stream) = name
        .strip_prefix("shred-")
        .and_then(|s| s.strip_suffix(".tomb"))
        .and_then(number)
    {
        Entry::Tombstone(stream)
    } else {
        Entry::Unknown
    }
}

/// Key ids carry their creator's writer id in the bits from
/// [`KEY_ID_WRITER_SHIFT`] up, so replicas that each create keys (whichever
/// is primary) never pick the same id.
pub const KEY_ID_WRITER_SHIFT: u32 = 40;

/// The next key id this writer creates: one past the highest it made.
fn own_next_key_id(inner: &Inner, writer_id: u32) -> u64 {
    let base = u64::from(writer_id) << KEY_ID_WRITER_SHIFT;
    let own = |id: &u64| id >> KEY_ID_WRITER_SHIFT == u64::from(writer_id);
    inner
        .keys
        .keys()
        .chain(inner.shredded_keys.keys())
        .filter(|id| own(id))
        .map(|id| id.saturating_add(1))
        .max()
        .unwrap_or(base + 1)
        .max(base + 1)
}

/// Reads every file of the store into memory, then finishes interrupted shreds.
fn load_dir(dir: &Path) -> Result<Inner, CryptoError> {
    let mut inner = Inner {
        next_key_id: 1,
        ..Inner::default()
    };
    let listing = std::fs::read_dir(dir).map_err(|e| CryptoError::io(dir, e))?;
    for item in listing {
        let item = item.map_err(|e| CryptoError::io(dir, e))?;
        let path = item.path();
        let name = item.file_name().to_string_lossy().into_owned();
        match classify(&name) {
            Entry::Marker => {}
            // The data directory keeps the KEK and signing key files here too.
            Entry::Unknown => {
                tracing::debug!(path = %path.display(), "skipping non-key-store file in keys dir")
            }
            // A temp file is a replacement that never got renamed: the real
            // file still holds the previous state. It may hold a wrapped key.
            Entry::Temp => fsutil::overwrite_and_remove(&path)?,
            Entry::Key(key_id) => load_key_file(&mut inner, &path, key_id)?,
            Entry::Tombstone(stream) => {
                let tombstone = Tombstone::decode(&read_store_file(&path)?)
                    .map_err(|reason| CryptoError::format(&path, reason))?;
                if tombstone.stream != stream {
                    return Err(CryptoError::format(
                        &path,
                        "stream in file does not match its name",
                    ));
                }
                for &key_id in &tombstone.key_ids {
                    inner.shredded_keys.insert(key_id, stream);
                    inner.next_key_id = inner.next_key_id.max(key_id.saturating_add(1));
                }
                inner.tombstones.insert(stream, tombstone);
            }
        }
    }
    finish_interrupted_shreds(dir, &mut inner)?;
    for entry in inner.keys.values() {
        let latest = inner
            .latest_by_stream
            .entry(entry.record.stream)
            .or_insert(0);
        *latest = (*latest).max(entry.record.key_id);
    }
    Ok(inner)
}

fn load_key_file(inner: &mut Inner, path: &Path, key_id: u64) -> Result<(), CryptoError> {
    let bytes = read_store_file(path)?;
    let record = KeyRecord::decode(&bytes).map_err(|reason| CryptoError::format(path, reason))?;
    if record.key_id != key_id {
        return Err(CryptoError::format(
            path,
            format!("key id {} in file does not match its name", record.key_id),
        ));
    }
    debug_assert_eq!(bytes.len(), KEY_FILE_BYTES);
    inner.next_key_id = inner.next_key_id.max(key_id.saturating_add(1));
    // Every counter below the reservation may have been used before a crash.
    let next_counter = record.nonce_reserved_until;
    inner.keys.insert(
        key_id,
        KeyEntry {
            record,
            next_counter,
        },
    );
    Ok(())
}

/// A crash between writing a tombstone and deleting the key files leaves key
/// files of a shredded stream: delete them now, as the shred promised.
fn finish_interrupted_shreds(dir: &Path, inner: &mut Inner) -> Result<(), CryptoError> {
    let leftover: Vec<(u64, u64)> = inner
        .keys
        .values()
        .filter(|e| inner.tombstones.contains_key(&e.record.stream))
        .map(|e| (e.record.key_id, e.record.stream))
        .collect();
    for (key_id, stream) in leftover {
        tracing::warn!(key_id, stream, "finishing an interrupted shred");
        fsutil::overwrite_and_remove(&key_path(dir, key_id))?;
        inner.keys.remove(&key_id);
        inner.shredded_keys.insert(key_id, stream);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Kek;

    /// Goal: callers racing to ensure a new stream's key all get the same
    /// one key (the request digest and the seal must agree on it), and a
    /// key's stream is reported.
    #[test]
    fn ensure_key_for_stream_creates_one_key_under_races() {
        let data = tempfile::tempdir().expect("temp dir");
        let dir = data.path().join("keys");
        let store = KeyStore::create(&dir, Kek::from_bytes(&[1; 32]), 0).expect("create");
        let ids: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| store.ensure_key_for_stream(40).expect("ensure").0))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        let keys_of_stream = store
            .lock()
            .expect("lock")
            .keys
            .values()
            .filter(|e| e.record.stream == 40)
            .count();
        assert_eq!(keys_of_stream, 1);
        assert_eq!(store.stream_of_key(ids[0]).expect("lookup"), Some(40));
        assert_eq!(store.stream_of_key(ids[0] + 99).expect("lookup"), None);
    }

    /// Goal: a replica rebuilt from its peers after a wipe gets back keys it
    /// made in an earlier life (its own writer id); the next key it creates
    /// takes a new id instead of failing on the imported key's file (a 500
    /// "already exists; refusing to overwrite it" seen once in a bench).
    #[test]
    fn keys_imported_from_an_earlier_life_are_not_created_again() {
        let data = tempfile::tempdir().expect("temp dir");
        let earlier =
            KeyStore::create(&data.path().join("a"), Kek::from_bytes(&[1; 32]), 3).expect("create");
        let (made, _) = earlier.create_key(16).expect("key");
        let bytes = earlier.export_key(made).expect("export").expect("held");
        let rebuilt =
            KeyStore::create(&data.path().join("b"), Kek::from_bytes(&[1; 32]), 3).expect("create");
        assert!(rebuilt.import_key(&bytes).expect("import"));
        let (next, _) = rebuilt
            .create_key(17)
            .expect("a new key after the imported one");
        assert!(next > made, "new key {next} after imported {made}");
        assert_eq!(next >> KEY_ID_WRITER_SHIFT, 3, "still this writer's id");
    }

    /// Goal: the unwrapped-key cache never exceeds `dek_cache_max`, and an
    /// evicted key is unwrapped again on demand.
    #[test]
    fn dek_cache_is_bounded() {
        let data = tempfile::tempdir().expect("temp dir");
        let dir = data.path().join("keys");
        drop(KeyStore::create(&dir, Kek::from_bytes(&[1; 32]), 0).expect("create"));
        let store = KeyStore::open_with(&dir, Kek::from_bytes(&[1; 32]), 0, 2).expect("open");
        let ids: Vec<u64> = (16..21)
            .map(|stream| store.create_key(stream).expect("key").0)
            .collect();
        for &key_id in ids.iter().chain(ids.iter()) {
            assert!(store.key(key_id).expect("lookup").is_some());
            let cached = store.inner.lock().expect("lock").cache.len();
            assert!(cached <= 2, "cache holds {cached} keys");
        }
    }
}
