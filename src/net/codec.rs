//! The binary encoding of a VSR [`Message`] inside a frame body.
//!
//! One encoding, written down here and in `docs/format.md`, so a peer can be
//! written from the spec alone. Every integer is fixed-width little-endian;
//! every variable-length field is length-prefixed and its length is checked
//! against a named `*_MAX` bound before anything is allocated, so a hostile
//! or broken peer can neither crash the decoder nor make it allocate more
//! than the frame it already sent. Records and op headers travel in their
//! on-disk encoding (`vellum_audit::record`), so their checksums are checked
//! on arrival exactly as on a read from disk.
//!
//! ```text
//! message  = cluster u128 | from u8 | view u64 | tag u8 | body
//! tag 1 Prepare          = record_len u32 | record (header 256 + body) | commit u64
//!                          | key_present u8 (0|1) | [key_len u32 | key]
//! tag 2 PrepareOk        = op u64 | checksum [32] | signature_len u32 | signature
//! tag 3 Commit           = commit u64 | certificate_present u8 (0|1)
//!                          | [certificate_len u32 | certificate utf-8]
//! tag 4 StartViewChange  = (empty)
//! tag 5 DoViewChange     = log_view u64 | op u64 | commit u64 | nack_from u64
//!                          | headers | presence (one u8 per header:
//!                          0 durable, 1 missing, 2 unsure)
//! tag 6 StartView        = op u64 | commit u64 | headers
//! tag 7 RequestPrepare   = op u64 | checksum [32]
//! tag 8 Recovery         = nonce u64
//! tag 9 RecoveryResponse = nonce u64 | op u64 | commit u64 | headers | is_primary u8 (0|1)
//! headers  = count u32 | count x op header (256 bytes each)
//! ```
//!
//! Nothing may follow the body: trailing bytes are an error.

use bytes::Bytes;
use vellum_audit::record::{BODY_BYTES_MAX, HEADER_BYTES, OpHeader, Record};

use super::frame::FRAME_BODY_BYTES_MAX;
use crate::vsr::{DvcHeader, Message, MessageBody, Presence};

/// Largest encoded record in a Prepare: a header and the largest body.
pub const RECORD_BYTES_MAX: usize = HEADER_BYTES + BODY_BYTES_MAX;
/// Largest wrapped key beside a Prepare (a wrapped DEK is 48 bytes; room
/// for a richer key-store entry).
pub const KEY_BYTES_MAX: usize = 4096;
/// Largest PrepareOk signature (Ed25519 signatures are 64 bytes).
pub const SIGNATURE_BYTES_MAX: usize = 1024;
/// Largest commit certificate text (a signed note with at most seven
/// signature lines is a few KiB).
pub const CERTIFICATE_BYTES_MAX: usize = 64 * 1024;
/// Most op headers in one DoViewChange, StartView or RecoveryResponse
/// (4096 x 256 bytes = 1 MiB, well inside a frame).
pub const HEADERS_MAX: usize = 4096;

