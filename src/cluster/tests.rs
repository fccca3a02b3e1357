//! Tests of the cluster module: config validation (every error names its
//! field), dev cluster creation and reopening, and process supervision with
//! stand-in programs (`/bin/sleep`, small shell scripts).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;

use super::*;
use crate::crypto::{Kek, KeyStore};
use crate::datadir::{DataDir, NodeMeta};

const CLUSTER_HEX: &str = "0123456789abcdef0123456789abcdef";

fn signer(i: u8) -> Signer {
    Signer::from_seed(&format!("vellum-01234567-r{i}"), [i + 1; 32]).unwrap()
}

/// A valid 3-replica config file body (no data dir on disk yet).
fn config_json() -> Value {
    let replicas: Vec<Value> = (0..3u8)
        .map(|i| {
            json!({
                "address": format!("127.0.0.1:{}", 7100 + u16::from(i)),
                "api_address": format!("127.0.0.1:{}", 7200 + u16::from(i)),
                "verifier": signer(i).verifier().to_vkey(),
            })
        })
        .collect();
    json!({
        "cluster": CLUSTER_HEX, "replica": 1, "data_dir": "r1", "replicas": replicas,
        "tls": { "ca": "tls/ca.pem", "cert": "tls/replica-1.pem", "key": "tls/replica-1.key" },
        "tokens": "tokens.txt", "index_url": null
    })
}

fn write_config(dir: &Path, value: &Value) -> PathBuf {
    let path = dir.join("r1.json");
    std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
    path
}

/// Loads `config_json()` changed by `change`, expecting an error; returns its message.
fn load_error(change: impl FnOnce(&mut Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut value = config_json();
    change(&mut value);
    let path = write_config(dir.path(), &value);
    let error = ClusterConfig::load(&path).expect_err("the config must be refused");
    let message = error.to_string();
    assert!(
        message.starts_with(&path.display().to_string()),
        "message names the file: {message}"
    );
    message
}

fn assert_names(message: &str, expected: &str) {
    assert!(
        message.contains(expected),
        "expected {expected:?} in {message:?}"
    );
}

// Goal: a valid file loads, relative paths resolve against its directory,
// and the accessors answer for a 3-replica cluster.
#[test]
fn config_load_resolves_paths_and_accessors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config_json());
    let config = ClusterConfig::load(&path).unwrap();
    assert_eq!(
        config.cluster,
        u128::from_str_radix(CLUSTER_HEX, 16).unwrap()
    );
    assert_eq!(config.data_dir, dir.path().join("r1"));
    assert_eq!(config.tls.cert, dir.path().join("tls/replica-1.pem"));
    assert_eq!(config.tokens, dir.path().join("tokens.txt"));
    assert_eq!(config.quorum(), 2);
    assert_eq!(config.replica_count(), 3);
    assert_eq!(config.api_url(2), "https://127.0.0.1:7202");
    assert_eq!(config.this_replica().verifier, signer(1).verifier());
    assert_eq!(config.policy().quorum, 2);
    assert_eq!(config.policy().verifiers.len(), 3);
}

// Goal: store writes paths relative to the file, and load reads back an equal config.
#[test]
fn config_store_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let config = ClusterConfig::load(&write_config(dir.path(), &config_json())).unwrap();
    let copy = dir.path().join("copy.json");
    config.store(&copy).unwrap();
    let text = std::fs::read_to_string(&copy).unwrap();
    assert!(
        text.contains("\"data_dir\": \"r1\""),
        "relative path: {text}"
    );
    assert_eq!(ClusterConfig::load(&copy).unwrap(), config);
}

// Goal: a bad replica address names the replica's field and the value.
#[test]
fn config_invalid_address_names_field() {
    let message = load_error(|v| v["replicas"][1]["address"] = json!("x"));
    assert_names(
        &message,
        "replicas[1].address: invalid socket address \"x\"",
    );
}

