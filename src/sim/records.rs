//! Deterministic stand-ins for the shell's record work: sealing a batch of
//! events into an op record (fake encryption keyed by the run's seed) and
//! recomputing the Merkle leaf hashes of a record.
//!
//! The simulator must not draw OS randomness, so the "ciphertext" is a keyed
//! transform of the plaintext and every salt and nonce is derived from the
//! seed, the stream and the offset. The frames, commitments and leaves are
//! the real formats from `vellum-audit`, so the checkers' Merkle roots are
//! the roots the replicas sign.

use bytes::Bytes;
use vellum_audit::hash::{Hash, sha256};
use vellum_audit::leaf::{commitment, record_leaf_hashes};
use vellum_audit::record::{
    self, EventFrame, NONCE_BYTES, OpHeader, Record, RecordKind, TAG_BYTES,
};

/// Seals events deterministically from a per-run key.
#[derive(Debug, Clone)]
pub struct Sealer {
    key: [u8; 32],
}

impl Sealer {
    /// A sealer whose every output is fixed by `key`.
    pub fn new(key: [u8; 32]) -> Sealer {
        Sealer { key }
    }

    /// The op record for `events` described by `header`, and the wrapped
    /// data key that travels beside it when the batch opens a stream.
    /// The key id is the stream (one data key per stream in the simulator).
    pub fn seal(&self, header: &OpHeader, events: &[Bytes]) -> (Record, Option<Bytes>) {
        let mut header = *header;
        header.key_id = header.stream;
        let sealed: Vec<(Hash, [u8; NONCE_BYTES], Vec<u8>)> = events
            .iter()
            .enumerate()
            .map(|(i, plaintext)| {
                self.seal_one(header.stream, header.stream_offset + i as u64, plaintext)
            })
            .collect();
        let frames: Vec<EventFrame<'_>> = sealed
            .iter()
            .map(|(commitment, nonce, sealed)| EventFrame {
                commitment: *commitment,
                nonce: *nonce,
                sealed,
            })
            .collect();
        let record = Record::new(header, record::encode_events(&frames));
        let key =
            (header.stream_offset == 0).then(|| Bytes::copy_from_slice(&self.dek(header.stream)));
        (record, key)
    }

    /// The stand-in data key of `stream`.
    fn dek(&self, stream: u64) -> Hash {
        sha256(&[&self.key, b"dek", &stream.to_le_bytes()])
    }

    /// The request digest a shell would compute: the real keyed digest
    /// (`crypto::request_digest`) under the stream's stand-in data key, so
    /// the simulator's client tables compare what production ones do.
    pub fn digest(&self, stream: u64, expected_offset: Option<u64>, events: &[Bytes]) -> Hash {
        let dek = crate::crypto::DataKey::from_bytes(&self.dek(stream));
        crate::crypto::request_digest(&dek, stream, expected_offset, events)
    }

    /// (commitment, nonce, ciphertext || tag) of one event.
    fn seal_one(
        &self,
        stream: u64,
        offset: u64,
        plaintext: &[u8],
    ) -> (Hash, [u8; NONCE_BYTES], Vec<u8>) {
        let position = [stream.to_le_bytes(), offset.to_le_bytes()].concat();
        let salt = sha256(&[&self.key, b"salt", &position]);
        let nonce_hash = sha256(&[&self.key, b"nonce", &position]);
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&nonce_hash[..NONCE_BYTES]);
        let mut sealed: Vec<u8> = salt.iter().chain(plaintext.iter()).copied().collect();
        for (block, chunk) in sealed.chunks_mut(32).enumerate() {
            let pad = sha256(&[&self.key, b"pad", &nonce, &(block as u64).to_le_bytes()]);
            for (byte, mask) in chunk.iter_mut().zip(pad.iter()) {
                *byte ^= mask;
            }
        }
        let tag = sha256(&[&self.key, b"tag", &sealed]);
        sealed.extend_from_slice(&tag[..TAG_BYTES]);
        (commitment(&salt, plaintext), nonce, sealed)
    }
}

/// The simulator's trail records of a trail op that closes an atomic
/// group: each template followed by the stream and offsets of the op it
/// records (what the real shell writes into the access event).
pub fn complete_trail(events: Vec<Bytes>, trail_for: &[OpHeader]) -> Vec<Bytes> {
    if trail_for.is_empty() {
        return events;
    }
    events
        .into_iter()
        .zip(trail_for)
        .map(|(template, op)| {
            let mut record = template.to_vec();
            let range = format!(
                " stream {} offsets {}..{}",
                op.stream,
                op.stream_offset,
                op.stream_offset + u64::from(op.event_count)
            );
            record.extend_from_slice(range.as_bytes());
            Bytes::from(record)
        })
        .collect()
}

/// The RFC 6962 leaf hashes of an op record's events, in order; `None`
/// when the record is not an op or its body does not hold exactly
/// `event_count` frames.
pub fn leaf_hashes(record: &Record) -> Option<Vec<Hash>> {
    let header = &record.header;
    if header.kind != RecordKind::Op {
        return None;
    }
    record_leaf_hashes(record, 0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(stream_offset: u64, count: u32) -> OpHeader {
        let mut header = OpHeader::empty(RecordKind::Op, 7);
        header.op = 1;
        header.stream = 16;
        header.stream_offset = stream_offset;
        header.event_count = count;
        header.tree_size = u64::from(count);
        header
    }

    /// Goal: sealing is deterministic, yields one leaf per event, and hands
    /// out a data key only when the batch opens its stream.
    #[test]
    fn seal_is_deterministic_and_leaves_match() {
        let sealer = Sealer::new([3; 32]);
        let events = vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")];
        let (first, key) = sealer.seal(&header(0, 2), &events);
        let (again, _) = sealer.seal(&header(0, 2), &events);
        assert_eq!(first, again);
        assert!(key.is_some());
        assert_eq!(first.header.key_id, 16);
        assert_eq!(leaf_hashes(&first).map(|l| l.len()), Some(2));
        let (later, later_key) = sealer.seal(&header(2, 2), &events);
        assert!(later_key.is_none());
        assert_ne!(leaf_hashes(&first), leaf_hashes(&later));
        assert!(Record::decode(&first.encode(), 0).is_ok());
    }
}
