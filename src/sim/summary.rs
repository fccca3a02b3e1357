//! What a run reports: its outcome, what happened, and coverage counters
//! that show which protocol paths and fault kinds the seed reached.

use std::collections::BTreeMap;

use serde::Serialize;

/// Simulated milliseconds per tick: the interval at which the real shell
/// ticks its replica, so simulated time compares with wall time.
pub const TICK_MS: u64 = 10;

/// The summary of one run. Everything here but `wall_micros` is fixed by
/// the seed and the options.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Replicas in the cluster.
    pub replicas: u8,
    /// Ticks simulated in all.
    pub ticks: u64,
    /// Ticks of the fault phase.
    pub fault_ticks: u64,
    /// Ticks the cluster took to converge after faults stopped.
    pub converged_after_ticks: Option<u64>,
    /// Ops in the agreed committed log.
    pub ops_committed: u64,
    /// New views that some replica entered in normal status.
    pub view_changes: u64,
    /// Restarted replicas that rejoined (normal status) from their own disk.
    pub recoveries: u64,
    /// Ops fetched from peers (request_prepare messages sent).
    pub repairs: u64,
    /// Wiped replicas that rebuilt from their peers and rejoined.
    pub state_transfers: u64,
    /// Client requests answered (committed replies seen by clients).
    pub requests_acknowledged: u64,
    /// Certificates checked (distinct texts).
    pub certificates_checked: u64,
    /// Inputs delivered to replicas.
    pub inputs: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Protocol paths reached, by name.
    pub coverage: BTreeMap<String, u64>,
    /// SHA-256 over every delivered input, in order.
    pub trace_hash: String,
    /// Why the run failed, if it did.
    pub failure: Option<String>,
    /// Wall-clock time of the run (not deterministic).
    pub wall_micros: u64,
}

impl Summary {
    /// Simulated time over wall time: how much faster than real time the
    /// run went (`ticks * TICK_MS` against the measured wall clock).
    pub fn speedup(&self) -> f64 {
        (self.ticks * TICK_MS * 1000) as f64 / self.wall_micros.max(1) as f64
    }

    /// Whether every checker passed and the cluster converged.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }

    /// One line: seed, outcome, main counters, trace hash.
    pub fn line(&self) -> String {
        let outcome = match &self.failure {
            None => "ok".to_string(),
            Some(reason) => format!("FAIL: {reason}"),
        };
        let faults: u64 = self.faults.values().sum();
        format!(
            "seed {} replicas {}: {outcome} | ops {} views {} recoveries {} repairs {} transfers {} faults {} ticks {} trace {}",
            self.seed,
            self.replicas,
            self.ops_committed,
            self.view_changes,
            self.recoveries,
            self.repairs,
            self.state_transfers,
            faults,
            self.ticks,
            &self.trace_hash[..self.trace_hash.len().min(16)],
        )
    }

    /// A multi-line human report.
    pub fn report(&self) -> String {
        let mut out = self.line();
        out.push('\n');
        out.push_str(&format!(
            "  converged after {} ticks (bound {}), {} acknowledged requests, {} certificates checked, {} inputs, {} µs wall, {:.0}x real time ({} ms per tick)\n",
            self.converged_after_ticks.map_or("-".to_string(), |t| t.to_string()),
            super::options::CONVERGE_TICKS_MAX,
            self.requests_acknowledged,
            self.certificates_checked,
            self.inputs,
            self.wall_micros,
            self.speedup(),
            TICK_MS,
        ));
        out.push_str("  faults:");
        for (kind, count) in &self.faults {
            out.push_str(&format!(" {kind}={count}"));
        }
        out.push_str("\n  coverage:");
        for (path, count) in &self.coverage {
            out.push_str(&format!(" {path}={count}"));
        }
        out.push_str(&format!("\n  trace {}\n", self.trace_hash));
        out
    }
}

/// Coverage summed over many runs.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Runs.
    pub runs: u64,
    /// Failing seeds.
    pub failed: Vec<u64>,
    /// Summed counters.
    pub counters: BTreeMap<String, u64>,
}

impl Totals {
    /// Adds one run.
    pub fn add(&mut self, summary: &Summary) {
        self.runs += 1;
        if !summary.passed() {
            self.failed.push(summary.seed);
        }
        let main = [
            ("ops_committed", summary.ops_committed),
            ("view_changes", summary.view_changes),
            ("recoveries", summary.recoveries),
            ("repairs", summary.repairs),
            ("state_transfers", summary.state_transfers),
            ("ticks", summary.ticks),
        ];
        for (name, value) in main {
            *self.counters.entry(name.to_string()).or_default() += value;
        }
        for (kind, count) in &summary.faults {
            *self.counters.entry(format!("fault:{kind}")).or_default() += count;
        }
        for (path, count) in &summary.coverage {
            *self.counters.entry(path.clone()).or_default() += count;
        }
    }
}
