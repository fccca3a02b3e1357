//! Proofs an auditor checks with public keys alone (DESIGN P3):
//! inclusion proofs in the C2SP `tlog-proof@v1` text format
//! (c2sp.org/tlog-proof) and consistency proofs in Vellum's own text format.
//!
//! tlog-proof@v1:
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64 leaf preimage>
//! index <decimal>
//! <base64 hash>            (zero or more, leaf's sibling first)
//!
//! <signed checkpoint>
//! ```
//!
//! The spec makes `extra` optional and opaque, and says applications must not
//! trust it implicitly. Vellum always writes it and defines it as the leaf
//! preimage (see `leaf`), so a proof needs nothing else to verify: the leaf
//! hash is `leaf_hash(extra)`, and the inclusion proof against the signed
//! root is what authenticates `extra`. A proof without `extra` parses but does
//! not verify in Vellum.
//!
//! Vellum's consistency proof (no C2SP format exists for it): one base64 hash
//! per line, a blank line, then the newer signed checkpoint. The text does not
//! carry the old size; the verifier supplies it with the old root it trusts.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::checkpoint::{
    Certificate, CertificateError, VerifiedCertificate, parse_decimal, parse_hash,
};
use crate::error::DecodeError;
use crate::hash::Hash;
use crate::merkle::{
    PROOF_HASHES_MAX, ProofError, leaf_hash, verify_consistency, verify_inclusion,
};
use crate::policy::Policy;

/// The first line of a tlog-proof@v1.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";
/// The largest `extra` (leaf preimage) accepted, in bytes.
pub const EXTRA_BYTES_MAX: usize = 4096;

const INCLUSION_FORMAT: &str = "tlog-proof";
const CONSISTENCY_FORMAT: &str = "consistency proof";

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofVerifyError {
    /// A Vellum inclusion proof without its leaf preimage.
    #[error("inclusion proof has no extra line holding the leaf preimage")]
    MissingExtra,
    /// The consistency proof's new size is not its checkpoint's size.
    #[error("consistency proof new size {new_size} is not the checkpoint size {checkpoint_size}")]
    SizeMismatch { new_size: u64, checkpoint_size: u64 },
    /// The checkpoint is not a valid commit certificate under the policy.
    #[error("checkpoint: {0}")]
    Certificate(#[from] CertificateError),
    /// The Merkle proof does not lead to the signed root.
    #[error("merkle proof: {0}")]
    Merkle(#[from] ProofError),
    /// `extra` is not a Vellum leaf preimage.
    #[error("extra: {0}")]
    Leaf(#[from] crate::error::DecodeError),
    /// The leaf preimage names another position than the proof's index.
    #[error(
        "the leaf preimage is for position {leaf_position}, but the proof is for index {index}"
    )]
    LeafPosition { leaf_position: u64, index: u64 },
}

/// A tlog-proof@v1 inclusion proof of one leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionProof {
    /// The leaf preimage (always present in proofs Vellum writes).
    pub extra: Option<Vec<u8>>,
    /// The zero-based leaf index (the event's global position).
    pub index: u64,
    /// The RFC 6962 inclusion proof, sibling first.
    pub hashes: Vec<Hash>,
    /// The signed checkpoint the proof is against.
    pub checkpoint: Certificate,
}

impl InclusionProof {
    /// The tlog-proof@v1 text.
    pub fn encode(&self) -> String {
        let mut out = format!("{TLOG_PROOF_HEADER}\n");
        if let Some(extra) = &self.extra {
            out.push_str(&format!("extra {}\n", BASE64.encode(extra)));
        }
        out.push_str(&format!("index {}\n", self.index));
        push_hashes(&mut out, &self.hashes);
        out.push('\n');
        out.push_str(&self.checkpoint.encode());
        out
    }

