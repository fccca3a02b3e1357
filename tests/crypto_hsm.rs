//! The KEK in a PKCS#11 token (SoftHSM2 in CI): DEKs wrapped on the token
//! unwrap to the same key, a changed byte is refused, the key never leaves
//! the token, each misconfiguration gets an error naming what is wrong (and
//! never the PIN), and a data directory whose KEK is on the token appends,
//! restarts, reads back byte for byte and verifies.
//!
//! The replica signing key in the token (`CKM_EDDSA`): an imported key signs
//! exactly as ed25519-dalek, a token signature that does not verify is
//! refused, misconfigurations are named, a data directory and a cluster of
//! three whose signing keys live in the token certify and verify under the
//! policy, and the per-signature cost against the file key is printed.
//!
//! Needs `VELLUM_TEST_PKCS11_MODULE`, `VELLUM_TEST_PKCS11_TOKEN`,
//! `VELLUM_TEST_PKCS11_PIN` and `SOFTHSM2_CONF`, which `.ci/softhsm.sh` sets
//! up (`source .ci/softhsm.sh` to run these by hand); without them every test
//! says SKIP and passes.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use vellum::crypto::{
    CryptoError, DataKey, EventAad, HsmFailure, Kek, KekConfig, KeyEncryptionKey, KeyStore,
    Pkcs11Config, Pkcs11Kek, Pkcs11Signer, open_event, seal_event,
};
use vellum_audit::note::{Note, NoteSigner, Signer};

use support::{TestDir, vellum_cli};

/// PKCS#11 login state is per process and token, so tests that log in or
/// expect a refused login run one at a time.
static TOKEN: Mutex<()> = Mutex::new(());

/// The token CI prepared, or `None` (and one SKIP line) without one.
struct Token {
    module: PathBuf,
    label: String,
    pin: String,
}

fn token(test: &str) -> Option<Token> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        var("VELLUM_TEST_PKCS11_MODULE"),
        var("VELLUM_TEST_PKCS11_TOKEN"),
        var("VELLUM_TEST_PKCS11_PIN"),
        var("SOFTHSM2_CONF"),
    ) {
        (Some(module), Some(label), Some(pin), Some(_)) if Path::new(&module).exists() => {
            Some(Token {
                module: module.into(),
                label,
                pin,
            })
        }
        _ => {
            eprintln!(
                "SKIP: {test}: no PKCS#11 token (softhsm2 absent or VELLUM_TEST_PKCS11_MODULE, \
                 _TOKEN, _PIN, SOFTHSM2_CONF unset; `source .ci/softhsm.sh` sets them up)"
            );
            None
        }
    }
}

/// A key label no other test or run uses on the shared token.
fn unique_label(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{test}-{}-{nanos}", std::process::id())
}

fn pin_file(dir: &Path, pin: &str) -> PathBuf {
    let path = dir.join("pin");
    std::fs::write(&path, format!("{pin}\n")).expect("write pin file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod pin");
    path
}

