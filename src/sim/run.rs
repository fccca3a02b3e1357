//! One run, phase by phase: start the cluster, inject faults for the fault
//! phase, then stop every fault (heal partitions, restart crashed replicas,
//! make the network reliable) and require convergence within a bound: all
//! replicas normal in one view with one commit number, every client request
//! answered. A cluster that does not get there is a failure ("stuck").

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::vsr::{Input, Status};

use super::cluster::{Event, RunError, Sim};
use super::network::LinkFaults;
use super::options::Options;
use super::summary::Summary;

/// Runs one seed and summarises it. A panic of the core is caught and
/// reported as the run's failure.
pub fn run(options: Options) -> Summary {
    let started = std::time::Instant::now();
    let mut sim = Sim::new(options);
    let outcome = catch_unwind(AssertUnwindSafe(|| sim.run_phases()));
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "non-string panic".to_string());
            Err(RunError::Panic {
                tick: sim.now,
                message,
            })
        }
    };
    let mut summary = sim.summary(&outcome);
    summary.wall_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    summary
}

impl Sim {
    /// The fault phase, then the convergence phase. Ok: ticks to converge.
    pub fn run_phases(&mut self) -> Result<u64, RunError> {
        for index in 0..self.options.replicas {
            self.start(index)?;
        }
        while self.now < self.options.fault_ticks {
            self.step_tick()?;
            self.now += 1;
        }
        self.enter_quiet()?;
        let quiet_start = self.now;
        let deadline = self.now + self.options.converge_ticks_max;
        while self.now < deadline {
            self.step_tick()?;
            if self.converged() {
                self.checker.finish().map_err(|v| self.violation(v))?;
                return Ok(self.now - quiet_start);
            }
            self.now += 1;
        }
        if self.debug {
            for (i, node) in self.nodes.iter().enumerate() {
                if let Some(r) = &node.replica {
                    eprintln!("r{i} tail: {}", r.describe_tail());
                }
            }
        }
        Err(RunError::Stuck {
            ticks: self.options.converge_ticks_max,
            state: self.describe(),
        })
    }

    /// One tick: faults, restarts, due events, replica ticks, clients.
    fn step_tick(&mut self) -> Result<(), RunError> {
        if !self.quiet {
            self.inject_faults()?;
        }
        for index in 0..self.options.replicas {
            let due = self.nodes[usize::from(index)]
                .down_until
                .is_some_and(|t| t <= self.now);
            if due {
                self.start(index)?;
            }
        }
        while let Some(event) = self.pop_due() {
            self.handle(event)?;
        }
        for index in 0..self.options.replicas {
            let node = &mut self.nodes[usize::from(index)];
            if node.replica.is_none() {
                continue;
            }
            node.tick_credit += node.rate_per_million;
            while self.nodes[usize::from(index)].tick_credit >= 1_000_000 {
                self.nodes[usize::from(index)].tick_credit -= 1_000_000;
                self.deliver(index, Input::Tick)?;
            }
        }
        self.clients_act()
    }

    fn pop_due(&mut self) -> Option<Event> {
        self.pop_event_at_or_before(self.now)
    }

