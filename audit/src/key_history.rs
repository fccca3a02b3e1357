//! Replica signing-key rotation, the auditor's side (first part; see
//! docs/format.md, "Signing-key rotation"): the announcement a replica
//! signs when it moves to a new Ed25519 key, and the key history an
//! auditor pins, which says which key of each replica was in force at
//! each op, so old proofs keep verifying under the old key and
//! checkpoints at or after the rotation's op need the new one.
//!
//! An announcement is the text
//!
//! ```text
//! vellum-key-rotation/v1
//! origin <origin>
//! replica <index>
//! from-op <op>
//! old <old vkey>
//! new <new vkey>
//! ```
//!
//! (each line ending in `\n`), signed by the old key (the replica's
//! authority as pinned) and by the new key (proof that the replica holds
//! it, so no one can announce a key they do not hold). Its pinned form is
//! one line `rotation <index> <op> <new vkey> <old sig b64> <new sig b64>`;
//! the old key comes from the history itself, so a chain of rotations
//! only verifies from the keys the auditor pinned first.
//!
//! The policy file pins these lines (`Policy::parse` checks them through
//! [`KeyHistory::add`]), `Certificate::verify` applies the keys in force
//! at a checkpoint's op, and `vellum keys rotate-signing` makes them. The
//! rotated replica then commits the same line in the access trail
//! (`signing_key_rotated`), and [`reconcile`] compares the rotations the
//! log announces with those the auditor pinned (docs/format.md,
//! "Signing-key rotation", "In the log").

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::note::{Signer, Verifier};
use crate::policy::{Policy, PolicyError};

/// First line of an announcement: the domain of its signatures.
pub const KEY_ROTATION_TAG: &str = "vellum-key-rotation/v1";
/// Most rotations one history holds (all replicas together).
pub const KEY_ROTATIONS_MAX: usize = 1024;

/// One replica's move from its key in force to a new one, from `from_op`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotation {
    /// The replica's index in the policy.
    pub replica: usize,
    /// The first op whose checkpoints the new key signs.
    pub from_op: u64,
    /// The new key.
    pub new: Verifier,
    /// The old key's signature over the announcement.
    pub old_signature: [u8; 64],
    /// The new key's signature over the announcement.
    pub new_signature: [u8; 64],
}

/// Why a rotation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyHistoryError {
    /// The replica index is not one of the policy's.
    #[error("replica {replica} is not in the policy ({replicas} replicas)")]
    UnknownReplica {
        /// The index asked for.
        replica: usize,
        /// Replicas in the policy.
        replicas: usize,
    },
    /// A rotation must start after the replica's previous one.
    #[error("replica {replica}: rotation from op {from_op} does not come after op {previous}")]
    NotAfter {
        /// The replica.
        replica: usize,
        /// The rotation's first op.
        from_op: u64,
        /// The previous rotation's first op (0 for the pinned key).
        previous: u64,
    },
    /// The announcement's signature by the key in force does not verify.
    #[error("replica {replica}: rotation from op {from_op} is not signed by its key in force")]
    BadOldSignature {
        /// The replica.
        replica: usize,
        /// The rotation's first op.
        from_op: u64,
    },
    /// The announcement's signature by the new key does not verify.
    #[error("replica {replica}: rotation from op {from_op} is not signed by the new key")]
    BadNewSignature {
        /// The replica.
        replica: usize,
        /// The rotation's first op.
        from_op: u64,
    },
    /// The new key is a key the history already holds.
    #[error("replica {replica}: the new key {name} is already pinned")]
    KeyReused {
        /// The replica.
        replica: usize,
        /// The key's name.
        name: String,
    },
    /// More rotations than [`KEY_ROTATIONS_MAX`].
    #[error("more than {KEY_ROTATIONS_MAX} rotations")]
    TooMany,
    /// A `rotation` line that does not parse.
    #[error("rotation line: {0}")]
    Syntax(String),
    /// The policy of some op is not valid (e.g. two replicas on one key).
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// The bytes both keys sign for a rotation of `replica` from `old` to
/// `new` at `from_op` in the log `origin`.
pub fn announcement(
    origin: &str,
    replica: usize,
    from_op: u64,
    old: &Verifier,
    new: &Verifier,
) -> Vec<u8> {
    format!(
        "{KEY_ROTATION_TAG}\norigin {origin}\nreplica {replica}\nfrom-op {from_op}\nold {}\nnew {}\n",
        old.to_vkey(),
        new.to_vkey()
    )
    .into_bytes()
}

