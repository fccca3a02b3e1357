//! Vellum: an audited, replicated event store for healthcare.
//!
//! See ARCHITECTURE.md for the map. The formats live in `vellum-audit`; this
//! crate holds the write path (`crypto`, `storage`, `log`), the audit index
//! (`index`) and the pieces the `vellum` binary wires together.

#![forbid(unsafe_code)]

pub mod crypto;
pub mod datadir;
pub mod fsutil;
pub mod index;
// pub mod log; (enabled once storage, crypto and index land)
pub mod storage;
pub mod types;

pub use types::{EventPersister, Offset, PersistError, StreamId};
