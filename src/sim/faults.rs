//! Fault injection: partitions, crashes (with torn and lost unsynced
//! writes, bit rot and wiped disks) and misdirected writes, drawn from the
//! seed at the rates of the run's `FaultProfile`.
//!
//! Faults are budgeted so the cluster can keep making progress: at most f
//! replicas are down, recovering or cut off by a partition at once (a
//! cluster of one may still crash and restart from its own disk). Disk
//! corruption hits only a crashed replica's disk, so a healthy quorum always
//! holds every committed op; and a disk is damaged (wiped, rotted,
//! misdirected) only while every other replica is up, connected, holds
//! an intact copy of every committed op and holds no damaged record of its
//! own — damage beyond f copies of one op is data loss no protocol can
//! undo, not a bug for the simulator to find. (An op damaged on f+1 disks
//! may have committed, as far as the replicas can tell: protocol-aware
//! recovery must then wait for a copy that no longer exists.)

use crate::vsr::Status;

use super::cluster::{RunError, Sim};

impl Sim {
    /// f: the faults the cluster tolerates.
    fn fault_budget(&self) -> usize {
        usize::from(self.options.replicas) / 2
    }

    /// Replicas that cannot take part now: down, recovering or isolated.
    fn unavailable(&self) -> Vec<u8> {
        (0..self.options.replicas)
            .filter(|i| {
                let node = &self.nodes[usize::from(*i)];
                let down_or_recovering = node
                    .replica
                    .as_ref()
                    .is_none_or(|r| r.status() == Status::Recovering);
                down_or_recovering || self.isolated.contains(i)
            })
            .collect()
    }

    /// Replicas whose disk lacks an intact copy of some agreed committed op
    /// (a wiped replica still fetching, a rotted record not yet repaired).
    fn lacking_committed(&self) -> Vec<u8> {
        let committed = self.checker.committed();
        (0..self.options.replicas)
            .filter(|i| {
                let disk = &self.nodes[usize::from(*i)].disk;
                (1..=committed).any(|op| {
                    self.checker
                        .agreed(op)
                        .is_none_or(|header| disk.read(op, &header.checksum()).is_none())
                })
            })
            .collect()
    }

    /// Replicas whose disk holds a damaged record not yet repaired.
    fn damaged_disks(&self) -> Vec<u8> {
        (0..self.options.replicas)
            .filter(|i| self.nodes[usize::from(*i)].disk.has_damage())
            .collect()
    }

    /// Whether replica `index`'s disk may be damaged now: only if, with it,
    /// at most f replicas are unavailable, missing a committed op, or
    /// holding a damaged record.
    fn disk_fault_allowed(&self, index: u8) -> bool {
        let mut impaired = self.unavailable();
        impaired.extend(self.lacking_committed());
        impaired.extend(self.damaged_disks());
        impaired.push(index);
        impaired.sort_unstable();
        impaired.dedup();
        impaired.len() <= self.fault_budget()
    }

    /// One tick's worth of fault draws.
    pub(super) fn inject_faults(&mut self) -> Result<(), RunError> {
        let profile = self.options.profile;
        if self.partition_until.is_some_and(|t| t <= self.now) {
            self.network.heal();
            self.isolated.clear();
            self.partition_until = None;
        } else if self.partition_until.is_none()
            && self.options.replicas > 1
            && self.prng.chance(profile.partition_per_million)
        {
            self.start_partition();
        }
        if self.prng.chance(profile.crash_per_million) {
            let index = self.prng.below(u64::from(self.options.replicas)) as u8;
            let mut after = self.unavailable();
            if !after.contains(&index) {
                after.push(index);
            }
            let budget = self.fault_budget().max(1);
            if self.nodes[usize::from(index)].replica.is_some() && after.len() <= budget {
                self.crash(index);
            }
        }
        Ok(())
    }

    fn start_partition(&mut self) {
        let profile = self.options.profile;
        let unavailable = self.unavailable().len();
        let room = self.fault_budget().saturating_sub(unavailable);
        if room == 0 {
            return;
        }
        let n = u64::from(self.options.replicas);
        if self.prng.chance(profile.one_way_per_million) {
            let from = self.prng.below(n) as u8;
            let to = (from + 1 + self.prng.below(n - 1) as u8) % self.options.replicas;
            self.network.partition_one_way(from, to);
            self.isolated = vec![from];
            self.counters.fault("partition_one_way", 1);
        } else {
            let size = self.prng.range(1, room as u64) as usize;
            let mut side: Vec<u8> = Vec::with_capacity(size);
            while side.len() < size {
                let pick = self.prng.below(n) as u8;
                if !side.contains(&pick) {
                    side.push(pick);
                }
            }
            self.network.partition(&side, self.options.replicas);
            self.isolated = side;
            self.counters.fault("partition_symmetric", 1);
        }
        let (low, high) = profile.partition_ticks;
        self.partition_until = Some(self.now + self.prng.range(low, high));
    }

    /// Crashes replica `index`: its unsynced writes are kept, lost or torn;
    /// sometimes its disk is wiped or a stored record rots.
    pub(super) fn crash(&mut self, index: u8) {
        let profile = self.options.profile;
        let (low, high) = profile.down_ticks;
        let down_until = self.now + self.prng.range(low, high);
        let many = self.options.replicas > 1;
        let wipe =
            many && self.prng.chance(profile.wipe_per_million) && self.disk_fault_allowed(index);
        let rot = many
            && !wipe
            && self.prng.chance(profile.bit_flip_per_million)
            && self.disk_fault_allowed(index);
        if self.debug {
            eprintln!(
                "tick {} r{index} crash wipe={wipe} rot={rot} down until {down_until}",
                self.now
            );
        }
        let node = &mut self.nodes[usize::from(index)];
        node.replica = None;
        node.down_until = Some(down_until);
        node.fsync_free_at = 0;
        let report = node.disk.crash(&mut self.prng, profile.crash_faults);
        self.counters.fault("crash", 1);
        self.counters
            .fault("crash_unsynced", u64::from(report.unsynced > 0));
        self.counters.fault("lost_write", report.lost);
        self.counters.fault("torn_write", report.torn);
        self.counters
            .fault("lost_state_save", u64::from(report.state_lost));
        let node = &mut self.nodes[usize::from(index)];
        if wipe {
            node.disk.wipe();
            node.wiped = true;
            self.checker.wiped(index);
            self.counters.fault("wipe", 1);
        } else if rot && node.disk.flip_bit(&mut self.prng).is_some() {
            self.counters.fault("bit_flip", 1);
        }
    }

    /// Whether the fsync of `op` lands in another slot, and which.
    pub(super) fn misdirect_target(&mut self, index: u8, op: u64) -> Option<u64> {
        if self.quiet
            || self.options.replicas == 1
            || !self.prng.chance(self.options.profile.misdirect_per_million)
        {
            return None;
        }
        let targets: Vec<u64> = self.nodes[usize::from(index)]
            .disk
            .durable_ops()
            .into_iter()
            .filter(|t| *t < op)
            .collect();
        if targets.is_empty() || !self.disk_fault_allowed(index) {
            return None;
        }
        self.counters.fault("misdirected_write", 1);
        Some(targets[self.prng.index(targets.len())])
    }
}
