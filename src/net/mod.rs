//! Replica-to-replica networking: VSR messages, framed and encoded in
//! binary, over mutual TLS between the replicas of one cluster.
//!
//! Layers, bottom up: `tls` (the dev PKI, PEM loading, rustls configs and
//! peer identity from the certificate's `replica-{i}.vellum` SAN), `frame`
//! (a checksummed, length-prefixed frame), `codec` (a [`crate::vsr::Message`]
//! in a frame body) and `transport` (the listener, one outbound connection
//! per peer, bounded queues, reconnects, authentication of `from`).
//!
//! Wire format (every integer little-endian):
//!
//! ```text
//! frame   = magic b"VLMF" | version u16 (1) | reserved u16 (0) | body_len u32
//!           | checksum [32] = SHA-256(body) | body            (44-byte header)
//! body    = cluster u128 | from u8 | view u64 | tag u8 | variant fields
//! tags    1 Prepare  2 PrepareOk  3 Commit  4 StartViewChange  5 DoViewChange
//!         6 StartView  7 RequestPrepare  8 Recovery  9 RecoveryResponse
//! ```
//!
//! The variant fields are specified in `codec.rs`; records and op headers
//! travel in their on-disk encoding (`vellum_audit::record`).

pub mod codec;
pub mod frame;
pub mod tls;
pub mod tls_reload;
pub mod transport;

pub use transport::{NetConfig, NetStats, NetTransport, Transport};
