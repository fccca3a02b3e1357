//! The trace hash: SHA-256 over every input delivered to a replica, in
//! order, with the tick and the replica. Two runs with the same seed must
//! produce the same hash; a different hash means nondeterminism crept in.
//!
//! The encoding is written out field by field (not `Debug`), so the hash
//! does not depend on how a dependency formats its types; a peer message
//! is hashed in its wire encoding (`net::codec`), not in a second one.

use sha2::{Digest as _, Sha256};

use crate::vsr::{Input, Message, MessageBody, ReadPurpose};

/// The running trace hash of one run.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    hasher: Sha256,
    buffer: Vec<u8>,
    /// Inputs hashed so far.
    pub inputs: u64,
}

impl Trace {
    /// An empty trace.
    pub fn new() -> Trace {
        Trace::default()
    }

    /// Adds one input delivered to `replica` at `tick`.
    pub fn input(&mut self, tick: u64, replica: u8, input: &Input) {
        self.buffer.clear();
        self.buffer.extend_from_slice(&tick.to_le_bytes());
        self.buffer.push(replica);
        encode_input(input, &mut self.buffer);
        self.hasher.update(&self.buffer);
        self.inputs += 1;
    }

    /// Adds a shell event that is not an input (a restart and its nonce).
    pub fn event(&mut self, tick: u64, replica: u8, tag: u8, value: u64) {
        self.hasher.update(tick.to_le_bytes());
        self.hasher.update([replica, 0xF0 | tag]);
        self.hasher.update(value.to_le_bytes());
    }

    /// The hash so far, lowercase hex.
    pub fn hex(&self) -> String {
        vellum_audit::hash::to_hex(&self.hasher.clone().finalize())
    }
}

fn put(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn encode_input(input: &Input, out: &mut Vec<u8>) {
    match input {
        Input::Tick => out.push(0),
        Input::Message(message) => {
            out.push(1);
            encode_message(message, out);
        }
        Input::Request(request) => {
            out.push(2);
            out.extend_from_slice(&request.client.to_le_bytes());
            put(out, request.request);
            put(out, request.stream);
            put(out, request.expected_offset.map_or(u64::MAX, |o| o));
            for event in &request.events {
                put(out, event.len() as u64);
                out.extend_from_slice(event);
            }
        }
        Input::Sealed { record, key } => {
            out.push(3);
            out.extend_from_slice(&record.checksum());
            out.extend_from_slice(key.as_deref().unwrap_or_default());
        }
        Input::WriteDone { writes } => {
            out.push(4);
            for (op, checksum) in writes {
                put(out, *op);
                out.extend_from_slice(checksum);
            }
        }
        Input::ReadDone {
            op,
            purpose,
            record,
        } => {
            out.push(5);
            put(out, *op);
            encode_purpose(purpose, out);
            out.extend_from_slice(&record.as_ref().map_or([0; 32], |r| r.checksum()));
        }
        Input::SaveDone { state } => {
            out.push(6);
            for value in [state.view, state.log_view, state.commit] {
                put(out, value);
            }
        }
        Input::Signed {
            op,
            body,
            signature,
        } => {
            out.push(7);
            put(out, *op);
            put(out, body.len() as u64);
            out.extend_from_slice(body.as_bytes());
            out.extend_from_slice(signature.as_deref().unwrap_or_default());
        }
    }
}

fn encode_purpose(purpose: &ReadPurpose, out: &mut Vec<u8>) {
    match purpose {
        ReadPurpose::Repair { to } => out.extend_from_slice(&[1, *to]),
        ReadPurpose::Retransmit => out.push(2),
    }
}

/// A delivered message as it would travel: its wire encoding
/// (`net::codec`, the one encoding of a replica message), so the trace
/// covers every field and a new field can never be left out of it.
fn encode_message(message: &Message, out: &mut Vec<u8>) {
    match crate::net::codec::encode_message(message) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(e) => {
            // Not sendable over a real link (a field over its bound): the
            // trace still tells it apart from every encodable message.
            out.push(0xFF);
            out.extend_from_slice(e.to_string().as_bytes());
        }
    }
}

/// A short name of a message kind, for coverage counters.
pub fn message_kind(body: &MessageBody) -> &'static str {
    match body {
        MessageBody::Prepare { .. } => "prepare",
        MessageBody::PrepareOk { .. } => "prepare_ok",
        MessageBody::Commit { .. } => "commit",
        MessageBody::StartViewChange => "start_view_change",
        MessageBody::DoViewChange { .. } => "do_view_change",
        MessageBody::StartView { .. } => "start_view",
        MessageBody::RequestPrepare { .. } => "request_prepare",
        MessageBody::Recovery { .. } => "recovery",
        MessageBody::RecoveryResponse { .. } => "recovery_response",
    }
}