impl KeyRotation {
    /// The rotation of `replica` from `old` to `new` at `from_op`, signed by
    /// both (what the replica's rotation command will produce).
    pub fn sign(origin: &str, replica: usize, from_op: u64, old: &Signer, new: &Signer) -> Self {
        let text = announcement(origin, replica, from_op, &old.verifier(), &new.verifier());
        KeyRotation {
            replica,
            from_op,
            new: new.verifier(),
            old_signature: old.sign(&text),
            new_signature: new.sign(&text),
        }
    }

    /// The pinned line: `rotation <index> <op> <new vkey> <old sig> <new sig>`.
    pub fn to_line(&self) -> String {
        format!(
            "rotation {} {} {} {} {}",
            self.replica,
            self.from_op,
            self.new.to_vkey(),
            BASE64.encode(self.old_signature),
            BASE64.encode(self.new_signature)
        )
    }

    /// Parses a line written by [`KeyRotation::to_line`] (signatures are
    /// checked when the rotation joins a history).
    pub fn parse_line(line: &str) -> Result<KeyRotation, KeyHistoryError> {
        let syntax = |why: &str| KeyHistoryError::Syntax(why.to_string());
        let fields: Vec<&str> = line.split(' ').collect();
        let [tag, replica, from_op, vkey, old_sig, new_sig] = fields[..] else {
            return Err(syntax("expected 6 fields separated by single spaces"));
        };
        if tag != "rotation" {
            return Err(syntax("does not start with \"rotation\""));
        }
        let number = |text: &str, what: &str| {
            (!text.starts_with('0') || text == "0")
                .then(|| text.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| syntax(&format!("{what} is not a canonical decimal number")))
        };
        let replica = usize::try_from(number(replica, "replica")?)
            .map_err(|_| syntax("replica is too large"))?;
        let signature = |text: &str, what: &str| -> Result<[u8; 64], KeyHistoryError> {
            BASE64
                .decode(text)
                .ok()
                .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
                .ok_or_else(|| syntax(&format!("{what} is not a base64 ed25519 signature")))
        };
        Ok(KeyRotation {
            replica,
            from_op: number(from_op, "from-op")?,
            new: Verifier::parse_vkey(vkey).map_err(|e| syntax(&format!("new key: {e}")))?,
            old_signature: signature(old_sig, "old signature")?,
            new_signature: signature(new_sig, "new signature")?,
        })
    }
}

/// Each replica's keys in force over the log: the keys pinned first (from
/// op 0), then every verified rotation.
#[derive(Debug, Clone)]
pub struct KeyHistory {
    base: Policy,
    /// Per replica: (first op, key), ascending by op, starting at op 0.
    keys: Vec<Vec<(u64, Verifier)>>,
    rotations: usize,
}

impl KeyHistory {
    /// The history of a policy whose replica `i` is `verifiers[i]`.
    pub fn new(base: Policy) -> KeyHistory {
        let keys = base
            .verifiers
            .iter()
            .map(|v| vec![(0, v.clone())])
            .collect();
        KeyHistory {
            base,
            keys,
            rotations: 0,
        }
    }