fn config(token: &Token, key_label: &str, pin_file: &Path) -> Pkcs11Config {
    Pkcs11Config {
        module: token.module.clone(),
        token_label: token.label.clone(),
        key_label: key_label.to_string(),
        pin_file: Some(pin_file.to_path_buf()),
        pin_env: None,
    }
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    TOKEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What most HSM tests start with: the token (None: skip), the lock that
/// keeps them one at a time, a work directory and a config for a new key.
struct Setup {
    token: Token,
    _serial: std::sync::MutexGuard<'static, ()>,
    dir: TestDir,
    config: Pkcs11Config,
}

fn setup(test: &str, dir_prefix: &str, label: &str) -> Option<Setup> {
    let token = token(test)?;
    let serial = lock();
    let dir = TestDir::new(dir_prefix);
    let config = config(
        &token,
        &unique_label(label),
        &pin_file(dir.path(), &token.pin),
    );
    Some(Setup {
        token,
        _serial: serial,
        dir,
        config,
    })
}

/// True when `a` and `b` are the same key: each opens what the other sealed.
fn same_key(a: &DataKey, b: &DataKey) -> bool {
    let aad = EventAad {
        cluster: 7,
        stream: 16,
        stream_offset: 0,
        key_id: 1,
    };
    let salt = [5u8; 32];
    let payload = b"{\"resourceType\":\"Observation\"}";
    let one = seal_event(a, [1; 12], &aad, &salt, payload).expect("seal a");
    let two = seal_event(b, [2; 12], &aad, &salt, payload).expect("seal b");
    let opened_one = open_event(b, &[1; 12], &aad, &one);
    let opened_two = open_event(a, &[2; 12], &aad, &two);
    matches!((opened_one, opened_two), (Ok(x), Ok(y)) if x.payload.as_slice() == payload && y.payload.as_slice() == payload)
}

/// Goal: a DEK wrapped by the token's KEK unwraps to the same key, through
/// the trait and through a key store reopened with a fresh token session;
/// the wrapped bytes differ from the key (it is not stored in the clear).
#[test]
fn hsm_kek_wrap_then_unwrap_gives_the_same_dek() {
    let Some(Setup {
        token: _token,
        _serial,
        dir,
        config,
    }) = setup(
        "hsm_kek_wrap_then_unwrap_gives_the_same_dek",
        "hsm-roundtrip",
        "roundtrip",
    )
    else {
        return;
    };
    let kek = Pkcs11Kek::generate(&config).expect("generate the kek on the token");
    for stream in [16u64, 17, u64::MAX] {
        let dek = DataKey::generate().expect("dek");
        let (nonce, wrapped) = kek.wrap_dek(&dek, 9, stream).expect("wrap on the token");
        let unwrapped = kek
            .unwrap_dek(&nonce, &wrapped, 9, stream)
            .expect("token answers")
            .expect("authentic wrapped key unwraps");
        assert!(
            same_key(&dek, &unwrapped),
            "stream {stream}: unwrapped key differs"
        );
        let other = DataKey::generate().expect("dek");
        assert!(
            !same_key(&other, &unwrapped),
            "the check itself must be able to fail"
        );
    }

    // Through the key store: create, seal, drop every handle, reopen.
    let keys = dir.path().join("keys");
    let store = KeyStore::create(&keys, kek, 0).expect("create store with the token kek");
    let (key_id, dek) = store.create_key(16).expect("key");
    let aad = EventAad {
        cluster: 1,
        stream: 16,
        stream_offset: 0,
        key_id,
    };
    let nonce = store.next_nonce(key_id).expect("nonce");
    let sealed = seal_event(&dek, nonce, &aad, &[3; 32], b"payload").expect("seal");
    drop((store, dek));
    let reopened =
        KeyStore::open(&keys, Pkcs11Kek::open(&config).expect("reopen kek"), 0).expect("reopen");
    let dek = reopened.key(key_id).expect("lookup").expect("key is there");
    let opened = open_event(&dek, &nonce, &aad, &sealed).expect("open");
    assert_eq!(opened.payload.as_slice(), b"payload");

    // A file KEK is refused by the token-made store, naming the mismatch.
    drop((reopened, dek));
    let error = KeyStore::open(&keys, Kek::from_bytes(&[0x11; 32]), 0).expect_err("file kek");
    assert!(matches!(error, CryptoError::WrongKek { .. }), "{error}");
}

/// Goal: every single flipped byte of a wrapped DEK or its nonce, and a
/// wrapped DEK moved to another key id or stream, is refused by the token,
/// and the key store refuses a tampered key file whose checksum was fixed up.
#[test]
fn hsm_kek_refuses_a_flipped_byte() {
    let Some(Setup {
        token: _token,
        _serial,
        dir,
        config,
    }) = setup("hsm_kek_refuses_a_flipped_byte", "hsm-flip", "flip")
    else {
        return;
    };
    let kek = Pkcs11Kek::generate(&config).expect("generate");
    let dek = DataKey::generate().expect("dek");
    let (nonce, wrapped) = kek.wrap_dek(&dek, 5, 99).expect("wrap");
    for index in 0..wrapped.len() {
        let mut bad = wrapped;
        bad[index] ^= 0x01;
        let answer = kek.unwrap_dek(&nonce, &bad, 5, 99).expect("token answers");
        assert!(answer.is_none(), "flip at wrapped byte {index} accepted");
    }
    for index in 0..nonce.len() {
        let mut bad = nonce;
        bad[index] ^= 0x80;
        let answer = kek
            .unwrap_dek(&bad, &wrapped, 5, 99)
            .expect("token answers");
        assert!(answer.is_none(), "flip at nonce byte {index} accepted");
    }
    assert!(
        kek.unwrap_dek(&nonce, &wrapped, 6, 99)
            .expect("answers")
            .is_none()
    );
    assert!(
        kek.unwrap_dek(&nonce, &wrapped, 5, 98)
            .expect("answers")
            .is_none()
    );
    assert!(
        kek.unwrap_dek(&nonce, &wrapped, 5, 99)
            .expect("answers")
            .is_some()
    );

    // On disk: flip a byte of the wrapped key and recompute the checksum, so
    // only the token's authentication can catch it.
    let keys = dir.path().join("keys");
    let store = KeyStore::create(&keys, kek, 0).expect("create");
    let (key_id, _) = store.create_key(16).expect("key");
    drop(store);
    let path = keys.join(format!("dek-{key_id:020}.key"));
    let mut bytes = std::fs::read(&path).expect("key file");
    bytes[70] ^= 0x01; // inside the wrapped key (bytes 56..104)
    let checksum = vellum_audit::sha256(&[&bytes[..104]]);
    bytes[104..].copy_from_slice(&checksum);
    std::fs::write(&path, &bytes).expect("write tampered key file");
    let store = KeyStore::open(&keys, Pkcs11Kek::open(&config).expect("kek"), 0).expect("open");
    let error = store.key(key_id).expect_err("tampered key refused");
    assert!(
        matches!(error, CryptoError::Unwrap { key_id: id, .. } if id == key_id),
        "{error}"
    );
    assert!(error.to_string().contains(&format!("{key_id}")), "{error}");
}

/// Goal: the token refuses to reveal the KEK's value, and a key that could
/// leave the token (extractable, or not sensitive) is refused as a KEK.
#[test]
fn hsm_kek_is_not_extractable() {
    let Some(Setup {
        token,
        _serial,
        dir: _dir,
        config,
    }) = setup("hsm_kek_is_not_extractable", "hsm-extract", "extract")
    else {
        return;
    };
    let kek = Pkcs11Kek::generate(&config).expect("generate");
    let error = kek
        .try_read_key_value()
        .expect_err("the token must not reveal the kek");
    assert!(error.to_string().contains("refused"), "{error}");

    drop(kek);
    // Keys made by hand as a careless operator might: each flaw is refused
    // by name.
    for (sensitive, extractable, named) in [
        (true, true, "CKA_EXTRACTABLE"),
        (false, false, "CKA_SENSITIVE"),
    ] {
        let weak_label = unique_label("weak");
        make_aes_key(&token, &weak_label, sensitive, extractable);
        let weak = Pkcs11Config {
            key_label: weak_label.clone(),
            ..config.clone()
        };
        let error = Pkcs11Kek::open(&weak).expect_err("a key that can leave the token is no kek");
        assert!(
            matches!(
                &error,
                CryptoError::Hsm {
                    failure: HsmFailure::KeyUnfit(_),
                    ..
                }
            ),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains(&weak_label), "{message}");
        assert!(message.contains(named), "{message} does not name {named}");
    }
}

/// Makes an AES-256 token key with the given flags, directly through
/// cryptoki (as an operator's tool would), and closes its session.
fn make_aes_key(token: &Token, label: &str, sensitive: bool, extractable: bool) {
    let session = raw_session(token);
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32u64.into()),
                Attribute::Token(true),
                Attribute::Sensitive(sensitive),
                Attribute::Extractable(extractable),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
        .expect("make a key by hand");
}

