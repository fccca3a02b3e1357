//! `init` never harms what it finds and never leaves a half-made directory.

use std::path::Path;

fn listing(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

/// Goal: a non-empty directory without vellum.json is refused and left exactly as it was.
#[test]
fn non_empty_directory_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("precious.txt"), b"keep me").expect("write");
    let err = vellum::init::init_data_dir(dir.path(), None).expect_err("refused");
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(listing(dir.path()), vec!["precious.txt".to_string()]);
    assert_eq!(
        std::fs::read(dir.path().join("precious.txt")).expect("read"),
        b"keep me"
    );
}

/// Goal: an existing empty directory is initialized; a second init is refused and changes nothing.
#[test]
fn empty_directory_is_used_and_second_init_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    vellum::init::init_data_dir(dir.path(), None).expect("init an empty dir");
    let before = listing(dir.path());
    let meta = std::fs::read(dir.path().join("vellum.json")).expect("meta");
    let err = vellum::init::init_data_dir(dir.path(), None).expect_err("second init");
    assert!(err.to_string().contains("already initialized"), "{err}");
    assert_eq!(listing(dir.path()), before);
    assert_eq!(
        std::fs::read(dir.path().join("vellum.json")).expect("meta"),
        meta
    );
}

/// Goal: an init that fails part-way (index unreachable) removes what it created, so a rerun works.
#[test]
fn failed_init_leaves_nothing_behind() {
    let Some(base) = vellum::index::postgres_url_from_env() else {
        eprintln!("skipping: VELLUM_TEST_POSTGRES_URL not set");
        return;
    };
    let (server, _) = base.rsplit_once('/').expect("a url with a database");
    let missing = format!("{server}/vellum_no_such_database_{}", std::process::id());
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    assert!(vellum::init::init_data_dir(&data, Some(&missing)).is_err());
    assert!(!data.exists(), "the half-made directory must be removed");
    vellum::init::init_data_dir(&data, None).expect("rerun succeeds");
}

/// Goal: a bad index URL is refused before anything is created.
#[test]
fn bad_index_url_creates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    assert!(vellum::init::init_data_dir(&data, Some("mysql://x")).is_err());
    assert!(!data.exists());
}
