//! The op record: the unit of Vellum's on-disk log.
//!
//! Every record is a fixed 256-byte [`OpHeader`] followed by a body of
//! `body_size` bytes. Three kinds share the header: an `Op` (one client batch
//! of encrypted events for one stream), a `Certificate` (the signed note that
//! certifies a commit) and a `Seal` (the footer of a full segment). The header
//! checksum covers the header, the body checksum covers the body, and the
//! `parent` field chains each op to the one before it, so any changed,
//! removed or reordered byte breaks a checksum or the chain. The byte layout
//! is specified in `docs/format.md` ("Op records"); this file is its only
//! implementation, used by the writer and by `vellum verify` alike.

use crate::error::DecodeError;
use crate::hash::{Hash, sha256};

/// Size of an encoded [`OpHeader`].
pub const HEADER_BYTES: usize = 256;
/// Magic bytes of an op header, at offset 96.
pub const MAGIC: [u8; 4] = *b"VLOP";
/// Offset of [`MAGIC`] inside an encoded header.
pub const MAGIC_OFFSET: usize = 96;
/// The header version this code writes: 3, with the group flags at byte
/// 103 (see [`FLAG_GROUP_CONTINUES`]).
pub const VERSION: u16 = 3;
/// The second header version: the request digest at bytes 224..256, byte
/// 103 reserved and zero. Still read.
pub const VERSION_V2: u16 = 2;
/// Op flag (version 3, byte 103, bit 0): the next op belongs to the same
/// atomic group. A group is a run of ops whose last op has this flag clear;
/// a certificate only ever certifies the last op of a group, so a group
/// commits whole or not at all. An append and its access-trail record
/// travel in one group (one prepare round, one certificate).
pub const FLAG_GROUP_CONTINUES: u8 = 1;
/// The system stream of the access trail (P7). The op that closes an
/// atomic group appends to it: one trail record per append of the group.
pub const ACCESS_TRAIL_STREAM: u64 = 1;
/// The system stream of key-custody events (P6): shreds, legal holds and
/// retention floors (`vellum_compliance::custody`). Only a replica writes it.
pub const KEY_CUSTODY_STREAM: u64 = 2;
/// The system stream of consumer-group events (persistent subscriptions):
/// group creation and deletion, acks, parks and replays
/// (`vellum_compliance::groups`). Only a replica writes it.
pub const CONSUMER_GROUPS_STREAM: u64 = 3;
/// The client session of the trail ops that close atomic groups (reserved:
/// no client request may use it). Such an op's request number is its op.
pub const TRAIL_CLIENT: u128 = u128::MAX;
/// Op flag (version 3, byte 103, bit 1): each event's plaintext is an
/// encoded [`crate::envelope::Envelope`] (the event carries envelope fields:
/// id, type, content type, metadata), not the bare payload. Ops without it
/// carry bare payloads, as every op written before envelopes existed.
pub const FLAG_ENVELOPES: u8 = 2;
/// Every flag bit version 3 defines.
pub const FLAGS_KNOWN: u8 = FLAG_GROUP_CONTINUES | FLAG_ENVELOPES;
/// The first header version: bytes 224..256 reserved and zero. Still read,
/// so logs written before version 2 verify and replay unchanged.
pub const VERSION_V1: u16 = 1;
/// Bytes of [`OpHeader::request_digest`].
pub const REQUEST_DIGEST_BYTES: usize = 32;
/// The request digest of a header that carries none (version 1, records
/// other than ops, requests of a shell that computes none): "unknown".
pub const REQUEST_DIGEST_UNKNOWN: Hash = [0; REQUEST_DIGEST_BYTES];
/// Most events in one op.
pub const EVENTS_PER_OP_MAX: u32 = 4096;
/// Largest plaintext event, in bytes.
pub const EVENT_BYTES_MAX: usize = 1024 * 1024;
/// Largest body of any record, in bytes.
pub const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Size of an AES-GCM nonce.
pub const NONCE_BYTES: usize = 12;
/// Size of an AES-GCM tag.
pub const TAG_BYTES: usize = 16;
/// Room for what the sealing layer adds to a plaintext event besides the tag
/// (e.g. the 32-byte commitment salt and a version byte), with slack.
pub const SEAL_OVERHEAD_MAX: usize = 256;
/// Largest `sealed` part (ciphertext and tag) of one event frame: a
/// payload of [`EVENT_BYTES_MAX`] with the largest envelope.
pub const SEALED_BYTES_MAX: usize =
    EVENT_BYTES_MAX + crate::envelope::ENVELOPE_OVERHEAD_MAX + SEAL_OVERHEAD_MAX;
