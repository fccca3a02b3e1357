//! A simulated disk for one replica: the op journal (one slot per op), the
//! saved view state (the "superblock") and the stored certificates, with the
//! faults real disks have.
//!
//! A write lands in the page cache and becomes durable only when its fsync
//! completes. A crash keeps, loses or tears each unsynced write (a torn
//! record is a prefix of the bytes followed by garbage). Bit flips damage
//! stored records; a misdirected write puts a record in another op's slot.
//! Restart scans the slots like a real recovery would and reports every op
//! from 1 to the highest one found as intact or faulty: a damaged or missing
//! slot below the tail is never treated as absent (protocol-aware recovery).

use std::collections::BTreeMap;

use vellum_audit::hash::Hash;
use vellum_audit::record::{HEADER_BYTES, OpHeader, Record};

use crate::vsr::{DurableState, JournalEntry, Recovered};

use super::prng::Prng;
use super::records::leaf_hashes;

/// What a crash does to each unsynced write, in parts per million.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashFaults {
    /// The write is lost entirely.
    pub lost_per_million: u32,
    /// The write is torn: a prefix of it, then garbage.
    pub torn_per_million: u32,
}

/// What a crash did to the unsynced writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrashReport {
    /// Unsynced record writes when the crash hit.
    pub unsynced: u64,
    /// Of those, lost.
    pub lost: u64,
    /// Of those, torn.
    pub torn: u64,
    /// Whether an unsaved view state was lost.
    pub state_lost: bool,
}

/// One op slot: what is durable and what is only written.
#[derive(Debug, Clone, Default)]
struct Slot {
    durable: Option<Vec<u8>>,
    pending: Option<Vec<u8>>,
}

impl Slot {
    /// What a read sees: the page cache first.
    fn current(&self) -> Option<&Vec<u8>> {
        self.pending.as_ref().or(self.durable.as_ref())
    }
}

/// The simulated disk of one replica.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    slots: BTreeMap<u64, Slot>,
    state: DurableState,
    pending_state: Option<DurableState>,
    /// op -> (certificate text, durable).
    certificates: BTreeMap<u64, (String, bool)>,
}

impl Disk {
    /// An empty disk.
    pub fn new() -> Disk {
        Disk::default()
    }

    /// Writes `record` into its op's slot (not yet durable).
    pub fn write(&mut self, record: &Record) {
        self.slots.entry(record.header.op).or_default().pending = Some(record.encode());
    }

    /// Completes the fsync of the write of `op` with `checksum`; false when
    /// that write is no longer pending (truncated or overwritten since).
    /// With `misdirect_to`, the bytes land in that other op's slot instead,
    /// and the disk still reports success (the fault is silent).
    pub fn sync(&mut self, op: u64, checksum: &Hash, misdirect_to: Option<u64>) -> bool {
        let Some(slot) = self.slots.get_mut(&op) else {
            return false;
        };
        let matches = slot
            .pending
            .as_ref()
            .is_some_and(|bytes| header_checksum(bytes) == Some(*checksum));
        if !matches {
            return false;
        }
        let bytes = slot.pending.take().expect("checked above");
        match misdirect_to {
            Some(target) if target != op => {
                if slot.durable.is_none() {
                    self.slots.remove(&op);
                }
                let target = self.slots.entry(target).or_default();
                target.durable = Some(bytes);
            }
            _ => slot.durable = Some(bytes),
        }
        for (_, durable) in self.certificates.values_mut() {
            *durable = true;
        }
        true
    }