// Goal: the retention policy loads and round-trips when in range; 0 and
// more than 36,500 days are refused naming the field, a number beyond u64
// naming its line.
#[test]
fn config_retention_policy_is_checked_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut value = config_json();
    value["retention_days_after_last_event"] = json!(2190);
    let config = ClusterConfig::load(&write_config(dir.path(), &value)).unwrap();
    assert_eq!(config.retention_days_after_last_event, Some(2190));
    let copy = dir.path().join("copy.json");
    config.store(&copy).unwrap();
    assert_eq!(ClusterConfig::load(&copy).unwrap(), config);
    let plain = ClusterConfig::load(&write_config(dir.path(), &config_json())).unwrap();
    assert_eq!(plain.retention_days_after_last_event, None);
    for days in [json!(0), json!(36_501)] {
        let message = load_error(|v| v["retention_days_after_last_event"] = days.clone());
        assert_names(&message, "retention_days_after_last_event:");
    }
    let message = load_error(|v| {
        v["retention_days_after_last_event"] = json!(18_446_744_073_709_551_616_f64)
    });
    assert_names(&message, "expected u64 at line");
}

// Goal: a bad API address names the replica's api_address field.
#[test]
fn config_invalid_api_address_names_field() {
    let message = load_error(|v| v["replicas"][2]["api_address"] = json!("localhost"));
    assert_names(&message, "replicas[2].api_address: invalid socket address");
}

// Goal: a replica index beyond the list names `replica` and the count.
#[test]
fn config_replica_out_of_range_names_field() {
    let message = load_error(|v| v["replica"] = json!(3));
    assert_names(&message, "replica: 3 is out of range for 3 replicas");
}

// Goal: an even number of replicas is refused, naming `replicas`.
#[test]
fn config_even_replica_count_names_field() {
    let message = load_error(|v| {
        v["replicas"].as_array_mut().unwrap().pop();
        v["replica"] = json!(0);
    });
    assert_names(
        &message,
        "replicas: a cluster needs an odd number of replicas (1, 3, 5, 7), got 2",
    );
}

// Goal: an empty replica list is refused, naming `replicas`.
#[test]
fn config_no_replicas_names_field() {
    let message = load_error(|v| v["replicas"] = json!([]));
    assert_names(&message, "replicas: a cluster needs an odd number");
}

// Goal: two replicas on one address are refused, naming both fields.
#[test]
fn config_duplicate_address_names_both_fields() {
    let message = load_error(|v| v["replicas"][2]["address"] = json!("127.0.0.1:7200"));
    assert_names(
        &message,
        "replicas[2].address: 127.0.0.1:7200 is already used by replicas[0].api_address",
    );
}

// Goal: a cluster id that is not 32 hex digits names `cluster`.
#[test]
fn config_bad_cluster_names_field() {
    for bad in ["abc", "0123456789abcdef0123456789abcdeg", ""] {
        let message = load_error(|v| v["cluster"] = json!(bad));
        assert_names(&message, "cluster: must be 32 hex digits");
    }
}

// Goal: an unknown field, top-level or nested, is refused with serde's
// message naming it (plus the file name, checked in load_error).
#[test]
fn config_unknown_field_refused() {
    let message = load_error(|v| v["replica_count"] = json!(3));
    assert_names(&message, "unknown field `replica_count`");
    let message = load_error(|v| v["tls"]["ca_file"] = json!("x"));
    assert_names(&message, "unknown field `ca_file`");
    let message = load_error(|v| v["replicas"][0]["port"] = json!(1));
    assert_names(&message, "unknown field `port`");
}

// Goal: a verifier that does not parse names its replica's verifier field.
#[test]
fn config_bad_verifier_names_field() {
    let message = load_error(|v| v["replicas"][0]["verifier"] = json!("not-a-key"));
    assert_names(
        &message,
        "replicas[0].verifier: invalid verifier key \"not-a-key\"",
    );
}

// Goal: the same verifier key pinned for two replicas is refused.
#[test]
fn config_duplicate_verifier_names_field() {
    let message =
        load_error(|v| v["replicas"][2]["verifier"] = v["replicas"][0]["verifier"].clone());
    assert_names(
        &message,
        "replicas[2].verifier: the same key as replicas[0].verifier",
    );
}

/// A data dir `r1` with `vellum.json` for `cluster`/`replica` and replica 1's signing key.
fn seed_data_dir(root: &Path, cluster: &str, replica: u32, signing: &Signer) {
    let dir = DataDir::new(root.join("r1"));
    crate::fsutil::create_dir_with_mode(&dir.keys(), 0o700).unwrap();
    let mut line = signing.to_skey();
    line.push('\n');
    crate::fsutil::write_durable(&dir.signing_key(), line.as_bytes(), 0o600).unwrap();
    let meta = NodeMeta {
        layout_version: crate::datadir::LAYOUT_VERSION,
        cluster: cluster.into(),
        replica,
        name: signing.name().into(),
        kek: None,
        writer_epoch: None,
        signing: None,
    };
    meta.store(&dir).unwrap();
}

