//! Event encryption (P5): round trip, and every tamper — ciphertext, tag,
//! nonce, each associated-data field, the wrong key — fails authentication.
//! Also the KEK wrap of data keys and the KEK file format.

use proptest::prelude::*;
use vellum::crypto::{
    CryptoError, DataKey, EventAad, Kek, SEAL_OVERHEAD_BYTES, open_event, seal_event,
};

fn aad() -> EventAad {
    EventAad {
        cluster: 0x1234_5678_9abc_def0_1122_3344_5566_7788,
        stream: 42,
        stream_offset: 7,
        key_id: 3,
    }
}

const NONCE: [u8; 12] = [9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
const SALT: [u8; 32] = [0x5a; 32];

fn is_decrypt_error(result: Result<vellum::crypto::OpenedEvent, CryptoError>) -> bool {
    matches!(result, Err(CryptoError::Decrypt { .. }))
}

proptest! {
    /// Goal: open(seal(payload)) returns the payload and salt for any size 0..4096.
    #[test]
    fn crypto_event_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let dek = DataKey::generate().expect("random key");
        let sealed = seal_event(&dek, NONCE, &aad(), &SALT, &payload).expect("seal");
        prop_assert_eq!(sealed.len(), payload.len() + SEAL_OVERHEAD_BYTES);
        if payload.len() >= 16 {
            prop_assert!(!sealed.windows(16).any(|w| w == &payload[..16]), "plaintext visible");
        }
        let opened = open_event(&dek, &NONCE, &aad(), &sealed).expect("open");
        prop_assert_eq!(opened.salt, SALT);
        prop_assert_eq!(&opened.payload[..], &payload[..]);
    }
}

/// Goal: flipping any ciphertext byte or tag byte fails with Decrypt.
#[test]
fn crypto_event_tampered_ciphertext_or_tag_fails() {
    let dek = DataKey::generate().expect("random key");
    let sealed = seal_event(&dek, NONCE, &aad(), &SALT, b"{\"status\":\"final\"}").expect("seal");
    for index in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[index] ^= 0x80;
        assert!(
            is_decrypt_error(open_event(&dek, &NONCE, &aad(), &bad)),
            "flip at {index} opened"
        );
    }
    assert!(is_decrypt_error(open_event(
        &dek,
        &NONCE,
        &aad(),
        &sealed[..sealed.len() - 1]
    )));
    assert!(is_decrypt_error(open_event(
        &dek,
        &NONCE,
        &aad(),
        &sealed[..10]
    )));
}

/// Goal: a ciphertext moved to another cluster, stream, offset or key id, or
/// opened with another nonce or key, fails with Decrypt.
#[test]
fn crypto_event_wrong_context_fails() {
    let dek = DataKey::generate().expect("random key");
    let sealed = seal_event(&dek, NONCE, &aad(), &SALT, b"note").expect("seal");
    let variants = [
        EventAad {
            cluster: aad().cluster ^ 1,
            ..aad()
        },
        EventAad {
            stream: 43,
            ..aad()
        },
        EventAad {
            stream_offset: 8,
            ..aad()
        },
        EventAad { key_id: 4, ..aad() },
    ];
    for variant in variants {
        assert!(
            is_decrypt_error(open_event(&dek, &NONCE, &variant, &sealed)),
            "{variant:?}"
        );
    }
    let mut other_nonce = NONCE;
    other_nonce[11] ^= 1;
    assert!(is_decrypt_error(open_event(
        &dek,
        &other_nonce,
        &aad(),
        &sealed
    )));
    let other_key = DataKey::generate().expect("random key");
    assert!(is_decrypt_error(open_event(
        &other_key,
        &NONCE,
        &aad(),
        &sealed
    )));
}

/// Goal: the Decrypt error says authentication failed and where, nothing else.
#[test]
fn crypto_event_error_message_is_minimal() {
    let dek = DataKey::generate().expect("random key");
    let error = open_event(&dek, &NONCE, &aad(), &[0u8; 64]).expect_err("garbage must fail");
    assert_eq!(
        error.to_string(),
        "authentication failed for event at stream 42 offset 7"
    );
}

/// Goal: a wrapped DEK unwraps to the same key only for its key id and
/// stream under its KEK; any change to nonce or wrapped bytes fails.
#[test]
fn crypto_kek_wrap_round_trip_and_tamper() {
    let kek = Kek::generate().expect("random kek");
    let dek = DataKey::generate().expect("random key");
    let (nonce, wrapped) = kek.wrap(&dek, 5, 99).expect("wrap");
    let unwrapped = kek.unwrap(&nonce, &wrapped, 5, 99).expect("unwrap");
    let sealed = seal_event(&dek, NONCE, &aad(), &SALT, b"x").expect("seal");
    assert_eq!(
        &open_event(&unwrapped, &NONCE, &aad(), &sealed)
            .expect("same key")
            .payload[..],
        b"x"
    );
    assert!(
        kek.unwrap(&nonce, &wrapped, 6, 99).is_none(),
        "other key id"
    );
    assert!(
        kek.unwrap(&nonce, &wrapped, 5, 98).is_none(),
        "other stream"
    );
    for index in 0..wrapped.len() {
        let mut bad = wrapped;
        bad[index] ^= 1;
        assert!(kek.unwrap(&nonce, &bad, 5, 99).is_none(), "flip at {index}");
    }
    let mut bad_nonce = nonce;
    bad_nonce[0] ^= 1;
    assert!(kek.unwrap(&bad_nonce, &wrapped, 5, 99).is_none());
    let other = Kek::generate().expect("random kek");
    assert!(other.unwrap(&nonce, &wrapped, 5, 99).is_none(), "other kek");
}

/// Goal: a KEK file round-trips, is created 0600, and a 0644 or malformed
/// file is refused with its path in the message.
#[test]
fn crypto_kek_file_round_trip_and_refusals() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kek");
    let kek = Kek::create_file(&path).expect("create kek file");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.starts_with("vellum-kek-v1 ") && text.ends_with('\n') && text.lines().count() == 1
    );
    let loaded = Kek::load_file(&path).expect("load kek file");
    let dek = DataKey::generate().expect("random key");
    let (nonce, wrapped) = kek.wrap(&dek, 1, 1).expect("wrap");
    assert!(
        loaded.unwrap(&nonce, &wrapped, 1, 1).is_some(),
        "loaded kek is the same key"
    );
    assert!(matches!(
        Kek::create_file(&path),
        Err(CryptoError::AlreadyExists { .. })
    ));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let error = Kek::load_file(&path).expect_err("0644 refused");
    assert!(matches!(error, CryptoError::InsecurePermissions { .. }));
    assert!(
        error
            .to_string()
            .contains(&format!("chmod 600 {}", path.display())),
        "{error}"
    );

    let bad = dir.path().join("bad-kek");
    std::fs::write(&bad, "vellum-kek-v1 AAAA\n").expect("write");
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let error = Kek::load_file(&bad).expect_err("short key refused");
    assert!(matches!(error, CryptoError::Format { .. }), "{error}");
    assert!(
        error.to_string().contains("bad-kek") && error.to_string().contains("byte 14"),
        "{error}"
    );
}