/// Largest encoded message: a Prepare with the largest record and key
/// (25-byte prefix, tag, record length, record, commit, key flag, key
/// length, key). Every other variant is smaller (headers are at most 1 MiB).
pub const MESSAGE_BYTES_MAX: usize = 25 + 1 + 4 + RECORD_BYTES_MAX + 8 + 1 + 4 + KEY_BYTES_MAX;
const _: () = assert!(MESSAGE_BYTES_MAX <= FRAME_BODY_BYTES_MAX);
/// Largest DoViewChange, the largest message that carries headers (four
/// u64 fields, and a presence byte beside each header).
const HEADERS_MESSAGE_BYTES_MAX: usize = 25 + 1 + 32 + 4 + HEADERS_MAX * (HEADER_BYTES + 1);
const _: () = assert!(HEADERS_MESSAGE_BYTES_MAX <= FRAME_BODY_BYTES_MAX);
const _: () = assert!(25 + 1 + 8 + 1 + 4 + CERTIFICATE_BYTES_MAX <= FRAME_BODY_BYTES_MAX);

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes end inside a field.
    #[error("message truncated at byte {offset} reading {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Its offset in the frame body.
        offset: usize,
    },
    /// An unknown message tag.
    #[error("unknown message tag {tag} at byte {offset}")]
    UnknownTag {
        /// The tag byte.
        tag: u8,
        /// Its offset.
        offset: usize,
    },
    /// A length field over its bound.
    #[error("{field} length {len} exceeds {max} at byte {offset}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The declared or actual length.
        len: usize,
        /// Its bound.
        max: usize,
        /// Offset of the length field (0 when encoding).
        offset: usize,
    },
    /// A boolean or presence byte that is neither 0 nor 1.
    #[error("{field} byte is {value}, not 0 or 1, at byte {offset}")]
    BadFlag {
        /// The field.
        field: &'static str,
        /// The byte found.
        value: u8,
        /// Its offset.
        offset: usize,
    },
    /// A DoViewChange presence byte that is not 0, 1 or 2.
    #[error("presence byte is {value}, not 0, 1 or 2, at byte {offset}")]
    BadPresence {
        /// The byte found.
        value: u8,
        /// Its offset.
        offset: usize,
    },
    /// A certificate that is not UTF-8.
    #[error("certificate at byte {offset} is not utf-8")]
    NotUtf8 {
        /// Its offset.
        offset: usize,
    },
    /// A record or header refused by its own decoder.
    #[error("message {field} refused: {source}")]
    Record {
        /// "record" or "header {i}".
        field: String,
        #[source]
        source: vellum_audit::error::DecodeError,
    },
    /// Bytes after the message.
    #[error("{extra} bytes after the message")]
    TrailingBytes {
        /// Bytes left over.
        extra: usize,
    },
}

const TAG_PREPARE: u8 = 1;
const TAG_PREPARE_OK: u8 = 2;
const TAG_COMMIT: u8 = 3;
const TAG_START_VIEW_CHANGE: u8 = 4;
const TAG_DO_VIEW_CHANGE: u8 = 5;
const TAG_START_VIEW: u8 = 6;
const TAG_REQUEST_PREPARE: u8 = 7;
const TAG_RECOVERY: u8 = 8;
const TAG_RECOVERY_RESPONSE: u8 = 9;

/// Encodes `message`; refuses a field over its bound (which the peer's
/// decoder would refuse too).
pub fn encode_message(message: &Message) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&message.cluster.to_le_bytes());
    out.push(message.from);
    out.extend_from_slice(&message.view.to_le_bytes());
    encode_body(&message.body, &mut out)?;
    Ok(out)
}

fn encode_body(body: &MessageBody, out: &mut Vec<u8>) -> Result<(), CodecError> {
    match body {
        MessageBody::Prepare {
            record,
            commit,
            key,
        } => encode_prepare(out, record, *commit, key.as_deref())?,
        MessageBody::PrepareOk {
            op,
            checksum,
            signature,
        } => {
            out.push(TAG_PREPARE_OK);
            out.extend_from_slice(&op.to_le_bytes());
            out.extend_from_slice(checksum);
            put_bytes(out, "signature", signature, SIGNATURE_BYTES_MAX)?;
        }
        MessageBody::Commit {
            commit,
            certificate,
        } => {
            out.push(TAG_COMMIT);
            out.extend_from_slice(&commit.to_le_bytes());
            match certificate {
                None => out.push(0),
                Some(text) => {
                    out.push(1);
                    put_bytes(out, "certificate", text.as_bytes(), CERTIFICATE_BYTES_MAX)?;
                }
            }
        }
        MessageBody::StartViewChange => out.push(TAG_START_VIEW_CHANGE),
        MessageBody::DoViewChange {
            log_view,
            op,
            commit,
            nack_from,
            headers,
        } => {
            out.push(TAG_DO_VIEW_CHANGE);
            put_u64s(out, &[*log_view, *op, *commit, *nack_from]);
            let plain: Vec<OpHeader> = headers.iter().map(|h| h.header).collect();
            put_headers(out, &plain)?;
            out.extend(headers.iter().map(|h| presence_byte(h.presence)));
        }
        MessageBody::StartView {
            op,
            commit,
            headers,
        } => {
            out.push(TAG_START_VIEW);
            put_u64s(out, &[*op, *commit]);
            put_headers(out, headers)?;
        }
        MessageBody::RequestPrepare { op, checksum } => {
            out.push(TAG_REQUEST_PREPARE);
            out.extend_from_slice(&op.to_le_bytes());
            out.extend_from_slice(checksum);
        }
        MessageBody::Recovery { nonce } => {
            out.push(TAG_RECOVERY);
            out.extend_from_slice(&nonce.to_le_bytes());
        }
        MessageBody::RecoveryResponse {
            nonce,
            op,
            commit,
            headers,
            is_primary,
        } => {
            out.push(TAG_RECOVERY_RESPONSE);
            put_u64s(out, &[*nonce, *op, *commit]);
            put_headers(out, headers)?;
            out.push(u8::from(*is_primary));
        }
    }
    Ok(())
}

