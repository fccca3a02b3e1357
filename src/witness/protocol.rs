//! The `add-checkpoint` decision of a witness, without I/O: parse a request
//! body, then decide from the trust policy and the witness's stored state
//! whether to cosign, or which refusal to give. Written from
//! c2sp.org/tlog-witness (the HTTP protocol) and c2sp.org/tlog-cosignature;
//! no code copied. The server (`server.rs`) runs this under its one lock and
//! persists before answering.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use vellum_audit::Hash;
use vellum_audit::checkpoint::{Certificate, CertificateError};
use vellum_audit::merkle::{empty_root, verify_consistency};
use vellum_audit::policy::Policy;

/// The most consistency-proof lines a request may carry (the spec: a client
/// MUST NOT send more than 63).
pub const PROOF_LINES_MAX: usize = 63;
/// The largest request body accepted, in bytes: the old size line, 63 proof
/// lines and a checkpoint note of at most 64 KiB.
pub const REQUEST_BYTES_MAX: usize = 80 * 1024;

/// One parsed `add-checkpoint` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the client believes the witness holds.
    pub old_size: u64,
    /// The RFC 6962 consistency proof from `old_size` to the new size.
    pub proof: Vec<Hash>,
    /// The submitted checkpoint with its signatures.
    pub certificate: Certificate,
}

/// What the witness last cosigned for one origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Witnessed {
    /// The tree size.
    pub size: u64,
    /// The root hash at that size.
    pub root: Hash,
}

/// Why a request is refused; each maps to the status the spec names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: the body is not an add-checkpoint request, or `old` is above
    /// the checkpoint size.
    #[error("bad request: {0}")]
    Malformed(String),
    /// 404: no policy for the checkpoint's origin.
    #[error("unknown origin {0:?}")]
    UnknownOrigin(String),
    /// 403: the checkpoint's signatures do not meet the log's quorum.
    #[error("checkpoint is not signed by the log's quorum: {0}")]
    NotSigned(String),
    /// 409: `old` is not the size the witness holds (the body is that size).
    #[error("old size {old} is not the witnessed size {witnessed}")]
    OldSizeMismatch { old: u64, witnessed: u64 },
    /// 409: same size as the witnessed checkpoint, another root (a fork).
    #[error("checkpoint of size {size} has another root than the one witnessed")]
    RootMismatch { size: u64 },
    /// 422: the consistency proof does not verify.
    #[error("consistency proof does not verify: {0}")]
    BadProof(String),
}

impl Refusal {
    /// The HTTP status code of this refusal, per c2sp.org/tlog-witness.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) => 400,
            Refusal::NotSigned(_) => 403,
            Refusal::UnknownOrigin(_) => 404,
            Refusal::OldSizeMismatch { .. } | Refusal::RootMismatch { .. } => 409,
            Refusal::BadProof(_) => 422,
        }
    }
}

/// Parses a request body: `old <size>` LF, up to 63 base64 hash lines, an
/// empty line, then a checkpoint (signed note).
pub fn parse_request(body: &[u8]) -> Result<AddCheckpoint, Refusal> {
    let bad = |why: &str| Refusal::Malformed(why.to_owned());
    if body.len() > REQUEST_BYTES_MAX {
        return Err(bad("request body is larger than the limit"));
    }
    let text = std::str::from_utf8(body).map_err(|_| bad("request body is not utf-8"))?;
    let (first, mut rest) = text
        .split_once('\n')
        .ok_or_else(|| bad("missing old size line"))?;
    let digits = first
        .strip_prefix("old ")
        .ok_or_else(|| bad("first line is not `old <size>`"))?;
    let old_size = parse_size(digits).ok_or_else(|| bad("old size is not a canonical decimal"))?;
    let mut proof = Vec::new();
    loop {
        let (line, after) = rest
            .split_once('\n')
            .ok_or_else(|| bad("missing empty line before the checkpoint"))?;
        rest = after;
        if line.is_empty() {
            break;
        }
        if proof.len() == PROOF_LINES_MAX {
            return Err(bad("more than 63 consistency proof lines"));
        }
        let hash = BASE64
            .decode(line)
            .ok()
            .and_then(|raw| Hash::try_from(raw).ok())
            .ok_or_else(|| bad("proof line is not the base64 of 32 bytes"))?;
        proof.push(hash);
    }
    let certificate =
        Certificate::parse(rest).map_err(|e| Refusal::Malformed(format!("checkpoint: {e}")))?;
    Ok(AddCheckpoint {
        old_size,
        proof,
        certificate,
    })
}

