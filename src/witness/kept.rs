//! The witness cosignatures a replica keeps: for each pinned witness, the
//! newest certificate it cosigned for this log, with its cosignature line
//! appended, in one small file `<data>/cosignatures/<id>.note` (a signed
//! note that `Certificate::parse` and `vellum proof check` read as is).
//! Written atomically (temp file, fsync, rename, directory fsync), and only
//! after the cosignature verified under the policy's key for that witness;
//! checked again when read back. Format: `docs/format.md`, "Kept witness
//! cosignatures".

use std::path::{Path, PathBuf};

use vellum_audit::checkpoint::Certificate;
use vellum_audit::cosignature::{CosignerKey, parse_signature_lines};
use vellum_audit::note::NoteSignature;

/// The directory of kept cosignatures inside a data directory.
pub const DIR_NAME: &str = "cosignatures";
/// The largest kept file read back, in bytes (a certificate is far smaller).
pub const KEPT_BYTES_MAX: u64 = 64 * 1024;

/// A verified cosignature of one witness on one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The tree size cosigned.
    pub size: u64,
    /// The certificate with the witness's cosignature line appended.
    pub certificate: Certificate,
    /// The witness's cosignature line alone.
    pub line: NoteSignature,
}

/// Why an answer or a kept file holds no valid cosignature of the witness.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeptError {
    /// The text is not signature lines / not a certificate.
    #[error("{0}")]
    Malformed(String),
    /// No line carries the pinned key's name and key id.
    #[error("no cosignature of the pinned key {0}")]
    Missing(String),
    /// A line of the pinned key does not verify.
    #[error("{0}")]
    Invalid(String),
}

/// The file keeping `key`'s cosignature in data directory `data_dir`:
/// named by the first 16 hex digits of SHA-256 of the witness's vkey
/// (names may hold '/', and key ids alone are 4 bytes).
pub fn path_for(data_dir: &Path, key: &CosignerKey) -> PathBuf {
    let digest = vellum_audit::hash::sha256(&[key.to_vkey().as_bytes()]);
    let hex = vellum_audit::hash::to_hex(&digest);
    data_dir.join(DIR_NAME).join(format!("{}.note", &hex[..16]))
}

/// Checks a witness's answer (`lines`, its signature lines) to a request
/// carrying `certificate`: one line of `key` must verify over the
/// certificate's note text. Lines of other keys are dropped.
pub fn accept(
    key: &CosignerKey,
    certificate: &Certificate,
    lines: &str,
) -> Result<Kept, KeptError> {
    let parsed = parse_signature_lines(lines).map_err(|e| KeptError::Malformed(e.to_string()))?;
    let line = find_valid(key, &certificate.note.text, &parsed)?;
    let mut cosigned = certificate.clone();
    cosigned.note.signatures.retain(|s| !key.matches(s));
    cosigned.note.signatures.push(line.clone());
    Ok(Kept {
        size: certificate.checkpoint.size,
        certificate: cosigned,
        line,
    })
}

fn find_valid(
    key: &CosignerKey,
    note_text: &str,
    lines: &[NoteSignature],
) -> Result<NoteSignature, KeptError> {
    let mut last_error = None;
    for line in lines.iter().filter(|l| key.matches(l)) {
        match key.verify(note_text, line) {
            Ok(_) => return Ok(line.clone()),
            Err(e) => last_error = Some(KeptError::Invalid(e.to_string())),
        }
    }
    Err(last_error.unwrap_or_else(|| KeptError::Missing(key.to_vkey())))
}

/// Writes `kept` for `key` durably (replacing the older one atomically).
pub fn save(data_dir: &Path, key: &CosignerKey, kept: &Kept) -> std::io::Result<()> {
    let dir = data_dir.join(DIR_NAME);
    if !dir.exists() {
        std::fs::create_dir_all(&dir)?;
        crate::fsutil::sync_parent(&dir)?;
    }
    let text = kept.certificate.encode();
    crate::fsutil::replace_durable(&path_for(data_dir, key), text.as_bytes(), 0o644)
}

/// Reads `key`'s kept cosignature back, checking it again; `Ok(None)` when
/// there is none yet.
pub fn load(data_dir: &Path, key: &CosignerKey) -> Result<Option<Kept>, KeptError> {
    use std::io::Read as _;
    let path = path_for(data_dir, key);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KeptError::Malformed(format!("{}: {e}", path.display()))),
    };
    let mut text = String::new();
    file.take(KEPT_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| KeptError::Malformed(format!("{}: {e}", path.display())))?;
    if text.len() as u64 > KEPT_BYTES_MAX {
        return Err(KeptError::Malformed(format!(
            "{}: larger than {KEPT_BYTES_MAX} bytes",
            path.display()
        )));
    }
    let certificate = Certificate::parse(&text)
        .map_err(|e| KeptError::Malformed(format!("{}: {e}", path.display())))?;
    let line = find_valid(key, &certificate.note.text, &certificate.note.signatures)?;
    Ok(Some(Kept {
        size: certificate.checkpoint.size,
        certificate,
        line,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vellum_audit::checkpoint::Checkpoint;
    use vellum_audit::cosignature::Cosigner;
    use vellum_audit::note::Signer;

    fn certificate(size: u64) -> Certificate {
        let checkpoint = Checkpoint {
            origin: "vellum.test/kept".into(),
            size,
            root: [7; 32],
            extensions: Vec::new(),
        };
        let signer = Signer::from_seed("replica-0", [1; 32]).expect("name");
        Certificate::sign(checkpoint, &[&signer]).expect("signs")
    }

    /// An answer is kept only with a valid line of the pinned key; it
    /// round-trips through its file, and a flipped byte in the file is
    /// refused on load.
    #[test]
    fn only_valid_cosignatures_of_the_pinned_key_are_kept() {
        let witness = Cosigner::from_seed("witness.test/w", [2; 32]).expect("name");
        let other = Cosigner::from_seed("witness.test/w", [3; 32]).expect("name");
        let cert = certificate(5);
        let good = witness
            .cosign(&cert.note.text, 100)
            .expect("cosigns")
            .line();
        let foreign = other.cosign(&cert.note.text, 100).expect("cosigns").line();
        let kept = accept(&witness.key(), &cert, &good).expect("valid line kept");
        assert_eq!(kept.size, 5);
        assert!(matches!(
            accept(&witness.key(), &cert, &foreign),
            Err(KeptError::Missing(_))
        ));
        assert!(matches!(
            accept(&witness.key(), &cert, "garbage\n"),
            Err(KeptError::Malformed(_))
        ));
        // A cosignature over another checkpoint does not verify over this one.
        let elsewhere = witness
            .cosign(&certificate(6).note.text, 100)
            .expect("cosigns")
            .line();
        assert!(matches!(
            accept(&witness.key(), &cert, &elsewhere),
            Err(KeptError::Invalid(_))
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(load(dir.path(), &witness.key()), Ok(None));
        save(dir.path(), &witness.key(), &kept).expect("saves");
        assert_eq!(load(dir.path(), &witness.key()), Ok(Some(kept.clone())));
        let path = path_for(dir.path(), &witness.key());
        let text = std::fs::read_to_string(&path).expect("reads");
        let flipped = text.replacen("vellum.test/kept", "vellum.test/kepT", 1);
        std::fs::write(&path, flipped).expect("writes");
        assert!(load(dir.path(), &witness.key()).is_err());
    }
}