fn encode_prepare(
    out: &mut Vec<u8>,
    record: &Record,
    commit: u64,
    key: Option<&[u8]>,
) -> Result<(), CodecError> {
    out.push(TAG_PREPARE);
    put_bytes(out, "record", &record.encode(), RECORD_BYTES_MAX)?;
    out.extend_from_slice(&commit.to_le_bytes());
    match key {
        None => out.push(0),
        Some(key) => {
            out.push(1);
            put_bytes(out, "key", key, KEY_BYTES_MAX)?;
        }
    }
    Ok(())
}

/// The wire byte of a DoViewChange header's presence.
fn presence_byte(presence: Presence) -> u8 {
    match presence {
        Presence::Durable => 0,
        Presence::Missing => 1,
        Presence::Unsure => 2,
    }
}

fn put_u64s(out: &mut Vec<u8>, values: &[u64]) {
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn put_bytes(
    out: &mut Vec<u8>,
    field: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<(), CodecError> {
    let len = check_len(field, bytes.len(), max, 0)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn put_headers(out: &mut Vec<u8>, headers: &[OpHeader]) -> Result<(), CodecError> {
    let count = check_len("headers", headers.len(), HEADERS_MAX, 0)?;
    out.extend_from_slice(&count.to_le_bytes());
    for header in headers {
        out.extend_from_slice(&header.encode());
    }
    Ok(())
}

fn check_len(
    field: &'static str,
    len: usize,
    max: usize,
    offset: usize,
) -> Result<u32, CodecError> {
    if len > max {
        return Err(CodecError::TooLong {
            field,
            len,
            max,
            offset,
        });
    }
    Ok(u32::try_from(len).expect("every *_MAX bound fits in u32"))
}

/// Decodes one message from a frame body. Never panics; every defect is a
/// [`CodecError`] naming the field and offset.
pub fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    let mut reader = Reader { bytes, pos: 0 };
    let cluster = u128::from_le_bytes(reader.array("cluster")?);
    let from = reader.u8("from")?;
    let view = reader.u64("view")?;
    let body = decode_body(&mut reader)?;
    let extra = bytes.len() - reader.pos;
    if extra != 0 {
        return Err(CodecError::TrailingBytes { extra });
    }
    Ok(Message {
        cluster,
        from,
        view,
        body,
    })
}

fn decode_body(reader: &mut Reader<'_>) -> Result<MessageBody, CodecError> {
    let tag_offset = reader.pos;
    let body = match reader.u8("tag")? {
        TAG_PREPARE => decode_prepare(reader)?,
        TAG_PREPARE_OK => MessageBody::PrepareOk {
            op: reader.u64("op")?,
            checksum: reader.array::<32>("checksum")?,
            signature: reader.sized("signature", SIGNATURE_BYTES_MAX)?.to_vec(),
        },
        TAG_COMMIT => {
            let commit = reader.u64("commit")?;
            let certificate = match reader.flag("certificate_present")? {
                false => None,
                true => Some(reader.text("certificate", CERTIFICATE_BYTES_MAX)?),
            };
            MessageBody::Commit {
                commit,
                certificate,
            }
        }
        TAG_START_VIEW_CHANGE => MessageBody::StartViewChange,
        TAG_DO_VIEW_CHANGE => MessageBody::DoViewChange {
            log_view: reader.u64("log_view")?,
            op: reader.u64("op")?,
            commit: reader.u64("commit")?,
            nack_from: reader.u64("nack_from")?,
            headers: reader.dvc_headers()?,
        },
        TAG_START_VIEW => MessageBody::StartView {
            op: reader.u64("op")?,
            commit: reader.u64("commit")?,
            headers: reader.headers()?,
        },
        TAG_REQUEST_PREPARE => MessageBody::RequestPrepare {
            op: reader.u64("op")?,
            checksum: reader.array::<32>("checksum")?,
        },
        TAG_RECOVERY => MessageBody::Recovery {
            nonce: reader.u64("nonce")?,
        },
        TAG_RECOVERY_RESPONSE => MessageBody::RecoveryResponse {
            nonce: reader.u64("nonce")?,
            op: reader.u64("op")?,
            commit: reader.u64("commit")?,
            headers: reader.headers()?,
            is_primary: reader.flag("is_primary")?,
        },
        tag => {
            return Err(CodecError::UnknownTag {
                tag,
                offset: tag_offset,
            });
        }
    };
    Ok(body)
}

fn decode_prepare(reader: &mut Reader<'_>) -> Result<MessageBody, CodecError> {
    let record_offset = reader.pos + 4;
    let record_bytes = reader.sized("record", RECORD_BYTES_MAX)?;
    let record = Record::decode(record_bytes, record_offset as u64).map_err(|source| {
        CodecError::Record {
            field: "record".to_string(),
            source,
        }
    })?;
    let commit = reader.u64("commit")?;
    let key = match reader.flag("key_present")? {
        false => None,
        true => Some(Bytes::copy_from_slice(reader.sized("key", KEY_BYTES_MAX)?)),
    };
    Ok(MessageBody::Prepare {
        record,
        commit,
        key,
    })
}

/// A cursor over a frame body; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(len);
        let slice =
            end.and_then(|end| self.bytes.get(self.pos..end))
                .ok_or(CodecError::Truncated {
                    field,
                    offset: self.pos,
                })?;
        self.pos += len;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, CodecError> {
        let offset = self.pos;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(CodecError::BadFlag {
                field,
                value,
                offset,
            }),
        }
    }

    /// A u32 length then that many bytes; the length is checked against
    /// `max` before the bytes are touched.
    fn sized(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], CodecError> {
        let offset = self.pos;
        let len = self.u32(field)? as usize;
        check_len(field, len, max, offset)?;
        self.take(field, len)
    }

    fn text(&mut self, field: &'static str, max: usize) -> Result<String, CodecError> {
        let offset = self.pos + 4;
        let bytes = self.sized(field, max)?;
        let text = std::str::from_utf8(bytes).map_err(|_| CodecError::NotUtf8 { offset })?;
        Ok(text.to_string())
    }

    /// A DoViewChange's headers, then one presence byte for each.
    fn dvc_headers(&mut self) -> Result<Vec<DvcHeader>, CodecError> {
        let headers = self.headers()?;
        let mut out = Vec::with_capacity(headers.len());
        for header in headers {
            let offset = self.pos;
            let presence = match self.u8("presence")? {
                0 => Presence::Durable,
                1 => Presence::Missing,
                2 => Presence::Unsure,
                value => return Err(CodecError::BadPresence { value, offset }),
            };
            out.push(DvcHeader { header, presence });
        }
        Ok(out)
    }

    fn headers(&mut self) -> Result<Vec<OpHeader>, CodecError> {
        let offset = self.pos;
        let count = self.u32("headers")? as usize;
        check_len("headers", count, HEADERS_MAX, offset)?;
        // The count is bounded, and the bytes must be present before allocating.
        let needed = count * HEADER_BYTES;
        if self.bytes.len() - self.pos < needed {
            return Err(CodecError::Truncated {
                field: "headers",
                offset: self.pos,
            });
        }
        let mut headers = Vec::with_capacity(count);
        for index in 0..count {
            let at = self.pos;
            let bytes: [u8; HEADER_BYTES] = self.array("header")?;
            let header =
                OpHeader::decode(&bytes, at as u64).map_err(|source| CodecError::Record {
                    field: format!("header {index}"),
                    source,
                })?;
            headers.push(header);
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vellum_audit::record::RecordKind;

    /// A valid Op header built from arbitrary numbers (the header's own
    /// rules hold, so its decoder accepts it), version 2 with a request
    /// digest or version 1 without one: both cross replicas unchanged.
    fn op_header() -> impl Strategy<Value = OpHeader> {
        (
            any::<u128>(),
            1u64..u64::MAX,
            any::<u64>(),
            any::<[u8; 32]>(),
            0u32..16,
            any::<(u64, u64, u64)>(),
            proptest::option::of(any::<[u8; 32]>()),
        )
            .prop_map(
                |(cluster, op, view, parent, events, (stream, pos, key), digest)| {
                    let mut header = OpHeader::empty(RecordKind::Op, cluster);
                    header.parent = parent;
                    header.op = op;
                    header.commit = op / 2;
                    header.view = view;
                    header.stream = stream;
                    header.event_count = events;
                    header.global_position = pos / 2;
                    header.tree_size = pos / 2 + u64::from(events);
                    header.key_id = key;
                    match digest {
                        Some(digest) => header.request_digest = digest,
                        None => header.version = vellum_audit::record::VERSION_V1,
                    }
                    header
                },
            )
    }

    fn small_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn headers() -> impl Strategy<Value = Vec<OpHeader>> {
        proptest::collection::vec(op_header(), 0..4)
    }

    fn dvc_headers() -> impl Strategy<Value = Vec<DvcHeader>> {
        let presence = prop_oneof![
            Just(Presence::Durable),
            Just(Presence::Missing),
            Just(Presence::Unsure),
        ];
        proptest::collection::vec(
            (op_header(), presence).prop_map(|(header, presence)| DvcHeader { header, presence }),
            0..4,
        )
    }

    fn body() -> impl Strategy<Value = MessageBody> {
        prop_oneof![
            (
                op_header(),
                small_bytes(300),
                any::<u64>(),
                proptest::option::of(small_bytes(64))
            )
                .prop_map(|(header, body, commit, key)| MessageBody::Prepare {
                    record: Record::new(header, body),
                    commit,
                    key: key.map(Bytes::from),
                }),
            (any::<u64>(), any::<[u8; 32]>(), small_bytes(80)).prop_map(
                |(op, checksum, signature)| MessageBody::PrepareOk {
                    op,
                    checksum,
                    signature
                }
            ),
            (any::<u64>(), proptest::option::of(".{0,40}")).prop_map(|(commit, certificate)| {
                MessageBody::Commit {
                    commit,
                    certificate,
                }
            }),
            Just(MessageBody::StartViewChange),
            (any::<(u64, u64, u64, u64)>(), dvc_headers()).prop_map(
                |((log_view, op, commit, nack_from), headers)| MessageBody::DoViewChange {
                    log_view,
                    op,
                    commit,
                    nack_from,
                    headers,
                }
            ),
            (any::<(u64, u64)>(), headers()).prop_map(|((op, commit), headers)| {
                MessageBody::StartView {
                    op,
                    commit,
                    headers,
                }
            }),
            (any::<u64>(), any::<[u8; 32]>())
                .prop_map(|(op, checksum)| MessageBody::RequestPrepare { op, checksum }),
            any::<u64>().prop_map(|nonce| MessageBody::Recovery { nonce }),
            (any::<(u64, u64, u64)>(), headers(), any::<bool>()).prop_map(
                |((nonce, op, commit), headers, is_primary)| MessageBody::RecoveryResponse {
                    nonce,
                    op,
                    commit,
                    headers,
                    is_primary,
                }
            ),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        (any::<u128>(), any::<u8>(), any::<u64>(), body()).prop_map(
            |(cluster, from, view, body)| Message {
                cluster,
                from,
                view,
                body,
            },
        )
    }

    fn sample() -> Message {
        Message {
            cluster: 9,
            from: 1,
            view: 3,
            body: MessageBody::Commit {
                commit: 4,
                certificate: Some("cert".to_string()),
            },
        }
    }

    /// Goal: a length over its bound is refused before reading (or allocating) it.
    #[test]
    fn oversize_lengths_refused() {
        let mut bytes = encode_message(&sample()).expect("encodes");
        // cluster 16 + from 1 + view 8 + tag 1 + commit 8 + flag 1 = 35: the length.
        bytes[35..39].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = decode_message(&bytes).expect_err("oversize accepted");
        assert!(
            matches!(
                error,
                CodecError::TooLong {
                    field: "certificate",
                    offset: 35,
                    ..
                }
            ),
            "{error}"
        );
    }

    /// Goal: the encoder refuses what the decoder would refuse.
    #[test]
    fn encoder_enforces_bounds() {
        let mut message = sample();
        message.body = MessageBody::PrepareOk {
            op: 1,
            checksum: [0; 32],
            signature: vec![0; SIGNATURE_BYTES_MAX + 1],
        };
        assert!(matches!(
            encode_message(&message),
            Err(CodecError::TooLong {
                field: "signature",
                ..
            })
        ));
    }

    /// Goal: unknown tags, bad flags, bad utf-8 and trailing bytes are typed errors.
    #[test]
    fn defects_are_typed() {
        let good = encode_message(&sample()).expect("encodes");
        let mut bad_tag = good.clone();
        bad_tag[25] = 200;
        assert!(matches!(
            decode_message(&bad_tag),
            Err(CodecError::UnknownTag {
                tag: 200,
                offset: 25
            })
        ));
        let mut bad_flag = good.clone();
        bad_flag[34] = 2;
        assert!(matches!(
            decode_message(&bad_flag),
            Err(CodecError::BadFlag { .. })
        ));
        let mut bad_utf8 = good.clone();
        bad_utf8[39] = 0xff;
        assert!(matches!(
            decode_message(&bad_utf8),
            Err(CodecError::NotUtf8 { offset: 39 })
        ));
        let mut trailing = good;
        trailing.push(0);
        assert!(matches!(
            decode_message(&trailing),
            Err(CodecError::TrailingBytes { extra: 1 })
        ));
    }

    /// Goal: a header count larger than the bytes present is refused up front.
    #[test]
    fn header_count_without_bytes_refused() {
        let mut message = sample();
        message.body = MessageBody::StartView {
            op: 1,
            commit: 0,
            headers: Vec::new(),
        };
        let mut bytes = encode_message(&message).expect("encodes");
        let count_at = bytes.len() - 4;
        bytes[count_at..].copy_from_slice(&(HEADERS_MAX as u32).to_le_bytes());
        assert!(matches!(
            decode_message(&bytes),
            Err(CodecError::Truncated {
                field: "headers",
                ..
            })
        ));
    }

    /// Goal: a DoViewChange presence byte other than 0, 1 or 2 is a typed
    /// error at its offset, and each of the three decodes to its meaning.
    #[test]
    fn dvc_presence_bytes_are_checked() {
        let mut header = OpHeader::empty(RecordKind::Op, 9);
        header.op = 4;
        header.parent = [1; 32];
        let mut message = sample();
        message.body = MessageBody::DoViewChange {
            log_view: 2,
            op: 4,
            commit: 3,
            nack_from: 4,
            headers: vec![DvcHeader {
                header,
                presence: Presence::Durable,
            }],
        };
        let bytes = encode_message(&message).expect("encodes");
        let at = bytes.len() - 1;
        for (byte, presence) in [
            (0, Presence::Durable),
            (1, Presence::Missing),
            (2, Presence::Unsure),
        ] {
            let mut variant = bytes.clone();
            variant[at] = byte;
            let decoded = decode_message(&variant).expect("a valid presence byte");
            let MessageBody::DoViewChange { headers, .. } = decoded.body else {
                panic!("decoded another message: {decoded:?}");
            };
            assert_eq!(headers[0].presence, presence);
        }
        let mut bad = bytes;
        bad[at] = 3;
        assert!(matches!(
            decode_message(&bad),
            Err(CodecError::BadPresence { value: 3, offset }) if offset == at
        ));
    }

    proptest! {
        /// Goal: every variant round-trips exactly.
        #[test]
        fn prop_round_trip(message in message()) {
            let bytes = encode_message(&message).expect("bounded message encodes");
            prop_assert_eq!(decode_message(&bytes).expect("own encoding decodes"), message);
        }

        /// Goal: truncation at every byte of a valid encoding is an error.
        #[test]
        fn prop_truncation_is_error(message in message()) {
            let bytes = encode_message(&message).expect("bounded message encodes");
            for cut in 0..bytes.len() {
                prop_assert!(decode_message(&bytes[..cut]).is_err(), "cut at {} accepted", cut);
            }
        }

        /// Goal: arbitrary bytes never panic the decoder.
        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in small_bytes(512)) {
            let _ = decode_message(&bytes);
        }

        /// Goal: arbitrary bytes behind a valid prefix and tag never panic
        /// (reaches each variant's decoder, not just the tag check).
        #[test]
        fn prop_arbitrary_bodies_never_panic(tag in 0u8..12, rest in small_bytes(600)) {
            let mut bytes = vec![0u8; 25];
            bytes.push(tag);
            bytes.extend_from_slice(&rest);
            let _ = decode_message(&bytes);
        }
    }
}