/// Goal: a wrong PIN, a missing key label, an absent token, a wrong module
/// path and a missing PIN each give an error naming what is wrong, and no
/// message contains the PIN (right or wrong).
#[test]
fn hsm_kek_misconfigurations_are_named() {
    let Some(token) = token("hsm_kek_misconfigurations_are_named") else {
        return;
    };
    let _serial = lock();
    let dir = TestDir::new("hsm-errors");
    let label = unique_label("errors");
    let good = config(&token, &label, &pin_file(dir.path(), &token.pin));
    drop(Pkcs11Kek::generate(&good).expect("generate"));
    let wrong_pin = "wrong-pin-7f3a";
    let wrong_pin_dir = dir.path().join("wrong");
    std::fs::create_dir(&wrong_pin_dir).expect("dir");
    let cases: Vec<(&str, Pkcs11Config, &str)> = vec![
        (
            "wrong pin",
            config(&token, &label, &pin_file(&wrong_pin_dir, wrong_pin)),
            "incorrect pin",
        ),
        (
            "missing key label",
            Pkcs11Config {
                key_label: "no-such-key".into(),
                ..good.clone()
            },
            "no aes secret key with this label",
        ),
        (
            "token absent",
            Pkcs11Config {
                token_label: "no-such-token".into(),
                ..good.clone()
            },
            "no token with this label",
        ),
        (
            "module path wrong",
            Pkcs11Config {
                module: dir.path().join("no-such-module.so"),
                ..good.clone()
            },
            "cannot load the pkcs11 module",
        ),
        (
            "pin variable unset",
            Pkcs11Config {
                pin_file: None,
                pin_env: Some("VELLUM_TEST_PKCS11_NO_SUCH_PIN_VARIABLE".into()),
                ..good.clone()
            },
            "VELLUM_TEST_PKCS11_NO_SUCH_PIN_VARIABLE is not set",
        ),
        (
            "pin file missing",
            Pkcs11Config {
                pin_file: Some(dir.path().join("absent-pin")),
                ..good.clone()
            },
            "absent-pin",
        ),
    ];
    for (case, config, expected) in cases {
        let error = Pkcs11Kek::open(&config).expect_err(case);
        let message = error.to_string();
        assert!(
            matches!(error, CryptoError::Hsm { .. }),
            "{case}: {message}"
        );
        assert!(
            message.contains(expected),
            "{case}: {message:?} lacks {expected:?}"
        );
        assert!(
            !message.contains(&token.pin) && !message.contains(wrong_pin),
            "{case}: the message shows a pin: {message}"
        );
        let shown = match case {
            "token absent" => "no-such-token",
            "missing key label" => "no-such-key",
            "module path wrong" => "no-such-module.so",
            _ => &label,
        };
        assert!(
            message.contains(shown),
            "{case}: {message:?} does not name {shown:?}"
        );
    }
    // A pin file others may read is refused like a key file.
    let loose = dir.path().join("loose");
    std::fs::create_dir(&loose).expect("dir");
    let loose_pin = pin_file(&loose, &token.pin);
    std::fs::set_permissions(&loose_pin, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let error = Pkcs11Kek::open(&config(&token, &label, &loose_pin)).expect_err("0644 pin file");
    assert!(
        error.to_string().contains("insecure permissions"),
        "{error}"
    );
    // And the right config still works after all those refusals.
    drop(Pkcs11Kek::open(&good).expect("good config opens"));
}

/// Goal: a data directory initialized with its KEK on the token (no KEK
/// file anywhere, no PIN in vellum.json) takes events, survives restarts
/// (each CLI call is a fresh process), reads them back byte for byte, and
/// `vellum verify` passes; with a wrong PIN the log refuses to open, naming
/// the pin, and is left intact; `vellum keys rotate-kek --new-key-label`
/// moves it to a new token key, destroys the old one, and all still holds.
#[test]
fn hsm_kek_data_dir_appends_restarts_reads_and_verifies() {
    let Some(token) = token("hsm_kek_data_dir_appends_restarts_reads_and_verifies") else {
        return;
    };
    let _serial = lock();
    let dir = TestDir::new("hsm-datadir");
    let pin = pin_file(dir.path(), &token.pin);
    let data = dir.path().join("data");
    let label = unique_label("datadir");
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let module = s(&token.module);
    let (code, out, err) = vellum_cli(&[
        "init",
        "--data-dir",
        &s(&data),
        "--kek-pkcs11-module",
        &module,
        "--kek-pkcs11-token",
        &token.label,
        "--kek-pkcs11-key",
        &label,
        "--kek-pkcs11-pin-file",
        &s(&pin),
    ]);
    assert_eq!(code, 0, "init: {out}\n{err}");
    assert!(out.contains("pkcs11"), "init names where the kek is: {out}");
    assert!(
        !data.join("keys/kek.key").exists(),
        "no kek file with an hsm kek"
    );
    let meta = std::fs::read_to_string(data.join("vellum.json")).expect("vellum.json");
    assert!(
        meta.contains(&label) && !meta.contains(&token.pin),
        "{meta}"
    );

    // Events with bytes that JSON lines keep exactly: unicode, escapes.
    let events: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "{{\"i\":{i},\"note\":\"caf\\u00e9 \u{1F9EA} \\\"q\\\"\",\"pad\":\"{}\"}}",
                "x".repeat(i * 7)
            )
        })
        .collect();
    let batches = [&events[..15], &events[15..]];
    for (n, batch) in batches.iter().enumerate() {
        let file = dir.path().join(format!("batch{n}.jsonl"));
        std::fs::write(&file, batch.join("\n") + "\n").expect("write batch");
        let (code, out, err) = vellum_cli(&[
            "append",
            "--data-dir",
            &s(&data),
            "--stream",
            "16",
            "--file",
            &s(&file),
        ]);
        assert_eq!(code, 0, "append batch {n}: {out}\n{err}");
    }
    let (code, out, err) = vellum_cli(&["read", "--data-dir", &s(&data), "--stream", "16"]);
    assert_eq!(code, 0, "read: {err}");
    assert_eq!(
        out,
        events.join("\n") + "\n",
        "read back differs from what was appended"
    );

    // The segments hold no plaintext of any event (P5 with the hsm kek).
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(data.join("segments")).expect("segments") {
        on_disk.extend(std::fs::read(entry.expect("entry").path()).expect("segment"));
    }
    assert!(!on_disk.is_empty());
    let needle = b"\"note\":\"caf";
    assert!(
        !on_disk.windows(needle.len()).any(|w| w == needle),
        "plaintext on disk"
    );

    let (code, out, err) = vellum_cli(&["verify", "--data-dir", &s(&data)]);
    assert_eq!(code, 0, "verify: {out}\n{err}");

    // A wrong PIN: a clear refusal, and the data is untouched.
    let wrong = dir.path().join("wrong");
    std::fs::create_dir(&wrong).expect("dir");
    let wrong_pin = pin_file(&wrong, "not-the-pin-91c2");
    let mut meta_json: serde_json::Value = serde_json::from_str(&meta).expect("json");
    meta_json["kek"]["pkcs11"]["pin_file"] = serde_json::Value::String(s(&wrong_pin));
    std::fs::write(data.join("vellum.json"), meta_json.to_string()).expect("write meta");
    let (code, out, err) = vellum_cli(&["read", "--data-dir", &s(&data), "--stream", "16"]);
    assert_ne!(code, 0, "read with a wrong pin must fail: {out}");
    assert!(err.contains("incorrect pin"), "{err}");
    assert!(
        !err.contains("not-the-pin-91c2") && !err.contains(&token.pin),
        "{err}"
    );
    std::fs::write(data.join("vellum.json"), &meta).expect("restore meta");
    let (code, out, err) = vellum_cli(&["read", "--data-dir", &s(&data), "--stream", "16"]);
    assert_eq!(code, 0, "read after the right pin is back: {err}");
    assert_eq!(out, events.join("\n") + "\n");
    let (code, out, err) = vellum_cli(&["verify", "--data-dir", &s(&data)]);
    assert_eq!(code, 0, "verify again: {out}\n{err}");

    // A config with the KEK on the token parses back to what init wrote.
    let parsed: serde_json::Value = serde_json::from_str(&meta).expect("json");
    let kek: KekConfig = serde_json::from_value(parsed["kek"].clone()).expect("kek config");
    let KekConfig::Pkcs11(parsed) = kek;
    assert_eq!(parsed.key_label, label);
    assert_eq!(parsed.pin_file.as_deref(), Some(pin.as_path()));

    // `vellum keys rotate-kek`: a new token key, vellum.json names it, the
    // events read back byte for byte and verify; the old key is gone.
    let new_label = unique_label("datadir-rotated");
    let (code, out, err) = vellum_cli(&[
        "keys",
        "rotate-kek",
        "--data-dir",
        &s(&data),
        "--new-key-label",
        &new_label,
    ]);
    assert_eq!(code, 0, "rotate-kek: {out}\n{err}");
    assert!(out.contains("data keys rewrapped"), "{out}");
    let rotated: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("vellum.json")).expect("meta"))
            .expect("json");
    assert_eq!(rotated["kek"]["pkcs11"]["key_label"], new_label.as_str());
    assert_eq!(
        rotated["name"],
        parsed_name(&meta),
        "the rest of vellum.json kept"
    );
    let (code, out, err) = vellum_cli(&["read", "--data-dir", &s(&data), "--stream", "16"]);
    assert_eq!(code, 0, "read after rotation: {err}");
    assert_eq!(out, events.join("\n") + "\n");
    let (code, out, err) = vellum_cli(&["verify", "--data-dir", &s(&data)]);
    assert_eq!(code, 0, "verify after rotation: {out}\n{err}");
    let old_config = Pkcs11Config {
        key_label: label.clone(),
        ..parsed
    };
    assert!(
        matches!(
            Pkcs11Kek::open(&old_config),
            Err(CryptoError::Hsm {
                failure: HsmFailure::KeyNotFound,
                ..
            })
        ),
        "the old token key is destroyed"
    );
    let (code, _, err) = vellum_cli(&["keys", "rotate-kek", "--data-dir", &s(&data)]);
    assert_ne!(code, 0);
    assert!(err.contains("--new-key-label"), "{err}");
}

