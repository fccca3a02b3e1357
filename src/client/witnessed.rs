//! An appended event's proof upgraded with outside witnesses' cosignatures.
//!
//! An append's receipt cannot carry cosignatures: its certificate is new,
//! and witnesses cosign it later (the primary feeds them off the append
//! path). Once one has, `GET .../proof` is built against the newest kept
//! cosigned checkpoint that covers the event, with the cosignatures on it
//! (`docs/format.md`, "Kept witness cosignatures"). [`Client::witnessed_proof`]
//! asks for that proof until it verifies under the caller's policy, witness
//! quorum (`cosigner-quorum`) included, and never trusts the answer: a proof
//! that fails any other way (a forged cosignature, too few replica keys, a
//! path that does not lead to the root, a leaf of another event) is refused
//! at once, naming what failed.

use std::time::{Duration, Instant};

use vellum_audit::checkpoint::{CertificateError, VerifiedCertificate};
use vellum_audit::leaf::LeafPreimage;
use vellum_audit::policy::Policy;
use vellum_audit::proof::{InclusionProof, ProofVerifyError};

use super::{Client, ClientError};

/// The longest [`Client::witnessed_proof`] waits, whatever the caller asks.
pub const WITNESS_WAIT_MS_MAX: u64 = 10 * 60 * 1000;
/// The pause between two asks while the witness quorum is not met yet (the
/// primary's feeder looks for new certificates every 100 ms).
const WITNESS_POLL_MS: u64 = 200;

/// A proof of one event that verified under a policy's replica quorum and
/// witness quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessedProof {
    /// The `c2sp.org/tlog-proof@v1` text as served (for `vellum proof check`).
    pub text: String,
    /// The parsed proof.
    pub proof: InclusionProof,
    /// The checkpoint, its replica signers and its witnesses' cosignatures.
    pub certificate: VerifiedCertificate,
    /// The event's leaf (position, stream, offset, op, commitment).
    pub leaf: LeafPreimage,
}

/// Why [`Client::witnessed_proof`] returned no proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessedProofError {
    /// The proof could not be fetched.
    #[error(transparent)]
    Call(#[from] ClientError),
    /// Every proof served within the wait verified, but without the
    /// policy's witness quorum (no witness has cosigned a checkpoint
    /// covering the event yet, or fewer than needed).
    #[error(
        "stream {stream} offset {offset}: not cosigned by {needed} pinned witnesses within {waited_ms} ms (last proof: {valid} valid cosignatures)"
    )]
    NotWitnessed {
        /// The event's stream.
        stream: u64,
        /// The event's offset.
        offset: u64,
        /// The policy's `cosigner-quorum`.
        needed: usize,
        /// Valid cosignatures of pinned witnesses on the last proof.
        valid: usize,
        /// How long it asked.
        waited_ms: u64,
    },
    /// A served proof that does not verify (not merely lacking
    /// cosignatures): what failed, and where.
    #[error("stream {stream} offset {offset}: the served proof is refused: {reason}")]
    Rejected {
        /// The event's stream.
        stream: u64,
        /// The event's offset.
        offset: u64,
        /// What failed (a failing cosignature names its witness).
        reason: String,
    },
}

impl Client {
    /// The inclusion proof of event `offset` of `stream`, once it carries
    /// the cosignatures `policy` requires: asks `GET .../proof` every
    /// 200 ms for up to `wait_ms` (at most [`WITNESS_WAIT_MS_MAX`]) until
    /// the proof verifies under `policy` (replica quorum, witness quorum,
    /// the path to the signed root, and a leaf naming this stream and
    /// offset). A proof that fails in any other way ends the wait at once.
    pub async fn witnessed_proof(
        &self,
        stream: u64,
        offset: u64,
        policy: &Policy,
        wait_ms: u64,
    ) -> Result<WitnessedProof, WitnessedProofError> {
        let started = Instant::now();
        let wait = Duration::from_millis(wait_ms.min(WITNESS_WAIT_MS_MAX));
        let rejected = |reason: String| WitnessedProofError::Rejected {
            stream,
            offset,
            reason,
        };
        loop {
            let text = self.proof(stream, offset).await?.proof;
            let proof = InclusionProof::parse(&text).map_err(|e| rejected(e.to_string()))?;
            let valid = match proof.verify_event(policy) {
                Ok((certificate, leaf)) => {
                    if (leaf.stream, leaf.stream_offset) != (stream, offset) {
                        return Err(rejected(format!(
                            "the leaf is stream {} offset {}",
                            leaf.stream, leaf.stream_offset
                        )));
                    }
                    return Ok(WitnessedProof {
                        text,
                        proof,
                        certificate,
                        leaf,
                    });
                }
                Err(ProofVerifyError::Certificate(CertificateError::WitnessQuorumNotMet {
                    valid,
                    failed,
                    ..
                })) if failed.is_empty() => valid.len(),
                Err(other) => return Err(rejected(other.to_string())),
            };
            if started.elapsed() >= wait {
                return Err(WitnessedProofError::NotWitnessed {
                    stream,
                    offset,
                    needed: policy.cosigner_quorum,
                    valid,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(WITNESS_POLL_MS)).await;
        }
    }
}
