//! The auditor's trust policy: which log (origin) to expect, which replica
//! keys are pinned, and how many distinct pinned keys must sign a checkpoint.
//! Keys are never taken from the data being verified (DESIGN §4).
//!
//! The text form follows c2sp.org/tlog-policy where it fits:
//!
//! ```text
//! origin vellum.local/cluster/0123456789abcdef0123456789abcdef
//! witness replica-0 replica-0+1a2b3c4d+AQ...
//! witness replica-1 replica-1+5e6f7a8b+AQ...
//! witness replica-2 replica-2+9c0d1e2f+AQ...
//! group replicas 2 replica-0 replica-1 replica-2
//! quorum replicas
//! ```
//!
//! Deviations from tlog-policy, because a Vellum log has no log key of its
//! own — a checkpoint is signed by a quorum of replicas instead:
//! - `origin <origin>` is a Vellum directive naming the checkpoint origin (in
//!   tlog-policy the origin is the key name of a `log` line);
//! - `log` lines are refused, and `quorum none` is refused;
//! - replica signatures are plain Ed25519 note signatures (type `0x01`), not
//!   tlog-cosignature timestamped cosignatures;
//! - the quorum is one threshold over all pinned keys: at most one `group`,
//!   with only witnesses as members, and it must list every witness;
//! - witness names are local labels; `encode` writes each key's own name, and
//!   key names must be distinct too, so errors can name the replica;
//! - witness URLs are accepted and dropped (replica keys have no URL).
//!
//! Outside witnesses (c2sp.org/tlog-witness, cosignatures per
//! c2sp.org/tlog-cosignature) are pinned with two Vellum directives, because
//! `witness` already names replica keys here:
//!
//! ```text
//! cosigner witness.example/w1 witness.example/w1+8d66cf3f+BA... [url]
//! cosigner-quorum 1
//! ```
//!
//! `cosigner` pins an Ed25519 cosignature/v1 key (vkey type `0x04`) and,
//! optionally, the URL prefix of its `add-checkpoint` endpoint (kept: the
//! primary submits new certificates there);
//! `cosigner-quorum` (`all`, `any` or `0..=n`) says how many distinct pinned
//! cosigners must have cosigned a certificate. A policy without `cosigner`
//! lines needs no cosignature, and parses exactly as before.
//!
//! Replica signing-key rotations are pinned with one more Vellum directive,
//! one line per rotation, before the quorum line (see `key_history`):
//!
//! ```text
//! rotation 1 1042 vellum-…-r1+0badc0de+AQ... <base64 old sig> <base64 new sig>
//! ```
//!
//! Each is checked when the policy is parsed (the old key in force signed
//! it, the new key countersigned it); a certificate is then checked against
//! the keys in force at the op its `vellum-head` line names
//! ([`Policy::at_op`]). A policy without `rotation` lines parses exactly as
//! before.

use std::borrow::Cow;

use crate::cosignature::CosignerKey;
use crate::error::DecodeError;
use crate::key_history::{KeyHistory, KeyHistoryError, KeyRotation};
use crate::note::{Verifier, is_valid_key_name};

/// The most keys a policy may pin (tlog-policy asks for at least 32).
pub const POLICY_VERIFIERS_MAX: usize = 64;
/// The largest policy file accepted, in bytes.
pub const POLICY_BYTES_MAX: usize = 64 * 1024;
/// The name `encode` gives the quorum group.
pub const QUORUM_GROUP_NAME: &str = "replicas";

const FORMAT: &str = "trust policy";

