//! The replica's Ed25519 signing key file, in the C2SP signer-key encoding
//! `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>\n`, created 0600 and
//! refused on load if group or others may read it. The encoding itself is
//! defined once, in `vellum_audit::note`.

use std::path::Path;

use vellum_audit::note::Signer;
use zeroize::Zeroizing;

use super::keys::{KEY_BYTES, random_fill};
use super::{CryptoError, fsutil};

/// Largest signing key file accepted, in bytes (a key line is ~100 bytes).
const SIGNING_KEY_FILE_BYTES_MAX: u64 = 4096;

/// Generates an Ed25519 key named `name` and writes it to a new 0600 file at
/// `path`, durably. Refuses to overwrite an existing file.
pub fn create_signing_key_file(path: &Path, name: &str) -> Result<Signer, CryptoError> {
    let mut seed = Zeroizing::new([0u8; KEY_BYTES]);
    random_fill(seed.as_mut())?;
    let signer = Signer::from_seed(name, *seed)
        .map_err(|e| CryptoError::format(path, format!("cannot create signing key: {e}")))?;
    let mut line = Zeroizing::new(signer.to_skey());
    line.push('\n');
    fsutil::create_new_private(path, line.as_bytes())?;
    tracing::info!(path = %path.display(), name, "created signing key file");
    Ok(signer)
}

/// Loads a signing key file written by [`create_signing_key_file`].
pub fn load_signing_key_file(path: &Path) -> Result<Signer, CryptoError> {
    fsutil::check_private(path)?;
    let length = std::fs::metadata(path)
        .map_err(|e| CryptoError::io(path, e))?
        .len();
    if length > SIGNING_KEY_FILE_BYTES_MAX {
        return Err(CryptoError::format(
            path,
            format!("file is {length} bytes, more than {SIGNING_KEY_FILE_BYTES_MAX}"),
        ));
    }
    let contents = fsutil::read_private(path)?;
    let text = std::str::from_utf8(&contents)
        .map_err(|e| CryptoError::format(path, format!("not utf-8 at byte {}", e.valid_up_to())))?;
    let line = text.strip_suffix('\n').ok_or_else(|| {
        CryptoError::format(
            path,
            format!("missing final newline at byte {}", text.len()),
        )
    })?;
    Signer::parse_skey(line).map_err(|e| CryptoError::format(path, e.to_string()))
}
