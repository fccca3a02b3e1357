//! The key store (P5, P6): keys beside the log, durable creation, nonces that
//! never repeat across restarts and crashes, permission refusals, the wrong
//! KEK refused, and shredding that destroys a stream's keys for good.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use vellum::crypto::{
    CryptoError, EventAad, Kek, KeyStore, NONCE_BLOCK, create_signing_key_file,
    load_signing_key_file, open_event, seal_event,
};

const KEK_BYTES: [u8; 32] = [0x11; 32];

fn kek() -> Kek {
    Kek::from_bytes(&KEK_BYTES)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Goal: a created key survives reopen, decrypts what it sealed, and ids are
/// monotonic from 1 with one file per key, created 0600 in a 0700 directory.
#[test]
fn crypto_store_keys_survive_reopen() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().join("keys");
    let store = KeyStore::create(&dir, kek(), 0).expect("create store");
    let (id_a, dek_a) = store.create_key(16).expect("key a");
    let (id_b, _) = store.create_key(17).expect("key b");
    assert_eq!((id_a, id_b), (1, 2));
    let nonce = store.next_nonce(id_a).expect("nonce");
    let ad = EventAad {
        cluster: 1,
        stream: 16,
        stream_offset: 0,
        key_id: id_a,
    };
    let sealed = seal_event(&dek_a, nonce, &ad, &[3; 32], b"payload").expect("seal");
    drop((store, dek_a));

    let key_file = dir.join(format!("dek-{id_a:020}.key"));
    assert_eq!(
        std::fs::metadata(&key_file)
            .expect("key file")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777,
        0o700
    );
    let store = KeyStore::open(&dir, kek(), 0).expect("reopen");
    let (found_id, dek) = store
        .key_for_stream(16)
        .expect("lookup")
        .expect("key exists");
    assert_eq!(found_id, id_a);
    assert_eq!(
        &open_event(&dek, &nonce, &ad, &sealed)
            .expect("open")
            .payload[..],
        b"payload"
    );
    assert_eq!(
        store.create_key(18).expect("key c").0,
        3,
        "ids keep increasing after reopen"
    );
    assert!(store.key(99).expect("lookup").is_none());
    assert!(store.key_for_stream(1000).expect("lookup").is_none());
}

/// Goal: nonces are unique across many blocks and across reopen after a
/// crash (the store dropped mid-block without any further write).
#[test]
fn crypto_store_nonces_unique_across_crash() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().join("keys");
    let mut seen = HashSet::new();
    let store = KeyStore::create(&dir, kek(), 7).expect("create store");
    let (key_id, _) = store.create_key(16).expect("key");
    let first_run = NONCE_BLOCK + 10;
    for _ in 0..first_run {
        let nonce = store.next_nonce(key_id).expect("nonce");
        assert_eq!(&nonce[..4], &7u32.to_le_bytes(), "writer id prefix");
        assert!(seen.insert(nonce), "nonce repeated in one run");
    }
    drop(store); // a crash: nothing else is flushed
    for run in 0..3 {
        let store = KeyStore::open(&dir, kek(), 7).expect("reopen");
        for _ in 0..5 {
            assert!(
                seen.insert(store.next_nonce(key_id).expect("nonce")),
                "repeat after reopen {run}"
            );
        }
    }
    assert_eq!(seen.len() as u64, first_run + 15);
}

/// Goal: a key file or keys directory readable by group or others is refused,
/// naming the path and the chmod that fixes it.
#[test]
fn crypto_store_refuses_insecure_permissions() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().join("keys");
    let store = KeyStore::create(&dir, kek(), 0).expect("create store");
    let (key_id, _) = store.create_key(16).expect("key");
    drop(store);
    let key_file = dir.join(format!("dek-{key_id:020}.key"));

    chmod(&key_file, 0o644);
    let error = KeyStore::open(&dir, kek(), 0).expect_err("0644 key file refused");
    assert!(matches!(&error, CryptoError::InsecurePermissions { path, .. } if path == &key_file));
    assert!(
        error
            .to_string()
            .contains(&format!("chmod 600 {}", key_file.display())),
        "{error}"
    );
    chmod(&key_file, 0o600);

    chmod(&dir, 0o755);
    let error = KeyStore::open(&dir, kek(), 0).expect_err("0755 keys dir refused");
    assert!(matches!(&error, CryptoError::InsecurePermissions { path, .. } if path == &dir));
    assert!(
        error
            .to_string()
            .contains(&format!("chmod 700 {}", dir.display())),
        "{error}"
    );
    chmod(&dir, 0o700);
    KeyStore::open(&dir, kek(), 0).expect("fixed permissions open again");
}

/// Goal: opening with another KEK is refused before any key is used.
#[test]
fn crypto_store_refuses_wrong_kek() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().join("keys");
    KeyStore::create(&dir, kek(), 0).expect("create store");
    let error = KeyStore::open(&dir, Kek::from_bytes(&[0x22; 32]), 0).expect_err("wrong kek");
    assert!(matches!(error, CryptoError::WrongKek { .. }), "{error}");
}