/// Size of an encoded [`SealBody`].
pub const SEAL_BODY_BYTES: usize = 48;
/// Domain tag of [`genesis_parent`].
const GENESIS_TAG: &[u8] = b"vellum/genesis/v1";

const FORMAT: &str = "op header";

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// One client batch of encrypted events for one stream.
    Op = 1,
    /// The signed-note commit certificate of an op already in the log.
    Certificate = 2,
    /// The footer of a full segment; nothing follows it in its file.
    Seal = 3,
}

impl RecordKind {
    /// The kind with this on-disk byte, if any.
    pub fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::Op),
            2 => Some(RecordKind::Certificate),
            3 => Some(RecordKind::Seal),
            _ => None,
        }
    }
}

/// The parent of op 1 of a cluster: SHA-256("vellum/genesis/v1" || cluster LE).
pub fn genesis_parent(cluster: u128) -> Hash {
    sha256(&[GENESIS_TAG, &cluster.to_le_bytes()])
}

/// The fixed-size header of every record. The header checksum is computed
/// from the other fields ([`OpHeader::checksum`]) and is not stored here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpHeader {
    /// Op: checksum of the previous Op header (op 1: [`genesis_parent`]).
    /// Certificate: checksum of the Op header it certifies. Seal: checksum of
    /// the last Op header of the log when the segment was sealed.
    pub parent: Hash,
    /// SHA-256 of the body.
    pub body_checksum: Hash,
    pub kind: RecordKind,
    pub cluster: u128,
    pub view: u64,
    /// Op: this op number (>= 1). Certificate: the op certified. Seal: the
    /// last op of the log when the segment was sealed.
    pub op: u64,
    /// Op: the primary's commit number when it prepared this op; else 0.
    pub commit: u64,
    pub client_id: u128,
    pub request: u64,
    /// Unix time in nanoseconds.
    pub timestamp_ns: u64,
    pub stream: u64,
    /// First stream offset of the batch.
    pub stream_offset: u64,
    /// First global position (Merkle leaf index) of the batch.
    pub global_position: u64,
    pub event_count: u32,
    pub body_size: u32,
    /// The stream's data key id; 0 for non-Op kinds.
    pub key_id: u64,
    /// Op: Merkle tree size after this op (= global_position + event_count).
    /// Certificate and Seal: the tree size covered.
    pub tree_size: u64,
    /// Op (version 3): [`FLAG_GROUP_CONTINUES`] when the next op is part of
    /// the same atomic group; always 0 outside ops and before version 3.
    pub flags: u8,
    /// The header version: [`VERSION`] for every header written now,
    /// [`VERSION_V1`] or [`VERSION_V2`] for one decoded from an older log (kept, so that
    /// re-encoding gives the same bytes and checksum).
    pub version: u16,
    /// Op (version 2): the keyed digest of the client request (stream,
    /// expected offset, events) that this op carries, so that a reused
    /// idempotency key is told from a retry. A MAC under a key derived from
    /// the stream's data key, never a plain hash of PHI (P3); shredding the
    /// data key makes it a random-looking string (P6). All zero
    /// ([`REQUEST_DIGEST_UNKNOWN`]) when unknown; always zero outside ops
    /// and in version 1.
    pub request_digest: Hash,
}

impl OpHeader {
    /// A header of `kind` with every other field zero, to fill in.
    pub fn empty(kind: RecordKind, cluster: u128) -> OpHeader {
        OpHeader {
            parent: [0; 32],
            body_checksum: [0; 32],
            kind,
            cluster,
            view: 0,
            op: 0,
            commit: 0,
            client_id: 0,
            request: 0,
            timestamp_ns: 0,
            stream: 0,
            stream_offset: 0,
            global_position: 0,
            event_count: 0,
            body_size: 0,
            key_id: 0,
            tree_size: 0,
            flags: 0,
            version: VERSION,
            request_digest: REQUEST_DIGEST_UNKNOWN,
        }
    }

    /// True when the next op belongs to this op's atomic group (so no
    /// certificate may name this op).
    pub fn group_continues(&self) -> bool {
        self.flags & FLAG_GROUP_CONTINUES != 0
    }