    /// Parses the tlog-proof@v1 text. Errors name the line.
    pub fn parse(text: &str) -> Result<InclusionProof, DecodeError> {
        let at = |line: usize, reason: &str| DecodeError::at_line(INCLUSION_FORMAT, line, reason);
        let mut lines = Lines::new(text);
        let (line, header) = lines.next_line().ok_or_else(|| at(1, "empty input"))?;
        if header != TLOG_PROOF_HEADER {
            return Err(at(line, "first line is not c2sp.org/tlog-proof@v1"));
        }
        let (mut line, mut current) = lines
            .next_line()
            .ok_or_else(|| at(2, "missing index line"))?;
        let mut extra = None;
        if let Some(encoded) = current.strip_prefix("extra ") {
            let bytes = BASE64
                .decode(encoded)
                .map_err(|_| at(line, "extra is not base64"))?;
            if bytes.len() > EXTRA_BYTES_MAX {
                return Err(at(line, "extra is larger than the limit"));
            }
            extra = Some(bytes);
            (line, current) = lines
                .next_line()
                .ok_or_else(|| at(line + 1, "missing index line"))?;
        }
        let index = current
            .strip_prefix("index ")
            .and_then(parse_decimal)
            .ok_or_else(|| {
                at(
                    line,
                    "expected \"index \" and a decimal without leading zeros",
                )
            })?;
        let hashes = lines.hashes(INCLUSION_FORMAT)?;
        let checkpoint = Certificate::parse_at(lines.rest(), lines.line + 1)?;
        Ok(InclusionProof {
            extra,
            index,
            hashes,
            checkpoint,
        })
    }

    /// Verifies the certificate under `policy`, then inclusion of
    /// `leaf_hash(extra)` at `index` against the signed root and size.
    pub fn verify(&self, policy: &Policy) -> Result<VerifiedCertificate, ProofVerifyError> {
        let extra = self.extra.as_ref().ok_or(ProofVerifyError::MissingExtra)?;
        let verified = self.checkpoint.verify(policy)?;
        let checkpoint = &verified.checkpoint;
        verify_inclusion(
            &leaf_hash(extra),
            self.index,
            checkpoint.size,
            &self.hashes,
            &checkpoint.root,
        )?;
        Ok(verified)
    }

    /// Verifies a Vellum event proof: everything [`InclusionProof::verify`]
    /// checks, plus that `extra` decodes as a Vellum leaf preimage whose
    /// global position is the proof's index. Returns the certificate and the
    /// leaf (stream, offset, op, ciphertext hash, commitment).
    pub fn verify_event(
        &self,
        policy: &Policy,
    ) -> Result<(VerifiedCertificate, crate::leaf::LeafPreimage), ProofVerifyError> {
        let extra = self.extra.as_ref().ok_or(ProofVerifyError::MissingExtra)?;
        let leaf = crate::leaf::LeafPreimage::decode(extra)?;
        if leaf.global_position != self.index {
            return Err(ProofVerifyError::LeafPosition {
                leaf_position: leaf.global_position,
                index: self.index,
            });
        }
        let verified = self.verify(policy)?;
        Ok((verified, leaf))
    }
}

/// One part of [`check_event`]: whether it held, and what it found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PartCheck {
    /// True when this part held.
    pub passed: bool,
    /// What was found, naming the keys, positions or hashes involved.
    pub message: String,
}

impl PartCheck {
    fn pass(message: String) -> PartCheck {
        PartCheck {
            passed: true,
            message,
        }
    }

    fn fail(message: String) -> PartCheck {
        PartCheck {
            passed: false,
            message,
        }
    }
}