/// Goal: a corrupted key file is refused with its path, never repaired.
#[test]
fn crypto_store_refuses_corrupt_key_file() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().join("keys");
    let store = KeyStore::create(&dir, kek(), 0).expect("create store");
    let (key_id, _) = store.create_key(16).expect("key");
    drop(store);
    let key_file = dir.join(format!("dek-{key_id:020}.key"));
    let mut bytes = std::fs::read(&key_file).expect("read");
    bytes[60] ^= 1;
    std::fs::write(&key_file, &bytes).expect("write");
    let error = KeyStore::open(&dir, kek(), 0).expect_err("corrupt file refused");
    assert!(matches!(error, CryptoError::Format { .. }), "{error}");
    assert!(
        error.to_string().contains(&key_file.display().to_string()),
        "{error}"
    );
}

/// Goal: after shred the stream's key files are gone from disk, `key()` and
/// `key_for_stream()` report the shred (also after reopen), no new key can be
/// made for the stream, and other streams are untouched.
#[test]
fn crypto_store_shred_destroys_keys_for_good() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().join("keys");
    let store = KeyStore::create(&dir, kek(), 0).expect("create store");
    let (old, _) = store.create_key(16).expect("key");
    let (rotated, _) = store.create_key(16).expect("rotated key");
    let (other, _) = store.create_key(17).expect("other stream");
    assert_eq!(
        store.key_for_stream(16).expect("lookup").expect("exists").0,
        rotated
    );
    let wrapped_before = std::fs::read(dir.join(format!("dek-{old:020}.key"))).expect("read");

    assert_eq!(store.shred_stream(16).expect("shred"), vec![old, rotated]);
    for store in [store, KeyStore::open(&dir, kek(), 0).expect("reopen")] {
        for key_id in [old, rotated] {
            assert!(
                !dir.join(format!("dek-{key_id:020}.key")).exists(),
                "key file left"
            );
            assert!(matches!(
                store.key(key_id),
                Err(CryptoError::Shredded { stream: 16 })
            ));
            assert!(matches!(
                store.next_nonce(key_id),
                Err(CryptoError::Shredded { stream: 16 })
            ));
        }
        assert!(matches!(
            store.key_for_stream(16),
            Err(CryptoError::Shredded { stream: 16 })
        ));
        assert!(matches!(
            store.create_key(16),
            Err(CryptoError::Shredded { stream: 16 })
        ));
        assert!(
            store.key(other).expect("other").is_some(),
            "other stream keeps its key"
        );
        assert_eq!(
            store.shred_stream(16).expect("idempotent"),
            vec![old, rotated]
        );
    }
    // No file left in the store holds the wrapped key bytes.
    for entry in std::fs::read_dir(&dir).expect("list") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        assert!(
            !bytes.windows(48).any(|w| w == &wrapped_before[56..104]),
            "wrapped key survives"
        );
    }
}

/// Goal: a signing key file round-trips, is 0600, and 0644 is refused.
#[test]
fn crypto_signing_key_file_round_trip() {
    let data = tempfile::tempdir().expect("temp dir");
    let path = data.path().join("replica.skey");
    let signer = create_signing_key_file(&path, "vellum-replica-0").expect("create");
    assert_eq!(
        std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.starts_with("PRIVATE+KEY+vellum-replica-0+") && text.ends_with('\n'));
    let loaded = load_signing_key_file(&path).expect("load");
    assert_eq!(loaded.verifier(), signer.verifier());
    assert!(loaded.verifier().verify(b"msg", &signer.sign(b"msg")));
    chmod(&path, 0o644);
    let error = load_signing_key_file(&path).expect_err("0644 refused");
    assert!(
        error
            .to_string()
            .contains(&format!("chmod 600 {}", path.display())),
        "{error}"
    );
}

/// Goal: a crash between the shred tombstone and the key-file deletion is
/// finished on the next open: the key file is removed and the key is shredded.
#[test]
fn crypto_store_finishes_interrupted_shred() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().join("keys");
    let store = KeyStore::create(&dir, kek(), 0).expect("create store");
    let (key_id, _) = store.create_key(16).expect("key");
    let key_file = dir.join(format!("dek-{key_id:020}.key"));
    let saved = std::fs::read(&key_file).expect("read");
    store.shred_stream(16).expect("shred");
    drop(store);
    std::fs::write(&key_file, &saved).expect("put the key file back, as a crash would leave it");
    chmod(&key_file, 0o600);
    let stray_temp = dir.join(format!("dek-{:020}.key.tmp", key_id + 1));
    std::fs::write(&stray_temp, [0u8; 136]).expect("write temp");
    chmod(&stray_temp, 0o600);

    let store = KeyStore::open(&dir, kek(), 0).expect("reopen");
    assert!(!key_file.exists(), "interrupted shred not finished");
    assert!(!stray_temp.exists(), "stray temp file not removed");
    assert!(matches!(
        store.key(key_id),
        Err(CryptoError::Shredded { stream: 16 })
    ));
    assert_eq!(
        store.create_key(17).expect("new key").0,
        key_id + 1,
        "shredded ids never reused"
    );
}