/// Why a policy is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// An origin that is empty or holds spaces, `+` or control characters.
    #[error("invalid origin {0:?}")]
    InvalidOrigin(String),
    /// A quorum of zero.
    #[error("quorum must be at least 1")]
    QuorumZero,
    /// A quorum larger than the number of pinned keys.
    #[error("quorum {quorum} is larger than the {keys} pinned keys")]
    QuorumAboveKeys { quorum: usize, keys: usize },
    /// The same public key pinned twice.
    #[error("public key of {name} is pinned twice")]
    DuplicateKey { name: String },
    /// Two pinned keys with the same key name.
    #[error("key name {name} is pinned twice")]
    DuplicateName { name: String },
    /// More keys than [`POLICY_VERIFIERS_MAX`].
    #[error("{0} pinned keys, more than the limit")]
    TooManyKeys(usize),
    /// A cosigner quorum larger than the number of pinned cosigners.
    #[error("cosigner quorum {quorum} is larger than the {keys} pinned cosigners")]
    CosignerQuorumAboveKeys { quorum: usize, keys: usize },
}

/// A validated trust policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The checkpoint origin the log must use.
    pub origin: String,
    /// The pinned replica keys.
    pub verifiers: Vec<Verifier>,
    /// How many distinct pinned keys must sign (f+1 of 2f+1).
    pub quorum: usize,
    /// Pinned outside witnesses (cosignature/v1 keys); empty: none.
    pub cosigners: Vec<CosignerKey>,
    /// How many distinct pinned cosigners must have cosigned (0: none).
    pub cosigner_quorum: usize,
    /// The submission URL of each cosigner (same order as `cosigners`),
    /// when its `cosigner` line names one.
    pub cosigner_urls: Vec<Option<String>>,
    /// Pinned signing-key rotations, each checked against the keys in
    /// force before it (see [`Policy::with_rotations`]); empty: none.
    /// `verifiers` stays the keys pinned first, in force from op 0.
    pub rotations: Vec<KeyRotation>,
}

impl Policy {
    /// A policy after checking origin, keys and quorum.
    pub fn new(
        origin: &str,
        verifiers: Vec<Verifier>,
        quorum: usize,
    ) -> Result<Policy, PolicyError> {
        if !is_valid_key_name(origin) {
            return Err(PolicyError::InvalidOrigin(origin.to_owned()));
        }
        if verifiers.len() > POLICY_VERIFIERS_MAX {
            return Err(PolicyError::TooManyKeys(verifiers.len()));
        }
        for (i, v) in verifiers.iter().enumerate() {
            for earlier in &verifiers[..i] {
                if earlier.public_key() == v.public_key() {
                    return Err(PolicyError::DuplicateKey {
                        name: v.name().to_owned(),
                    });
                }
                if earlier.name() == v.name() {
                    return Err(PolicyError::DuplicateName {
                        name: v.name().to_owned(),
                    });
                }
            }
        }
        if quorum == 0 {
            return Err(PolicyError::QuorumZero);
        }
        if quorum > verifiers.len() {
            return Err(PolicyError::QuorumAboveKeys {
                quorum,
                keys: verifiers.len(),
            });
        }
        Ok(Policy {
            origin: origin.to_owned(),
            verifiers,
            quorum,
            cosigners: Vec::new(),
            cosigner_quorum: 0,
            cosigner_urls: Vec::new(),
            rotations: Vec::new(),
        })
    }

    /// This policy with `rotations` pinned, in order, each checked by
    /// [`KeyHistory::add`] against the keys in force before it.
    pub fn with_rotations(
        mut self,
        rotations: Vec<KeyRotation>,
    ) -> Result<Policy, KeyHistoryError> {
        let mut history = KeyHistory::new(self.clone());
        for rotation in &rotations {
            history.add(rotation.clone())?;
        }
        // Every op's policy must be valid too (e.g. no key name twice).
        for rotation in &rotations {
            history.policy_at(rotation.from_op)?;
        }
        self.rotations = rotations;
        Ok(self)
    }

    /// The key history this policy pins (its keys, then its rotations).
    pub fn key_history(&self) -> KeyHistory {
        let mut history = KeyHistory::new(self.clone());
        for rotation in &self.rotations {
            history
                .add(rotation.clone())
                .expect("with_rotations checked every rotation");
        }
        history
    }

