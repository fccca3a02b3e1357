//! Vellum: an audited, replicated event store for healthcare.
//!
//! See ARCHITECTURE.md for the map. The formats live in `vellum-audit`; this
//! crate holds the write path (`crypto`, `storage`, `log`), the audit index
//! (`index`) and the pieces the `vellum` binary wires together.

#![forbid(unsafe_code)]

pub mod api;
pub mod bench;
pub mod bounds;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod crypto;
pub mod datadir;
pub mod demo;
pub mod fsutil;
pub mod index;
pub mod init;
pub mod live;
pub mod local_cluster;
pub mod local_witness;
pub mod log;
pub mod net;
pub mod replica;
pub mod server;
pub mod sim;
pub mod storage;
pub mod types;
pub mod verify;
pub mod vsr;
pub mod witness;

pub use types::{EventPersister, Offset, PersistError, StreamId};
