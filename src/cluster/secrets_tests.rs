//! Tests of the replica secrets file and of `replace_replica`: round trip,
//! the layout a wiped replica would have, and every refusal.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::*;
use crate::cluster::create_dev_cluster;

/// A dev cluster of three replicas (no processes) in `root/cluster`.
fn dev(root: &Path) -> PathBuf {
    let dir = root.join("cluster");
    create_dev_cluster(&dir, 3, None).expect("dev cluster");
    dir
}

fn export(cluster: &Path, replica: u8, out: &Path) -> SecretsSummary {
    export_secrets(&cluster.join(format!("r{replica}.json")), out).expect("export")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Every file and directory under `root`, relative, sorted.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let relative = path.strip_prefix(root).expect("under root");
            out.push(relative.display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

fn error_text(result: Result<impl std::fmt::Debug, SecretsError>) -> String {
    result.expect_err("refused").to_string()
}

// Goal: export writes a private file once; replace lays out exactly the
// files a brand-new replica has (no log, no view state, no index, no data
// key: what recovery treats as a wiped disk), plus a start config that
// loads against it, with the kept files byte for byte.
#[test]
fn export_then_replace_lays_out_a_fresh_replica() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = dev(root.path());
    let out = root.path().join("r1.secrets");
    let summary = export(&cluster, 1, &out);
    assert_eq!((summary.replica, summary.kek.as_str()), (1, "file"));
    assert_eq!(mode(&out), 0o600);
    let again = export_secrets(&cluster.join("r1.json"), &out);
    assert!(error_text(again).contains("refusing to overwrite"));

    let new = root.path().join("new-r1");
    let done = replace_replica(&out, Some(&new), None).expect("replace");
    let old = cluster.join("r1");
    let data_files: Vec<String> = listing(&new)
        .into_iter()
        .filter(|p| {
            !p.starts_with("tls")
                && p != "tokens.txt"
                && p != CLIENT_PRINCIPALS_FILE
                && p != REPLACED_CONFIG_FILE
        })
        .collect();
    assert_eq!(
        data_files,
        listing(&old),
        "a new replica's files, nothing more"
    );
    let (old_meta, new_meta) = (
        NodeMeta::load(&DataDir::new(&old)).expect("old meta"),
        NodeMeta::load(&DataDir::new(&new)).expect("new meta"),
    );
    assert!(new_meta.writer_epoch.is_some(), "a new writer epoch");
    assert_eq!(
        NodeMeta {
            writer_epoch: None,
            ..new_meta
        },
        old_meta,
        "the same identity otherwise"
    );
    for name in ["policy.txt", "keys/signing.key", "keys/kek.key"] {
        assert_eq!(
            std::fs::read(new.join(name)).expect("new"),
            std::fs::read(old.join(name)).expect("old"),
            "{name} byte for byte"
        );
    }
    for absent in ["segments", crate::log::VSR_STATE_FILE, "index.sqlite3"] {
        assert!(!new.join(absent).exists(), "{absent} is never laid out");
    }
    assert_eq!(mode(&new.join("keys")), 0o700);
    assert_eq!(mode(&new.join("tls/replica.key")), 0o600);
    assert_eq!(
        std::fs::read(new.join("tls/replica.pem")).expect("cert"),
        std::fs::read(cluster.join("tls/replica-1.pem")).expect("original cert")
    );
    let config = ClusterConfig::load(Path::new(done.config.as_deref().expect("config")))
        .expect("the written config loads against the new directory");
    let original = ClusterConfig::load(&cluster.join("r1.json")).expect("original");
    assert_eq!((config.cluster, config.replica), (original.cluster, 1));
    assert_eq!(config.replicas, original.replicas);
    // The mTLS client CA and principals come back too, where the config
    // points, byte for byte (a replaced replica knows its service clients).
    let (kept, laid) = (
        original
            .client_certs
            .expect("a dev cluster has client certificates"),
        config.client_certs.expect("the replaced config names them"),
    );
    for (new_file, old_file) in [(&laid.ca, &kept.ca), (&laid.principals, &kept.principals)] {
        assert!(
            new_file.starts_with(&new),
            "{} inside the new directory",
            new_file.display()
        );
        assert_eq!(
            std::fs::read(new_file).expect("laid out"),
            std::fs::read(old_file).expect("kept"),
            "{} byte for byte",
            new_file.display()
        );
    }
    assert_eq!(mode(&laid.principals), 0o600);
}

// Goal: a truncated, changed, foreign or inconsistent file is refused with
// a message that names the problem, before anything is written.
#[test]
fn damaged_secrets_are_refused_naming_the_problem() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = dev(root.path());
    let out = root.path().join("r2.secrets");
    export(&cluster, 2, &out);
    let good = std::fs::read(&out).expect("read");
    let text = String::from_utf8(good.clone()).expect("utf-8");
    let json_start = SECRETS_HEADER.len() + 1;
    let json_end = text[json_start..].find('\n').expect("json line") + json_start;
    let flipped = {
        let mut bytes = good.clone();
        bytes[json_start + 20] ^= 0x01;
        bytes
    };
    // A changed body with a checksum recomputed over it: caught by the
    // cross-checks, not the checksum.
    let resigned = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut body: serde_json::Value =
            serde_json::from_str(&text[json_start..json_end]).expect("json");
        change(&mut body);
        let signed = format!("{SECRETS_HEADER}\n{body}\n");
        let sum = to_hex(&sha256(&[signed.as_bytes()]));
        format!("{signed}sha256 {sum}\n").into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "not a vellum secrets file"),
        ("header only", good[..json_start].to_vec(), "truncated"),
        (
            "cut in the json",
            good[..json_start + 40].to_vec(),
            "truncated",
        ),
        ("no checksum", good[..=json_end].to_vec(), "truncated"),
        ("cut checksum", good[..good.len() - 5].to_vec(), "truncated"),
        ("flipped bit", flipped, "checksum mismatch"),
        (
            "other header",
            text.replacen("v1", "v9", 1).into_bytes(),
            "not a vellum secrets file",
        ),
        (
            "other replica",
            resigned(&|b| b["replica"] = 1.into()),
            "disagrees",
        ),
        (
            "unknown field",
            resigned(&|b| b["x"] = 1.into()),
            "unknown field",
        ),
        (
            "no kek file",
            resigned(&|b| b["kek"] = serde_json::Value::Null),
            "kek: a KEK file",
        ),
        (
            "no signing key file",
            resigned(&|b| {
                b.as_object_mut().expect("object").remove("signing_key");
            }),
            "signing_key: a signing key file",
        ),
        (
            "no client CA",
            resigned(&|b| {
                b.as_object_mut().expect("object").remove("client_certs");
            }),
            "client_certs: the client CA",
        ),
        (
            "bad base64",
            resigned(&|b| b["policy"] = "%%".into()),
            "policy: not base64",
        ),
    ];
    for (what, bytes, expected) in cases {
        let message = error_text(decode_secrets(&bytes, &out));
        assert!(message.contains(expected), "{what}: {message}");
        assert!(
            message.contains("r2.secrets"),
            "{what} names the file: {message}"
        );
    }
    assert!(
        decode_secrets(&good, &out).is_ok(),
        "the untouched file decodes"
    );
}