// Goal: a config matching its data dir loads; one of another cluster is
// refused naming `cluster` and both ids.
#[test]
fn config_data_dir_cluster_mismatch_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config_json());
    seed_data_dir(dir.path(), CLUSTER_HEX, 1, &signer(1));
    ClusterConfig::load(&path).expect("matching data dir loads");

    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config_json());
    let other = "ffffffffffffffffffffffffffffffff";
    seed_data_dir(dir.path(), other, 1, &signer(1));
    let message = ClusterConfig::load(&path).unwrap_err().to_string();
    assert_names(&message, "cluster: ");
    assert_names(&message, CLUSTER_HEX);
    assert_names(&message, other);
}

// Goal: a data dir of another replica index is refused naming `replica`.
#[test]
fn config_data_dir_replica_mismatch_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config_json());
    seed_data_dir(dir.path(), CLUSTER_HEX, 2, &signer(1));
    let message = ClusterConfig::load(&path).unwrap_err().to_string();
    assert_names(&message, "replica: 1 differs from replica 2");
}

// Goal: a configured verifier that is not the data dir's signing key is
// refused naming the field and both keys.
#[test]
fn config_verifier_mismatch_names_both_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config_json());
    let wrong = Signer::from_seed("vellum-01234567-r9", [42; 32]).unwrap();
    seed_data_dir(dir.path(), CLUSTER_HEX, 1, &wrong);
    let message = ClusterConfig::load(&path).unwrap_err().to_string();
    assert_names(&message, "replicas[1].verifier: ");
    assert_names(&message, &signer(1).verifier().to_vkey());
    assert_names(&message, &wrong.verifier().to_vkey());
}

// Goal: a missing file and an oversized file are refused with the path.
#[test]
fn config_missing_and_oversized_file_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.json");
    let error = ClusterConfig::load(&missing).unwrap_err();
    assert!(matches!(error, ConfigError::Io { .. }), "{error}");
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; CONFIG_BYTES_MAX as usize + 1]).unwrap();
    let message = ClusterConfig::load(&big).unwrap_err().to_string();
    assert_names(&message, "more than");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// Goal: a 3-replica dev cluster has every file, private keys, one shared
// KEK, distinct signing keys, equal policies and configs that load.
#[test]
fn dev_cluster_layout_keys_and_policy() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cluster");
    let cluster = create_dev_cluster(&dir, 3, None).unwrap();
    assert_eq!(cluster.configs.len(), 3);
    assert_eq!(cluster.api_urls.len(), 3);
    let policy0 = std::fs::read_to_string(dir.join("r0/policy.txt")).unwrap();
    let policy = Policy::parse(&policy0).unwrap();
    assert_eq!(policy.quorum, 2);
    assert_eq!(
        std::fs::read_to_string(&cluster.policy_path).unwrap(),
        policy0
    );
    let kek0 = std::fs::read(dir.join("r0/keys/kek.key")).unwrap();
    let mut signing_keys = Vec::new();
    for i in 0..3u8 {
        let data = DataDir::new(dir.join(format!("r{i}")));
        assert_eq!(mode(&data.keys()), 0o700, "keys dir of r{i}");
        assert_eq!(mode(&data.signing_key()), 0o600, "signing key of r{i}");
        assert_eq!(mode(&data.kek()), 0o600, "kek of r{i}");
        assert_eq!(std::fs::read_to_string(data.policy()).unwrap(), policy0);
        assert_eq!(std::fs::read(data.kek()).unwrap(), kek0, "shared kek");
        let meta = NodeMeta::load(&data).unwrap();
        assert_eq!(meta.replica, u32::from(i));
        assert_eq!(meta.name, replica_key_name(meta.cluster_id().unwrap(), i));
        let signer = crate::crypto::load_signing_key_file(&data.signing_key()).unwrap();
        assert_eq!(policy.verifiers[usize::from(i)], signer.verifier());
        signing_keys.push(signer.verifier().public_key());
        // The shared KEK opens every replica's key store.
        let kek = Kek::load_file(&dir.join("r0/keys/kek.key")).unwrap();
        KeyStore::open(&data.keys(), kek, u32::from(i)).unwrap();
        let config = ClusterConfig::load(&cluster.configs[usize::from(i)]).unwrap();
        assert_eq!(config.replica, i);
        assert_eq!(config.data_dir, data.root());
    }
    signing_keys.sort();
    signing_keys.dedup();
    assert_eq!(signing_keys.len(), 3, "distinct signing keys");
    assert!(cluster.ca_pem_path.exists());
    assert_eq!(mode(&dir.join("dev-token.txt")), 0o600);
}

