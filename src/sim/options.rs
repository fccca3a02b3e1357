//! What one simulation run does: its seed, its size and lengths, and the
//! rates of every fault kind (`FaultProfile`).

use crate::vsr::Broken;

use super::disk::CrashFaults;
use super::network::LinkFaults;

/// Default ticks of the fault phase.
pub const FAULT_TICKS_DEFAULT: u64 = 3_000;
/// Ticks the cluster gets to converge once faults stop (the stated bound).
pub const CONVERGE_TICKS_MAX: u64 = 3_000;
/// Simulated clients, at most.
pub const CLIENTS_MAX: usize = 16;
/// Streams the clients append to (ids from `StreamId::USER_MIN`).
pub const STREAMS: u64 = 3;
/// Events in one client request, at most.
pub const EVENTS_PER_REQUEST_MAX: u64 = 3;

/// Rates and ranges of every fault kind. Rates are parts per million, per
/// tick unless said otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultProfile {
    /// Delay, loss and duplication of messages (reordering follows from
    /// the delay range).
    pub link: LinkFaults,
    /// Chance a partition starts (when none is active).
    pub partition_per_million: u32,
    /// Of partitions, the share that is one-way.
    pub one_way_per_million: u32,
    /// How long a partition lasts.
    pub partition_ticks: (u64, u64),
    /// Chance a replica crashes.
    pub crash_per_million: u32,
    /// How long a crashed replica stays down.
    pub down_ticks: (u64, u64),
    /// What a crash does to unsynced writes.
    pub crash_faults: CrashFaults,
    /// Of crashes, the share that wipes the disk (state transfer).
    pub wipe_per_million: u32,
    /// Of crashes (not wipes), the share that also flips a bit of a stored record.
    pub bit_flip_per_million: u32,
    /// Chance, per completed fsync, that the write landed in another op's slot.
    pub misdirect_per_million: u32,
    /// Chance, per prepare sent, that it arrives with a parent that does not
    /// chain (a confused or stale primary's prepare; backups must refuse it).
    pub unchained_prepare_per_million: u32,
    /// How long an fsync (and a state save) takes.
    pub fsync_ticks: (u64, u64),
    /// Largest deviation of a replica's tick rate, in parts per million.
    pub drift_per_million: u32,
    /// Ticks before a client retries a request.
    pub request_timeout_ticks: u64,
    /// Ticks a client waits between requests.
    pub think_ticks: (u64, u64),
}

impl FaultProfile {
    /// The profile the CI seeds run with.
    pub const DEFAULT: FaultProfile = FaultProfile {
        link: LinkFaults {
            delay_ticks_min: 1,
            delay_ticks_max: 12,
            loss_per_million: 20_000,
            duplicate_per_million: 20_000,
        },
        partition_per_million: 2_000,
        one_way_per_million: 400_000,
        partition_ticks: (50, 400),
        crash_per_million: 1_500,
        down_ticks: (20, 300),
        crash_faults: CrashFaults {
            lost_per_million: 300_000,
            torn_per_million: 300_000,
        },
        wipe_per_million: 150_000,
        bit_flip_per_million: 300_000,
        misdirect_per_million: 3_000,
        unchained_prepare_per_million: 5_000,
        fsync_ticks: (1, 8),
        drift_per_million: 50_000,
        request_timeout_ticks: 150,
        think_ticks: (0, 40),
    };
}

/// One run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Fixes every random choice of the run.
    pub seed: u64,
    /// Replicas (1, 3 or 5; any 2f+1 up to `REPLICAS_MAX` works).
    pub replicas: u8,
    /// Ticks of the fault phase.
    pub fault_ticks: u64,
    /// Ticks allowed for convergence after the fault phase.
    pub converge_ticks_max: u64,
    /// Simulated clients.
    pub clients: usize,
    /// Fault rates.
    pub profile: FaultProfile,
    /// A deliberately broken core (honoured only with `sim-broken`).
    pub broken: Broken,
    /// Run the cores with tiny windows (`SMALL_PIPELINE_MAX` ops in flight,
    /// `SMALL_VIEW_CHANGE_HEADERS_MAX` headers in a view change), so a run
    /// of a few thousand ticks has logs far longer than a view change's
    /// headers: the paths of a real replica after hours of traffic.
    pub small_windows: bool,
}

/// Pipeline of a core under `Options::small_windows`.
pub const SMALL_PIPELINE_MAX: usize = 4;
/// View change headers of a core under `Options::small_windows`.
pub const SMALL_VIEW_CHANGE_HEADERS_MAX: usize = 8;

impl Options {
    /// The defaults for `seed` with `replicas` replicas.
    pub fn new(seed: u64, replicas: u8) -> Options {
        Options {
            seed,
            replicas,
            fault_ticks: FAULT_TICKS_DEFAULT,
            converge_ticks_max: CONVERGE_TICKS_MAX,
            clients: 4,
            profile: FaultProfile::DEFAULT,
            broken: Broken::None,
            small_windows: false,
        }
    }
}