fn parsed_name(meta: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(meta).expect("json")["name"].clone()
}

/// Goal: the full demo (three replica processes, failover, catch-up,
/// byte-exact read back, bundle, `vellum verify` on every replica) passes
/// with every replica's KEK in the token and no KEK file on any replica.
///
/// Opt-in (`VELLUM_TEST_HSM_DEMO=1`): in about one run of the test binary
/// in ten on a loaded 2-core machine the demo's step 5 failover did not
/// elect a new primary within the client's retries (replica 0 gone, the
/// others still forwarding to it), a flake not yet explained; standalone
/// runs of `vellum demo --kek-pkcs11-*` passed 30 times in 30.
#[test]
fn hsm_kek_full_demo_with_three_replicas() {
    let Some(token) = token("hsm_kek_full_demo_with_three_replicas") else {
        return;
    };
    if std::env::var_os("VELLUM_TEST_HSM_DEMO").is_none() {
        eprintln!(
            "SKIP: hsm_kek_full_demo_with_three_replicas: opt-in with VELLUM_TEST_HSM_DEMO=1 \
             (an unexplained failover flake, see the test's comment)"
        );
        return;
    }
    let _serial = lock();
    let dir = TestDir::new("hsm-demo");
    let pin = pin_file(dir.path(), &token.pin);
    let demo = dir.path().join("demo");
    let label = unique_label("demo");
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let (code, out, err) = vellum_cli(&[
        "demo",
        "--data-dir",
        &s(&demo),
        "--json",
        "--kek-pkcs11-module",
        &s(&token.module),
        "--kek-pkcs11-token",
        &token.label,
        "--kek-pkcs11-key",
        &label,
        "--kek-pkcs11-pin-file",
        &s(&pin),
    ]);
    assert_eq!(code, 0, "demo with the kek in the token: {out}\n{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect("demo summary json");
    assert_eq!(summary["verify_passed"], true, "{summary}");
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(summary["restarted_caught_up"], true, "{summary}");
    assert!(
        summary["events_appended"].as_u64().expect("count") > 0,
        "{summary}"
    );
    assert_eq!(
        summary["events_read_back"], summary["events_appended"],
        "{summary}"
    );
    for replica in 0..3 {
        let data = demo.join(format!("r{replica}"));
        assert!(
            !data.join("keys/kek.key").exists(),
            "replica {replica} has a kek file"
        );
        let meta = std::fs::read_to_string(data.join("vellum.json")).expect("vellum.json");
        assert!(
            meta.contains("\"pkcs11\"") && meta.contains(&label),
            "{meta}"
        );
        assert!(
            !meta.contains(&token.pin),
            "replica {replica} stores the pin: {meta}"
        );
        let wrapped = std::fs::read_dir(data.join("keys"))
            .expect("keys dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("dek-"))
            })
            .count();
        assert!(wrapped > 0, "replica {replica} holds no wrapped data key");
    }
}