// Goal: tokens.txt holds exactly the SHA-256 lines of the three dev tokens.
#[test]
fn dev_cluster_tokens_file_hashes_tokens() {
    let root = tempfile::tempdir().unwrap();
    let cluster = create_dev_cluster(root.path(), 1, None).unwrap();
    let tokens = std::fs::read_to_string(root.path().join("tokens.txt")).unwrap();
    let privacy = cluster
        .privacy_officer_token
        .clone()
        .expect("privacy officer token");
    let expected = format!(
        "{}\n{}\n{}\n",
        token_line(&cluster.writer_token, "dev", "writer"),
        token_line(&cluster.auditor_token, "auditor", "auditor"),
        token_line(&privacy, "privacy", "privacy-officer")
    );
    assert_eq!(tokens, expected);
    assert!(
        !tokens.contains(&cluster.writer_token),
        "no plaintext token"
    );
    assert!(cluster.writer_token.starts_with(TOKEN_PREFIX));
    assert_ne!(cluster.writer_token, cluster.auditor_token);
}

// Goal: DevCluster::load reads back what create returned, and
// open_or_create reuses an existing cluster.
#[test]
fn dev_cluster_load_round_trips() {
    let root = tempfile::tempdir().unwrap();
    let created = create_dev_cluster(root.path(), 3, None).unwrap();
    assert_eq!(DevCluster::load(root.path()).unwrap(), created);
    assert_eq!(
        open_or_create_dev_cluster(root.path(), 3, None).unwrap(),
        created
    );
    let error = open_or_create_dev_cluster(root.path(), 5, None).unwrap_err();
    assert!(error.to_string().contains("not 5"), "{error}");
}

// Goal: a non-empty target is refused and left untouched.
#[test]
fn dev_cluster_refuses_non_empty_dir() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("precious.txt"), "keep").unwrap();
    let error = create_dev_cluster(root.path(), 3, None).unwrap_err();
    assert!(matches!(error, SetupError::Target { .. }), "{error}");
    let entries: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "nothing created");
}

// Goal: a base port gives fixed ports: base+i for replicas, base+100+i for the API.
#[test]
fn dev_cluster_base_port() {
    let root = tempfile::tempdir().unwrap();
    let cluster = create_dev_cluster(root.path(), 3, Some(41000)).unwrap();
    assert_eq!(cluster.api_urls[2], "https://127.0.0.1:41102");
    let config = ClusterConfig::load(&cluster.configs[0]).unwrap();
    assert_eq!(config.replicas[1].address.port(), 41001);
    let error = create_dev_cluster(&root.path().join("x"), 3, Some(65500)).unwrap_err();
    assert!(matches!(error, SetupError::Invalid(_)), "{error}");
}

// Goal: even and oversized replica counts are refused before anything is created.
#[test]
fn dev_cluster_refuses_bad_replica_count() {
    let root = tempfile::tempdir().unwrap();
    for count in [0u8, 2, 9] {
        let dir = root.path().join(format!("c{count}"));
        let error = create_dev_cluster(&dir, count, None).unwrap_err();
        assert!(error.to_string().contains("odd number"), "{error}");
        assert!(!dir.exists());
    }
}

// Goal: init_cluster_replica refuses a signing key the policy does not pin.
#[test]
fn init_replica_refuses_unpinned_signing_key() {
    let root = tempfile::tempdir().unwrap();
    let cluster = 7u128 << 100;
    let data = root.path().join("r0");
    create_replica_signing_key(&data, cluster, 0).unwrap();
    let others: Vec<_> = (0..3)
        .map(|i| {
            Signer::from_seed(&format!("k{i}"), [i + 1; 32])
                .unwrap()
                .verifier()
        })
        .collect();
    let policy = Policy::new(
        &vellum_audit::checkpoint::origin_for_cluster(cluster),
        others,
        2,
    )
    .unwrap();
    let error = init_cluster_replica(&ReplicaInit {
        data_dir: &data,
        cluster,
        replica: 0,
        kek: KekSource::Generate,
        policy: &policy,
    })
    .unwrap_err();
    assert!(
        error.to_string().contains("is not the policy's key"),
        "{error}"
    );
    assert!(!DataDir::new(&data).meta().exists());
}