/// The offline check of one event against its receipt's proof and salt
/// (`vellum proof check`): four independent parts, each run whatever the
/// others found, so a failure names every part that broke.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EventCheck {
    /// The leaf preimage (`extra`) decodes, names the proof's index, and the
    /// Merkle path leads from its hash to the checkpoint's root.
    pub inclusion: PartCheck,
    /// The checkpoint names the pinned origin and carries valid signatures
    /// of at least the policy's quorum of distinct pinned keys (and no
    /// failing signature of a pinned key).
    pub quorum: PartCheck,
    /// `SHA-256("vellum/commit/v1\0" || salt || event)` is the leaf's
    /// commitment: the proof is about exactly these event bytes.
    pub commitment: PartCheck,
    /// The checkpoint carries valid cosignatures of at least the policy's
    /// `cosigner-quorum` distinct pinned outside witnesses, and no failing
    /// cosignature of a pinned witness (passes when the policy pins none).
    pub witnesses: PartCheck,
}

impl EventCheck {
    /// True when all four parts held.
    pub fn passed(&self) -> bool {
        self.inclusion.passed
            && self.quorum.passed
            && self.commitment.passed
            && self.witnesses.passed
    }

    /// The names of the parts that failed, in check order.
    pub fn failed_parts(&self) -> Vec<&'static str> {
        [
            ("inclusion", &self.inclusion),
            ("quorum", &self.quorum),
            ("commitment", &self.commitment),
            ("witnesses", &self.witnesses),
        ]
        .into_iter()
        .filter(|(_, part)| !part.passed)
        .map(|(name, _)| name)
        .collect()
    }
}

/// Checks that `proof` proves `event` (with its commitment `salt`) is in a
/// log certified under `policy`: inclusion, quorum, commitment and the
/// outside witnesses' cosignatures (see [`EventCheck`]). Needs no key but the policy's public ones.
pub fn check_event(
    proof: &InclusionProof,
    policy: &Policy,
    salt: &[u8; 32],
    event: &[u8],
) -> EventCheck {
    let leaf = proof
        .extra
        .as_ref()
        .ok_or(ProofVerifyError::MissingExtra)
        .and_then(|extra| Ok(crate::leaf::LeafPreimage::decode(extra)?));
    EventCheck {
        inclusion: inclusion_part(proof, leaf.as_ref()),
        quorum: quorum_part(&proof.checkpoint, &policy.replicas_only()),
        commitment: match &leaf {
            Err(e) => PartCheck::fail(format!("no leaf to open: {e}")),
            Ok(leaf) => commitment_part(leaf, salt, event),
        },
        witnesses: witnesses_part(&proof.checkpoint, policy),
    }
}

fn inclusion_part(
    proof: &InclusionProof,
    leaf: Result<&crate::leaf::LeafPreimage, &ProofVerifyError>,
) -> PartCheck {
    let leaf = match leaf {
        Ok(leaf) => leaf,
        Err(e) => return PartCheck::fail(e.to_string()),
    };
    if leaf.global_position != proof.index {
        return PartCheck::fail(
            ProofVerifyError::LeafPosition {
                leaf_position: leaf.global_position,
                index: proof.index,
            }
            .to_string(),
        );
    }
    let checkpoint = &proof.checkpoint.checkpoint;
    match verify_inclusion(
        &leaf.leaf_hash(),
        proof.index,
        checkpoint.size,
        &proof.hashes,
        &checkpoint.root,
    ) {
        Ok(()) => PartCheck::pass(format!(
            "leaf at position {} (stream {} offset {} op {}) is in the tree of size {}",
            leaf.global_position, leaf.stream, leaf.stream_offset, leaf.op, checkpoint.size
        )),
        Err(e) => PartCheck::fail(format!(
            "the merkle path of position {} does not lead to the checkpoint root of tree size {}: {e}",
            proof.index, checkpoint.size
        )),
    }
}