    /// The ops that hold a durable record (targets for misdirected writes
    /// and bit flips).
    pub fn durable_ops(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.durable.is_some())
            .map(|(op, _)| *op)
            .collect()
    }

    /// Drops every slot after `after_op` (durably: truncation is ordered
    /// before any later write).
    pub fn truncate(&mut self, after_op: u64) {
        self.slots.retain(|op, _| *op <= after_op);
    }

    /// The record of `op` with `checksum`, if it reads back intact.
    pub fn read(&self, op: u64, checksum: &Hash) -> Option<Record> {
        let bytes = self.slots.get(&op)?.current()?;
        let record = Record::decode(bytes, 0).ok()?;
        (record.header.op == op && record.checksum() == *checksum).then_some(record)
    }

    /// The header of the record `op`'s slot holds, if it reads back intact.
    pub fn header(&self, op: u64) -> Option<OpHeader> {
        let bytes = self.slots.get(&op)?.current()?;
        let record = Record::decode(bytes, 0).ok()?;
        (record.header.op == op).then_some(record.header)
    }

    /// Starts saving the view state.
    pub fn save(&mut self, state: DurableState) {
        self.pending_state = Some(state);
    }

    /// Completes a save; false when a later save replaced it.
    pub fn save_done(&mut self, state: &DurableState) -> bool {
        if self.pending_state.as_ref() != Some(state) {
            return false;
        }
        self.state = *state;
        self.pending_state = None;
        true
    }

    /// The durable view state.
    pub fn state(&self) -> DurableState {
        self.state
    }

    /// Stores a certificate (durable with the next fsync).
    pub fn store_certificate(&mut self, op: u64, text: &str) {
        self.certificates.insert(op, (text.to_owned(), false));
    }

    /// Flips one bit of a durable record; returns its op.
    pub fn flip_bit(&mut self, prng: &mut Prng) -> Option<u64> {
        let ops = self.durable_ops();
        if ops.is_empty() {
            return None;
        }
        let op = ops[prng.index(ops.len())];
        let bytes = self.slots.get_mut(&op)?.durable.as_mut()?;
        let bit = prng.below(bytes.len() as u64 * 8);
        bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        Some(op)
    }

    /// A crash: each unsynced write is kept, lost or torn; an unsaved view
    /// state is lost; unsynced certificates are lost.
    pub fn crash(&mut self, prng: &mut Prng, faults: CrashFaults) -> CrashReport {
        let mut report = CrashReport::default();
        for slot in self.slots.values_mut() {
            let Some(mut bytes) = slot.pending.take() else {
                continue;
            };
            report.unsynced += 1;
            if prng.chance(faults.lost_per_million) {
                report.lost += 1;
            } else if prng.chance(faults.torn_per_million) {
                report.torn += 1;
                let keep = prng.below(bytes.len() as u64) as usize;
                for byte in &mut bytes[keep..] {
                    *byte = prng.next_u64() as u8;
                }
                bytes.truncate(keep.max(prng.range(keep as u64, bytes.len() as u64) as usize));
                slot.durable = Some(bytes);
            } else {
                slot.durable = Some(bytes);
            }
        }
        self.slots.retain(|_, slot| slot.durable.is_some());
        report.state_lost = self.pending_state.take().is_some();
        self.certificates.retain(|_, (_, durable)| *durable);
        report
    }

    /// Loses everything (a replaced or wiped disk).
    pub fn wipe(&mut self) {
        *self = Disk::new();
    }

    /// Whether any stored record is damaged (torn, rotted, or another op's
    /// record in its slot) and not yet written again intact: such a disk
    /// holds a copy its replica can neither serve nor disown (it may not
    /// nack the op), so it counts against the fault budget until repaired.
    /// A hole (no durable record below the highest durable one, e.g. a
    /// lost unsynced write under a kept later one) is damage too: on
    /// restart its slot is faulty, like a rotted one.
    pub fn has_damage(&self) -> bool {
        let durable: Vec<(u64, &[u8])> = self
            .slots
            .iter()
            .filter_map(|(op, slot)| slot.durable.as_deref().map(|bytes| (*op, bytes)))
            .collect();
        let last = durable.last().map_or(0, |(op, _)| *op);
        let hole = u64::try_from(durable.len()).map_or(true, |n| n < last);
        hole || durable.iter().any(|(op, bytes)| match scan(bytes) {
            Scanned::Intact(header, _) => header.op != *op,
            Scanned::Damaged(_) => true,
        })
    }

    /// Whether any write is waiting for its fsync.
    pub fn has_unsynced(&self) -> bool {
        self.slots.values().any(|slot| slot.pending.is_some())
    }

    /// What a restarting replica finds: every op from 1 to the highest one
    /// found, intact or faulty, the saved state and the certificates.
    pub fn recover(&self) -> Recovered {
        let mut intact: BTreeMap<u64, (OpHeader, Vec<Hash>)> = BTreeMap::new();
        let mut faulty: BTreeMap<u64, Option<OpHeader>> = BTreeMap::new();
        let mut misplaced: Vec<(OpHeader, Vec<Hash>)> = Vec::new();
        for (op, slot) in &self.slots {
            let Some(bytes) = slot.current() else {
                continue;
            };
            match scan(bytes) {
                Scanned::Intact(header, leaves) if header.op == *op => {
                    intact.insert(*op, (header, leaves));
                }
                Scanned::Intact(header, leaves) => {
                    faulty.insert(*op, None);
                    misplaced.push((header, leaves));
                }
                Scanned::Damaged(header) => {
                    faulty.insert(*op, header.filter(|h| h.op == *op));
                }
            }
        }
        // A misdirected record is still an intact record of its own op.
        for (header, leaves) in misplaced {
            let newer = intact
                .get(&header.op)
                .is_none_or(|(h, _)| h.view < header.view);
            if newer {
                faulty.remove(&header.op);
                intact.insert(header.op, (header, leaves));
            }
        }
        let last = intact
            .keys()
            .chain(faulty.keys())
            .max()
            .copied()
            .unwrap_or(0);
        let journal = (1..=last)
            .map(|op| match intact.remove(&op) {
                Some((header, leaves)) => JournalEntry::Intact { header, leaves },
                None => JournalEntry::Faulty {
                    op,
                    header: faulty.remove(&op).flatten(),
                },
            })
            .collect();
        Recovered {
            state: self.state,
            journal,
            certificates: self
                .certificates
                .iter()
                .map(|(op, (text, _))| (*op, text.clone()))
                .collect(),
        }
    }
}

/// The header checksum stored at the front of encoded record bytes.
fn header_checksum(bytes: &[u8]) -> Option<Hash> {
    bytes.get(..32)?.try_into().ok()
}

/// What a slot's bytes turn out to be on restart.
enum Scanned {
    /// An intact op record: its header and leaf hashes.
    Intact(OpHeader, Vec<Hash>),
    /// Damaged; the header if it still decodes on its own.
    Damaged(Option<OpHeader>),
}

/// Decodes stored bytes as a restarting replica would.
fn scan(bytes: &[u8]) -> Scanned {
    let header = bytes
        .get(..HEADER_BYTES)
        .and_then(|b| <&[u8; HEADER_BYTES]>::try_from(b).ok())
        .and_then(|b| OpHeader::decode(b, 0).ok());
    let Ok(record) = Record::decode(bytes, 0) else {
        return Scanned::Damaged(header);
    };
    match leaf_hashes(&record) {
        Some(leaves) => Scanned::Intact(record.header, leaves),
        None => Scanned::Damaged(header),
    }
}
