//! Frames: the unit a replica writes to and reads from a peer's TLS stream.
//!
//! TLS already guards the bytes in flight, yet every frame still carries a
//! SHA-256 of its body: it catches a bug in our own encoder or buffer
//! handling (a frame spliced from two writes) before the codec sees it, and
//! it makes a corrupted stream fail loudly at the frame, not deep in VSR.
//! A stream is a plain sequence of frames with no resynchronization marker:
//! after one bad frame the reader cannot know where the next one starts, so
//! callers drop the connection.
//!
//! ```text
//! offset  size  field
//!      0     4  magic      b"VLMF"
//!      4     2  version    u16 LE, 1
//!      6     2  reserved   u16 LE, 0
//!      8     4  body_len   u32 LE, <= FRAME_BODY_BYTES_MAX
//!     12    32  checksum   SHA-256(body)
//!     44     n  body       body_len bytes (an encoded message, see codec.rs)
//! ```

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Magic bytes opening every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"VLMF";
/// The only frame version this code writes and reads.
pub const FRAME_VERSION: u16 = 1;
/// Size of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 44;
/// Largest frame body. A Prepare carries a whole record (a 256-byte header
/// and up to `BODY_BYTES_MAX` = 16 MiB of body) plus its wrapped key, so the
/// bound is 16 MiB with 1 MiB of room for everything beside the record.
pub const FRAME_BODY_BYTES_MAX: usize = vellum_audit::record::BODY_BYTES_MAX + 1024 * 1024;

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended inside a frame.
    #[error("frame i/o failed reading the {part}: {source}")]
    Io {
        /// "header" or "body".
        part: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The stream ended cleanly between two frames.
    #[error("stream closed between frames")]
    Closed,
    /// The first four bytes are not `b"VLMF"`.
    #[error("frame has bad magic {found:02x?} (expected \"VLMF\")")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A version this code does not speak.
    #[error("frame has unsupported version {found} (expected {FRAME_VERSION})")]
    BadVersion {
        /// The version found.
        found: u16,
    },
    /// The reserved field is not zero.
    #[error("frame reserved field is {found}, not 0")]
    BadReserved {
        /// The value found.
        found: u16,
    },
    /// The body length exceeds [`FRAME_BODY_BYTES_MAX`].
    #[error("frame body length {len} exceeds the limit {FRAME_BODY_BYTES_MAX}")]
    TooLarge {
        /// The declared body length.
        len: u64,
    },
    /// Fewer bytes than the header declares (pure decoding only).
    #[error("frame truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// Bytes after the frame (pure decoding only).
    #[error("{extra} bytes after the frame")]
    TrailingBytes {
        /// Bytes left over.
        extra: usize,
    },
    /// SHA-256 of the body differs from the header's checksum.
    #[error("frame body checksum mismatch ({len} byte body)")]
    ChecksumMismatch {
        /// The body length.
        len: usize,
    },
}

/// The header fields once magic, version and reserved are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    body_len: usize,
    checksum: [u8; 32],
}

fn sha256(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// One frame around `body`.
///
/// Panics if `body` exceeds [`FRAME_BODY_BYTES_MAX`]: the codec bounds every
/// message below it, so a larger body is a bug.
pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    assert!(
        body.len() <= FRAME_BODY_BYTES_MAX,
        "frame body of {} bytes exceeds the limit",
        body.len()
    );
    let body_len = u32::try_from(body.len()).expect("FRAME_BODY_BYTES_MAX fits in u32");
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(&FRAME_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&sha256(body));
    out.extend_from_slice(body);
    out
}

/// Checks a header's fixed fields and bound; never allocates.
fn parse_header(bytes: &[u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&bytes[0..4]);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FRAME_VERSION {
        return Err(FrameError::BadVersion { found: version });
    }
    let reserved = u16::from_le_bytes([bytes[6], bytes[7]]);
    if reserved != 0 {
        return Err(FrameError::BadReserved { found: reserved });
    }
    let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if body_len as usize > FRAME_BODY_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len: u64::from(body_len),
        });
    }
    let mut checksum = [0u8; 32];
    checksum.copy_from_slice(&bytes[12..44]);
    Ok(FrameHeader {
        body_len: body_len as usize,
        checksum,
    })
}

fn check_body(header: &FrameHeader, body: &[u8]) -> Result<(), FrameError> {
    if sha256(body) != header.checksum {
        return Err(FrameError::ChecksumMismatch { len: body.len() });
    }
    Ok(())
}

/// Decodes exactly one frame from `bytes` and returns its body.
pub fn decode_frame(bytes: &[u8]) -> Result<Vec<u8>, FrameError> {
    let header_bytes: &[u8; FRAME_HEADER_BYTES] = bytes
        .get(..FRAME_HEADER_BYTES)
        .and_then(|b| b.try_into().ok())
        .ok_or(FrameError::Truncated {
            needed: FRAME_HEADER_BYTES,
            available: bytes.len(),
        })?;
    let header = parse_header(header_bytes)?;
    let needed = FRAME_HEADER_BYTES + header.body_len;
    if bytes.len() < needed {
        return Err(FrameError::Truncated {
            needed,
            available: bytes.len(),
        });
    }
    if bytes.len() > needed {
        return Err(FrameError::TrailingBytes {
            extra: bytes.len() - needed,
        });
    }
    let body = &bytes[FRAME_HEADER_BYTES..];
    check_body(&header, body)?;
    Ok(body.to_vec())
}