    /// The key of replica `replica` in force at `op`: the newest pinned
    /// rotation of it from `op` or before, else its key pinned first.
    pub fn verifier_at(&self, replica: usize, op: u64) -> Option<&Verifier> {
        let rotated = self
            .rotations
            .iter()
            .rev()
            .find(|r| r.replica == replica && r.from_op <= op);
        match rotated {
            Some(rotation) => Some(&rotation.new),
            None => self.verifiers.get(replica),
        }
    }

    /// The policy a checkpoint certifying `op` is checked against: this one
    /// without rotations, or, with rotations, each replica's key in force
    /// at `op` (the rotations dropped, as they are applied).
    pub fn at_op(&self, op: u64) -> Cow<'_, Policy> {
        if self.rotations.is_empty() {
            return Cow::Borrowed(self);
        }
        let verifiers = (0..self.verifiers.len())
            .map(|replica| {
                self.verifier_at(replica, op)
                    .expect("every replica has a key pinned first")
                    .clone()
            })
            .collect();
        let mut policy = Policy::new(&self.origin, verifiers, self.quorum)
            .expect("with_rotations checked the policy of every rotation's op");
        policy.cosigners = self.cosigners.clone();
        policy.cosigner_quorum = self.cosigner_quorum;
        policy.cosigner_urls = self.cosigner_urls.clone();
        Cow::Owned(policy)
    }

    /// This policy without its outside witnesses: the log's own (replica)
    /// quorum only.
    pub fn replicas_only(&self) -> Policy {
        Policy {
            cosigners: Vec::new(),
            cosigner_quorum: 0,
            cosigner_urls: Vec::new(),
            ..self.clone()
        }
    }

    /// The pinned cosigners that name a submission URL, with it.
    pub fn cosigners_with_urls(&self) -> impl Iterator<Item = (&CosignerKey, &str)> {
        self.cosigners
            .iter()
            .zip(&self.cosigner_urls)
            .filter_map(|(key, url)| url.as_deref().map(|url| (key, url)))
    }

    /// This policy with a submission URL per cosigner (same order).
    pub fn with_cosigner_urls(mut self, urls: Vec<Option<String>>) -> Policy {
        assert_eq!(
            urls.len(),
            self.cosigners.len(),
            "one url slot per cosigner"
        );
        self.cosigner_urls = urls;
        self
    }

    /// This policy with outside witnesses pinned: `quorum` distinct
    /// `cosigners` must have cosigned every certificate (0: reported only).
    pub fn with_cosigners(
        mut self,
        cosigners: Vec<CosignerKey>,
        quorum: usize,
    ) -> Result<Policy, PolicyError> {
        if self.verifiers.len() + cosigners.len() > POLICY_VERIFIERS_MAX {
            return Err(PolicyError::TooManyKeys(
                self.verifiers.len() + cosigners.len(),
            ));
        }
        for (i, c) in cosigners.iter().enumerate() {
            let replica_key = self
                .verifiers
                .iter()
                .any(|v| v.public_key() == c.public_key());
            if replica_key
                || cosigners[..i]
                    .iter()
                    .any(|e| e.public_key() == c.public_key())
            {
                return Err(PolicyError::DuplicateKey {
                    name: c.name().to_owned(),
                });
            }
            let name_taken = self.verifiers.iter().any(|v| v.name() == c.name())
                || cosigners[..i].iter().any(|e| e.name() == c.name());
            if name_taken {
                return Err(PolicyError::DuplicateName {
                    name: c.name().to_owned(),
                });
            }
        }
        if quorum > cosigners.len() {
            return Err(PolicyError::CosignerQuorumAboveKeys {
                quorum,
                keys: cosigners.len(),
            });
        }
        self.cosigner_urls = vec![None; cosigners.len()];
        self.cosigners = cosigners;
        self.cosigner_quorum = quorum;
        Ok(self)
    }

    /// The text form (see the module documentation).
    pub fn encode(&self) -> String {
        let mut out = format!("origin {}\n", self.origin);
        for v in &self.verifiers {
            out.push_str(&format!("witness {} {}\n", v.name(), v.to_vkey()));
        }
        out.push_str(&format!("group {QUORUM_GROUP_NAME} {}", self.quorum));
        for v in &self.verifiers {
            out.push(' ');
            out.push_str(v.name());
        }
        out.push('\n');
        for (c, url) in self.cosigners.iter().zip(&self.cosigner_urls) {
            out.push_str(&format!("cosigner {} {}", c.name(), c.to_vkey()));
            if let Some(url) = url {
                out.push(' ');
                out.push_str(url);
            }
            out.push('\n');
        }
        if !self.cosigners.is_empty() {
            out.push_str(&format!("cosigner-quorum {}\n", self.cosigner_quorum));
        }
        for rotation in &self.rotations {
            out.push_str(&rotation.to_line());
            out.push('\n');
        }
        out.push_str(&format!("quorum {QUORUM_GROUP_NAME}\n"));
        out
    }

    /// Parses the text form. Errors name the 1-based line.
    pub fn parse(text: &str) -> Result<Policy, DecodeError> {
        if text.len() > POLICY_BYTES_MAX {
            return Err(DecodeError::at_line(
                FORMAT,
                1,
                "policy is larger than the size limit",
            ));
        }
        let mut parser = Parser::default();
        for (index, line) in text.split('\n').enumerate() {
            parser
                .line(line)
                .map_err(|reason| DecodeError::at_line(FORMAT, index + 1, reason))?;
        }
        // A missing line is reported at the last line of the input.
        let last_line = text.lines().count().max(1);
        parser.finish().map_err(|(line, reason)| {
            DecodeError::at_line(FORMAT, line.unwrap_or(last_line), reason)
        })
    }
}