    /// Adds `rotation` after checking it against the key in force: its
    /// replica exists, it starts after that replica's last rotation, both
    /// signatures verify, and the new key is not one already pinned.
    pub fn add(&mut self, rotation: KeyRotation) -> Result<(), KeyHistoryError> {
        let KeyRotation {
            replica, from_op, ..
        } = rotation;
        if self.rotations >= KEY_ROTATIONS_MAX {
            return Err(KeyHistoryError::TooMany);
        }
        let replicas = self.keys.len();
        let chain = self
            .keys
            .get(replica)
            .ok_or(KeyHistoryError::UnknownReplica { replica, replicas })?;
        let (previous, old) = chain.last().expect("every chain starts with a pinned key");
        if from_op <= *previous {
            return Err(KeyHistoryError::NotAfter {
                replica,
                from_op,
                previous: *previous,
            });
        }
        let text = announcement(&self.base.origin, replica, from_op, old, &rotation.new);
        if !old.verify(&text, &rotation.old_signature) {
            return Err(KeyHistoryError::BadOldSignature { replica, from_op });
        }
        if !rotation.new.verify(&text, &rotation.new_signature) {
            return Err(KeyHistoryError::BadNewSignature { replica, from_op });
        }
        let reused = self
            .keys
            .iter()
            .flatten()
            .any(|(_, key)| key.public_key() == rotation.new.public_key());
        if reused {
            return Err(KeyHistoryError::KeyReused {
                replica,
                name: rotation.new.name().to_string(),
            });
        }
        self.keys[replica].push((from_op, rotation.new));
        self.rotations += 1;
        Ok(())
    }

    /// The key of `replica` in force at `op`.
    pub fn key_at(&self, replica: usize, op: u64) -> Option<&Verifier> {
        self.keys
            .get(replica)?
            .iter()
            .rev()
            .find(|(from, _)| *from <= op)
            .map(|(_, key)| key)
    }

    /// The policy a checkpoint certifying `op` is checked against: the
    /// pinned origin and quorum, each replica's key in force at `op`. A
    /// checkpoint before a rotation verifies under the old key, one at or
    /// after it only under the new key.
    pub fn policy_at(&self, op: u64) -> Result<Policy, KeyHistoryError> {
        let verifiers = (0..self.keys.len())
            .map(|replica| {
                self.key_at(replica, op)
                    .expect("every chain starts at op 0")
                    .clone()
            })
            .collect();
        let mut policy = Policy::new(&self.base.origin, verifiers, self.base.quorum)?;
        policy.cosigners = self.base.cosigners.clone();
        policy.cosigner_quorum = self.base.cosigner_quorum;
        policy.cosigner_urls = self.base.cosigner_urls.clone();
        Ok(policy)
    }
}

/// Whether `rotation` may be announced in the log under `policy` (what a
/// primary checks before it commits a replica's announcement): already
/// pinned as is, or a valid next rotation of the history `policy` pins.
pub fn check_announcement(policy: &Policy, rotation: &KeyRotation) -> Result<(), KeyHistoryError> {
    if policy.rotations.contains(rotation) {
        return Ok(());
    }
    policy.key_history().add(rotation.clone())
}

/// One rotation announced in the log: where, and the announced line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRotation {
    /// The global position of the trail event that carries it.
    pub position: u64,
    /// The event's principal (must be the replica's key name).
    pub principal: String,
    /// The event's `detail`: the pinned line as announced.
    pub line: String,
}

/// One key of one replica's history, as a verification reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The replica.
    pub replica: usize,
    /// The first op the key signs (0 for the key pinned first).
    pub from_op: u64,
    /// The key.
    pub key: Verifier,
    /// Pinned in the auditor's policy (the key counts).
    pub pinned: bool,
    /// Where the log announces it (`None`: the key pinned first, or a
    /// pinned rotation the log does not hold).
    pub logged_at: Option<u64>,
    /// The rotation's pinned line (`None` for a key pinned first).
    pub line: Option<String>,
}

/// What is wrong with the rotations of a log measured against a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryProblem {
    /// An announcement in the log that does not parse, names another
    /// principal than the replica's key name, or does not verify under the
    /// key in force (chained from the pinned keys through the announcements
    /// before it).
    Invalid {
        /// The trail position.
        position: u64,
        /// Why.
        why: String,
    },
    /// A pinned rotation that no announcement in the log holds, although
    /// the log holds an op at or after it (its certificate needs the key).
    Unlogged {
        /// The rotation.
        rotation: Box<KeyRotation>,
    },
}

