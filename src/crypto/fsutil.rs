//! File helpers for secret material: private creation (0600 files, 0700
//! directories), permission checks on load, and crash-safe replacement
//! (write temp, fsync, rename, fsync directory).

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use super::CryptoError;

/// Permission bits that must be clear on every secret file and directory.
const GROUP_OTHER_BITS: u32 = 0o077;

/// Suffix of the temporary file a replacement writes before renaming.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// Refuses `path` unless only its owner may read or write it.
pub(crate) fn check_private(path: &Path) -> Result<(), CryptoError> {
    let metadata = fs::metadata(path).map_err(|e| CryptoError::io(path, e))?;
    let mode = metadata.mode();
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(CryptoError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700; an existing directory
/// is permission-checked instead.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CryptoError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CryptoError::io(dir, e))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    check_private(dir)
}

/// Fsyncs a directory so a create, rename or unlink in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CryptoError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| CryptoError::io(dir, e))
}

/// Creates a new 0600 file holding `bytes`, durably; refuses to overwrite.
pub(crate) fn create_new_private(path: &Path, bytes: &[u8]) -> Result<(), CryptoError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CryptoError::AlreadyExists {
                path: path.to_path_buf(),
            },
            _ => CryptoError::io(path, e),
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| CryptoError::io(path, e))?;
    sync_dir(parent_of(path))
}

/// Replaces `path` with `bytes` atomically and durably: after a crash the
/// file holds either the old or the new bytes, never a mix.
pub(crate) fn replace_private(path: &Path, bytes: &[u8]) -> Result<(), CryptoError> {
    let temp = temp_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| CryptoError::io(&temp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| CryptoError::io(&temp, e))?;
    drop(file);
    fs::rename(&temp, path).map_err(|e| CryptoError::io(path, e))?;
    sync_dir(parent_of(path))
}

/// Overwrites `path` with zeros in place, fsyncs, then unlinks it and fsyncs
/// its directory. Best effort against recovery from the medium: journaling,
/// copy-on-write file systems and SSD wear levelling may keep old blocks.
pub(crate) fn overwrite_and_remove(path: &Path) -> Result<(), CryptoError> {
    let length = fs::metadata(path)
        .map_err(|e| CryptoError::io(path, e))?
        .len();
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| CryptoError::io(path, e))?;
    let zeros = vec![0u8; usize::try_from(length).unwrap_or(0)];
    file.write_all(&zeros)
        .and_then(|()| file.sync_all())
        .map_err(|e| CryptoError::io(path, e))?;
    drop(file);
    fs::remove_file(path).map_err(|e| CryptoError::io(path, e))?;
    sync_dir(parent_of(path))
}

/// The temporary sibling `replace_private` writes first.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TEMP_SUFFIX);
    PathBuf::from(name)
}

/// Reads a secret file after checking that it is private.
pub(crate) fn read_private(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    check_private(path)?;
    fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| CryptoError::io(path, e))
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}
