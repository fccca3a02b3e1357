//! Round trips and golden bytes of the op record formats (`vellum_audit::record`).

use proptest::prelude::*;
use vellum_audit::record::{
    EventFrame, FLAG_GROUP_CONTINUES, HEADER_BYTES, OpHeader, REQUEST_DIGEST_UNKNOWN, Record,
    RecordKind, SealBody, VERSION, VERSION_V1, VERSION_V2, decode_events, encode_events,
    genesis_parent,
};

fn kind_strategy() -> impl Strategy<Value = RecordKind> {
    prop_oneof![
        Just(RecordKind::Op),
        Just(RecordKind::Certificate),
        Just(RecordKind::Seal)
    ]
}

prop_compose! {
    fn header_strategy()(
        kind in kind_strategy(),
        parent in any::<[u8; 32]>(),
        body_checksum in any::<[u8; 32]>(),
        cluster in any::<u128>(),
        view in any::<u64>(),
        op in 1..u64::MAX,
        commit_seed in any::<u64>(),
        client_id in any::<u128>(),
        request in any::<u64>(),
        timestamp_ns in any::<u64>(),
        stream in any::<u64>(),
        stream_offset in any::<u64>(),
        global_position in 0..u64::MAX / 2,
        event_count in 0..=4096u32,
        body_size in 0..=(16u32 << 20),
        key_id in any::<u64>(),
        tree_size in any::<u64>(),
        v1 in any::<bool>(),
        request_digest in any::<[u8; 32]>(),
        continues in any::<bool>(),
    ) -> OpHeader {
        let is_op = kind == RecordKind::Op;
        let version = if v1 { VERSION_V1 } else { VERSION };
        let flags = if is_op && !v1 && continues { FLAG_GROUP_CONTINUES } else { 0 };
        OpHeader {
            parent, body_checksum, kind, cluster, view, op,
            commit: if is_op { commit_seed % op } else { 0 },
            client_id, request, timestamp_ns, stream, stream_offset, global_position,
            event_count: if is_op { event_count } else { 0 },
            body_size: if kind == RecordKind::Seal { 48 } else { body_size },
            key_id: if is_op { key_id } else { 0 },
            tree_size: if is_op { global_position + u64::from(event_count) } else { tree_size },
            flags,
            version,
            request_digest: if is_op && !v1 { request_digest } else { REQUEST_DIGEST_UNKNOWN },
        }
    }
}

proptest! {
    /// Goal: every well-formed header decodes back to itself, with the same checksum.
    #[test]
    fn op_header_round_trips(header in header_strategy(), at in any::<u32>()) {
        let bytes = header.encode();
        prop_assert_eq!(&bytes[0..32], &header.checksum()[..]);
        prop_assert_eq!(OpHeader::decode(&bytes, u64::from(at)).expect("well formed"), header);
    }

    /// Goal: seal bodies round-trip.
    #[test]
    fn seal_body_round_trips(tree_root in any::<[u8; 32]>(), op_count in 0..u64::MAX / 2, extra in 0..u64::MAX / 2) {
        let seal = SealBody { tree_root, record_count: op_count + extra, op_count };
        prop_assert_eq!(SealBody::decode(&seal.encode(), 0).expect("well formed"), seal);
    }

    /// Goal: event framing round-trips nonces and sealed bytes, in order.
    #[test]
    fn event_frames_round_trip(events in proptest::collection::vec((any::<[u8; 32]>(), any::<[u8; 12]>(), proptest::collection::vec(any::<u8>(), 16..300)), 0..20)) {
        let frames: Vec<EventFrame<'_>> = events.iter().map(|(c, n, s)| EventFrame { commitment: *c, nonce: *n, sealed: s.as_slice() }).collect();
        let body = encode_events(&frames);
        let decoded = decode_events(&body, frames.len() as u32, 0).expect("well formed");
        let expected = frames.clone();
        prop_assert_eq!(decoded, expected);
    }

    /// Goal: arbitrary bytes never panic the header or event decoders.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), count in 0..10u32) {
        if let Ok(array) = <[u8; HEADER_BYTES]>::try_from(&bytes[..bytes.len().min(HEADER_BYTES)]) {
            let _ = OpHeader::decode(&array, 0);
        }
        let _ = decode_events(&bytes, count, 0);
        let _ = Record::decode(&bytes, 0);
    }
}