/// The state of a policy parse: what earlier lines defined.
#[derive(Default)]
struct Parser {
    origin: Option<String>,
    witnesses: Vec<(String, Verifier)>,
    group: Option<(String, usize, Vec<usize>)>,
    quorum: Option<(usize, usize, Vec<usize>)>,
    cosigners: Vec<(String, CosignerKey, Option<String>)>,
    cosigner_quorum: Option<(usize, String)>,
    rotations: Vec<(usize, KeyRotation)>,
    line: usize,
}

impl Parser {
    fn line(&mut self, line: &str) -> Result<(), String> {
        self.line += 1;
        if let Some(c) = line.chars().find(|&c| c != '\t' && c.is_control()) {
            return Err(format!("control character {c:?}"));
        }
        let words: Vec<&str> = line.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
        let Some((&directive, args)) = words.split_first() else {
            return Ok(());
        };
        if directive.starts_with('#') {
            return Ok(());
        }
        if self.quorum.is_some() {
            return Err("no line may follow the quorum line".to_owned());
        }
        match directive {
            "origin" => self.origin(args),
            "witness" => self.witness(args),
            "group" => self.group(args),
            "quorum" => self.quorum(args),
            "cosigner" => self.cosigner(args),
            "cosigner-quorum" => self.cosigner_quorum(args),
            "rotation" => self.rotation(args),
            "log" => Err(
                "log lines are not supported: vellum checkpoints are signed by replicas, \
                          pin them with witness lines"
                    .to_owned(),
            ),
            other => Err(format!("unknown directive {other:?}")),
        }
    }

    fn origin(&mut self, args: &[&str]) -> Result<(), String> {
        let [origin] = args else {
            return Err("origin takes exactly one argument".to_owned());
        };
        if self.origin.is_some() {
            return Err("second origin line".to_owned());
        }
        if !is_valid_key_name(origin) {
            return Err(format!("invalid origin {origin:?}"));
        }
        self.origin = Some((*origin).to_owned());
        Ok(())
    }

    fn witness(&mut self, args: &[&str]) -> Result<(), String> {
        let (name, vkey) = match args {
            [name, vkey] | [name, vkey, _] => (*name, *vkey),
            _ => return Err("witness takes a name, a vkey and an optional url".to_owned()),
        };
        self.check_new_name(name)?;
        let verifier =
            Verifier::parse_vkey(vkey).map_err(|error| format!("witness {name}: {error}"))?;
        for (_, earlier) in &self.witnesses {
            if earlier.public_key() == verifier.public_key() {
                return Err(format!("public key of witness {name} is pinned twice"));
            }
            if earlier.name() == verifier.name() {
                return Err(format!("key name {} is pinned twice", verifier.name()));
            }
        }
        if self.witnesses.len() == POLICY_VERIFIERS_MAX {
            return Err(format!("more than {POLICY_VERIFIERS_MAX} witnesses"));
        }
        self.witnesses.push((name.to_owned(), verifier));
        Ok(())
    }