// Goal: replace refuses a readable-by-others secrets file, a non-empty
// target, and secrets of another replica or cluster than the config it
// will start with, and leaves the target as it was.
#[test]
fn replace_refuses_strangers_and_touches_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = dev(root.path());
    let other = root.path().join("other");
    create_dev_cluster(&other, 3, None).expect("another cluster");
    let (r1, r2, foreign) = (
        root.path().join("r1.secrets"),
        root.path().join("r2.secrets"),
        root.path().join("foreign.secrets"),
    );
    export(&cluster, 1, &r1);
    export(&cluster, 2, &r2);
    export_secrets(&other.join("r1.json"), &foreign).expect("export other");
    let config = cluster.join("r1.json");
    std::fs::remove_dir_all(cluster.join("r1")).expect("lose the disk");

    let wrong_replica = error_text(replace_replica(&r2, None, Some(&config)));
    assert!(
        wrong_replica.contains("secrets of replica 2"),
        "{wrong_replica}"
    );
    assert!(
        wrong_replica.contains("starts replica 1"),
        "{wrong_replica}"
    );
    let wrong_cluster = error_text(replace_replica(&foreign, None, Some(&config)));
    assert!(wrong_cluster.contains("of cluster"), "{wrong_cluster}");
    let elsewhere = root.path().join("elsewhere");
    let wrong_dir = error_text(replace_replica(&r1, Some(&elsewhere), Some(&config)));
    assert!(
        wrong_dir.contains("is not the data directory"),
        "{wrong_dir}"
    );
    assert!(
        !cluster.join("r1").exists() && !elsewhere.exists(),
        "nothing created"
    );

    std::fs::set_permissions(&r1, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let open = error_text(replace_replica(&r1, None, Some(&config)));
    assert!(open.contains("insecure permissions 0644"), "{open}");
    std::fs::set_permissions(&r1, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let busy = root.path().join("busy");
    std::fs::create_dir(&busy).expect("mkdir");
    std::fs::write(busy.join("segments"), b"old").expect("an old file");
    let non_empty = error_text(replace_replica(&r1, Some(&busy), None));
    assert!(non_empty.contains("is not empty"), "{non_empty}");
    assert_eq!(
        listing(&busy),
        vec!["segments".to_string()],
        "left as it was"
    );

    replace_replica(&r1, None, Some(&config)).expect("the right secrets into the config's dir");
    ClusterConfig::load(&config).expect("the kept config starts the new directory");
}

// Goal: no export while a key rotation is under way (its secrets would be
// neither the old nor the new ones).
#[test]
fn export_refuses_during_a_rotation() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = dev(root.path());
    let next = cluster.join("r0/keys").join(crypto::NEXT_SIGNING_KEY_FILE);
    std::fs::write(&next, b"half").expect("a rotation's leftover");
    let out = root.path().join("r0.secrets");
    let message = error_text(export_secrets(&cluster.join("r0.json"), &out));
    assert!(message.contains("rotation is under way"), "{message}");
    assert!(!out.exists(), "nothing written");
}

