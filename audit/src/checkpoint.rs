//! C2SP checkpoints (c2sp.org/tlog-checkpoint) and Vellum's commit
//! certificates: a checkpoint signed by at least a quorum of replicas.
//!
//! A checkpoint body is the note text `origin\nsize\nbase64(root)\n` plus
//! optional extension lines. A [`Certificate`] is that body as a signed note
//! carrying one Ed25519 signature per replica. Since a replica signs only
//! after it fsynced the ops and computed the same root itself, f+1 valid
//! signatures of pinned keys prove quorum durability of the whole prefix
//! (DESIGN P1, P4).
//!
//! Deviation from tlog-checkpoint: the spec says the log's key name SHOULD
//! match the origin; a Vellum log has no single key, so every replica signs
//! under its own key name and the [`Policy`] pins which names count.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::cosignature::{ValidCosignature, check_cosignatures};
use crate::error::DecodeError;
use crate::hash::Hash;
use crate::note::{Note, NoteError, NoteSigner, Verifier};
use crate::policy::Policy;

/// The most extension lines a checkpoint may carry (Vellum writes one: the
/// signed chain head, see `verify::CHAIN_HEAD_EXTENSION`).
pub const EXTENSIONS_MAX: usize = 16;

const FORMAT: &str = "checkpoint";

/// The origin of the log of cluster `cluster`:
/// `vellum.local/cluster/<32 lowercase hex digits>`.
///
/// tlog-checkpoint requires the origin to identify one log uniquely: a
/// signature over a checkpoint of one log must never be usable for another.
/// The VSR cluster id is a random 128-bit value fixed at `vellum init`, so it
/// names exactly one log; `vellum.local/` makes it a schema-less URL (as the
/// spec recommends) that can never collide with a real domain's logs.
pub fn origin_for_cluster(cluster: u128) -> String {
    format!("vellum.local/cluster/{cluster:032x}")
}

/// A tree head: origin, size and RFC 6962 root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's unique origin line.
    pub origin: String,
    /// The number of leaves.
    pub size: u64,
    /// The root of the tree of `size` leaves.
    pub root: Hash,
    /// Extension lines (non-empty each); Vellum writes the chain head.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root and extensions, one per line.
    pub fn body(&self) -> String {
        let mut out = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        );
        for extension in &self.extensions {
            out.push_str(extension);
            out.push('\n');
        }
        out
    }

    /// Parses a note text as a checkpoint body. Errors name the line.
    pub fn parse_body(text: &str) -> Result<Checkpoint, DecodeError> {
        Self::parse_body_at(text, 1)
    }

    /// Parses a body that starts at line `first_line` of a larger input.
    pub(crate) fn parse_body_at(text: &str, first_line: usize) -> Result<Checkpoint, DecodeError> {
        let at =
            |index: usize, reason: &str| DecodeError::at_line(FORMAT, first_line + index, reason);
        let Some(body) = text.strip_suffix('\n') else {
            return Err(at(
                text.matches('\n').count(),
                "checkpoint does not end with a newline",
            ));
        };
        let lines: Vec<&str> = body.split('\n').collect();
        if lines.len() < 3 {
            return Err(at(
                lines.len(),
                "checkpoint needs origin, size and root lines",
            ));
        }
        if lines.len() - 3 > EXTENSIONS_MAX {
            return Err(at(3 + EXTENSIONS_MAX, "too many extension lines"));
        }
        if lines[0].is_empty() {
            return Err(at(0, "empty origin"));
        }
        let size = parse_decimal(lines[1])
            .ok_or_else(|| at(1, "tree size is not a decimal without leading zeros"))?;
        let root =
            parse_hash(lines[2]).ok_or_else(|| at(2, "root is not the base64 of 32 bytes"))?;
        if let Some(empty) = lines[3..].iter().position(|l| l.is_empty()) {
            return Err(at(3 + empty, "empty extension line"));
        }
        Ok(Checkpoint {
            origin: lines[0].to_owned(),
            size,
            root,
            extensions: lines[3..].iter().map(|l| (*l).to_owned()).collect(),
        })
    }
}

/// An ASCII decimal u64 with no leading zeros (unless it is `0`).
pub(crate) fn parse_decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return None;
    }
    text.parse().ok()
}

/// The standard base64 of exactly 32 bytes.
pub(crate) fn parse_hash(text: &str) -> Option<Hash> {
    BASE64.decode(text).ok()?.try_into().ok()
}

/// A checkpoint signed by replicas: the commit certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// The signed tree head.
    pub checkpoint: Checkpoint,
    /// The signed note; its text is `checkpoint.body()`.
    pub note: Note,
}

/// A certificate that passed [`Certificate::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCertificate {
    /// The checkpoint a quorum vouched for.
    pub checkpoint: Checkpoint,
    /// The distinct pinned keys whose signatures verified.
    pub signers: Vec<Verifier>,
    /// The distinct pinned outside witnesses whose cosignatures verified
    /// (c2sp.org/tlog-cosignature), with the time each claims.
    pub cosigners: Vec<ValidCosignature>,
}