    fn group(&mut self, args: &[&str]) -> Result<(), String> {
        let [name, threshold, members @ ..] = args else {
            return Err("group takes a name, a threshold and members".to_owned());
        };
        if members.is_empty() {
            return Err("group has no members".to_owned());
        }
        if self.group.is_some() {
            return Err(
                "vellum policies have one quorum group; nested groups are not supported".to_owned(),
            );
        }
        self.check_new_name(name)?;
        let mut indices = Vec::with_capacity(members.len());
        for member in members {
            let index = self
                .witnesses
                .iter()
                .position(|(n, _)| n == member)
                .ok_or_else(|| format!("group member {member} is not a witness defined above"))?;
            if indices.contains(&index) {
                return Err(format!("group member {member} is listed twice"));
            }
            indices.push(index);
        }
        let k = match *threshold {
            "all" => members.len(),
            "any" => 1,
            digits => parse_threshold(digits, members.len())?,
        };
        self.group = Some(((*name).to_owned(), k, indices));
        Ok(())
    }

    fn quorum(&mut self, args: &[&str]) -> Result<(), String> {
        let [name] = args else {
            return Err("quorum takes exactly one name".to_owned());
        };
        if *name == "none" {
            return Err("quorum none is not allowed: vellum needs replica signatures".to_owned());
        }
        let (k, members) = match (
            &self.group,
            self.witnesses.iter().position(|(n, _)| n == name),
        ) {
            (Some((group, k, members)), _) if group == name => (*k, members.clone()),
            (_, Some(index)) => (1, vec![index]),
            _ => return Err(format!("quorum names {name}, which no line above defines")),
        };
        self.quorum = Some((self.line, k, members));
        Ok(())
    }

    fn cosigner(&mut self, args: &[&str]) -> Result<(), String> {
        let (name, vkey, url) = match args {
            [name, vkey] => (*name, *vkey, None),
            [name, vkey, url] => (*name, *vkey, Some((*url).to_owned())),
            _ => return Err("cosigner takes a name, a vkey and an optional url".to_owned()),
        };
        if self.cosigner_quorum.is_some() {
            return Err("cosigner lines must come before the cosigner-quorum line".to_owned());
        }
        self.check_new_name(name)?;
        let key =
            CosignerKey::parse_vkey(vkey).map_err(|error| format!("cosigner {name}: {error}"))?;
        let pinned_twice = self
            .witnesses
            .iter()
            .any(|(_, v)| v.public_key() == key.public_key())
            || self
                .cosigners
                .iter()
                .any(|(_, c, _)| c.public_key() == key.public_key());
        if pinned_twice {
            return Err(format!("public key of cosigner {name} is pinned twice"));
        }
        let name_twice = self.witnesses.iter().any(|(_, v)| v.name() == key.name())
            || self
                .cosigners
                .iter()
                .any(|(_, c, _)| c.name() == key.name());
        if name_twice {
            return Err(format!("key name {} is pinned twice", key.name()));
        }
        if self.witnesses.len() + self.cosigners.len() >= POLICY_VERIFIERS_MAX {
            return Err(format!("more than {POLICY_VERIFIERS_MAX} pinned keys"));
        }
        self.cosigners.push((name.to_owned(), key, url));
        Ok(())
    }

    fn cosigner_quorum(&mut self, args: &[&str]) -> Result<(), String> {
        let [threshold] = args else {
            return Err("cosigner-quorum takes exactly one threshold".to_owned());
        };
        if self.cosigner_quorum.is_some() {
            return Err("second cosigner-quorum line".to_owned());
        }
        if self.cosigners.is_empty() {
            return Err("cosigner-quorum without cosigner lines above".to_owned());
        }
        self.cosigner_quorum = Some((self.line, (*threshold).to_owned()));
        Ok(())
    }

