//! Helpers shared by the verification test binaries (each includes this
//! module with `mod support;`; not every binary uses every helper).
#![allow(dead_code)]

use std::path::Path;

/// Copies a directory tree, keeping directory modes (keys/ stays 0700).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
            let permissions = entry.metadata().expect("metadata").permissions();
            std::fs::set_permissions(&target, permissions).expect("keep the mode");
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Runs SQL statements against a data directory's SQLite audit index; each
/// must change exactly one row.
pub fn tamper_index<S: AsRef<str>>(data: &Path, statements: &[S]) {
    for (statement, changed) in statements.iter().zip(index_exec(data, statements)) {
        assert_eq!(changed, 1, "{} changes one row", statement.as_ref());
    }
}

/// Runs `statements` on the SQLite index of data directory `data`; returns
/// the rows each changed.
pub fn index_exec<S: AsRef<str>>(data: &Path, statements: &[S]) -> Vec<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let url = format!("sqlite://{}", data.join("index.sqlite3").display());
        let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
        let mut changed = Vec::new();
        for statement in statements {
            let statement = statement.as_ref();
            let done = sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
            changed.push(done.rows_affected());
        }
        pool.close().await;
        changed
    })
}

/// The `vellum` binary built for these tests.
pub fn vellum_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vellum"))
}

/// Runs the `vellum` binary; returns (exit code, stdout, stderr).
pub fn vellum_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(vellum_exe())
        .args(args)
        .output()
        .expect("run vellum");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A temporary directory, kept (and named on stderr) when
/// `VELLUM_TEST_KEEP_DIRS` is set, so a failure's replica logs can be read.
pub struct TestDir {
    _guard: Option<tempfile::TempDir>,
    path: std::path::PathBuf,
}

impl TestDir {
    /// Creates a directory named `<prefix>-<random>` in the temp directory.
    pub fn new(prefix: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .expect("tempdir");
        if std::env::var_os("VELLUM_TEST_KEEP_DIRS").is_some() {
            let path = dir.keep();
            eprintln!("keeping {}", path.display());
            return TestDir { _guard: None, path };
        }
        TestDir {
            path: dir.path().to_path_buf(),
            _guard: Some(dir),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A small seeded generator (SplitMix64) for fault schedules and payloads:
/// a printed seed replays the same choices.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// A seed from the environment variable `name` (decimal), else from the
    /// operating system's random source.
    pub fn seed_from_env(name: &str) -> u64 {
        if let Ok(text) = std::env::var(name) {
            return text
                .parse()
                .unwrap_or_else(|e| panic!("{name}={text:?} is not a u64: {e}"));
        }
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the os random source");
        u64::from_le_bytes(bytes)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..high` (`high > low`).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(high > low, "empty range {low}..{high}");
        low + self.next_u64() % (high - low)
    }
}

/// Log options that wait for the directory lock: a child process this test
/// binary spawns (another test running `vellum`) briefly holds a copy of
/// every open file description between fork and exec, the lock included.
pub fn wait_for_lock() -> vellum::log::LogOptions {
    vellum::log::LogOptions {
        lock_wait_ms: 10_000,
        ..vellum::log::LogOptions::default()
    }
}

/// An HTTPS client that trusts the dev CA of `cluster` (and nothing else
/// added), with `timeout` per request.
pub fn dev_http(
    cluster: &vellum::local_cluster::LocalCluster,
    timeout: std::time::Duration,
) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem()).expect("dev CA"))
        .timeout(timeout)
        .build()
        .expect("http client")
}

/// One API call on replica `i` of a local cluster, with an optional bearer
/// token and JSON body: (status, JSON body or `Null`); 60 s timeout.
pub async fn cluster_call(
    cluster: &vellum::local_cluster::LocalCluster,
    i: usize,
    method: &str,
    token: Option<&str>,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    // A client per call: each cluster of a test binary has its own dev CA.
    let http = dev_http(cluster, std::time::Duration::from_secs(60));
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = http.request(method, format!("{}{path}", cluster.dev.api_urls[i]));
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.expect("request");
    let status = answer.status().as_u16();
    (
        status,
        answer.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// The `error.code` of an API error body ("" when there is none).
pub fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// A client of a local cluster that talks to replica `i` only, with the
/// writer's token.
pub fn client_of(
    cluster: &vellum::local_cluster::LocalCluster,
    i: usize,
) -> vellum::client::Client {
    let mut config = vellum::client::ClientConfig::new(
        vec![cluster.dev.api_urls[i].clone()],
        cluster.dev.writer_token.clone(),
    );
    config.ca_pem = Some(cluster.ca_pem().to_vec());
    vellum::client::Client::new(config).expect("client")
}