/// Why a certificate was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The checkpoint names another log.
    #[error("checkpoint origin {found:?} is not the pinned origin {expected:?}")]
    OriginMismatch { expected: String, found: String },
    /// The note text is not the checkpoint body (a bug or a forged struct).
    #[error("signed note text is not the checkpoint body")]
    BodyMismatch,
    /// Too few valid pinned signatures, or a pinned signature that fails.
    #[error("{valid} valid signatures of pinned keys, {needed} needed; failed: [{}]", failed.join(", "))]
    QuorumNotMet {
        /// Distinct pinned keys whose signatures verified.
        valid: usize,
        /// The policy's quorum.
        needed: usize,
        /// `name+keyid` of each pinned-key signature that did not verify.
        failed: Vec<String>,
    },
    /// Too few valid cosignatures of pinned outside witnesses, or a
    /// cosignature of a pinned witness that fails.
    #[error("{} valid cosignatures of pinned witnesses [{}], {needed} needed; failed: [{}]", valid.len(), valid.join(", "), failed.join(", "))]
    WitnessQuorumNotMet {
        /// Names of the distinct pinned witnesses whose cosignature verified.
        valid: Vec<String>,
        /// The policy's cosigner quorum.
        needed: usize,
        /// `name+keyid: why` of each pinned-witness cosignature that failed.
        failed: Vec<String>,
    },
    /// The policy pins key rotations, so the keys in force depend on the
    /// certified op, but the checkpoint does not name exactly one op.
    #[error(
        "the policy pins key rotations and the checkpoint does not carry exactly one valid vellum-head line naming its op"
    )]
    OpUnknown,
    /// The pinned keys themselves are ambiguous.
    #[error(transparent)]
    Note(#[from] NoteError),
}

impl Certificate {
    /// Signs `checkpoint` with each signer.
    pub fn sign<S: NoteSigner + ?Sized>(
        checkpoint: Checkpoint,
        signers: &[&S],
    ) -> Result<Certificate, NoteError> {
        let note = Note::sign(&checkpoint.body(), signers)?;
        Ok(Certificate { checkpoint, note })
    }

    /// Adds (or replaces) one replica's signature.
    pub fn add_signature<S: NoteSigner + ?Sized>(&mut self, signer: &S) -> Result<(), NoteError> {
        self.note.add_signature(signer)
    }

    /// The signed-note text.
    pub fn encode(&self) -> String {
        self.note.encode()
    }

    /// Parses a signed checkpoint. Errors name the line.
    pub fn parse(text: &str) -> Result<Certificate, DecodeError> {
        Self::parse_at(text, 1)
    }

    /// Parses a signed checkpoint that starts at line `first_line` of a
    /// larger input (errors name the line of that input).
    pub fn parse_at(text: &str, first_line: usize) -> Result<Certificate, DecodeError> {
        let note = Note::parse_at(text, first_line)?;
        let checkpoint = Checkpoint::parse_body_at(&note.text, first_line)?;
        Ok(Certificate { checkpoint, note })
    }

    /// The op the checkpoint's one well-formed `vellum-head` line names
    /// (`None` without one, or with more than one).
    pub fn certified_op(&self) -> Option<u64> {
        match crate::verify::ChainHead::all_in(&self.checkpoint)[..] {
            [Ok(head)] => Some(head.op),
            _ => None,
        }
    }

    /// Checks the origin and that at least `policy.quorum` distinct pinned
    /// keys signed validly; any failing signature of a pinned key rejects the
    /// certificate (signed-note's SHOULD). Unknown keys are ignored. Then
    /// the same for outside witnesses: at least `policy.cosigner_quorum`
    /// distinct pinned cosigners, and no failing cosignature of one.
    ///
    /// A policy with key rotations is first narrowed to the keys in force
    /// at the op the checkpoint's `vellum-head` line names
    /// ([`Policy::at_op`]): a signature by a key retired before that op, or
    /// by one that takes over only after it, counts for nothing.
    pub fn verify(&self, policy: &Policy) -> Result<VerifiedCertificate, CertificateError> {
        let policy = match policy.rotations.is_empty() {
            true => std::borrow::Cow::Borrowed(policy),
            false => match self.certified_op() {
                Some(op) => policy.at_op(op),
                None => return Err(CertificateError::OpUnknown),
            },
        };
        let policy = policy.as_ref();
        if self.checkpoint.origin != policy.origin {
            return Err(CertificateError::OriginMismatch {
                expected: policy.origin.clone(),
                found: self.checkpoint.origin.clone(),
            });
        }
        if self.note.text != self.checkpoint.body() {
            return Err(CertificateError::BodyMismatch);
        }
        let check = self.note.check_signatures(&policy.verifiers)?;
        if check.valid.len() < policy.quorum || !check.failed.is_empty() {
            let failed = check
                .failed
                .iter()
                .map(|s| format!("{}+{}", s.name, crate::hash::to_hex(&s.key_id)))
                .collect();
            return Err(CertificateError::QuorumNotMet {
                valid: check.valid.len(),
                needed: policy.quorum,
                failed,
            });
        }
        let cosigned = check_cosignatures(&self.note, &policy.cosigners);
        if cosigned.valid.len() < policy.cosigner_quorum || !cosigned.failed.is_empty() {
            return Err(CertificateError::WitnessQuorumNotMet {
                valid: cosigned
                    .valid_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                needed: policy.cosigner_quorum,
                failed: cosigned
                    .failed
                    .iter()
                    .map(|(s, why)| format!("{}+{}: {why}", s.name, crate::hash::to_hex(&s.key_id)))
                    .collect(),
            });
        }
        Ok(VerifiedCertificate {
            checkpoint: self.checkpoint.clone(),
            signers: check.valid,
            cosigners: cosigned.valid,
        })
    }
}