/// ASCII decimal without leading zeros ("0" alone allowed), within u64.
fn parse_size(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical { text.parse().ok() } else { None }
}

/// Decides a request, in the spec's order: origin (404), signatures (403),
/// old size above the checkpoint (400), old size against the witnessed size
/// (409), the consistency proof (422), same size with another root (409).
/// `Ok` carries the state to persist before cosigning.
pub fn decide(
    policies: &[Policy],
    witnessed: Option<&Witnessed>,
    request: &AddCheckpoint,
) -> Result<Witnessed, Refusal> {
    let checkpoint = &request.certificate.checkpoint;
    let policy = policies
        .iter()
        .find(|p| p.origin == checkpoint.origin)
        .ok_or_else(|| Refusal::UnknownOrigin(checkpoint.origin.clone()))?;
    // The witness checks the log's own (replica) quorum, not cosignatures.
    let log_policy = policy.replicas_only();
    match request.certificate.verify(&log_policy) {
        Ok(_) => {}
        Err(e @ CertificateError::BodyMismatch) => return Err(Refusal::Malformed(e.to_string())),
        Err(e) => return Err(Refusal::NotSigned(e.to_string())),
    }
    let (old, size) = (request.old_size, checkpoint.size);
    if old > size {
        return Err(Refusal::Malformed(format!(
            "old size {old} is above the checkpoint size {size}"
        )));
    }
    let witnessed_size = witnessed.map_or(0, |w| w.size);
    if old != witnessed_size {
        return Err(Refusal::OldSizeMismatch {
            old,
            witnessed: witnessed_size,
        });
    }
    let new = Witnessed {
        size,
        root: checkpoint.root,
    };
    // A stored size of 0 holds nothing to be consistent with.
    match witnessed.filter(|w| w.size > 0) {
        None => {
            if !request.proof.is_empty() {
                return Err(Refusal::BadProof(
                    "the proof must be empty from size 0".into(),
                ));
            }
            if size == 0 && checkpoint.root != empty_root() {
                return Err(Refusal::BadProof("size 0 with a non-empty root".into()));
            }
        }
        Some(w) if w.size == size => {
            if w.root != checkpoint.root {
                return Err(Refusal::RootMismatch { size });
            }
            if !request.proof.is_empty() {
                return Err(Refusal::BadProof(
                    "the proof must be empty for equal sizes".into(),
                ));
            }
        }
        Some(w) => {
            verify_consistency(w.size, size, &w.root, &checkpoint.root, &request.proof)
                .map_err(|e| Refusal::BadProof(e.to_string()))?;
        }
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes: one canonical spelling, within u64.
    #[test]
    fn sizes_are_canonical_decimals() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("1", Some(1)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("", None),
            ("00", None),
            ("01", None),
            ("+1", None),
            ("-1", None),
            (" 1", None),
            ("1 ", None),
            ("1e3", None),
            ("١", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_size(text), *expected, "{text:?}");
        }
    }

    /// Each refusal maps to the status c2sp.org/tlog-witness names.
    #[test]
    fn refusals_map_to_the_spec_statuses() {
        let cases = [
            (Refusal::Malformed(String::new()), 400),
            (Refusal::NotSigned(String::new()), 403),
            (Refusal::UnknownOrigin(String::new()), 404),
            (
                Refusal::OldSizeMismatch {
                    old: 1,
                    witnessed: 2,
                },
                409,
            ),
            (Refusal::RootMismatch { size: 1 }, 409),
            (Refusal::BadProof(String::new()), 422),
        ];
        for (refusal, status) in cases {
            assert_eq!(refusal.status(), status, "{refusal:?}");
        }
    }

    /// The body grammar: the proof ends at the first empty line, at most 63
    /// lines, and the old size line must come first.
    #[test]
    fn request_grammar_is_enforced() {
        let hash = BASE64.encode([9u8; 32]);
        let too_many = format!("old 1\n{}\n", format!("{hash}\n").repeat(64));
        assert!(matches!(
            parse_request(too_many.as_bytes()),
            Err(Refusal::Malformed(_))
        ));
        let just_enough = format!("old 1\n{}\n", format!("{hash}\n").repeat(63));
        // 63 lines parse; the (missing) checkpoint is what fails.
        let error = parse_request(just_enough.as_bytes()).expect_err("no checkpoint");
        assert!(error.to_string().contains("checkpoint"), "{error}");
        assert!(parse_request(b"old 1").is_err());
        assert!(parse_request(b"new 1\n\n").is_err());
        assert!(parse_request(b"old  1\n\n").is_err());
    }
}
