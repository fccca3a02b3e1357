//! Checkpoint signatures and commit certificates (DESIGN P4): a replica signs
//! the checkpoint it computed itself after an op it holds durably; the
//! primary checks each backup's signature against the same checkpoint and
//! assembles a quorum of them into the certificate; every replica verifies a
//! certificate against the pinned policy and its own log before trusting it.

use std::collections::BTreeMap;

use vellum_audit::checkpoint::{Certificate, Checkpoint};
use vellum_audit::hash::Hash;
use vellum_audit::note::{Note, NoteSignature};
use vellum_audit::verify::ChainHead;

use super::replica::Replica;
use super::{Action, Broken, ReplicaIndex, Status};

/// Own checkpoint signatures a replica keeps, the most recently made: a
/// primary certifies, and a backup acknowledges, only the newest group
/// ends, so a few cover the pipeline's retries without growing with the log.
pub(super) const OWN_SIGNATURES_KEPT: usize = 8;

/// A certificate that verified under the policy, with the op it certifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cert {
    /// The certified op (from the chain head extension).
    pub op: u64,
    /// The certified op's header checksum.
    pub head: Hash,
    /// The signed checkpoint.
    pub checkpoint: Checkpoint,
    /// The signed-note text.
    pub text: String,
    /// The same certificate, typed (handed to the shell with each commit).
    pub certificate: std::sync::Arc<Certificate>,
}

/// The op and header checksum named by a checkpoint's chain head extension.
fn chain_head(checkpoint: &Checkpoint) -> Option<(u64, Hash)> {
    let head = ChainHead::all_in(checkpoint).into_iter().next()?.ok()?;
    Some((head.op, head.checksum))
}

impl Replica {
    /// The checkpoint text this replica computes after `op`, if it knows
    /// every body up to it.
    pub(super) fn checkpoint_of(&self, op: u64) -> Option<Checkpoint> {
        self.journal.checkpoint(op, &self.origin)
    }

    /// This replica's signature over its checkpoint after `op`, if the
    /// shell already made it; otherwise asks the shell for it
    /// ([`Action::Sign`], once per checkpoint body) and gives None: the
    /// caller's work resumes in [`Replica::on_signed`].
    /// None also for an op before this replica's key took over (a pinned
    /// rotation): a signature no peer or auditor would count.
    pub(super) fn sign_checkpoint(&mut self, op: u64) -> Option<Vec<u8>> {
        let in_force = self
            .policy
            .verifier_at(usize::from(self.config.replica), op)?;
        if in_force.key_id() != self.own_key_id {
            return None;
        }
        let checkpoint = self.checkpoint_of(op)?;
        let body = checkpoint.body();
        if let Some((_, _, signature)) = self
            .own_signatures
            .iter()
            .rev()
            .find(|(o, signed, _)| *o == op && *signed == body)
        {
            return Some(signature.clone());
        }
        if self.signing.get(&op) != Some(&body) {
            // Asked at most once per body until answered; the shell answers
            // every request, so this holds at most a step's worth.
            self.signing.insert(op, body.clone());
            self.out.push(Action::Sign { op, body });
        }
        None
    }

    /// The shell answered an [`Action::Sign`]: keep the signature if the
    /// checkpoint after `op` is still the body signed, then do what waited
    /// for it (a primary tries to commit; a backup acknowledges `op` if it
    /// holds it durably). A signer that failed gives no signature: nothing
    /// is retried here (the next write, ack or view change asks again), so
    /// a failing token cannot make the core spin.
    pub(super) fn on_signed(&mut self, op: u64, body: String, signature: Option<Vec<u8>>) {
        if self.signing.get(&op) == Some(&body) {
            self.signing.remove(&op);
        }
        let Some(signature) = signature else { return };
        let current = self.checkpoint_of(op).map(|c| c.body());
        if current.as_ref() != Some(&body) {
            return; // the log changed under the request: a stale signature
        }
        // Kept by age, never by op number: after a view change replaced
        // ops, stale signatures of higher ops must not crowd out the one
        // just made (the caller would ask for it again, forever).
        self.own_signatures.retain(|(o, _, _)| *o != op);
        self.own_signatures.push_back((op, body, signature));
        while self.own_signatures.len() > OWN_SIGNATURES_KEPT {
            self.own_signatures.pop_front();
        }
        if self.status != Status::Normal || self.pending.is_some() {
            return;
        }
        if self.is_primary() {
            self.try_commit();
        } else if op <= self.journal.durable_op() || self.broken(Broken::AckBeforeFsync) {
            self.send_prepare_ok(op);
        }
    }

