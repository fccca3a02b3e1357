//! An outside witness (`vellum witness`): a separate process with its own
//! Ed25519 key and its own SQLite store, that cosigns a log's checkpoint only
//! after checking the log's quorum signatures and that the checkpoint is
//! consistent with the last one it cosigned for that origin. It speaks
//! c2sp.org/tlog-witness (`POST /add-checkpoint`) and answers cosignatures
//! per c2sp.org/tlog-cosignature (Ed25519, `cosignature/v1`).
//!
//! A witness protects auditors against an operator who holds every replica
//! key: such an operator can rewrite history and re-sign it, but no honest
//! witness cosigns both the old and the rewritten tree, so a policy that
//! requires witness cosignatures refuses the rewrite.
//!
//! `protocol` is the pure decision, `store` the durable state, `server` the
//! HTTP shell, `submit` the client that feeds a witness from a cluster.

pub mod kept;
pub mod protocol;
pub mod server;
pub mod store;
pub mod submit;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use vellum_audit::cosignature::{Cosigner, SIGNATURE_TYPE_COSIGNATURE_V1};

/// The file holding the witness's signing key, mode 0600.
pub const KEY_FILE_NAME: &str = "witness.key";
/// The file holding the witness's public key (vkey, type 0x04), mode 0644.
pub const VKEY_FILE_NAME: &str = "witness.vkey";

/// Why the witness's key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key files failed.
    #[error("witness key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file is not a witness key this version wrote.
    #[error("witness key {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// The key file may be read by group or others.
    #[error(
        "witness key {path} has mode {mode:o}: it must not be readable by group or others (chmod 600)"
    )]
    Permissions { path: PathBuf, mode: u32 },
}

/// Loads the witness key from `dir`, or creates it (named `name`) on first
/// start: `PRIVATE+KEY+<name>+<key id>+<base64(0x04 || seed)>`, written
/// durably with mode 0600 (like a replica's signing key), and its vkey
/// beside it.
pub fn load_or_create_key(dir: &Path, name: &str) -> Result<Cosigner, KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(KEY_FILE_NAME);
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    let invalid = |reason: &str| KeyError::Invalid {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    if !path.exists() {
        crate::fsutil::create_dir_with_mode(dir, 0o700).map_err(io)?;
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice())
            .map_err(|e| invalid(&format!("no randomness: {e}")))?;
        let cosigner = Cosigner::from_seed(name, *seed).map_err(|e| invalid(&e.to_string()))?;
        let text = zeroize::Zeroizing::new(skey(&cosigner));
        crate::fsutil::write_durable(&path, text.as_bytes(), 0o600).map_err(io)?;
        let vkey_path = dir.join(VKEY_FILE_NAME);
        let vkey = format!("{}\n", cosigner.key().to_vkey());
        crate::fsutil::replace_durable(&vkey_path, vkey.as_bytes(), 0o644).map_err(io)?;
        return Ok(cosigner);
    }
    let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path, mode });
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(io)?);
    parse_skey(text.trim_end())
        .ok_or_else(|| invalid("not a witness key (PRIVATE+KEY+<name>+<id>+<base64>)"))
}

fn skey(cosigner: &Cosigner) -> String {
    let mut raw = zeroize::Zeroizing::new([0u8; 33]);
    raw[0] = SIGNATURE_TYPE_COSIGNATURE_V1;
    raw[1..].copy_from_slice(&cosigner.seed());
    let key = cosigner.key();
    format!(
        "PRIVATE+KEY+{}+{}+{}\n",
        key.name(),
        vellum_audit::hash::to_hex(&key.key_id()),
        BASE64.encode(raw.as_slice())
    )
}

fn parse_skey(text: &str) -> Option<Cosigner> {
    let rest = text.strip_prefix("PRIVATE+KEY+")?;
    // Split from the left: a key name holds no '+', base64 may.
    let mut parts = rest.splitn(3, '+');
    let name = parts.next()?;
    let id = parts.next()?;
    let encoded = parts.next()?;
    let raw = zeroize::Zeroizing::new(BASE64.decode(encoded).ok()?);
    if raw.len() != 33 || raw[0] != SIGNATURE_TYPE_COSIGNATURE_V1 {
        return None;
    }
    let seed: [u8; 32] = raw[1..].try_into().ok()?;
    let cosigner = Cosigner::from_seed(name, seed).ok()?;
    (vellum_audit::hash::to_hex(&cosigner.key().key_id()) == id).then_some(cosigner)
}

/// Opens a witness on `dir` for the logs of `policies`: its key (created
/// on first start under `name`) and its store.
pub async fn open(
    dir: &Path,
    name: &str,
    policies: Vec<vellum_audit::policy::Policy>,
) -> anyhow::Result<server::Witness> {
    let cosigner = load_or_create_key(dir, name)?;
    let store = store::Store::open(dir)
        .await
        .map_err(|e| anyhow::anyhow!("witness store in {}: {e}", dir.display()))?;
    Ok(server::Witness::new(cosigner, policies, store))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key file round-trips for many seeds, including base64 holding
    /// '+' and '/' (a bug once split the file at the last '+'), and a
    /// changed key id or type is refused.
    #[test]
    fn key_file_round_trips() {
        let mut plus_seen = false;
        for byte in 0..=255u8 {
            let cosigner = Cosigner::from_seed("witness.test/w1", [byte; 32]).expect("name");
            let text = skey(&cosigner);
            // PRIVATE + KEY + name + id + base64: the fifth field is the key.
            plus_seen |= text
                .splitn(5, '+')
                .nth(4)
                .is_some_and(|b64| b64.contains('+'));
            let parsed = parse_skey(text.trim_end()).expect("own key file parses");
            assert_eq!(parsed.key(), cosigner.key(), "seed byte {byte}");
        }
        assert!(
            plus_seen,
            "some seed must encode with a '+' for this test to bite"
        );
        let text = skey(&Cosigner::from_seed("w", [1; 32]).expect("name"));
        let bad_id = text.replacen("+w+", "+w+0", 1);
        assert!(parse_skey(bad_id.trim_end()).is_none());
        assert!(parse_skey("PRIVATE+KEY+w+00000000+AQ==").is_none());
    }
}