/// Goal: `vellum init` with PKCS#11 flags that cannot work says what is
/// wrong (no pin source, an unset pin variable, a module that does not
/// load) and leaves no data directory behind, with or without a token.
#[test]
fn hsm_kek_init_refusals_leave_nothing() {
    let dir = TestDir::new("hsm-init-refused");
    let module = dir.path().join("no-such-module.so");
    let module = module.to_str().expect("utf-8 path");
    let pin = pin_file(dir.path(), "some-pin-5e1d");
    let pin = pin.to_str().expect("utf-8 path");
    let base = |data: &str| -> Vec<String> {
        [
            "init",
            "--data-dir",
            data,
            "--kek-pkcs11-module",
            module,
            "--kek-pkcs11-token",
            "t",
            "--kek-pkcs11-key",
            "k",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // (case, extra flags, environment of the process, expected in stderr)
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "no pin source",
            vec![],
            vec![],
            "--kek-pkcs11-pin-file or --kek-pkcs11-pin-env",
        ),
        (
            "pin variable unset",
            vec!["--kek-pkcs11-pin-env", "VELLUM_TEST_UNSET_PIN_VARIABLE"],
            vec![],
            "VELLUM_TEST_UNSET_PIN_VARIABLE is not set",
        ),
        (
            "module does not load",
            vec!["--kek-pkcs11-pin-env", "VELLUM_TEST_SET_PIN_VARIABLE"],
            vec![("VELLUM_TEST_SET_PIN_VARIABLE", "some-pin-5e1d")],
            "cannot load the pkcs11 module",
        ),
        (
            "module does not load, pin from a file",
            vec!["--kek-pkcs11-pin-file", pin],
            vec![],
            "no-such-module.so",
        ),
    ];
    for (n, (case, extra, env, expected)) in cases.into_iter().enumerate() {
        let data = dir.path().join(format!("data{n}"));
        let mut args = base(data.to_str().expect("utf-8 path"));
        args.extend(extra.iter().map(|s| s.to_string()));
        let output = std::process::Command::new(support::vellum_exe())
            .args(&args)
            .env_remove("VELLUM_TEST_UNSET_PIN_VARIABLE")
            .envs(env)
            .output()
            .expect("run vellum");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{case}: init succeeded");
        assert!(
            stderr.contains(expected),
            "{case}: {stderr:?} lacks {expected:?}"
        );
        assert!(
            !stderr.contains("some-pin-5e1d"),
            "{case}: the pin is shown: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
        assert!(
            !data.exists(),
            "{case}: init left {} behind",
            data.display()
        );
    }
}

/// Goal: a KEK rotation from one token key to a new one rewraps every data
/// key (each event opens byte for byte under the new key), records the new
/// key's label through `persist`, destroys the old token key, and a crash
/// before the commit point destroys the new key instead; a crash at or
/// after it is finished by recovery. The old key is refused afterwards.
#[test]
fn hsm_kek_rotation_rewraps_every_key_and_destroys_the_old_one() {
    let Some(Setup {
        token: _token,
        _serial,
        dir,
        config: old,
    }) = setup(
        "hsm_kek_rotation_rewraps_every_key_and_destroys_the_old_one",
        "hsm-rotate",
        "rotate-old",
    )
    else {
        return;
    };
    // Prepare journal, new key, staging dir, 3 keys, marker: the commit
    // journal is step 8; step 15 is the old key's destruction.
    for (k, committed) in [
        (2, false),
        (7, false),
        (8, true),
        (15, true),
        (u32::MAX, true),
    ] {
        let keys = dir.path().join(format!("keys-{k}"));
        let old = Pkcs11Config {
            key_label: unique_label("rotate-old"),
            ..old.clone()
        };
        let new = Pkcs11Config {
            key_label: unique_label("rotate-new"),
            ..old.clone()
        };
        let store =
            KeyStore::create(&keys, Pkcs11Kek::generate(&old).expect("old kek"), 0).expect("store");
        let mut sealed = Vec::new();
        for stream in [16u64, 17, 18] {
            let (key_id, dek) = store.create_key(stream).expect("key");
            let aad = EventAad {
                cluster: 1,
                stream,
                stream_offset: 0,
                key_id,
            };
            let nonce = store.next_nonce(key_id).expect("nonce");
            let payload = format!("{{\"n\":{stream},\"t\":\"caf\u{e9}\"}}").into_bytes();
            let bytes = seal_event(&dek, nonce, &aad, &[3; 32], &payload).expect("seal");
            sealed.push((key_id, nonce, aad, bytes, payload));
        }
        drop(store);
        let kek_file = keys.join("kek.key");
        let home = vellum::crypto::KeyHome {
            keys_dir: &keys,
            kek_file: &kek_file,
            writer_id: 0,
        };
        let mut persisted = None;
        let current = KekConfig::Pkcs11(old.clone());
        let mut gate = match k {
            u32::MAX => vellum::crypto::CrashGate::never(),
            k => vellum::crypto::CrashGate::after(k),
        };
        let rotated = vellum::crypto::rotate_kek(
            home,
            Some(&current),
            vellum::crypto::NewKek::Pkcs11(new.clone()),
            &mut |config| {
                persisted = config.cloned();
                Ok(())
            },
            &mut gate,
        );
        assert_eq!(rotated.is_ok(), k == u32::MAX, "step {k}: {rotated:?}");
        let recovery = vellum::crypto::recover_kek_rotation(
            home,
            &mut |config| {
                persisted = config.cloned();
                Ok(())
            },
            &mut vellum::crypto::CrashGate::never(),
        )
        .expect("recover");
        let (kept, gone) = match committed {
            true => (&new, &old),
            false => (&old, &new),
        };
        assert_eq!(
            matches!(recovery, vellum::crypto::Recovery::RolledBack),
            !committed,
            "step {k}: {recovery:?}"
        );
        if committed {
            assert_eq!(persisted, Some(KekConfig::Pkcs11(new.clone())), "step {k}");
        }
        let store = KeyStore::open(&keys, Pkcs11Kek::open(kept).expect("kept kek"), 0)
            .unwrap_or_else(|e| panic!("step {k}: {e}"));
        for (key_id, nonce, aad, bytes, payload) in &sealed {
            let dek = store.key(*key_id).expect("lookup").expect("key kept");
            let opened = open_event(&dek, nonce, aad, bytes).expect("open");
            assert_eq!(opened.payload[..], payload[..], "step {k}: byte for byte");
        }
        drop(store);
        match Pkcs11Kek::open(gone) {
            Err(CryptoError::Hsm {
                failure: HsmFailure::KeyNotFound,
                ..
            }) => {}
            other => panic!("step {k}: the retired token key is destroyed: {other:?}"),
        }
    }
}

// ------------------------------------------------------ the signing key

/// A PKCS#11 context and logged-in session on the CI token, directly
/// through cryptoki (as an operator's tool would).
fn raw_session(token: &Token) -> cryptoki::session::Session {
    let context = Pkcs11::new(&token.module).expect("module");
    // The test process may have initialized the module already.
    let _ = context.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ));
    let slot = context
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|slot| {
            context
                .get_token_info(*slot)
                .is_ok_and(|info| info.label().trim_end() == token.label)
        })
        .expect("the ci token");
    let session = context.open_rw_session(slot).expect("session");
    let _ = session.login(UserType::User, Some(&AuthPin::from(token.pin.as_str())));
    session
}

/// Puts an Ed25519 pair on the token by hand: the private half from
/// `private_seed` with the given extractability, the public half of
/// `public_seed` (a different seed makes a pair that does not match).
fn make_ed25519_pair(
    token: &Token,
    label: &str,
    private_seed: [u8; 32],
    public_seed: [u8; 32],
    extractable: bool,
) {
    let session = raw_session(token);
    let oid = vec![0x06, 0x03, 0x2b, 0x65, 0x70];
    let label = Attribute::Label(label.as_bytes().to_vec());
    session
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(extractable),
            Attribute::Sign(true),
            Attribute::EcParams(oid.clone()),
            Attribute::Value(private_seed.to_vec()),
            label.clone(),
        ])
        .expect("private half");
    let public = Signer::from_seed("x", public_seed)
        .expect("name")
        .verifier()
        .public_key();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::EcParams(oid),
            Attribute::EcPoint([&[0x04, 0x20][..], &public[..]].concat()),
            label,
        ])
        .expect("public half");
}