/// Reads one frame from `reader` and returns its body. The body buffer is
/// allocated only after the header passed its checks, so a peer cannot make
/// us allocate more than [`FRAME_BODY_BYTES_MAX`].
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut header_bytes = [0u8; FRAME_HEADER_BYTES];
    // The first byte separately: EOF there is a clean close, not an error.
    let first = reader
        .read(&mut header_bytes[..1])
        .await
        .map_err(|source| FrameError::Io {
            part: "header",
            source,
        })?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    reader
        .read_exact(&mut header_bytes[1..])
        .await
        .map_err(|source| FrameError::Io {
            part: "header",
            source,
        })?;
    let header = parse_header(&header_bytes)?;
    let mut body = vec![0u8; header.body_len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|source| FrameError::Io {
            part: "body",
            source,
        })?;
    check_body(&header, &body)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds")
            .block_on(future)
    }

    /// Goal: an encoded frame decodes to its body, purely and from a stream.
    #[test]
    fn round_trip_pure_and_stream() {
        let frame = encode_frame(b"hello");
        assert_eq!(decode_frame(&frame).expect("valid"), b"hello");
        let mut reader: &[u8] = &frame;
        let body = block_on(read_frame(&mut reader)).expect("valid");
        assert_eq!(body, b"hello");
    }

    /// Goal: two frames back to back are read one at a time, then a clean close.
    #[test]
    fn stream_reads_consecutive_frames_then_closed() {
        let mut bytes = encode_frame(b"one");
        bytes.extend_from_slice(&encode_frame(b""));
        let mut reader: &[u8] = &bytes;
        block_on(async {
            assert_eq!(read_frame(&mut reader).await.expect("first"), b"one");
            assert_eq!(read_frame(&mut reader).await.expect("second"), b"");
            assert!(matches!(
                read_frame(&mut reader).await,
                Err(FrameError::Closed)
            ));
        });
    }

    /// Recognizes the error a defect should produce.
    type IsExpected = fn(&FrameError) -> bool;

    /// Goal: each header defect gets its own typed error, on both decoders.
    #[test]
    fn header_defects_are_typed() {
        let good = encode_frame(b"body");
        let cases: [(usize, u8, IsExpected); 4] = [
            (0, b'X', |e| matches!(e, FrameError::BadMagic { .. })),
            (4, 2, |e| matches!(e, FrameError::BadVersion { found: 2 })),
            (6, 1, |e| matches!(e, FrameError::BadReserved { found: 1 })),
            (20, 0xff, |e| {
                matches!(e, FrameError::ChecksumMismatch { .. })
            }),
        ];
        for (offset, value, expected) in cases {
            let mut bad = good.clone();
            bad[offset] = value;
            let pure = decode_frame(&bad).expect_err("defect accepted");
            assert!(expected(&pure), "offset {offset}: {pure}");
            let mut reader: &[u8] = &bad;
            let streamed = block_on(read_frame(&mut reader)).expect_err("defect accepted");
            assert!(expected(&streamed), "offset {offset}: {streamed}");
        }
    }

    /// Goal: an oversize length is refused from the header alone (no body needed,
    /// so nothing of that size was allocated or awaited).
    #[test]
    fn oversize_refused_from_header() {
        let mut header = encode_frame(b"")[..FRAME_HEADER_BYTES].to_vec();
        header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut reader: &[u8] = &header;
        let error = block_on(read_frame(&mut reader)).expect_err("oversize accepted");
        assert!(matches!(error, FrameError::TooLarge { len } if len == u64::from(u32::MAX)));
        assert!(error.to_string().contains("exceeds the limit"), "{error}");
    }

    /// Goal: a stream ending inside a frame is an i/o error, not a clean close.
    #[test]
    fn stream_truncation_is_error() {
        let frame = encode_frame(b"some body");
        for cut in 1..frame.len() {
            let mut reader: &[u8] = &frame[..cut];
            let error = block_on(read_frame(&mut reader)).expect_err("truncation accepted");
            assert!(matches!(error, FrameError::Io { .. }), "cut {cut}: {error}");
        }
    }

    proptest! {
        /// Goal: arbitrary bodies round-trip through the pure decoder.
        #[test]
        fn prop_round_trip(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            prop_assert_eq!(decode_frame(&encode_frame(&body)).expect("valid"), body);
        }

        /// Goal: arbitrary bytes never panic the pure decoder.
        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
        }

        /// Goal: every truncation and every single-byte extension is refused.
        #[test]
        fn prop_truncation_and_trailing_refused(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let frame = encode_frame(&body);
            for cut in 0..frame.len() {
                prop_assert!(decode_frame(&frame[..cut]).is_err());
            }
            let mut longer = frame.clone();
            longer.push(0);
            prop_assert!(
                matches!(decode_frame(&longer), Err(FrameError::TrailingBytes { extra: 1 })),
                "trailing byte accepted"
            );
        }
    }
}