fn quorum_part(certificate: &Certificate, policy: &Policy) -> PartCheck {
    let key = |name: &str, id: [u8; 4]| format!("{name}+{}", crate::hash::to_hex(&id));
    // With pinned rotations, the keys in force at the certified op.
    let in_force = match certificate.certified_op() {
        Some(op) => policy.at_op(op),
        None => std::borrow::Cow::Borrowed(policy),
    };
    let check = match certificate.verify(policy) {
        Ok(verified) => {
            let signers: Vec<String> = verified
                .signers
                .iter()
                .map(|v| key(v.name(), v.key_id()))
                .collect();
            return PartCheck::pass(format!(
                "{} of {} needed distinct pinned keys signed: {}",
                signers.len(),
                policy.quorum,
                signers.join(", ")
            ));
        }
        Err(CertificateError::QuorumNotMet { .. }) => certificate
            .note
            .check_signatures(&in_force.verifiers)
            .expect("verify already checked the pinned keys are unambiguous"),
        Err(other) => return PartCheck::fail(other.to_string()),
    };
    let signed: Vec<String> = check
        .valid
        .iter()
        .map(|v| key(v.name(), v.key_id()))
        .collect();
    let failed: Vec<String> = check
        .failed
        .iter()
        .map(|s| key(&s.name, s.key_id))
        .collect();
    let missing: Vec<String> = in_force
        .verifiers
        .iter()
        .filter(|v| !check.valid.contains(v))
        .filter(|v| {
            !check
                .failed
                .iter()
                .any(|s| s.name == v.name() && s.key_id == v.key_id())
        })
        .map(|v| key(v.name(), v.key_id()))
        .collect();
    let list = |keys: &[String]| match keys.is_empty() {
        true => "none".to_string(),
        false => keys.join(", "),
    };
    PartCheck::fail(format!(
        "{} valid signatures of distinct pinned keys, {} needed; signed: {}; bad signature: {}; \
         not signed by: {}; signatures of unpinned keys ignored: {}",
        check.valid.len(),
        policy.quorum,
        list(&signed),
        list(&failed),
        list(&missing),
        check.unknown
    ))
}

/// The outside witnesses' part: every cosignature line carrying a pinned
/// witness's name and key id is checked over the checkpoint text
/// (`check_cosignatures`, the rule `Certificate::verify` applies in its
/// step 5), naming the witnesses that cosigned, failed and are missing.
fn witnesses_part(certificate: &Certificate, policy: &Policy) -> PartCheck {
    if policy.cosigners.is_empty() {
        return PartCheck::pass("the policy pins no outside witnesses".to_string());
    }
    let key = |name: &str, id: [u8; 4]| format!("{name}+{}", crate::hash::to_hex(&id));
    let check = crate::cosignature::check_cosignatures(&certificate.note, &policy.cosigners);
    let cosigned: Vec<String> = check
        .valid
        .iter()
        .map(|c| key(c.key.name(), c.key.key_id()))
        .collect();
    if cosigned.len() >= policy.cosigner_quorum && check.failed.is_empty() {
        return PartCheck::pass(format!(
            "{} of {} needed pinned witnesses cosigned: {}",
            cosigned.len(),
            policy.cosigner_quorum,
            cosigned.join(", ")
        ));
    }
    let failed: Vec<String> = check
        .failed
        .iter()
        .map(|(s, why)| format!("{} ({why})", key(&s.name, s.key_id)))
        .collect();
    let missing: Vec<String> = policy
        .cosigners
        .iter()
        .filter(|w| !check.valid.iter().any(|v| &v.key == *w))
        .filter(|w| !check.failed.iter().any(|(s, _)| w.matches(s)))
        .map(|w| key(w.name(), w.key_id()))
        .collect();
    let list = |keys: &[String]| match keys.is_empty() {
        true => "none".to_string(),
        false => keys.join(", "),
    };
    PartCheck::fail(format!(
        "{} valid cosignatures of distinct pinned witnesses, {} needed; cosigned: {}; \
         bad cosignature: {}; not cosigned by: {}",
        cosigned.len(),
        policy.cosigner_quorum,
        list(&cosigned),
        list(&failed),
        list(&missing)
    ))
}