/// Messages like the ones a replica signs: checkpoint bodies of several
/// sizes, and a manifest signature text.
fn signed_messages() -> Vec<String> {
    let mut messages: Vec<String> = (0..8u64)
        .map(|i| {
            format!(
                "example.com/vellum/0011\n{}\nq83vG0Rp2o1GlfHeI3eRk6cS5n7oBzMmGyI3aKJfHQE=\nvellum-head {i} {}\n",
                i * 977,
                "ab".repeat(32)
            )
        })
        .collect();
    messages.push("vellum manifest\n".to_string() + &"x".repeat(4000) + "\n");
    messages
}

/// Goal: an Ed25519 key imported into the token signs every message with
/// the very bytes ed25519-dalek gives for the same seed, has the same key
/// id, reopens as the same key, and its private half cannot be read back.
#[test]
fn hsm_signing_imported_key_signs_exactly_as_dalek() {
    let Some(Setup {
        token,
        _serial,
        dir: _dir,
        config,
    }) = setup(
        "hsm_signing_imported_key_signs_exactly_as_dalek",
        "hsm-sign-import",
        "sign-import",
    )
    else {
        return;
    };
    let seed = [0x5a; 32];
    let file_key = Signer::from_seed("vellum-0badcafe-r0", seed).expect("name");
    let token_key = Pkcs11Signer::import(&config, "vellum-0badcafe-r0", &seed).expect("import");
    assert_eq!(NoteSigner::verifier(&token_key), file_key.verifier());
    assert_eq!(NoteSigner::key_id(&token_key), file_key.key_id());
    for message in signed_messages() {
        assert_eq!(
            token_key.try_sign(message.as_bytes()).expect("token signs"),
            file_key.sign(message.as_bytes()),
            "signature of a {}-byte message",
            message.len()
        );
    }
    let again = Pkcs11Signer::import(&config, "vellum-0badcafe-r0", &seed)
        .expect_err("a second import under the label is refused");
    assert!(
        matches!(
            again,
            CryptoError::Hsm {
                failure: HsmFailure::KeyExists,
                ..
            }
        ),
        "{again}"
    );
    drop(token_key);
    let reopened = Pkcs11Signer::open(&config, "vellum-0badcafe-r0").expect("reopen");
    assert_eq!(NoteSigner::verifier(&reopened), file_key.verifier());

    // The private half stays in the token: CKA_VALUE is refused.
    let session = raw_session(&token);
    let private = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(config.key_label.as_bytes().to_vec()),
        ])
        .expect("find");
    assert_eq!(private.len(), 1);
    let value = session.get_attributes(private[0], &[cryptoki::object::AttributeType::Value]);
    assert!(
        !matches!(value.as_deref(), Ok([Attribute::Value(bytes)]) if !bytes.is_empty()),
        "the token revealed the private key: {value:?}"
    );
}

/// Goal: a key generated on the token (what `vellum init` does) signs
/// notes that verify under its public key, and a second open_or_generate
/// finds the same key instead of making another.
#[test]
fn hsm_signing_generated_key_signs_verifiable_notes() {
    let Some(Setup {
        token: _token,
        _serial,
        dir: _dir,
        config,
    }) = setup(
        "hsm_signing_generated_key_signs_verifiable_notes",
        "hsm-sign-gen",
        "sign-gen",
    )
    else {
        return;
    };
    let key = Pkcs11Signer::open_or_generate(&config, "vellum-00c0ffee-r0").expect("generate");
    let verifier = NoteSigner::verifier(&key);
    for message in signed_messages() {
        let note = Note::sign(&message, &[&key]).expect("sign a note");
        assert_eq!(
            note.verify(std::slice::from_ref(&verifier))
                .expect("verifies"),
            vec![verifier.clone()]
        );
    }
    drop(key);
    let same = Pkcs11Signer::open_or_generate(&config, "vellum-00c0ffee-r0").expect("reopen");
    assert_eq!(NoteSigner::verifier(&same), verifier, "no second key made");
}

/// Goal: a token whose signature does not verify under the key's public
/// key (here a pair whose halves do not match) yields an error naming the
/// token and label, and no note or certificate is made with it.
#[test]
fn hsm_signing_refuses_a_token_signature_that_does_not_verify() {
    let Some(Setup {
        token,
        _serial,
        dir: _dir,
        config,
    }) = setup(
        "hsm_signing_refuses_a_token_signature_that_does_not_verify",
        "hsm-sign-bad",
        "sign-bad",
    )
    else {
        return;
    };
    make_ed25519_pair(&token, &config.key_label, [1; 32], [2; 32], false);
    let key = Pkcs11Signer::open(&config, "vellum-0000dead-r0").expect("opens");
    let error = key
        .try_sign(b"example.com/vellum\n1\nroot\n")
        .expect_err("a signature that does not verify is refused");
    let message = error.to_string();
    assert!(message.contains("does not verify"), "{message}");
    assert!(
        message.contains(&config.key_label) && message.contains(&token.label),
        "{message}"
    );
    assert!(matches!(
        Note::sign("example.com/vellum\n1\nroot\n", &[&key]),
        Err(vellum_audit::note::NoteError::SignFailed { .. })
    ));
}

/// Goal: a wrong PIN, a missing label and an extractable key each give an
/// error that says "signing key" and names the token and the label (never
/// the PIN).
#[test]
fn hsm_signing_misconfigurations_are_named() {
    let Some(Setup {
        token,
        _serial,
        dir,
        config,
    }) = setup(
        "hsm_signing_misconfigurations_are_named",
        "hsm-sign-misconf",
        "sign-misconf",
    )
    else {
        return;
    };
    let named = |error: &CryptoError, label: &str, what: &str| {
        let message = error.to_string();
        assert!(message.contains("signing key"), "{message}");
        assert!(message.contains(&token.label), "{message}");
        assert!(message.contains(label), "{message}");
        assert!(message.contains(what), "{message} does not say {what}");
        assert!(!message.contains(&token.pin), "{message}");
    };
    drop(Pkcs11Signer::open_or_generate(&config, "vellum-00000001-r0").expect("generate"));

    let missing = Pkcs11Config {
        key_label: unique_label("sign-absent"),
        ..config.clone()
    };
    let error = Pkcs11Signer::open(&missing, "vellum-00000001-r0").expect_err("no such key");
    named(&error, &missing.key_label, "no ed25519 private key");

    let wrong_dir = dir.path().join("wrong");
    std::fs::create_dir(&wrong_dir).expect("dir");
    let wrong = Pkcs11Config {
        pin_file: Some(pin_file(&wrong_dir, "not-the-pin-77d1")),
        ..config.clone()
    };
    // Login state is per process: a session of this process that is logged
    // in already would mask the wrong PIN, so nothing of ours is open here.
    let error = Pkcs11Signer::open(&wrong, "vellum-00000001-r0").expect_err("wrong pin");
    named(&error, &config.key_label, "incorrect pin");
    assert!(!error.to_string().contains("not-the-pin-77d1"));

    let loose = unique_label("sign-loose");
    make_ed25519_pair(&token, &loose, [3; 32], [3; 32], true);
    let loose_config = Pkcs11Config {
        key_label: loose.clone(),
        ..config.clone()
    };
    let error = Pkcs11Signer::open(&loose_config, "vellum-00000001-r0").expect_err("extractable");
    named(&error, &loose, "CKA_EXTRACTABLE");
}

