//! `vellum-audit`: everything an auditor needs to check a Vellum log, and
//! nothing more.
//!
//! Every byte format Vellum writes is defined here, once: op records and
//! segment files (`record`, `segment`), the per-event Merkle leaf (`leaf`),
//! the RFC 6962 Merkle tree and its proofs (`merkle`), C2SP signed notes,
//! checkpoints and witness cosignatures (`note`, `checkpoint`,
//! `cosignature`), `tlog-proof@v1` proofs (`proof`),
//! the trust policy (`policy`) and the tree laid out as C2SP `tlog-tiles`
//! (`tiles`, and as files in `tile_dir`). The writer in the `vellum` crate uses these same types, so the
//! verifier can never disagree with the writer about a format. This crate is synchronous, opens no socket and no database.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod cosignature;
pub mod envelope;
pub mod error;
pub mod frontier;
pub mod hash;
pub mod html;
pub mod key_history;
pub mod leaf;
pub mod merkle;
pub mod note;
pub mod policy;
pub mod proof;
pub mod record;
pub mod report;
pub mod segment;
pub mod since;
pub mod tile_dir;
pub mod tiles;
pub mod verify;

pub use error::{DecodeError, Location};
pub use hash::{Hash, sha256};