/// The version 1 record stored in `golden/record_op.bin` (written before
/// the request digest existed; still read).
fn golden_record_v1() -> Record {
    let mut record = golden_record();
    record.header.version = VERSION_V1;
    record.header.request_digest = REQUEST_DIGEST_UNKNOWN;
    record.header.flags = 0;
    record
}

/// The version 2 record stored in `golden/record_op_v2.bin` (written before
/// group flags existed; still read).
fn golden_record_v2() -> Record {
    let mut record = golden_record();
    record.header.version = VERSION_V2;
    record.header.flags = 0;
    record
}

/// The version 3 record stored in `golden/record_op_v3.bin`: an op whose
/// group continues in the next op.
fn golden_record() -> Record {
    let cluster = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
    let header = OpHeader {
        parent: genesis_parent(cluster),
        body_checksum: [0; 32],
        kind: RecordKind::Op,
        cluster,
        view: 3,
        op: 1,
        commit: 0,
        client_id: 0xfeed_beef,
        request: 9,
        timestamp_ns: 1_700_000_000_000_000_000,
        stream: 42,
        stream_offset: 0,
        global_position: 0,
        event_count: 2,
        body_size: 0,
        key_id: 5,
        tree_size: 2,
        flags: FLAG_GROUP_CONTINUES,
        version: VERSION,
        request_digest: [0xd9; 32],
    };
    let body = encode_events(&[
        EventFrame {
            commitment: [0xc1; 32],
            nonce: [1; 12],
            sealed: &[0xaa; 24],
        },
        EventFrame {
            commitment: [0xc2; 32],
            nonce: [2; 12],
            sealed: &[0xbb; 17],
        },
    ]);
    Record::new(header, body)
}

fn check_golden(name: &str, bytes: &[u8]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("VELLUM_BLESS").is_some() {
        std::fs::write(&path, bytes).expect("write golden file");
    }
    let golden = std::fs::read(&path).expect("golden file exists (bless with VELLUM_BLESS=1)");
    assert_eq!(
        golden, bytes,
        "{name} changed: a format change needs a version bump and VELLUM_BLESS=1"
    );
}

/// Goal: the encoded version 3 op record is byte-for-byte the blessed
/// golden file, and decodes with its group flag.
#[test]
fn record_op_matches_golden() {
    let record = golden_record();
    let bytes = record.encode();
    check_golden("record_op_v3.bin", &bytes);
    assert_eq!(bytes[103], FLAG_GROUP_CONTINUES);
    let decoded = Record::decode(&bytes, 0).expect("golden decodes");
    assert!(decoded.header.group_continues());
    assert_eq!(decoded, record);
}

/// Goal: the version 2 golden record (written before group flags) still
/// decodes as version 2 and re-encodes to the same bytes.
#[test]
fn record_op_v2_golden_still_decodes() {
    let record = golden_record_v2();
    let bytes = record.encode();
    check_golden("record_op_v2.bin", &bytes);
    let decoded = Record::decode(&bytes, 0).expect("v2 golden decodes");
    assert_eq!(decoded.header.version, VERSION_V2);
    assert!(!decoded.header.group_continues());
    assert_eq!(decoded, record);
}

/// Goal: a flag byte is refused where version 3 gives it no meaning: in a
/// version 2 header, in a certificate record, and unknown bits anywhere.
#[test]
fn flags_are_refused_where_undefined() {
    let mut v2 = golden_record_v2().header;
    v2.flags = FLAG_GROUP_CONTINUES;
    assert!(v2.check_rules().is_err(), "version 2 has no flags");
    let mut unknown = golden_record().header;
    unknown.flags = 0x80;
    assert!(unknown.check_rules().is_err(), "unknown flag bit");
    let mut cert = golden_record().header;
    cert.kind = RecordKind::Certificate;
    cert.flags = FLAG_GROUP_CONTINUES;
    assert!(cert.check_rules().is_err(), "flags outside an op");
    // The decoder refuses the byte itself, naming offset 103.
    let mut bytes = golden_record_v2().header.encode();
    bytes[103] = FLAG_GROUP_CONTINUES;
    let checksum = vellum_audit::sha256(&[&bytes[32..]]);
    bytes[0..32].copy_from_slice(&checksum);
    let error = OpHeader::decode(&bytes, 1000).expect_err("flag in version 2");
    assert!(error.to_string().contains("1103"), "{error}");
}