/// Goal (measurement): the per-signature cost of the token key against the
/// file key, over the same checkpoint-sized messages; every token
/// signature equals the file key's. Prints the numbers (`--nocapture`).
#[test]
fn hsm_signing_cost_against_the_file_key() {
    let Some(Setup {
        token: _token,
        _serial,
        dir: _dir,
        config,
    }) = setup(
        "hsm_signing_cost_against_the_file_key",
        "hsm-sign-cost",
        "sign-cost",
    )
    else {
        return;
    };
    const SIGNATURES: usize = 2000;
    let seed = [0x33; 32];
    let file_key = Signer::from_seed("vellum-0c057000-r0", seed).expect("name");
    let token_key = Pkcs11Signer::import(&config, "vellum-0c057000-r0", &seed).expect("import");
    let messages = signed_messages();
    let mut file_signatures = Vec::with_capacity(SIGNATURES);
    let started = std::time::Instant::now();
    for i in 0..SIGNATURES {
        file_signatures.push(file_key.sign(messages[i % messages.len()].as_bytes()));
    }
    let file_elapsed = started.elapsed();
    let started = std::time::Instant::now();
    for (i, expected) in file_signatures.iter().enumerate() {
        let signature = token_key
            .try_sign(messages[i % messages.len()].as_bytes())
            .expect("token signs");
        assert_eq!(&signature, expected, "signature {i}");
    }
    let token_elapsed = started.elapsed();
    let per = |elapsed: std::time::Duration| elapsed.as_secs_f64() * 1e6 / SIGNATURES as f64;
    eprintln!(
        "signing cost over {SIGNATURES} signatures: file key {:.1} us, pkcs11 token key {:.1} us \
         (C_Sign plus the local check)",
        per(file_elapsed),
        per(token_elapsed)
    );
}

/// The `--signing-pkcs11-*` flags for `config`'s token and label.
fn signing_flags(config: &Pkcs11Config) -> Vec<String> {
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    vec![
        "--signing-pkcs11-module".into(),
        s(&config.module),
        "--signing-pkcs11-token".into(),
        config.token_label.clone(),
        "--signing-pkcs11-key".into(),
        config.key_label.clone(),
        "--signing-pkcs11-pin-file".into(),
        s(config.pin_file.as_deref().expect("a pin file")),
    ]
}

