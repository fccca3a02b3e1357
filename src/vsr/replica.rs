//! One VSR replica (in progress: the interface is fixed in `vsr/mod.rs`).

use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;
use vellum_audit::record::OpHeader;

use super::{Action, Broken, Config, Input, Recovered, Status};

/// One replica of the cluster, as a pure state machine.
#[derive(Debug)]
pub struct Replica {
    config: Config,
}

impl Replica {
    /// Starts a replica from what its disk holds. `nonce` is the shell's
    /// random number for the recovery protocol (the core has no randomness).
    /// Returns the replica and its first actions.
    pub fn new(
        config: Config,
        signer: Signer,
        policy: Policy,
        recovered: Recovered,
        nonce: u64,
        broken: Broken,
    ) -> (Replica, Vec<Action>) {
        let _ = (signer, policy, recovered, nonce, broken);
        (Replica { config }, Vec::new())
    }

    /// Feeds one input; returns the actions to execute, in order.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        let _ = input;
        Vec::new()
    }

    /// The replica's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Current status.
    pub fn status(&self) -> Status {
        Status::Recovering
    }

    /// Current view.
    pub fn view(&self) -> u64 {
        0
    }

    /// The last view in which the status was normal.
    pub fn log_view(&self) -> u64 {
        0
    }

    /// The highest op in the journal.
    pub fn op(&self) -> u64 {
        0
    }

    /// The commit number.
    pub fn commit(&self) -> u64 {
        0
    }

    /// True when this replica is the primary of its view and normal.
    pub fn is_primary(&self) -> bool {
        false
    }

    /// The journal's header for `op`, if present and intact.
    pub fn header(&self, op: u64) -> Option<&OpHeader> {
        let _ = op;
        None
    }
}