/// The key history of a log against `policy`: each replica's keys (pinned
/// first, then every valid announcement in the log and every pinned
/// rotation), and the problems. `logged` in trail order; identical
/// announcements count once (a replica that crashed after its announcement
/// committed announces it again). `last_op`: the newest op the log holds
/// (a pinned rotation from a later op is not needed yet; `None`: name no
/// rotation unlogged).
///
/// Trust rule: only pinned rotations make a key count (the certificates
/// were checked against the policy alone). A valid announcement the policy
/// does not pin is listed with `pinned: false` and is no problem: the
/// auditor decides whether to pin it.
pub fn reconcile(
    policy: &Policy,
    logged: &[LoggedRotation],
    last_op: Option<u64>,
) -> (Vec<HistoryEntry>, Vec<HistoryProblem>) {
    let mut base = policy.clone();
    base.rotations = Vec::new();
    let mut history = KeyHistory::new(base.clone());
    let mut problems = Vec::new();
    let mut announced: Vec<(u64, KeyRotation)> = Vec::new();
    for entry in logged.iter().take(KEY_ROTATIONS_MAX) {
        let invalid = |why: String| HistoryProblem::Invalid {
            position: entry.position,
            why,
        };
        let rotation = match KeyRotation::parse_line(&entry.line) {
            Ok(rotation) => rotation,
            Err(e) => {
                problems.push(invalid(e.to_string()));
                continue;
            }
        };
        let name = base.verifiers.get(rotation.replica).map(Verifier::name);
        if name != Some(entry.principal.as_str()) {
            problems.push(invalid(format!(
                "announced by {:?}, not by replica {}'s key name",
                entry.principal, rotation.replica
            )));
            continue;
        }
        if announced.iter().any(|(_, r)| r == &rotation) {
            continue;
        }
        match history.add(rotation.clone()) {
            Ok(()) => announced.push((entry.position, rotation)),
            Err(e) => problems.push(invalid(e.to_string())),
        }
    }
    let mut entries: Vec<HistoryEntry> = base
        .verifiers
        .iter()
        .enumerate()
        .map(|(replica, key)| HistoryEntry {
            replica,
            from_op: 0,
            key: key.clone(),
            pinned: true,
            logged_at: None,
            line: None,
        })
        .collect();
    for rotation in &policy.rotations {
        let logged_at = announced
            .iter()
            .find(|(_, r)| r == rotation)
            .map(|(position, _)| *position);
        if logged_at.is_none() && last_op.is_some_and(|op| op >= rotation.from_op) {
            problems.push(HistoryProblem::Unlogged {
                rotation: Box::new(rotation.clone()),
            });
        }
        entries.push(HistoryEntry {
            replica: rotation.replica,
            from_op: rotation.from_op,
            key: rotation.new.clone(),
            pinned: true,
            logged_at,
            line: Some(rotation.to_line()),
        });
    }
    for (position, rotation) in &announced {
        if !policy.rotations.contains(rotation) {
            entries.push(HistoryEntry {
                replica: rotation.replica,
                from_op: rotation.from_op,
                key: rotation.new.clone(),
                pinned: false,
                logged_at: Some(*position),
                line: Some(rotation.to_line()),
            });
        }
    }
    entries.sort_by_key(|e| (e.replica, e.from_op, !e.pinned));
    (entries, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "vellum.local/cluster/00112233445566778899aabbccddeeff";

    fn signer(name: &str, seed: u8) -> Signer {
        Signer::from_seed(name, [seed; 32]).expect("valid name")
    }

    fn history() -> (KeyHistory, Vec<Signer>) {
        let signers: Vec<Signer> = (0..3)
            .map(|i| signer(&format!("vellum-00112233-r{i}"), i + 1))
            .collect();
        let policy =
            Policy::new(ORIGIN, signers.iter().map(Signer::verifier).collect(), 2).expect("policy");
        (KeyHistory::new(policy), signers)
    }

    /// Goal: a rotation signed by the old and the new key joins the
    /// history; the old key is in force before its op and the new one from
    /// it on; `policy_at` pins exactly those keys; the pinned line round
    /// trips byte for byte.
    #[test]
    fn a_signed_rotation_switches_the_key_at_its_op() {
        let (mut history, signers) = history();
        let new = signer("vellum-00112233-r1", 9);
        let rotation = KeyRotation::sign(ORIGIN, 1, 100, &signers[1], &new);
        let line = rotation.to_line();
        let parsed = KeyRotation::parse_line(&line).expect("parses");
        assert_eq!(parsed, rotation);
        assert_eq!(parsed.to_line(), line);
        history.add(parsed).expect("a valid rotation");
        assert_eq!(history.key_at(1, 99), Some(&signers[1].verifier()));
        assert_eq!(history.key_at(1, 100), Some(&new.verifier()));
        assert_eq!(history.key_at(1, u64::MAX), Some(&new.verifier()));
        assert_eq!(history.key_at(0, 100), Some(&signers[0].verifier()));
        assert_eq!(history.key_at(3, 0), None);
        let before = history.policy_at(99).expect("policy");
        let after = history.policy_at(100).expect("policy");
        assert!(before.verifiers.contains(&signers[1].verifier()));
        assert!(!after.verifiers.contains(&signers[1].verifier()));
        assert!(after.verifiers.contains(&new.verifier()));
        assert_eq!((before.quorum, after.origin.as_str()), (2, ORIGIN));
    }

    /// Goal: every way to forge or misorder a rotation is refused with its
    /// own error: signed by another key, not countersigned by the new key,
    /// a changed op, a replica not in the policy, an op not after the last
    /// rotation, a key already pinned, and a chain that skips a rotation.
    #[test]
    fn forged_or_misordered_rotations_are_refused() {
        let (mut history, signers) = history();
        let new = signer("vellum-00112233-r1", 9);
        let stranger = signer("vellum-00112233-r1", 10);
        let by_stranger = KeyRotation::sign(ORIGIN, 1, 100, &stranger, &new);
        assert!(matches!(
            history.add(by_stranger),
            Err(KeyHistoryError::BadOldSignature { .. })
        ));
        let mut not_countersigned = KeyRotation::sign(ORIGIN, 1, 100, &signers[1], &new);
        not_countersigned.new_signature = not_countersigned.old_signature;
        assert!(matches!(
            history.add(not_countersigned),
            Err(KeyHistoryError::BadNewSignature { .. })
        ));
        let mut moved = KeyRotation::sign(ORIGIN, 1, 100, &signers[1], &new);
        moved.from_op = 101;
        assert!(matches!(
            history.add(moved),
            Err(KeyHistoryError::BadOldSignature { .. })
        ));
        let other_log = KeyRotation::sign("vellum.local/cluster/ff", 1, 100, &signers[1], &new);
        assert!(matches!(
            history.add(other_log),
            Err(KeyHistoryError::BadOldSignature { .. })
        ));
        let unknown = KeyRotation::sign(ORIGIN, 3, 100, &signers[1], &new);
        assert!(matches!(
            history.add(unknown),
            Err(KeyHistoryError::UnknownReplica { .. })
        ));
        let at_zero = KeyRotation::sign(ORIGIN, 1, 0, &signers[1], &new);
        assert!(matches!(
            history.add(at_zero),
            Err(KeyHistoryError::NotAfter { .. })
        ));
        let onto_peer = KeyRotation::sign(ORIGIN, 1, 100, &signers[1], &signers[2]);
        assert!(matches!(
            history.add(onto_peer),
            Err(KeyHistoryError::KeyReused { .. })
        ));
        history
            .add(KeyRotation::sign(ORIGIN, 1, 100, &signers[1], &new))
            .expect("valid");
        let newer = signer("vellum-00112233-r1", 11);
        let skipping = KeyRotation::sign(ORIGIN, 1, 200, &signers[1], &newer);
        assert!(
            matches!(
                history.add(skipping),
                Err(KeyHistoryError::BadOldSignature { .. })
            ),
            "after a rotation only the new key may rotate again"
        );
        let earlier = KeyRotation::sign(ORIGIN, 1, 100, &new, &newer);
        assert!(matches!(
            history.add(earlier),
            Err(KeyHistoryError::NotAfter { .. })
        ));
        history
            .add(KeyRotation::sign(ORIGIN, 1, 200, &new, &newer))
            .expect("a chain of two");
        assert_eq!(history.key_at(1, 150), Some(&new.verifier()));
        assert_eq!(history.key_at(1, 200), Some(&newer.verifier()));
    }

    /// Goal: malformed pinned lines are refused, saying what is wrong.
    #[test]
    fn malformed_rotation_lines_are_refused() {
        let (_, signers) = history();
        let good = KeyRotation::sign(ORIGIN, 1, 100, &signers[1], &signer("n", 9)).to_line();
        let bad = [
            good.replacen("rotation", "rotate", 1),
            good.replacen(" 100 ", " 0100 ", 1),
            good.replacen(" 100 ", " 18446744073709551616 ", 1),
            good.replacen(" 1 ", " -1 ", 1),
            good.replacen(' ', "  ", 1),
            format!("{good} extra"),
            good[..good.len() - 4].to_string(),
            String::new(),
        ];
        for line in bad {
            assert!(
                matches!(
                    KeyRotation::parse_line(&line),
                    Err(KeyHistoryError::Syntax(_))
                ),
                "{line:?}"
            );
        }
    }

    fn certificate_at(op: u64, signers: &[&Signer]) -> crate::checkpoint::Certificate {
        let checkpoint = crate::checkpoint::Checkpoint {
            origin: ORIGIN.to_string(),
            size: op,
            root: [op as u8; 32],
            extensions: vec![crate::verify::chain_head_extension(op, &[1; 32])],
        };
        crate::checkpoint::Certificate::sign(checkpoint, signers).expect("sign")
    }

    /// Goal: `rotation` lines in a policy file parse, are written back byte
    /// for byte, and switch the key a certificate is checked with at the
    /// op its `vellum-head` names: before the rotation only the old key
    /// counts, from it on only the new one.
    #[test]
    fn a_pinned_rotation_decides_which_key_counts_at_each_op() {
        let (history, signers) = history();
        let new = signer("vellum-00112233-r1", 9);
        let rotation = KeyRotation::sign(ORIGIN, 1, 100, &signers[1], &new);
        let text = history.base.encode().replace(
            "quorum replicas\n",
            &format!("{}\nquorum replicas\n", rotation.to_line()),
        );
        let policy = Policy::parse(&text).expect("a policy with a rotation");
        assert_eq!(policy.rotations, vec![rotation]);
        assert_eq!(policy.encode(), text);
        assert_eq!(policy.verifier_at(1, 99), Some(&signers[1].verifier()));
        assert_eq!(policy.verifier_at(1, 100), Some(&new.verifier()));
        assert_eq!(policy.verifier_at(0, 100), Some(&signers[0].verifier()));
        let (r0, old, new) = (&signers[0], &signers[1], &new);
        for (op, keys, accepted) in [
            (99, [r0, old], true),
            (99, [r0, new], false),
            (100, [r0, old], false),
            (100, [r0, new], true),
            (5000, [r0, new], true),
            (5000, [old, new], false),
        ] {
            let verified = certificate_at(op, &keys).verify(&policy);
            assert_eq!(verified.is_ok(), accepted, "op {op}: {verified:?}");
        }
        // The old key's signature after the rotation counts for nothing, so
        // with the quorum's other key it falls short.
        assert!(matches!(
            certificate_at(100, &[r0, old]).verify(&policy),
            Err(crate::checkpoint::CertificateError::QuorumNotMet { valid: 1, .. })
        ));
        let mut headless = certificate_at(99, &[r0, old]);
        headless.checkpoint.extensions.clear();
        headless =
            crate::checkpoint::Certificate::sign(headless.checkpoint, &[r0, old]).expect("sign");
        assert!(matches!(
            headless.verify(&policy),
            Err(crate::checkpoint::CertificateError::OpUnknown)
        ));
        assert!(
            headless.verify(&history.base).is_ok(),
            "no rotation: no op needed"
        );
    }

    /// Goal: a policy file whose rotation line does not verify against the
    /// keys in force is refused at that line, as is one that gives a
    /// replica's new key another replica's key name.
    #[test]
    fn a_policy_with_a_bad_rotation_line_is_refused_at_that_line() {
        let (history, signers) = history();
        let new = signer("vellum-00112233-r1", 9);
        let stranger = signer("vellum-00112233-r1", 10);
        let forged = KeyRotation::sign(ORIGIN, 1, 100, &stranger, &new);
        let named_as_peer = signer("vellum-00112233-r2", 12);
        let misnamed = KeyRotation::sign(ORIGIN, 1, 100, &signers[1], &named_as_peer);
        for (rotation, why) in [(forged, "key in force"), (misnamed, "pinned twice")] {
            let text = history.base.encode().replace(
                "quorum replicas\n",
                &format!("{}\nquorum replicas\n", rotation.to_line()),
            );
            let error = Policy::parse(&text).expect_err("refused").to_string();
            assert!(error.contains("line 6"), "{error}");
            assert!(error.contains(why), "{error}");
        }
        let garbled = history.base.encode().replace(
            "quorum replicas\n",
            "rotation 1 100 nonsense\nquorum replicas\n",
        );
        assert!(Policy::parse(&garbled).is_err());
    }

    fn logged(position: u64, principal: &str, rotation: &KeyRotation) -> LoggedRotation {
        LoggedRotation {
            position,
            principal: principal.to_string(),
            line: rotation.to_line(),
        }
    }

    /// Goal: `reconcile` lists each replica's keys with where the log
    /// announces them; a pinned rotation the log holds is both pinned and
    /// logged; a valid announcement the policy does not pin is listed
    /// unpinned and is no problem; duplicates count once; a pinned
    /// rotation missing from the log is a problem only once the log
    /// holds its op; tampered, misattributed and unparsable
    /// announcements are named by position.
    #[test]
    fn reconcile_names_unlogged_pins_and_bad_announcements() {
        let (history, signers) = history();
        let base = history.base.clone();
        let names: Vec<String> = signers.iter().map(|s| s.name().to_string()).collect();
        let new1 = signer("vellum-00112233-r1", 9);
        let r1 = KeyRotation::sign(ORIGIN, 1, 100, &signers[1], &new1);
        let new2 = signer("vellum-00112233-r2", 10);
        let r2 = KeyRotation::sign(ORIGIN, 2, 150, &signers[2], &new2);
        let pinned = base.clone().with_rotations(vec![r1.clone()]).expect("pins");

        let log = [
            logged(7, &names[1], &r1),
            logged(9, &names[1], &r1),
            logged(12, &names[2], &r2),
        ];
        let (entries, problems) = reconcile(&pinned, &log, Some(200));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(entries.len(), 5, "three pinned keys, r1, r2");
        let r1_entry = entries
            .iter()
            .find(|e| e.key == new1.verifier())
            .expect("r1");
        assert_eq!(
            (r1_entry.pinned, r1_entry.logged_at, r1_entry.from_op),
            (true, Some(7), 100)
        );
        let r2_entry = entries
            .iter()
            .find(|e| e.key == new2.verifier())
            .expect("r2");
        assert_eq!((r2_entry.pinned, r2_entry.logged_at), (false, Some(12)));

        // The pinned rotation absent from the log: needed at op 100 or later.
        let (_, problems) = reconcile(&pinned, &[], Some(99));
        assert!(problems.is_empty(), "{problems:?}");
        let (entries, problems) = reconcile(&pinned, &[], Some(100));
        assert_eq!(
            problems,
            vec![HistoryProblem::Unlogged {
                rotation: Box::new(r1.clone())
            }]
        );
        assert!(
            entries
                .iter()
                .any(|e| e.key == new1.verifier() && e.logged_at.is_none())
        );

        // Tampered: a changed op, a signature swapped, another principal, garbage.
        let mut moved = r1.clone();
        moved.from_op = 101;
        let mut swapped = r1.clone();
        swapped.new_signature = swapped.old_signature;
        let bad = [
            logged(20, &names[1], &moved),
            logged(21, &names[1], &swapped),
            logged(22, &names[0], &r1),
            LoggedRotation {
                position: 23,
                principal: names[1].clone(),
                line: "rotation 1 x".into(),
            },
        ];
        let (_, problems) = reconcile(&base, &bad, Some(200));
        let positions: Vec<u64> = problems
            .iter()
            .map(|p| match p {
                HistoryProblem::Invalid { position, .. } => *position,
                HistoryProblem::Unlogged { .. } => u64::MAX,
            })
            .collect();
        assert_eq!(positions, vec![20, 21, 22, 23]);
        // A primary accepts the valid next announcement (or one pinned as is)
        // and refuses a tampered one.
        check_announcement(&base, &r1).expect("next rotation");
        check_announcement(&pinned, &r1).expect("pinned as is");
        assert!(check_announcement(&base, &moved).is_err());
    }
}
