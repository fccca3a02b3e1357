//! The index of client-chosen event ids (`id` of the event envelope), so a
//! repeat of an id on a stream is never stored twice.
//!
//! It is part of the log state, derived from the log alone: every op record
//! with `FLAG_ENVELOPES` that this replica holds (committed or not yet) is
//! decrypted once, when it is written (`shell::write`, on the primary and on
//! every backup alike) and when the state is rebuilt (open, a cut tail, an
//! in-place repair). So a restarted replica and a new primary after a view
//! change know every id their log holds, and an op a view change drops takes
//! its ids with it (the state is rebuilt from the cut log).
//!
//! The decision is made on the primary under the core's lock, before the
//! request reaches the core (`shell::submit_request`), and the ids of an op
//! enter the index in the same hold of that lock (its write): two appends of
//! one id cannot both be ordered.
//!
//! Cost: one entry of (stream u64, id 16 bytes) -> (op u64, offset u64),
//! about 48 bytes with the hash table's overhead, per event that carries an
//! id; none for events without one. Open decrypts every enveloped op once.

use std::collections::HashMap;

use vellum_audit::envelope::{Envelope, ID_BYTES};
use vellum_audit::record::{self, Record};

use crate::crypto::{self, DataKey, EventAad};

/// Where an id was first stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPlace {
    /// The op that carries it.
    pub op: u64,
    /// Its stream offset.
    pub offset: u64,
}

/// How a batch's ids stand against the stream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdCheck {
    /// No id of the batch is on the stream: append it.
    New,
    /// The batch is an earlier op resent: every event carries an id and
    /// they are that op's events, all and in order. Answer with that op.
    Resent {
        /// The original op.
        op: u64,
    },
    /// Event `index` of the batch carries an id the stream already holds at
    /// `offset`, or (`offset` None) an id an earlier event of the same batch
    /// carries, at batch index `first`; the batch is not a resent op.
    Duplicate {
        /// The batch index of the event.
        index: usize,
        /// The id.
        id: [u8; ID_BYTES],
        /// The offset of the stored event with that id.
        offset: Option<u64>,
        /// The earlier batch index with that id (a repeat inside the batch).
        first: Option<usize>,
    },
}

/// The id index of one replica's log.
#[derive(Debug, Default)]
pub struct EventIds {
    places: HashMap<(u64, [u8; ID_BYTES]), IdPlace>,
}

impl EventIds {
    /// The place of `id` on `stream`.
    pub fn get(&self, stream: u64, id: &[u8; ID_BYTES]) -> Option<IdPlace> {
        self.places.get(&(stream, *id)).copied()
    }

    /// Indexes the ids of one op record with `FLAG_ENVELOPES` (others are
    /// skipped), decrypting its events under `dek`. An id already indexed
    /// keeps its first place (the writer never stores one twice).
    pub fn add_record(
        &mut self,
        cluster: u128,
        record: &Record,
        dek: &DataKey,
        offset_in_file: u64,
    ) -> Result<(), String> {
        let header = &record.header;
        if !header.has_envelopes() {
            return Ok(());
        }
        let frames = record::decode_events(&record.body, header.event_count, offset_in_file)
            .map_err(|e| e.to_string())?;
        for (i, frame) in (0u64..).zip(frames.iter()) {
            let offset = header.stream_offset + i;
            let aad = EventAad {
                cluster,
                stream: header.stream,
                stream_offset: offset,
                key_id: header.key_id,
            };
            let opened = crypto::open_event(dek, &frame.nonce, &aad, frame.sealed)
                .map_err(|e| e.to_string())?;
            let envelope = Envelope::decode(&opened.payload).map_err(|e| {
                format!(
                    "op {} event {i}: {e} (stream {}, offset {offset})",
                    header.op, header.stream
                )
            })?;
            if let Some(id) = envelope.id {
                self.places.entry((header.stream, id)).or_insert(IdPlace {
                    op: header.op,
                    offset,
                });
            }
        }
        Ok(())
    }

    /// Judges a batch (`ids[i]` = event `i`'s id, if any) against the
    /// stream's ids. `op_events(op)` gives an op's (first offset, count).
    pub fn check(
        &self,
        stream: u64,
        ids: &[Option<[u8; ID_BYTES]>],
        op_events: impl Fn(u64) -> Option<(u64, u64)>,
    ) -> IdCheck {
        let mut seen: HashMap<[u8; ID_BYTES], usize> = HashMap::new();
        for (index, id) in ids.iter().enumerate() {
            if let Some(id) = id
                && let Some(first) = seen.insert(*id, index)
            {
                return IdCheck::Duplicate {
                    index,
                    id: *id,
                    offset: None,
                    first: Some(first),
                };
            }
        }
        let known: Vec<(usize, [u8; ID_BYTES], IdPlace)> = ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| id.and_then(|id| self.get(stream, &id).map(|p| (i, id, p))))
            .collect();
        let Some(&(index, id, place)) = known.first() else {
            return IdCheck::New;
        };
        let resent = known.len() == ids.len()
            && op_events(place.op).is_some_and(|(first, count)| {
                count == ids.len() as u64
                    && known
                        .iter()
                        .all(|(i, _, p)| p.op == place.op && p.offset == first + *i as u64)
            });
        if resent {
            return IdCheck::Resent { op: place.op };
        }
        IdCheck::Duplicate {
            index,
            id,
            offset: Some(place.offset),
            first: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Option<[u8; ID_BYTES]> {
        Some([n; ID_BYTES])
    }

    fn index() -> EventIds {
        let mut ids = EventIds::default();
        // op 5 holds offsets 10, 11 with ids 1, 2; op 6 offset 12 id 3.
        for (n, op, offset) in [(1u8, 5u64, 10u64), (2, 5, 11), (3, 6, 12)] {
            ids.places
                .insert((16, [n; ID_BYTES]), IdPlace { op, offset });
        }
        ids
    }

    fn ops(op: u64) -> Option<(u64, u64)> {
        match op {
            5 => Some((10, 2)),
            6 => Some((12, 1)),
            _ => None,
        }
    }

    /// Goal: the rule of docs/api.md ("Event ids"), case by case.
    #[test]
    fn batches_are_judged_by_the_rule() {
        let ids = index();
        let dup = |index, n: u8, offset, first| IdCheck::Duplicate {
            index,
            id: [n; ID_BYTES],
            offset,
            first,
        };
        let cases: Vec<(Vec<Option<[u8; ID_BYTES]>>, IdCheck)> = vec![
            (vec![id(9), None], IdCheck::New),
            (vec![id(1), id(2)], IdCheck::Resent { op: 5 }),
            (vec![id(3)], IdCheck::Resent { op: 6 }),
            // Reordered, partial, mixed with new or id-less events: not a resend.
            (vec![id(2), id(1)], dup(0, 2, Some(11), None)),
            (vec![id(1)], dup(0, 1, Some(10), None)),
            (vec![id(9), id(2)], dup(1, 2, Some(11), None)),
            (vec![id(1), id(2), None], dup(0, 1, Some(10), None)),
            (vec![id(1), id(3)], dup(0, 1, Some(10), None)),
            // The same id twice in one batch.
            (vec![id(9), None, id(9)], dup(2, 9, None, Some(0))),
        ];
        for (batch, expected) in cases {
            assert_eq!(ids.check(16, &batch, ops), expected, "{batch:?}");
        }
        // Another stream does not share ids.
        assert_eq!(ids.check(17, &[id(1)], ops), IdCheck::New);
    }
}