    /// Whether `signature` is replica `from`'s signature over this
    /// replica's own checkpoint after `op` (a mismatch means its log differs).
    pub(super) fn check_ack(&self, from: ReplicaIndex, op: u64, signature: &[u8]) -> bool {
        let Some(checkpoint) = self.checkpoint_of(op) else {
            return false;
        };
        // The key in force at `op`: a pinned rotation switches it (key_history).
        let Some(verifier) = self.policy.verifier_at(usize::from(from), op) else {
            return false;
        };
        verifier.verify(checkpoint.body().as_bytes(), signature)
    }

    /// The certificate of `op` from the given signatures (own included).
    pub(super) fn assemble_certificate(
        &self,
        op: u64,
        signatures: &BTreeMap<ReplicaIndex, Vec<u8>>,
    ) -> Cert {
        let checkpoint = self
            .checkpoint_of(op)
            .expect("the primary signed this op, so it knows its checkpoint");
        let signatures = signatures
            .iter()
            .map(|(replica, signature)| {
                let verifier = self
                    .policy
                    .verifier_at(usize::from(*replica), op)
                    .expect("signatures come from replicas the policy pins");
                NoteSignature {
                    name: verifier.name().to_owned(),
                    key_id: verifier.key_id(),
                    signature: signature.clone(),
                }
            })
            .collect();
        let note = Note {
            text: checkpoint.body(),
            signatures,
        };
        let head = self
            .journal
            .header(op)
            .expect("a certified op has a header")
            .checksum();
        let certificate = Certificate {
            checkpoint: checkpoint.clone(),
            note,
        };
        let text = certificate.encode();
        Cert {
            op,
            head,
            checkpoint,
            text,
            certificate: std::sync::Arc::new(certificate),
        }
    }

    /// Parses and verifies a certificate under the pinned policy.
    pub(super) fn verify_certificate(&self, text: &str) -> Option<Cert> {
        let certificate = Certificate::parse(text).ok()?;
        let verified = certificate.verify(&self.policy).ok()?;
        let (op, head) = chain_head(&verified.checkpoint)?;
        Some(Cert {
            op,
            head,
            checkpoint: verified.checkpoint,
            text: text.to_owned(),
            certificate: std::sync::Arc::new(certificate),
        })
    }

    /// Whether `cert` certifies this replica's own log: its header of the
    /// certified op has the signed checksum and, when it knows the bodies,
    /// it computes the same checkpoint.
    pub(super) fn certificate_matches_log(&self, cert: &Cert) -> bool {
        let Some(header) = self.journal.header(cert.op) else {
            return false;
        };
        if header.checksum() != cert.head || header.tree_size != cert.checkpoint.size {
            return false;
        }
        match self.checkpoint_of(cert.op) {
            Some(own) => own == cert.checkpoint,
            None => true,
        }
    }

    /// Keeps `cert` as the newest certificate if it is newer.
    pub(super) fn keep_certificate(&mut self, cert: Cert) {
        if self.certificate.as_ref().is_none_or(|c| c.op < cert.op) {
            self.certificate = Some(cert);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vellum_audit::verify::chain_head_extension;

    /// Goal: the chain head extension written by the audit crate parses back.
    #[test]
    fn chain_head_round_trips() {
        let checkpoint = Checkpoint {
            origin: "o".into(),
            size: 3,
            root: [0; 32],
            extensions: vec![chain_head_extension(42, &[0xab; 32])],
        };
        assert_eq!(chain_head(&checkpoint), Some((42, [0xab; 32])));
    }
}