    fn handle(&mut self, event: Event) -> Result<(), RunError> {
        match event {
            Event::Input {
                replica,
                incarnation,
                from,
                input,
            } => {
                let node = &self.nodes[usize::from(replica)];
                let current = incarnation.is_none_or(|i| i == node.incarnation);
                let cut = from.is_some_and(|from| self.network.is_blocked(from, replica));
                if current && !cut {
                    self.deliver(replica, input)?;
                }
            }
            Event::Forged {
                replica,
                from,
                forged,
                original,
            } => {
                if self.network.is_blocked(from, replica) {
                    return Ok(());
                }
                let Input::Message(crate::vsr::Message {
                    body: crate::vsr::MessageBody::Prepare { record, .. },
                    ..
                }) = &forged
                else {
                    unreachable!("only prepares are forged");
                };
                let op = record.header.op;
                let checkable = self.nodes[usize::from(replica)]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.header(op - 1).is_some() && r.header(op).is_none());
                if checkable {
                    self.counters.fault("unchained_prepare", 1);
                    self.deliver(replica, forged)?;
                } else {
                    self.deliver(replica, original)?;
                }
            }
            Event::Reply {
                client,
                from,
                request,
                reply,
            } => self.client_reply(client, from, request, reply)?,
            Event::Fsync {
                replica,
                incarnation,
                op,
                checksum,
            } => {
                if self.nodes[usize::from(replica)].incarnation != incarnation {
                    return Ok(());
                }
                let misdirect = self.misdirect_target(replica, op);
                if self.nodes[usize::from(replica)]
                    .disk
                    .sync(op, &checksum, misdirect)
                {
                    self.nodes[usize::from(replica)]
                        .durable
                        .insert((op, checksum));
                    self.deliver(
                        replica,
                        Input::WriteDone {
                            writes: vec![(op, checksum)],
                        },
                    )?;
                }
            }
            Event::Saved {
                replica,
                incarnation,
                state,
            } => {
                let node = &mut self.nodes[usize::from(replica)];
                if node.incarnation == incarnation && node.disk.save_done(&state) {
                    self.checker
                        .saved(replica, state)
                        .map_err(|v| self.violation(v))?;
                    self.deliver(replica, Input::SaveDone { state })?;
                }
            }
        }
        Ok(())
    }

    /// Stops every fault: heal, restart, reliable links; each idle client
    /// sends one last request, which must be answered.
    fn enter_quiet(&mut self) -> Result<(), RunError> {
        self.quiet = true;
        self.network.heal();
        self.network.set_faults(LinkFaults::QUIET);
        self.isolated.clear();
        self.partition_until = None;
        for index in 0..self.options.replicas {
            if self.nodes[usize::from(index)].down_until.is_some() {
                self.nodes[usize::from(index)].down_until = Some(self.now);
            }
        }
        for client in 0..self.clients.len() {
            if self.clients[client].pending.is_none() {
                self.new_request(client);
            }
        }
        Ok(())
    }

    /// All replicas up and normal in one view with one commit number, the
    /// agreed log reaches that commit, and no client waits.
    fn converged(&self) -> bool {
        let mut numbers = self.nodes.iter().map(|node| {
            node.replica
                .as_ref()
                .filter(|r| r.status() == Status::Normal)
                .map(|r| (r.view(), r.commit()))
        });
        let Some(Some(first)) = numbers.next() else {
            return false;
        };
        numbers.all(|n| n == Some(first))
            && self.checker.committed() == first.1
            && self.checker.acks_waiting() == 0
            && self.clients.iter().all(|c| c.pending.is_none())
    }

    /// The cluster's state in one line, for a stuck report.
    fn describe(&self) -> String {
        let replicas: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| match &node.replica {
                None => format!("r{i} down"),
                Some(r) => format!(
                    "r{i} {:?} view {} op {} commit {}",
                    r.status(),
                    r.view(),
                    r.op(),
                    r.commit()
                ),
            })
            .collect();
        let waiting: Vec<String> = self
            .clients
            .iter()
            .filter_map(|c| {
                let pending = c.pending.as_ref()?;
                Some(format!(
                    "client {:x} request {} ({} attempts, last to r{})",
                    c.id, pending.request.request, pending.attempts, c.guess
                ))
            })
            .collect();
        format!(
            "{}; agreed commit {}; {} client requests unanswered: [{}]",
            replicas.join(", "),
            self.checker.committed(),
            waiting.len(),
            waiting.join(", ")
        )
    }

    /// The run's summary.
    pub fn summary(&self, outcome: &Result<u64, RunError>) -> Summary {
        Summary {
            seed: self.options.seed,
            replicas: self.options.replicas,
            ticks: self.now,
            fault_ticks: self.options.fault_ticks,
            converged_after_ticks: outcome.as_ref().ok().copied(),
            ops_committed: self.checker.committed(),
            view_changes: self.counters.view_changes,
            recoveries: self.counters.recoveries,
            repairs: self.counters.repairs,
            state_transfers: self.counters.state_transfers,
            requests_acknowledged: self.counters.acknowledged,
            certificates_checked: self.checker.certificates_checked,
            inputs: self.trace.inputs,
            faults: self.counters.faults.clone(),
            coverage: self.counters.coverage.clone(),
            trace_hash: self.trace.hex(),
            failure: outcome.as_ref().err().map(ToString::to_string),
            wall_micros: 0,
        }
    }
}

/// Runs every seed of `seeds` with `template`'s other options, calling
/// `each` after every run (progress, per-seed lines), and sums them up.
pub fn run_seeds(
    seeds: std::ops::Range<u64>,
    template: Options,
    mut each: impl FnMut(&Summary),
) -> super::summary::Totals {
    let mut totals = super::summary::Totals::default();
    for seed in seeds {
        let summary = run(Options { seed, ..template });
        each(&summary);
        totals.add(&summary);
    }
    totals
}
