//! The deterministic simulator: the very same VSR core (`crate::vsr`) driven
//! by a seeded PRNG through a simulated network, simulated disks and
//! simulated clients, with faults injected on a schedule fixed by the seed
//! and checkers run after every step (DESIGN §7). A failing seed reproduces
//! with `vellum sim --seed N`.
//!
//! Map: `prng` (the seeded generator), `network`, `disk` and `records` (the
//! simulated devices and the deterministic sealing), `checker` (the safety
//! properties), `cluster` (the shell executing the core's actions),
//! `clients`, `faults`, `run` (the phases) and `summary`.

pub mod checker;
mod clients;
pub mod cluster;
pub mod disk;
mod faults;
pub mod network;
pub mod options;
pub mod prng;
pub mod records;
mod run;
pub mod summary;
pub mod trace;

pub use options::{FaultProfile, Options};
pub use run::{run, run_seeds};
pub use summary::{Summary, Totals};