    fn rotation(&mut self, args: &[&str]) -> Result<(), String> {
        if self.rotations.len() >= crate::key_history::KEY_ROTATIONS_MAX {
            return Err(format!(
                "more than {} rotation lines",
                crate::key_history::KEY_ROTATIONS_MAX
            ));
        }
        let rotation = KeyRotation::parse_line(&format!("rotation {}", args.join(" ")))
            .map_err(|error| error.to_string())?;
        self.rotations.push((self.line, rotation));
        Ok(())
    }

    fn check_new_name(&self, name: &str) -> Result<(), String> {
        let taken = name == "none"
            || self.witnesses.iter().any(|(n, _)| n == name)
            || self.cosigners.iter().any(|(n, _, _)| n == name)
            || self.group.as_ref().is_some_and(|(g, _, _)| g == name);
        if taken {
            return Err(format!("name {name} is already defined"));
        }
        Ok(())
    }

    /// The policy, or the line (if known) and reason it is invalid.
    fn finish(self) -> Result<Policy, (Option<usize>, String)> {
        let origin = self
            .origin
            .ok_or((None, "missing origin line".to_owned()))?;
        let (line, quorum, members) = self
            .quorum
            .ok_or((None, "missing quorum line".to_owned()))?;
        if members.len() != self.witnesses.len() {
            let left_out = (0..self.witnesses.len()).find(|i| !members.contains(i));
            let name = left_out
                .map(|i| self.witnesses[i].0.clone())
                .unwrap_or_default();
            return Err((
                Some(line),
                format!("witness {name} is not part of the quorum"),
            ));
        }
        let cosigner_quorum = match (&self.cosigner_quorum, self.cosigners.is_empty()) {
            (None, true) => 0,
            (None, false) => {
                return Err((
                    Some(line),
                    "cosigner lines need a cosigner-quorum line before the quorum line".to_owned(),
                ));
            }
            (Some((at, threshold)), _) => {
                let n = self.cosigners.len();
                match threshold.as_str() {
                    "all" => n,
                    "any" => 1,
                    "0" => 0,
                    digits => parse_threshold(digits, n).map_err(|error| (Some(*at), error))?,
                }
            }
        };
        let verifiers: Vec<Verifier> = self.witnesses.into_iter().map(|(_, v)| v).collect();
        let (cosigners, urls): (Vec<CosignerKey>, Vec<Option<String>>) =
            self.cosigners.into_iter().map(|(_, c, u)| (c, u)).unzip();
        let mut policy = Policy::new(&origin, verifiers, quorum)
            .and_then(|policy| policy.with_cosigners(cosigners, cosigner_quorum))
            .map(|policy| policy.with_cosigner_urls(urls))
            .map_err(|error| (Some(line), error.to_string()))?;
        // Each rotation is checked against the history so far, so an error
        // names the first line that does not fit.
        let mut history = KeyHistory::new(policy.clone());
        for (at, rotation) in &self.rotations {
            history
                .add(rotation.clone())
                .map_err(|error| (Some(*at), error.to_string()))?;
        }
        // The keys in force change only at a rotation's op: each such set
        // must be a valid policy (no key name twice, say).
        for (at, rotation) in &self.rotations {
            history
                .policy_at(rotation.from_op)
                .map_err(|error| (Some(*at), error.to_string()))?;
        }
        policy.rotations = self.rotations.into_iter().map(|(_, r)| r).collect();
        Ok(policy)
    }
}

/// A decimal threshold `k` with `1 <= k <= n` and no leading zeros.
fn parse_threshold(text: &str, n: usize) -> Result<usize, String> {
    let bad = || format!("group threshold {text:?} is not all, any or a number from 1 to {n}");
    if text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let k: usize = text.parse().map_err(|_| bad())?;
    if k == 0 || k > n {
        return Err(bad());
    }
    Ok(k)
}