    /// True when each event's plaintext is an encoded envelope
    /// ([`FLAG_ENVELOPES`]), not the bare payload.
    pub fn has_envelopes(&self) -> bool {
        self.flags & FLAG_ENVELOPES != 0
    }

    /// The 256 bytes of this header, checksum included, in its own
    /// `version`.
    ///
    /// Panics if a version 1 header carries a request digest: version 1 has
    /// no room for one, so such a header is a bug.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        assert!(
            self.version != VERSION_V1 || self.request_digest == REQUEST_DIGEST_UNKNOWN,
            "a version 1 op header cannot carry a request digest"
        );
        let mut out = [0u8; HEADER_BYTES];
        out[32..64].copy_from_slice(&self.parent);
        out[64..96].copy_from_slice(&self.body_checksum);
        out[96..100].copy_from_slice(&MAGIC);
        out[100..102].copy_from_slice(&self.version.to_le_bytes());
        out[102] = self.kind as u8;
        out[103] = self.flags;
        out[104..120].copy_from_slice(&self.cluster.to_le_bytes());
        out[120..128].copy_from_slice(&self.view.to_le_bytes());
        out[128..136].copy_from_slice(&self.op.to_le_bytes());
        out[136..144].copy_from_slice(&self.commit.to_le_bytes());
        out[144..160].copy_from_slice(&self.client_id.to_le_bytes());
        out[160..168].copy_from_slice(&self.request.to_le_bytes());
        out[168..176].copy_from_slice(&self.timestamp_ns.to_le_bytes());
        out[176..184].copy_from_slice(&self.stream.to_le_bytes());
        out[184..192].copy_from_slice(&self.stream_offset.to_le_bytes());
        out[192..200].copy_from_slice(&self.global_position.to_le_bytes());
        out[200..204].copy_from_slice(&self.event_count.to_le_bytes());
        out[204..208].copy_from_slice(&self.body_size.to_le_bytes());
        out[208..216].copy_from_slice(&self.key_id.to_le_bytes());
        out[216..224].copy_from_slice(&self.tree_size.to_le_bytes());
        // Version 1: 224..256 reserved, zero (the digest is then zero too).
        out[224..256].copy_from_slice(&self.request_digest);
        let checksum = sha256(&[&out[32..]]);
        out[0..32].copy_from_slice(&checksum);
        out
    }

    /// SHA-256 of header bytes [32..256): the value stored at offset 0 and
    /// the value the next op's `parent` carries.
    pub fn checksum(&self) -> Hash {
        let bytes = self.encode();
        let mut checksum = [0u8; 32];
        checksum.copy_from_slice(&bytes[0..32]);
        checksum
    }

    /// Decodes and checks a header; `at` is its file offset, used in errors.
    ///
    /// Checks magic, checksum, version, kind, reserved bytes, the size
    /// limits and the per-kind rules (see `docs/format.md`).
    pub fn decode(bytes: &[u8; HEADER_BYTES], at: u64) -> Result<OpHeader, DecodeError> {
        let err =
            |field: usize, reason: String| DecodeError::at_byte(FORMAT, at + field as u64, reason);
        if bytes[96..100] != MAGIC {
            return Err(err(96, "bad magic".to_string()));
        }
        if sha256(&[&bytes[32..]])[..] != bytes[0..32] {
            return Err(err(0, "header checksum mismatch".to_string()));
        }
        let version = u16::from_le_bytes(take(bytes, 100));
        if !matches!(version, VERSION | VERSION_V2 | VERSION_V1) {
            return Err(err(100, format!("unsupported version {version}")));
        }
        let kind = RecordKind::from_byte(bytes[102])
            .ok_or_else(|| err(102, format!("unknown record kind {}", bytes[102])))?;
        let flags_allowed = if version == VERSION && kind == RecordKind::Op {
            FLAGS_KNOWN
        } else {
            0
        };
        if bytes[103] & !flags_allowed != 0 {
            return Err(err(
                103,
                format!("flags {:#04x} not allowed here", bytes[103]),
            ));
        }
        if version == VERSION_V1 && bytes[224..256].iter().any(|b| *b != 0) {
            return Err(err(224, "reserved bytes are not zero".to_string()));
        }
        let header = OpHeader {
            parent: take(bytes, 32),
            body_checksum: take(bytes, 64),
            kind,
            cluster: u128::from_le_bytes(take(bytes, 104)),
            view: u64::from_le_bytes(take(bytes, 120)),
            op: u64::from_le_bytes(take(bytes, 128)),
            commit: u64::from_le_bytes(take(bytes, 136)),
            client_id: u128::from_le_bytes(take(bytes, 144)),
            request: u64::from_le_bytes(take(bytes, 160)),
            timestamp_ns: u64::from_le_bytes(take(bytes, 168)),
            stream: u64::from_le_bytes(take(bytes, 176)),
            stream_offset: u64::from_le_bytes(take(bytes, 184)),
            global_position: u64::from_le_bytes(take(bytes, 192)),
            event_count: u32::from_le_bytes(take(bytes, 200)),
            body_size: u32::from_le_bytes(take(bytes, 204)),
            key_id: u64::from_le_bytes(take(bytes, 208)),
            tree_size: u64::from_le_bytes(take(bytes, 216)),
            flags: bytes[103],
            version,
            request_digest: take(bytes, 224),
        };
        header.check_rules().map_err(|reason| err(0, reason))?;
        Ok(header)
    }

    /// The rules a well-formed header obeys beyond its checksum.
    pub fn check_rules(&self) -> Result<(), String> {
        if !matches!(self.version, VERSION | VERSION_V2 | VERSION_V1) {
            return Err(format!("unsupported version {}", self.version));
        }
        let flags_allowed = if self.version == VERSION && self.kind == RecordKind::Op {
            FLAGS_KNOWN
        } else {
            0
        };
        if self.flags & !flags_allowed != 0 {
            return Err(format!("flags {:#04x} not allowed here", self.flags));
        }
        if self.request_digest != REQUEST_DIGEST_UNKNOWN
            && (self.version == VERSION_V1 || self.kind != RecordKind::Op)
        {
            return Err(
                "a request digest outside a version 2 or 3 op (bytes 224..256 must be zero)"
                    .to_string(),
            );
        }
        if self.body_size as usize > BODY_BYTES_MAX {
            return Err(format!(
                "body size {} exceeds {BODY_BYTES_MAX}",
                self.body_size
            ));
        }
        match self.kind {
            RecordKind::Op => {
                if self.op == 0 {
                    return Err("op number 0 (ops start at 1)".to_string());
                }
                if self.commit >= self.op {
                    return Err(format!(
                        "commit {} is not below op {}",
                        self.commit, self.op
                    ));
                }
                if self.event_count > EVENTS_PER_OP_MAX {
                    return Err(format!(
                        "event count {} exceeds {EVENTS_PER_OP_MAX}",
                        self.event_count
                    ));
                }
                if self
                    .global_position
                    .checked_add(u64::from(self.event_count))
                    != Some(self.tree_size)
                {
                    return Err(format!(
                        "tree size {} is not global position {} + event count {}",
                        self.tree_size, self.global_position, self.event_count
                    ));
                }
            }
            RecordKind::Certificate | RecordKind::Seal => {
                if self.commit != 0 || self.key_id != 0 || self.event_count != 0 {
                    return Err(
                        "commit, key id and event count must be 0 outside an op".to_string()
                    );
                }
                if self.kind == RecordKind::Seal && self.body_size as usize != SEAL_BODY_BYTES {
                    return Err(format!(
                        "seal body size {} is not {SEAL_BODY_BYTES}",
                        self.body_size
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Copies `N` bytes at `offset` out of a header (the ranges are constants).
fn take<const N: usize>(bytes: &[u8; HEADER_BYTES], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

/// A record: a header and its body, as they lie on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub header: OpHeader,
    pub body: Vec<u8>,
}

impl Record {
    /// A record whose `body_checksum` and `body_size` are filled from `body`
    /// (whatever `header` held in those fields is replaced).
    ///
    /// Panics if the body is larger than [`BODY_BYTES_MAX`]: callers bound
    /// their bodies first, so a larger one is a bug.
    pub fn new(mut header: OpHeader, body: Vec<u8>) -> Record {
        assert!(
            body.len() <= BODY_BYTES_MAX,
            "record body of {} bytes exceeds the limit",
            body.len()
        );
        header.body_checksum = sha256(&[&body]);
        header.body_size = u32::try_from(body.len()).expect("BODY_BYTES_MAX fits in u32");
        Record { header, body }
    }

    /// Header bytes then body bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.body.len());
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&self.body);
        out
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.body.len()
    }

    /// The header checksum.
    pub fn checksum(&self) -> Hash {
        self.header.checksum()
    }

    /// Checks a record that arrived whole rather than from bytes (from a
    /// peer's message, or handed to storage): it belongs to `cluster`, its
    /// header obeys [`OpHeader::check_rules`], and `body_size` and
    /// `body_checksum` match the body. [`Record::decode`] checks the same of
    /// bytes read from a file. The one statement of a record's validity.
    pub fn check(&self, cluster: u128) -> Result<(), String> {
        let header = &self.header;
        if header.cluster != cluster {
            return Err(format!(
                "record of cluster {:#x}, expected {cluster:#x}",
                header.cluster
            ));
        }
        header.check_rules()?;
        if header.body_size as usize != self.body.len() {
            return Err(format!(
                "body is {} bytes, header says {}",
                self.body.len(),
                header.body_size
            ));
        }
        if sha256(&[&self.body]) != header.body_checksum {
            return Err("body checksum mismatch".to_string());
        }
        Ok(())
    }

    /// Decodes a whole record from `bytes` (exactly one record), checking
    /// both checksums; `at` is its file offset.
    pub fn decode(bytes: &[u8], at: u64) -> Result<Record, DecodeError> {
        let header_bytes: &[u8; HEADER_BYTES] = bytes
            .get(..HEADER_BYTES)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| DecodeError::at_byte("record", at, "shorter than a header"))?;
        let header = OpHeader::decode(header_bytes, at)?;
        let body = &bytes[HEADER_BYTES..];
        if body.len() != header.body_size as usize {
            return Err(DecodeError::at_byte(
                "record",
                at + HEADER_BYTES as u64,
                format!(
                    "body is {} bytes, header says {}",
                    body.len(),
                    header.body_size
                ),
            ));
        }
        if sha256(&[body]) != header.body_checksum {
            return Err(DecodeError::at_byte(
                "record",
                at + HEADER_BYTES as u64,
                "body checksum mismatch",
            ));
        }
        Ok(Record {
            header,
            body: body.to_vec(),
        })
    }
}

/// Bytes of the plaintext commitment stored in each event frame.
pub const COMMITMENT_BYTES: usize = 32;

/// One encrypted event inside an Op body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFrame<'a> {
    /// The hiding commitment to the plaintext (see `leaf::commitment`). It is
    /// stored outside the ciphertext so the Merkle leaf can be recomputed
    /// without keys, and after the data key is shredded (P3, P6).
    pub commitment: Hash,
    /// The AES-GCM nonce.
    pub nonce: [u8; NONCE_BYTES],
    /// Ciphertext followed by the 16-byte tag.
    pub sealed: &'a [u8],
}

impl EventFrame<'_> {
    /// SHA-256(nonce || sealed): the ciphertext hash that goes into the
    /// event's Merkle leaf.
    pub fn ciphertext_hash(&self) -> Hash {
        sha256(&[&self.nonce, self.sealed])
    }
}

/// Encodes events as `[u32 frame_len][commitment][nonce][sealed]` frames,
/// where `frame_len = 32 + 12 + sealed.len()`.
///
/// Panics if a sealed part is outside `[TAG_BYTES, SEALED_BYTES_MAX]`: the
/// sealing layer produces those, so another size is a bug.
pub fn encode_events(frames: &[EventFrame<'_>]) -> Vec<u8> {
    let total: usize = frames
        .iter()
        .map(|f| 4 + COMMITMENT_BYTES + NONCE_BYTES + f.sealed.len())
        .sum();
    let mut out = Vec::with_capacity(total);
    for EventFrame {
        commitment,
        nonce,
        sealed,
    } in frames
    {
        assert!(
            (TAG_BYTES..=SEALED_BYTES_MAX).contains(&sealed.len()),
            "sealed event of {} bytes is outside the frame limits",
            sealed.len()
        );
        let frame_len = u32::try_from(COMMITMENT_BYTES + NONCE_BYTES + sealed.len())
            .expect("bounded by SEALED_BYTES_MAX");
        out.extend_from_slice(&frame_len.to_le_bytes());
        out.extend_from_slice(commitment);
        out.extend_from_slice(nonce);
        out.extend_from_slice(sealed);
    }
    out
}

/// Splits an Op body into exactly `count` frames; `at` is the body's file
/// offset, used in errors. The body must end exactly after the last frame.
pub fn decode_events(body: &[u8], count: u32, at: u64) -> Result<Vec<EventFrame<'_>>, DecodeError> {
    const FORMAT: &str = "op body";
    if count > EVENTS_PER_OP_MAX {
        return Err(DecodeError::at_byte(
            FORMAT,
            at,
            format!("event count {count} exceeds {EVENTS_PER_OP_MAX}"),
        ));
    }
    let mut frames = Vec::with_capacity(count as usize);
    let mut pos = 0usize;
    for index in 0..count {
        let here = at + pos as u64;
        let len_bytes: [u8; 4] = body
            .get(pos..pos + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                DecodeError::at_byte(
                    FORMAT,
                    here,
                    format!("event {index}: body ends inside a frame length"),
                )
            })?;
        let frame_len = u32::from_le_bytes(len_bytes) as usize;
        const FIXED: usize = COMMITMENT_BYTES + NONCE_BYTES;
        if !(FIXED + TAG_BYTES..=FIXED + SEALED_BYTES_MAX).contains(&frame_len) {
            return Err(DecodeError::at_byte(
                FORMAT,
                here,
                format!("event {index}: frame length {frame_len} out of range"),
            ));
        }
        let frame = body.get(pos + 4..pos + 4 + frame_len).ok_or_else(|| {
            DecodeError::at_byte(
                FORMAT,
                here,
                format!("event {index}: frame runs past the body"),
            )
        })?;
        let mut commitment = [0u8; COMMITMENT_BYTES];
        commitment.copy_from_slice(&frame[..COMMITMENT_BYTES]);
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&frame[COMMITMENT_BYTES..COMMITMENT_BYTES + NONCE_BYTES]);
        frames.push(EventFrame {
            commitment,
            nonce,
            sealed: &frame[COMMITMENT_BYTES + NONCE_BYTES..],
        });
        pos += 4 + frame_len;
    }
    if pos != body.len() {
        return Err(DecodeError::at_byte(
            FORMAT,
            at + pos as u64,
            format!(
                "{} bytes after the last of {count} events",
                body.len() - pos
            ),
        ));
    }
    Ok(frames)
}