/// The state letter of `pid` in /proc (R, S, T, Z, …).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.trim_start().chars().next()
}

/// Waits (at most 5 s) until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// Goal: pause stops a process, resume continues it, kill ends it with SIGKILL.
#[test]
fn process_pause_resume_kill() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sleep.log");
    let mut process =
        ReplicaProcess::spawn_command(Path::new("/bin/sleep"), &["30"], &log).unwrap();
    let pid = process.id();
    assert!(process.is_running());
    process.pause().unwrap();
    eventually("stopped", || proc_state(pid) == Some('T'));
    process.resume().unwrap();
    eventually("continued", || proc_state(pid).is_some_and(|s| s != 'T'));
    let status = process.kill().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert!(!process.is_running());
    let error = process.pause().unwrap_err();
    assert!(
        matches!(error, SupervisorError::NotRunning { .. }),
        "{error}"
    );
    assert!(process.kill().is_ok(), "killing an exited process is fine");
}

// Goal: stdout and stderr go to the log file, and wait_exit reports the exit.
#[test]
fn process_output_goes_to_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.log");
    let mut process = ReplicaProcess::spawn_command(
        Path::new("/bin/sh"),
        &["-c", "echo out; echo err >&2; exit 3"],
        &log,
    )
    .unwrap();
    let status = process
        .wait_exit(Duration::from_secs(10))
        .expect("sh exits");
    assert_eq!(status.code(), Some(3));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
}

// Goal: dropping a process kills and reaps it.
#[test]
fn process_drop_kills() {
    let dir = tempfile::tempdir().unwrap();
    let process =
        ReplicaProcess::spawn_command(Path::new("/bin/sleep"), &["30"], &dir.path().join("l"))
            .unwrap();
    let pid = process.id();
    drop(process);
    assert_eq!(proc_state(pid), None, "process {pid} is gone");
}

/// A stand-in replica executable: logs its arguments, then sleeps.
fn fake_replica(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fake-vellum");
    std::fs::write(&path, format!("#!/bin/sh\necho \"args: $*\"\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

// Goal: the supervisor starts `<exe> start --config <cfg>` per replica, and
// kill, restart, pause, resume and stop_all act on the right replica.
#[test]
fn supervisor_runs_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let exe = fake_replica(dir.path(), "exec sleep 30");
    let configs: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("r{i}.json")))
        .collect();
    let mut supervisor = Supervisor::new(&exe, configs.clone(), dir.path());
    supervisor.start_all().unwrap();
    assert!((0..3).all(|i| supervisor.is_running(i)));
    let expected = format!("args: start --config {}", configs[2].display());
    eventually("replica 2 logged its args", || {
        std::fs::read_to_string(supervisor.log_path(2)).is_ok_and(|t| t.contains(&expected))
    });
    supervisor.kill(1).unwrap();
    assert!(!supervisor.is_running(1) && supervisor.is_running(0));
    let old_pid = supervisor.process(1).unwrap().id();
    supervisor.restart(1).unwrap();
    assert!(supervisor.is_running(1));
    assert_ne!(supervisor.process(1).unwrap().id(), old_pid);
    supervisor.pause(2).unwrap();
    let pid2 = supervisor.process(2).unwrap().id();
    eventually("replica 2 stopped", || proc_state(pid2) == Some('T'));
    supervisor.resume(2).unwrap();
    assert!(matches!(
        supervisor.pause(3),
        Err(SupervisorError::NoSuchReplica { .. })
    ));
    // SIGTERM ends `sleep` at once: nothing needs SIGKILL.
    assert_eq!(supervisor.stop_all(Duration::from_secs(10)).unwrap(), 0);
    assert!((0..3).all(|i| !supervisor.is_running(i)));
}

// Goal: stop_all SIGKILLs a replica that ignores SIGTERM once the grace time is over.
#[test]
fn supervisor_stop_all_escalates_to_kill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = fake_replica(dir.path(), "trap '' TERM\necho trapped\nexec sleep 30");
    let mut supervisor = Supervisor::new(&exe, vec![dir.path().join("r0.json")], dir.path());
    supervisor.start_all().unwrap();
    eventually("trap installed", || {
        std::fs::read_to_string(supervisor.log_path(0)).is_ok_and(|t| t.contains("trapped"))
    });
    let started = Instant::now();
    assert_eq!(supervisor.stop_all(Duration::from_millis(300)).unwrap(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!supervisor.is_running(0));
}