/// Goal: the version 1 golden record (written before the request digest)
/// still decodes, as version 1 with an unknown digest, and re-encodes to
/// the same bytes.
#[test]
fn record_op_v1_golden_still_decodes() {
    let record = golden_record_v1();
    let bytes = record.encode();
    check_golden("record_op.bin", &bytes);
    let decoded = Record::decode(&bytes, 0).expect("v1 golden decodes");
    assert_eq!(decoded.header.version, VERSION_V1);
    assert_eq!(decoded.header.request_digest, REQUEST_DIGEST_UNKNOWN);
    assert_eq!(decoded, record);
}

/// Goal: the genesis parent is SHA-256 of the documented tag and cluster bytes.
#[test]
fn genesis_parent_is_documented_hash() {
    let cluster = 7u128;
    let expected = vellum_audit::sha256(&[b"vellum/genesis/v1", &cluster.to_le_bytes()]);
    assert_eq!(genesis_parent(cluster), expected);
    assert_ne!(genesis_parent(1), genesis_parent(2));
}

/// Goal: the ciphertext hash of a frame is SHA-256(nonce || sealed).
#[test]
fn ciphertext_hash_covers_nonce_and_sealed() {
    let frame = EventFrame {
        commitment: [9; 32],
        nonce: [3; 12],
        sealed: &[4; 20],
    };
    assert_eq!(
        frame.ciphertext_hash(),
        vellum_audit::sha256(&[&[3; 12], &[4; 20]])
    );
}

/// Goal: the leaves of the golden op record are built by the one leaf rule
/// (`leaf::record_leaves`) exactly as `docs/format.md` lays them out: event
/// `i` sits at global position and stream offset `first + i`, carries the
/// op number, SHA-256(nonce || sealed) and the stored commitment; its hash
/// is SHA-256(0x00 || the 97 bytes). The hashes are a golden file too.
#[test]
fn golden_record_leaves_match_the_documented_bytes() {
    let record = golden_record();
    let leaves = vellum_audit::leaf::record_leaves(&record, 0).expect("golden leaves");
    assert_eq!(leaves.len(), 2);
    let mut expected = vec![1u8];
    expected.extend_from_slice(&1u64.to_le_bytes()); // global position 0 + 1
    expected.extend_from_slice(&42u64.to_le_bytes()); // stream
    expected.extend_from_slice(&1u64.to_le_bytes()); // stream offset 0 + 1
    expected.extend_from_slice(&1u64.to_le_bytes()); // op
    expected.extend_from_slice(&vellum_audit::sha256(&[&[2; 12], &[0xbb; 17]]));
    expected.extend_from_slice(&[0xc2; 32]);
    assert_eq!(leaves[1].encode().to_vec(), expected);
    assert_eq!(
        leaves[1].leaf_hash(),
        vellum_audit::sha256(&[&[0], &expected])
    );
    let hashes = vellum_audit::leaf::record_leaf_hashes(&record, 0).expect("hashes");
    let text: String = hashes
        .iter()
        .map(|h| format!("{}\n", vellum_audit::hash::to_hex(h)))
        .collect();
    check_golden("record_op_v2_leaves.txt", text.as_bytes());
}

/// Goal: a body that does not hold `event_count` frames has no leaves, and
/// the error names the byte in the file (header offset + 256 + frame).
#[test]
fn record_leaves_refuse_a_short_body_naming_the_byte() {
    let mut record = golden_record();
    record.header.event_count = 3;
    let error = vellum_audit::leaf::record_leaves(&record, 1000).expect_err("3 of 2 frames");
    match error.location {
        vellum_audit::Location::Byte(byte) => {
            assert!(byte >= 1000 + HEADER_BYTES as u64, "{error}")
        }
        other => panic!("not a byte location: {other:?}"),
    }
}

/// Goal: `Record::check` (the one validity rule of a record that arrived
/// whole) accepts the golden record and refuses each broken variant.
#[test]
fn record_check_refuses_each_broken_variant() {
    let record = golden_record();
    let cluster = record.header.cluster;
    assert_eq!(record.check(cluster), Ok(()));
    assert!(record.check(cluster + 1).is_err(), "another cluster");
    let mut body = record.clone();
    body.body[0] ^= 1;
    assert_eq!(
        body.check(cluster),
        Err("body checksum mismatch".to_string())
    );
    let mut size = record.clone();
    size.body.push(0);
    assert!(
        size.check(cluster)
            .is_err_and(|e| e.contains("header says"))
    );
    let mut rules = record.clone();
    rules.header.commit = rules.header.op;
    assert!(
        rules
            .check(cluster)
            .is_err_and(|e| e.contains("not below op"))
    );
}