/// The body of a Seal record: `[tree_root: 32][record_count: u64][op_count: u64]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealBody {
    /// Merkle root of the tree of size `header.tree_size`.
    pub tree_root: Hash,
    /// Records of the segment before the seal (Ops and Certificates).
    pub record_count: u64,
    /// Op records of the segment.
    pub op_count: u64,
}

impl SealBody {
    /// The 48 bytes of this body.
    pub fn encode(&self) -> [u8; SEAL_BODY_BYTES] {
        let mut out = [0u8; SEAL_BODY_BYTES];
        out[0..32].copy_from_slice(&self.tree_root);
        out[32..40].copy_from_slice(&self.record_count.to_le_bytes());
        out[40..48].copy_from_slice(&self.op_count.to_le_bytes());
        out
    }

    /// Decodes a seal body; `at` is its file offset.
    pub fn decode(bytes: &[u8], at: u64) -> Result<SealBody, DecodeError> {
        if bytes.len() != SEAL_BODY_BYTES {
            return Err(DecodeError::at_byte(
                "seal body",
                at,
                format!("{} bytes, expected {SEAL_BODY_BYTES}", bytes.len()),
            ));
        }
        let mut tree_root = [0u8; 32];
        tree_root.copy_from_slice(&bytes[0..32]);
        let mut count = [0u8; 8];
        count.copy_from_slice(&bytes[32..40]);
        let record_count = u64::from_le_bytes(count);
        count.copy_from_slice(&bytes[40..48]);
        let op_count = u64::from_le_bytes(count);
        if op_count > record_count {
            return Err(DecodeError::at_byte(
                "seal body",
                at + 40,
                format!("op count {op_count} exceeds record count {record_count}"),
            ));
        }
        Ok(SealBody {
            tree_root,
            record_count,
            op_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_op() -> Record {
        let mut header = OpHeader::empty(RecordKind::Op, 7);
        header.parent = genesis_parent(7);
        header.op = 1;
        header.event_count = 1;
        header.tree_size = 1;
        header.request_digest = [0xd1; 32];
        let body = encode_events(&[EventFrame {
            commitment: [5; 32],
            nonce: [1; 12],
            sealed: &[2u8; 20],
        }]);
        Record::new(header, body)
    }

    /// Goal: every single-bit flip of an encoded header is refused by decode.
    #[test]
    fn header_bit_flips_are_refused() {
        let bytes = sample_op().header.encode();
        for byte in 0..HEADER_BYTES {
            for bit in 0..8 {
                let mut flipped = bytes;
                flipped[byte] ^= 1 << bit;
                assert!(
                    OpHeader::decode(&flipped, 0).is_err(),
                    "flip at byte {byte} bit {bit} accepted"
                );
            }
        }
    }

    /// Goal: a version 1 header (no digest) still decodes, keeps its
    /// version, and re-encodes to the very same bytes (so its checksum and
    /// the chain over it are unchanged).
    #[test]
    fn version_1_headers_decode_and_re_encode_unchanged() {
        let mut header = sample_op().header;
        header.version = VERSION_V1;
        header.request_digest = REQUEST_DIGEST_UNKNOWN;
        let bytes = header.encode();
        assert_eq!(u16::from_le_bytes([bytes[100], bytes[101]]), 1);
        let decoded = OpHeader::decode(&bytes, 0).expect("a version 1 header");
        assert_eq!(decoded.version, VERSION_V1);
        assert_eq!(decoded.request_digest, REQUEST_DIGEST_UNKNOWN);
        assert_eq!(decoded.encode(), bytes);
        assert_eq!(decoded.checksum(), header.checksum());
    }

    /// Goal: version 2 carries the digest at bytes 224..256, and refuses
    /// one where it has no meaning (version 1, records other than ops).
    #[test]
    fn request_digest_lives_in_version_2_ops_only() {
        let header = sample_op().header;
        let bytes = header.encode();
        assert_eq!(&bytes[224..256], &[0xd1; 32]);
        assert_eq!(
            OpHeader::decode(&bytes, 0).expect("v2").request_digest,
            [0xd1; 32]
        );

        // A version 1 header with bytes in 224..256 (checksum made valid).
        let mut v1 = bytes;
        v1[100..102].copy_from_slice(&VERSION_V1.to_le_bytes());
        let checksum = sha256(&[&v1[32..]]);
        v1[0..32].copy_from_slice(&checksum);
        let error = OpHeader::decode(&v1, 0).expect_err("v1 with a digest");
        assert_eq!(error.location, crate::Location::Byte(224));

        let mut certificate = OpHeader::empty(RecordKind::Certificate, 7);
        certificate.op = 1;
        certificate.request_digest = [1; 32];
        let error = OpHeader::decode(&certificate.encode(), 0).expect_err("digest outside an op");
        assert!(error.reason.contains("request digest"), "{error}");
    }

    /// Goal: decode errors carry the file offset passed in.
    #[test]
    fn decode_error_names_offset() {
        let mut bytes = sample_op().header.encode();
        bytes[96] = b'X';
        let error = OpHeader::decode(&bytes, 1000).expect_err("bad magic");
        assert_eq!(error.location, crate::Location::Byte(1096));
    }

    /// Goal: a header whose rules fail is refused even with a valid checksum.
    #[test]
    fn rules_are_checked_after_checksum() {
        let mut header = sample_op().header;
        header.tree_size = 5;
        let error = OpHeader::decode(&header.encode(), 0).expect_err("bad tree size");
        assert!(error.reason.contains("tree size"), "{error}");
    }

    /// Goal: a whole record round-trips and a body flip is caught.
    #[test]
    fn record_round_trip_and_body_flip() {
        let record = sample_op();
        let mut bytes = record.encode();
        assert_eq!(Record::decode(&bytes, 0).expect("valid"), record);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(Record::decode(&bytes, 0).is_err());
    }

    /// Goal: event framing rejects trailing bytes and wrong counts.
    #[test]
    fn event_framing_is_exact() {
        let body = sample_op().body;
        assert_eq!(decode_events(&body, 1, 0).expect("valid").len(), 1);
        assert!(decode_events(&body, 2, 0).is_err());
        let mut longer = body.clone();
        longer.push(0);
        assert!(decode_events(&longer, 1, 0).is_err());
    }
}