fn commitment_part(leaf: &crate::leaf::LeafPreimage, salt: &[u8; 32], event: &[u8]) -> PartCheck {
    let computed = crate::leaf::commitment(salt, event);
    if computed == leaf.commitment {
        PartCheck::pass(format!(
            "the salt and the {} event bytes open the leaf's commitment {}",
            event.len(),
            crate::hash::to_hex(&leaf.commitment)
        ))
    } else {
        PartCheck::fail(format!(
            "the salt and the {} event bytes give commitment {}, but the leaf holds {}: \
             the event bytes or the salt are not the ones this proof is about",
            event.len(),
            crate::hash::to_hex(&computed),
            crate::hash::to_hex(&leaf.commitment)
        ))
    }
}

/// A consistency proof from a trusted older tree to a signed newer one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The older tree size (not in the text; supplied by the verifier).
    pub old_size: u64,
    /// The newer tree size (the checkpoint's size).
    pub new_size: u64,
    /// The RFC 9162 §2.1.4 proof.
    pub hashes: Vec<Hash>,
    /// The signed newer checkpoint.
    pub checkpoint: Certificate,
}

impl ConsistencyProof {
    /// Hashes, a blank line, the signed checkpoint.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        push_hashes(&mut out, &self.hashes);
        out.push('\n');
        out.push_str(&self.checkpoint.encode());
        out
    }

    /// Parses the text of a proof from `old_size`. Errors name the line.
    pub fn parse(text: &str, old_size: u64) -> Result<ConsistencyProof, DecodeError> {
        let mut lines = Lines::new(text);
        let hashes = lines.hashes(CONSISTENCY_FORMAT)?;
        let checkpoint = Certificate::parse_at(lines.rest(), lines.line + 1)?;
        let new_size = checkpoint.checkpoint.size;
        Ok(ConsistencyProof {
            old_size,
            new_size,
            hashes,
            checkpoint,
        })
    }

    /// Verifies the certificate under `policy`, then that the tree with
    /// `old_root` at `old_size` is a prefix of the signed tree.
    pub fn verify(
        &self,
        old_root: &Hash,
        policy: &Policy,
    ) -> Result<VerifiedCertificate, ProofVerifyError> {
        let verified = self.checkpoint.verify(policy)?;
        let checkpoint = &verified.checkpoint;
        if checkpoint.size != self.new_size {
            return Err(ProofVerifyError::SizeMismatch {
                new_size: self.new_size,
                checkpoint_size: checkpoint.size,
            });
        }
        verify_consistency(
            self.old_size,
            self.new_size,
            old_root,
            &checkpoint.root,
            &self.hashes,
        )?;
        Ok(verified)
    }
}

fn push_hashes(out: &mut String, hashes: &[Hash]) {
    for hash in hashes {
        out.push_str(&BASE64.encode(hash));
        out.push('\n');
    }
}

/// A line cursor that remembers the 1-based number of the last line taken.
struct Lines<'a> {
    rest: &'a str,
    line: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines {
            rest: text,
            line: 0,
        }
    }

    /// The next newline-terminated line (without its newline).
    fn next_line(&mut self) -> Option<(usize, &'a str)> {
        let (line, rest) = self.rest.split_once('\n')?;
        self.rest = rest;
        self.line += 1;
        Some((self.line, line))
    }

    /// Base64 hash lines up to and including the blank separator line.
    fn hashes(&mut self, format: &'static str) -> Result<Vec<Hash>, DecodeError> {
        let mut hashes = Vec::new();
        loop {
            let next = self.line + 1;
            let (line, text) = self.next_line().ok_or_else(|| {
                DecodeError::at_line(format, next, "missing blank line before the checkpoint")
            })?;
            if text.is_empty() {
                return Ok(hashes);
            }
            if hashes.len() == PROOF_HASHES_MAX {
                return Err(DecodeError::at_line(
                    format,
                    line,
                    "more proof hashes than any tree needs",
                ));
            }
            let hash = parse_hash(text).ok_or_else(|| {
                DecodeError::at_line(format, line, "proof hash is not the base64 of 32 bytes")
            })?;
            hashes.push(hash);
        }
    }

    fn rest(&self) -> &'a str {
        self.rest
    }
}