// Goal: a replaced replica writes under a writer id of its own: under a data
// key it gets back from a peer (whose copy does not record how far its
// earlier life used it) its nonces never carry its earlier life's prefix,
// and the key ids it creates lie outside that life's.
#[test]
fn replaced_replica_never_reuses_its_earlier_writer_id() {
    /// `crypto::KEY_ID_WRITER_SHIFT`: key ids carry their writer from bit 40.
    const WRITER_SHIFT: u32 = 40;
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = dev(root.path());
    let out = root.path().join("r1.secrets");
    export(&cluster, 1, &out);
    let open = |dir: &DataDir| {
        let meta = NodeMeta::load(dir).expect("meta");
        let kek = crypto::open_kek(None, &dir.kek()).expect("kek");
        let store = KeyStore::open(&dir.keys(), kek, meta.writer_id()).expect("store");
        (meta, store)
    };
    let (old_meta, old) = open(&DataDir::new(cluster.join("r1")));
    let (key_id, _) = old.create_key(77).expect("a key of the earlier life");
    let old_nonce = old.next_nonce(key_id).expect("nonce");
    let kept_by_peer = old.export_key(key_id).expect("export").expect("held");
    drop(old);

    let new_path = root.path().join("new-r1");
    replace_replica(&out, Some(&new_path), None).expect("replace");
    let (new_meta, new) = open(&DataDir::new(&new_path));
    assert_eq!(new_meta.writer_id() & 0b111, 1, "replica 1 in the low bits");
    assert_ne!(
        new_meta.writer_id(),
        old_meta.writer_id(),
        "a new writer id"
    );
    assert!(
        new.import_key(&kept_by_peer).expect("import"),
        "the key comes back"
    );
    let new_nonce = new.next_nonce(key_id).expect("nonce");
    assert_ne!(new_nonce[..4], old_nonce[..4], "another nonce prefix");
    let (own, _) = new.create_key(78).expect("a key of the new life");
    assert_ne!(
        own >> WRITER_SHIFT,
        key_id >> WRITER_SHIFT,
        "another key id range"
    );
}