fn cli(args: &[String]) -> (i32, String, String) {
    vellum_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Goal: `vellum init --signing-pkcs11-*` keeps the replica's signing key
/// in the token (no key file; vellum.json names the token, not the PIN);
/// appends are certified by it and `vellum verify` passes with a copy of
/// the policy; a wrong PIN, a missing label or another key under the label
/// is refused naming token and label; rotate-signing is refused plainly.
#[test]
fn hsm_signing_data_dir_certifies_and_verifies_with_the_policy() {
    let Some(Setup {
        token,
        _serial,
        dir,
        config,
    }) = setup(
        "hsm_signing_data_dir_certifies_and_verifies_with_the_policy",
        "hsm-sign-datadir",
        "sign-datadir",
    )
    else {
        return;
    };
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let data = dir.path().join("data");
    let mut init = vec!["init".to_string(), "--data-dir".into(), s(&data)];
    init.extend(signing_flags(&config));
    let (code, out, err) = cli(&init);
    assert_eq!(code, 0, "init: {out}\n{err}");
    assert!(out.contains("signing  pkcs11 token"), "{out}");
    assert!(
        !data.join("keys/signing.key").exists(),
        "no signing key file"
    );
    let meta = std::fs::read_to_string(data.join("vellum.json")).expect("vellum.json");
    let parsed: serde_json::Value = serde_json::from_str(&meta).expect("json");
    assert_eq!(
        parsed["signing"]["pkcs11"]["key_label"],
        config.key_label.as_str()
    );
    assert!(!meta.contains(&token.pin), "{meta}");

    // The policy pins the token's public key, which `keys show` reports.
    let name = parsed["name"].as_str().expect("name").to_string();
    let on_token = NoteSigner::verifier(&Pkcs11Signer::open(&config, &name).expect("open"));
    let policy = dir.path().join("auditor-policy.txt");
    std::fs::copy(data.join("policy.txt"), &policy).expect("the auditor's copy");
    let pinned = std::fs::read_to_string(&policy).expect("policy");
    assert!(pinned.contains(&on_token.to_vkey()), "{pinned}");
    let (code, out, err) = vellum_cli(&["keys", "show", "--data-dir", &s(&data), "--vkeys"]);
    assert_eq!(code, 0, "keys show: {err}");
    assert_eq!(out.trim_end(), on_token.to_vkey());

    for n in 0..3 {
        let file = dir.path().join(format!("batch{n}.jsonl"));
        std::fs::write(&file, format!("{{\"n\":{n}}}\n{{\"n\":\"{n}b\"}}\n")).expect("batch");
        let (code, out, err) = vellum_cli(&[
            "append",
            "--data-dir",
            &s(&data),
            "--stream",
            "21",
            "--file",
            &s(&file),
        ]);
        assert_eq!(code, 0, "append {n}: {out}\n{err}");
    }
    let verify = |what: &str| {
        let (code, out, err) =
            vellum_cli(&["verify", "--data-dir", &s(&data), "--policy", &s(&policy)]);
        assert_eq!(code, 0, "verify {what}: {out}\n{err}");
    };
    verify("with the token key");

    // A policy pinning another key fails the same log.
    let other = Signer::from_seed(&name, [9; 32]).expect("name").verifier();
    let forged_policy = dir.path().join("other-policy.txt");
    std::fs::write(
        &forged_policy,
        pinned.replace(&on_token.to_vkey(), &other.to_vkey()),
    )
    .expect("write");
    let (code, out, _) = vellum_cli(&[
        "verify",
        "--data-dir",
        &s(&data),
        "--policy",
        &s(&forged_policy),
    ]);
    assert_ne!(code, 0, "a policy pinning another key must fail: {out}");

    // Misconfigurations of vellum.json: each refused by name, data untouched.
    let wrong_dir = dir.path().join("wrong");
    std::fs::create_dir(&wrong_dir).expect("dir");
    let other_label = unique_label("sign-datadir-other");
    drop(
        Pkcs11Signer::open_or_generate(
            &Pkcs11Config {
                key_label: other_label.clone(),
                ..config.clone()
            },
            &name,
        )
        .expect("another key"),
    );
    let absent = unique_label("sign-datadir-absent");
    let cases = [
        (
            "pin_file",
            s(&pin_file(&wrong_dir, "not-the-pin-3f0a")),
            "incorrect pin",
            config.key_label.clone(),
        ),
        (
            "key_label",
            absent.clone(),
            "no ed25519 private key",
            absent.clone(),
        ),
        (
            "key_label",
            other_label.clone(),
            "is not the key",
            other_label.clone(),
        ),
    ];
    for (field, value, says, label) in cases {
        let mut changed = parsed.clone();
        changed["signing"]["pkcs11"][field] = serde_json::Value::String(value);
        std::fs::write(data.join("vellum.json"), changed.to_string()).expect("write meta");
        let file = dir.path().join("batch0.jsonl");
        let (code, out, err) = vellum_cli(&[
            "append",
            "--data-dir",
            &s(&data),
            "--stream",
            "21",
            "--file",
            &s(&file),
        ]);
        assert_ne!(code, 0, "append with {field} changed must fail: {out}");
        assert!(err.contains(says), "{field}: {err}");
        assert!(err.contains(&label), "{field}: {err} does not name {label}");
        assert!(
            !err.contains("not-the-pin-3f0a") && !err.contains(&token.pin),
            "{err}"
        );
    }
    std::fs::write(data.join("vellum.json"), &meta).expect("restore meta");
    verify("after the refusals");

    let (code, _, err) = vellum_cli(&["keys", "rotate-signing", "--data-dir", &s(&data)]);
    assert_ne!(code, 0, "rotate-signing of a token key");
    assert!(
        err.contains("not supported yet") && err.contains(&config.key_label),
        "{err}"
    );
}

/// Goal: a cluster of three replica processes whose signing keys were moved
/// from their files into the token (`vellum keys move-signing-to-pkcs11`,
/// same keys, so the policy is unchanged) commits appends with quorum
/// certificates, exports a bundle whose manifest the token signed, and
/// passes `vellum verify --cluster` and `--bundle` with the policy.
#[test]
fn hsm_signing_cluster_of_three_certifies_with_token_keys() {
    let Some(Setup {
        token: _token,
        _serial,
        dir,
        config,
    }) = setup(
        "hsm_signing_cluster_of_three_certifies_with_token_keys",
        "hsm-sign-cluster",
        "sign-cluster",
    )
    else {
        return;
    };
    // The token lock is held here, outside the runtime's tasks.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(cluster_with_token_keys(&dir, &config));
}

async fn cluster_with_token_keys(dir: &TestDir, config: &Pkcs11Config) {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(60);
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let root = dir.path().join("cluster");
    let labels: Vec<String> = (0..3)
        .map(|i| format!("{}-r{i}", config.key_label))
        .collect();
    let move_keys = |dev: &vellum::cluster::DevCluster| -> anyhow::Result<()> {
        for (i, label) in labels.iter().enumerate() {
            let data = dev.dir.join(format!("r{i}"));
            let key = Pkcs11Config {
                key_label: label.clone(),
                ..config.clone()
            };
            let mut args = vec![
                "keys".to_string(),
                "move-signing-to-pkcs11".into(),
                "--data-dir".into(),
                s(&data),
            ];
            args.extend(signing_flags(&key));
            let (code, out, err) = cli(&args);
            anyhow::ensure!(code == 0, "move r{i}: {out}\n{err}");
            anyhow::ensure!(
                !data.join("keys/signing.key").exists(),
                "r{i} key file left"
            );
        }
        Ok(())
    };
    let mut cluster = vellum::local_cluster::LocalCluster::start_prepared(
        &root,
        3,
        support::vellum_exe(),
        move_keys,
    )
    .expect("cluster");
    cluster.wait_primary(WAIT).await.expect("primary");
    let client = cluster.client(None).expect("client");
    let policy_path = cluster.dev.policy_path.clone();
    let policy = vellum_audit::policy::Policy::parse(
        &std::fs::read_to_string(&policy_path).expect("policy"),
    )
    .expect("policy parses");
    for n in 0..3u64 {
        let events = vec![bytes::Bytes::from(format!("{{\"chart\":7100,\"n\":{n}}}"))];
        let receipt = tokio::time::timeout(WAIT, client.append(7100, events, None))
            .await
            .expect("append in time")
            .expect("append");
        let certificate =
            vellum_audit::checkpoint::Certificate::parse(&receipt.certificate).expect("parse");
        let verified = certificate.verify(&policy).expect("quorum certificate");
        assert!(verified.signers.len() >= 2, "{n}: {:?}", verified.signers);
    }
    let bundle = dir.path().join("bundle");
    let cluster_dir = cluster.dev.dir.clone();
    let exported = {
        let (bundle, cluster_dir) = (bundle.clone(), cluster_dir.clone());
        tokio::task::spawn_blocking(move || {
            vellum_cli(&[
                "export",
                "events",
                "--cluster",
                &s(&cluster_dir),
                "--stream",
                "7100",
                "--to",
                "3",
                "--purpose",
                "hsm signing test",
                "--out",
                &s(&bundle),
            ])
        })
        .await
        .expect("export task")
    };
    assert_eq!(exported.0, 0, "export: {}\n{}", exported.1, exported.2);
    cluster.stop().expect("stop");
    let (code, out, err) = vellum_cli(&[
        "verify",
        "--bundle",
        &s(&bundle),
        "--policy",
        &s(&policy_path),
    ]);
    assert_eq!(code, 0, "bundle signed on the token:\n{out}\n{err}");
    let (code, out, err) = vellum_cli(&[
        "verify",
        "--cluster",
        &s(&cluster_dir),
        "--policy",
        &s(&policy_path),
    ]);
    assert_eq!(code, 0, "verify --cluster:\n{out}\n{err}");
}
