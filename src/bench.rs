//! `vellum bench` (DESIGN §8): the same append workload, in one process and
//! on the same directory, against a raw write+fdatasync loop, Vellum on one
//! replica, SQLite (WAL, synchronous=FULL, one transaction per append) and,
//! when a URL is given, PostgreSQL (synchronous_commit=on). Absolute numbers
//! drift on shared machines; the ratios measured in one run are the result.
//!
//! On the three-replica cluster it also measures single-event reads (against
//! SQLite and PostgreSQL point reads by primary key; `reads`) and, with
//! `--batch N`, bulk ingest of N events per append (against a raw loop of
//! 1 MiB write+fdatasync; `bulk`).

mod bulk;
mod reads;
pub mod scale;

pub use bulk::BATCH_MAX;

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::log::{LocalLog, LocalPersister, LogOptions};
use crate::types::{EventPersister, StreamId};

/// Appenders in one run, at most.
pub const CONCURRENCY_MAX: usize = 256;
/// Appends per system and concurrency level, at most.
pub const APPENDS_MAX: u64 = 1_000_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Working directory (all systems write here).
    pub dir: PathBuf,
    /// Appends per system and concurrency level.
    pub appends: u64,
    /// Payload bytes per event.
    pub event_bytes: usize,
    /// Concurrency levels (appending threads or tasks).
    pub concurrency: Vec<usize>,
    /// Stop a system's run after this long even if appends remain.
    pub time_limit: Duration,
    /// PostgreSQL URL; skipped when `None`.
    pub postgres_url: Option<String>,
    /// Megabytes of log to build and verify (0: skip the verify measurement).
    pub verify_mb: u64,
    /// The `vellum` binary to run a three-replica cluster on loopback with
    /// (None: skip the cluster measurements).
    pub cluster_exe: Option<PathBuf>,
    /// Events per append of the bulk-ingest measurement (0: skip it).
    pub batch: usize,
}

/// The cluster system's names in reports.
pub const CLUSTER_SYSTEM: &str = "vellum 3 replicas";
/// The cluster with one backup killed.
pub const CLUSTER_DEGRADED_SYSTEM: &str = "vellum 3 replicas, 1 backup down";
/// Single-event reads from the healthy cluster, all through the primary.
pub const CLUSTER_READS_SYSTEM: &str = "vellum 3 replicas, reads";
/// Single-event reads from the healthy cluster, spread over all three
/// replicas (backups serve reads; every read still trailed through the
/// primary before its answer).
pub const CLUSTER_SPREAD_READS_SYSTEM: &str = "vellum 3 replicas, reads on all replicas";
/// The API's own ceiling: `GET /v1/health` on the primary through the same
/// Rust client (HTTPS, routing, one blocking-pool hop, a small JSON answer;
/// no token check, no log, no trail). No append or read through the API can
/// be answered faster than this on the same machine.
pub const CLUSTER_API_FLOOR_SYSTEM: &str = "vellum 3 replicas, API floor (GET /v1/health)";
/// The single replica with its tile store on (`LogOptions::tiles`, off by
/// default), so the cost of writing tiles shows as a ratio to the default
/// `vellum 1 replica` row in the same run.
pub const VELLUM_TILES_SYSTEM: &str = "vellum 1 replica, tiles on";
/// SQLite point reads by primary key.
pub const SQLITE_READS_SYSTEM: &str = "sqlite reads";
/// PostgreSQL point reads by primary key.
pub const POSTGRES_READS_SYSTEM: &str = "postgresql reads";
/// Bulk ingest on the healthy cluster; the batch size follows (`"... batch 200"`).
pub const CLUSTER_BATCH_SYSTEM_PREFIX: &str = "vellum 3 replicas, batch ";
/// The bulk-ingest baseline: one thread writing 1 MiB and fdatasyncing.
pub const RAW_BULK_SYSTEM: &str = "raw 1 MiB write+fdatasync";
/// Longest the bench waits for a restarted backup to catch up.
const CATCH_UP_WAIT_S: u64 = 120;
/// The append systems every vellum append row is compared with.
const APPEND_BASELINES: [&str; 3] = ["raw fdatasync", "sqlite", "postgresql"];

/// Results of one system at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// "raw fdatasync", "vellum 1 replica", "sqlite", "postgresql", or one
    /// of the `*_SYSTEM` names above.
    pub system: String,
    /// Concurrent appenders (readers for a reads row).
    pub concurrency: usize,
    /// Operations completed: appends, or single-event reads for a reads row,
    /// or writes for a raw row.
    pub appends: u64,
    /// Events per operation: an append's batch size (1 but for bulk rows);
    /// 1 for reads and raw writes.
    pub events_per_op: u64,
    /// Events per second (reads per second for a reads row, writes per
    /// second for a raw row).
    pub events_per_s: f64,
    /// Payload megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
}

/// A ratio between two systems at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Concurrency (of the first system).
    pub concurrency: usize,
    /// "vellum 1 replica / raw fdatasync".
    pub what: String,
    /// Throughput ratio (`throughput_unit` of the first over the second).
    pub throughput: f64,
    /// What `throughput` compares.
    pub throughput_unit: ThroughputUnit,
    /// p99 latency ratio (first over second).
    pub p99_latency: f64,
}

/// The quantity a [`Ratio`]'s throughput compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ThroughputUnit {
    /// Appended events per second.
    #[serde(rename = "events/s")]
    EventsPerS,
    /// Single-event reads per second.
    #[serde(rename = "reads/s")]
    ReadsPerS,
    /// API requests per second (one event or one read per request).
    #[serde(rename = "requests/s")]
    RequestsPerS,
    /// Payload megabytes (10^6) per second.
    #[serde(rename = "MB/s")]
    MbPerS,
}

impl ThroughputUnit {
    /// The unit as the report prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ThroughputUnit::EventsPerS => "events/s",
            ThroughputUnit::ReadsPerS => "reads/s",
            ThroughputUnit::RequestsPerS => "requests/s",
            ThroughputUnit::MbPerS => "MB/s",
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Payload bytes per event.
    pub event_bytes: usize,
    /// Every measurement.
    pub measurements: Vec<Measurement>,
    /// Vellum against each baseline.
    pub ratios: Vec<Ratio>,
    /// Notes (skipped systems, settings read back).
    pub notes: Vec<String>,
    /// `vellum verify` throughput against a raw SHA-256 pass, when asked for.
    pub verify: Option<VerifyMeasurement>,
}

/// `vellum verify` over a log against reading and hashing the same bytes.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyMeasurement {
    /// Bytes of segment files verified.
    pub log_bytes: u64,
    /// Events in the log.
    pub events: u64,
    /// Seconds for the log checks of `vellum verify` (records, chain, seals,
    /// Merkle roots, signatures; the index check is excluded).
    pub verify_s: f64,
    /// Seconds to read every segment file and SHA-256 it once.
    pub sha256_s: f64,
    /// verify_s / sha256_s.
    pub ratio: f64,
    /// Seconds of `vellum verify` per GB (10^9 bytes) of log, extrapolated.
    pub verify_s_per_gb: f64,
    /// Seconds of the raw SHA-256 pass per GB, extrapolated.
    pub sha256_s_per_gb: f64,
    /// Events per second verified.
    pub verify_events_per_s: f64,
}

/// Runs every system at every concurrency level.
pub fn run(config: &BenchConfig, progress: &dyn Fn(&str)) -> anyhow::Result<BenchReport> {
    check_config(config)?;
    std::fs::create_dir_all(&config.dir)?;
    let payload = Bytes::from(sample_payload(config.event_bytes));
    let mut measurements = Vec::new();
    let mut notes = Vec::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut cluster = match &config.cluster_exe {
        Some(exe) => {
            progress("starting a 3-replica cluster on loopback");
            Some(BenchCluster::start(config, exe, &runtime)?)
        }
        None => {
            notes.push("vellum 3 replicas skipped: no vellum binary given".to_string());
            notes.push(
                "reads and bulk ingest skipped: they run on the 3-replica cluster".to_string(),
            );
            None
        }
    };
    for &concurrency in &config.concurrency {
        let level = measure_appends(
            config,
            cluster.as_ref(),
            concurrency,
            &payload,
            &runtime,
            progress,
        )?;
        measurements.extend(level);
    }
    if config.postgres_url.is_none() {
        notes.push(
            "postgresql skipped: no --postgres-url (or VELLUM_BENCH_POSTGRES_URL) given"
                .to_string(),
        );
    }
    if let Some(cluster) = &cluster {
        reads::measure(
            config,
            cluster,
            &runtime,
            progress,
            &mut measurements,
            &mut notes,
        )?;
        bulk::measure(
            config,
            cluster,
            &payload,
            progress,
            &mut measurements,
            &mut notes,
        )?;
    }
    if let Some(cluster) = &mut cluster {
        let backup = cluster.kill_backup(&runtime)?;
        notes.push(format!(
            "{CLUSTER_DEGRADED_SYSTEM}: replica {backup} killed with SIGKILL"
        ));
        for &concurrency in &config.concurrency {
            progress(&format!(
                "{CLUSTER_DEGRADED_SYSTEM}, {concurrency} appenders"
            ));
            measurements.push(cluster.measure(
                config,
                concurrency,
                &payload,
                CLUSTER_DEGRADED_SYSTEM,
            )?);
        }
        progress(&format!("replica {backup} restarted, catching up"));
        notes.push(cluster.catch_up(&runtime, backup)?);
        notes.extend(cluster.take_notes());
        cluster.stop()?;
    }
    let ratios = ratios(&measurements);
    let verify = if config.verify_mb > 0 {
        progress(&format!(
            "verify over a {} MB log vs sha-256",
            config.verify_mb
        ));
        Some(bench_verify(config)?)
    } else {
        None
    };
    Ok(BenchReport {
        verify,
        event_bytes: config.event_bytes,
        measurements,
        ratios,
        notes,
    })
}

/// Refuses counts, levels and batch sizes out of their bounds.
fn check_config(config: &BenchConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.appends > 0 && config.appends <= APPENDS_MAX,
        "--appends must be 1..={APPENDS_MAX}"
    );
    anyhow::ensure!(
        config
            .concurrency
            .iter()
            .all(|&c| c > 0 && c <= CONCURRENCY_MAX),
        "--concurrency levels must be 1..={CONCURRENCY_MAX}"
    );
    bulk::check_batch(config.batch, config.event_bytes)
}

/// One concurrency level of the append workload on every system.
fn measure_appends(
    config: &BenchConfig,
    cluster: Option<&BenchCluster>,
    concurrency: usize,
    payload: &Bytes,
    runtime: &tokio::runtime::Runtime,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Vec<Measurement>> {
    let mut out = Vec::new();
    if let Some(cluster) = cluster {
        progress(&format!("{CLUSTER_SYSTEM}, {concurrency} appenders"));
        out.push(cluster.measure(config, concurrency, payload, CLUSTER_SYSTEM)?);
    }
    progress(&format!("raw fdatasync, {concurrency} appenders"));
    out.push(bench_raw(config, concurrency, payload)?);
    progress(&format!("vellum 1 replica, {concurrency} appenders"));
    out.push(bench_vellum(config, concurrency, payload, false)?);
    progress(&format!("{VELLUM_TILES_SYSTEM}, {concurrency} appenders"));
    out.push(bench_vellum(config, concurrency, payload, true)?);
    progress(&format!("sqlite, {concurrency} appenders"));
    out.push(runtime.block_on(bench_sqlite(config, concurrency, payload))?);
    if let Some(url) = &config.postgres_url {
        progress(&format!("postgresql, {concurrency} appenders"));
        out.push(runtime.block_on(bench_postgres(url, config, concurrency, payload))?);
    }
    Ok(out)
}

pub(crate) fn sample_payload(bytes: usize) -> Vec<u8> {
    let mut out = b"{\"resourceType\":\"Observation\",\"note\":\"".to_vec();
    while out.len() + 2 < bytes {
        out.push(b'x');
    }
    out.extend_from_slice(b"\"}");
    out
}

/// Runs `appends` calls of `append_once` spread over `concurrency` threads
/// and measures each call.
fn drive_threads(
    config: &BenchConfig,
    concurrency: usize,
    append_once: &(dyn Fn(usize) -> anyhow::Result<()> + Sync),
) -> anyhow::Result<(Vec<u64>, Duration)> {
    let latencies = Mutex::new(Vec::with_capacity(
        usize::try_from(config.appends).unwrap_or(0),
    ));
    let next = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + config.time_limit;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|worker| {
                let latencies = &latencies;
                let next = &next;
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < config.appends
                        && Instant::now() < deadline
                    {
                        let t = Instant::now();
                        append_once(worker)?;
                        mine.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                    }
                    latencies
                        .lock()
                        .map_err(|_| anyhow::anyhow!("a bench thread panicked"))?
                        .extend(mine);
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a bench thread panicked"))??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let elapsed = started.elapsed();
    Ok((
        latencies
            .into_inner()
            .map_err(|_| anyhow::anyhow!("a bench thread panicked"))?,
        elapsed,
    ))
}

fn measurement(
    system: &str,
    concurrency: usize,
    event_bytes: usize,
    latencies: Vec<u64>,
    elapsed: Duration,
) -> Measurement {
    batched_measurement(system, concurrency, event_bytes, 1, latencies, elapsed)
}

/// A measurement of operations that each carry `events_per_op` events of
/// `event_bytes`; `latencies` holds one entry per operation.
fn batched_measurement(
    system: &str,
    concurrency: usize,
    event_bytes: usize,
    events_per_op: u64,
    mut latencies: Vec<u64>,
    elapsed: Duration,
) -> Measurement {
    latencies.sort_unstable();
    let n = latencies.len() as u64;
    let pick = |q: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[i.min(latencies.len() - 1)]
    };
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let events = n as f64 * events_per_op as f64;
    Measurement {
        system: system.to_string(),
        concurrency,
        appends: n,
        events_per_op,
        events_per_s: events / seconds,
        mb_per_s: (events * event_bytes as f64) / 1e6 / seconds,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        p999_us: pick(0.999),
    }
}

/// One file, one write and one fdatasync per append, serialized: the cost of
/// making each append durable on its own, with no batching.
fn bench_raw(
    config: &BenchConfig,
    concurrency: usize,
    payload: &Bytes,
) -> anyhow::Result<Measurement> {
    let (latencies, elapsed) = raw_fdatasync_loop(
        config,
        concurrency,
        &format!("raw-{concurrency}.bin"),
        payload,
    )?;
    Ok(measurement(
        "raw fdatasync",
        concurrency,
        payload.len(),
        latencies,
        elapsed,
    ))
}

/// `concurrency` threads appending `block` to one file (`name` in the
/// working directory), one write and one fdatasync at a time, serialized;
/// the file is removed afterwards. Returns the latencies and elapsed time.
fn raw_fdatasync_loop(
    config: &BenchConfig,
    concurrency: usize,
    name: &str,
    block: &[u8],
) -> anyhow::Result<(Vec<u64>, Duration)> {
    let path = config.dir.join(name);
    let _ = std::fs::remove_file(&path);
    let file = Mutex::new(OpenOptions::new().create(true).append(true).open(&path)?);
    let driven = drive_threads(config, concurrency, &|_| {
        let mut file = file
            .lock()
            .map_err(|_| anyhow::anyhow!("raw file lock poisoned"))?;
        file.write_all(block)?;
        file.sync_data()?;
        Ok(())
    })?;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(driven)
}

fn bench_vellum(
    config: &BenchConfig,
    concurrency: usize,
    payload: &Bytes,
    tiles: bool,
) -> anyhow::Result<Measurement> {
    let dir = config.dir.join(format!("vellum-{concurrency}"));
    remove_dir_if_exists(&dir)?;
    crate::init::init_data_dir(&dir, None)?;
    let options = LogOptions {
        tiles,
        ..LogOptions::default()
    };
    let (log, _) = LocalLog::open(&dir, options)?;
    let log = Arc::new(log);
    let persister = LocalPersister::new(Arc::clone(&log));
    let (latencies, elapsed) = drive_threads(config, concurrency, &|worker| {
        persister.persist_blocking(
            StreamId(StreamId::USER_MIN + worker as u64),
            vec![payload.clone()],
        )?;
        Ok(())
    })?;
    drop(persister);
    Arc::into_inner(log)
        .ok_or_else(|| anyhow::anyhow!("log still shared"))?
        .close()?;
    remove_dir_if_exists(&dir)?;
    Ok(measurement(
        if tiles {
            VELLUM_TILES_SYSTEM
        } else {
            "vellum 1 replica"
        },
        concurrency,
        payload.len(),
        latencies,
        elapsed,
    ))
}

async fn drive_tasks<F, Fut>(
    config: &BenchConfig,
    concurrency: usize,
    append_once: F,
) -> anyhow::Result<(Vec<u64>, Duration)>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + config.time_limit;
    let appends = config.appends;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let next = Arc::clone(&next);
        let append_once = append_once.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < appends
                && Instant::now() < deadline
            {
                let t = Instant::now();
                append_once(worker).await?;
                mine.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            Ok::<Vec<u64>, anyhow::Error>(mine)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((latencies, started.elapsed()))
}

async fn bench_sqlite(
    config: &BenchConfig,
    concurrency: usize,
    payload: &Bytes,
) -> anyhow::Result<Measurement> {
    let path = config.dir.join(format!("sqlite-{concurrency}.db"));
    let pool = sqlite_pool(&path, concurrency).await?;
    sqlx::query("CREATE TABLE events (stream INTEGER NOT NULL, payload BLOB NOT NULL)")
        .execute(&pool)
        .await?;
    let payload = payload.clone();
    let event_bytes = payload.len();
    let task_pool = pool.clone();
    let (latencies, elapsed) = drive_tasks(config, concurrency, move |worker| {
        let pool = task_pool.clone();
        let payload = payload.clone();
        async move {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO events (stream, payload) VALUES (?, ?)")
                .bind(i64::try_from(worker)?)
                .bind(payload.as_ref())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }
    })
    .await?;
    pool.close().await;
    remove_sqlite_files(&path);
    Ok(measurement(
        "sqlite",
        concurrency,
        event_bytes,
        latencies,
        elapsed,
    ))
}

/// A fresh SQLite database at `path` (WAL, synchronous=FULL) with one
/// connection per task.
async fn sqlite_pool(path: &Path, concurrency: usize) -> anyhow::Result<sqlx::SqlitePool> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    remove_sqlite_files(path);
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(60));
    Ok(SqlitePoolOptions::new()
        .max_connections(u32::try_from(concurrency)?)
        .connect_with(options)
        .await?)
}

/// Removes a SQLite database and its WAL files, if there.
fn remove_sqlite_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A PostgreSQL pool of one connection per task, at most 64.
async fn postgres_pool(url: &str, concurrency: usize) -> anyhow::Result<sqlx::PgPool> {
    use sqlx::postgres::PgPoolOptions;
    Ok(PgPoolOptions::new()
        .max_connections(u32::try_from(concurrency.min(64))?)
        .connect(url)
        .await?)
}

/// A fresh table name, `vellum_bench_<random hex>`: generated here, never
/// from input, so it is safe to format into SQL.
fn postgres_table_name() -> anyhow::Result<String> {
    let mut suffix = [0u8; 4];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!(
        "vellum_bench_{}",
        vellum_audit::hash::to_hex(&suffix)
    ))
}

async fn bench_postgres(
    url: &str,
    config: &BenchConfig,
    concurrency: usize,
    payload: &Bytes,
) -> anyhow::Result<Measurement> {
    let pool = postgres_pool(url, concurrency).await?;
    let table = postgres_table_name()?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (stream BIGINT NOT NULL, payload BYTEA NOT NULL)"
    )))
    .execute(&pool)
    .await?;
    let payload = payload.clone();
    let event_bytes = payload.len();
    let task_pool = pool.clone();
    let insert = format!("INSERT INTO {table} (stream, payload) VALUES ($1, $2)");
    let result = drive_tasks(config, concurrency, move |worker| {
        let pool = task_pool.clone();
        let payload = payload.clone();
        let insert = insert.clone();
        async move {
            let mut tx = pool.begin().await?;
            sqlx::query("SET LOCAL synchronous_commit = on")
                .execute(&mut *tx)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(insert))
                .bind(i64::try_from(worker)?)
                .bind(payload.as_ref())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }
    })
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    let (latencies, elapsed) = result?;
    Ok(measurement(
        "postgresql",
        concurrency,
        event_bytes,
        latencies,
        elapsed,
    ))
}

/// A three-replica cluster of `vellum start` processes for the bench.
struct BenchCluster {
    cluster: crate::local_cluster::LocalCluster,
    persister: crate::client::ClientPersister,
    /// The appends' client, driven by tasks on the bench's runtime (the
    /// same harness as the SQLite and PostgreSQL rows: 64 blocking threads
    /// cost the shared cores about 17% of the run in context switches).
    client: crate::client::Client,
    dir: PathBuf,
    /// Notes of the measurements (fdatasyncs per append on each replica).
    notes: std::sync::Mutex<Vec<String>>,
    runtime: tokio::runtime::Handle,
}

impl BenchCluster {
    fn start(
        config: &BenchConfig,
        exe: &Path,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<BenchCluster> {
        let dir = config.dir.join("cluster");
        remove_dir_if_exists(&dir)?;
        let cluster = crate::local_cluster::LocalCluster::start(&dir, 3, exe)?;
        runtime.block_on(cluster.wait_primary(Duration::from_secs(60)))?;
        let persister = crate::client::ClientPersister::new(cluster.client(None)?)?;
        let client = cluster.client(None)?;
        Ok(BenchCluster {
            cluster,
            persister,
            client,
            dir,
            notes: std::sync::Mutex::new(Vec::new()),
            runtime: runtime.handle().clone(),
        })
    }

    fn measure(
        &self,
        config: &BenchConfig,
        concurrency: usize,
        payload: &Bytes,
        system: &str,
    ) -> anyhow::Result<Measurement> {
        let syncs_before = self.syncs();
        let client = self.client.clone();
        let event_bytes = payload.len();
        let payload = payload.clone();
        let (latencies, elapsed) =
            self.runtime
                .block_on(drive_tasks(config, concurrency, move |worker| {
                    let client = client.clone();
                    let events = vec![payload.clone()];
                    async move {
                        let stream = StreamId::USER_MIN + worker as u64;
                        client
                            .append(stream, events, None)
                            .await
                            .map_err(|e| anyhow::anyhow!("append: {e}"))?;
                        Ok(())
                    }
                }))?;
        let syncs_after = self.syncs();
        let appends = latencies.len() as f64;
        let per_append: Vec<String> = syncs_before
            .iter()
            .zip(&syncs_after)
            .enumerate()
            .map(|(i, pair)| match pair {
                (Some(before), Some(after)) if appends > 0.0 => {
                    format!("r{i} {:.2}", after.saturating_sub(*before) as f64 / appends)
                }
                _ => format!("r{i} down"),
            })
            .collect();
        self.notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(format!(
                "{system}, {concurrency} appenders: fdatasyncs per append: {}",
                per_append.join(", ")
            ));
        Ok(measurement(
            system,
            concurrency,
            event_bytes,
            latencies,
            elapsed,
        ))
    }

    /// Every replica's fdatasync count (None where it does not answer).
    fn syncs(&self) -> Vec<Option<u64>> {
        self.runtime
            .block_on(self.cluster.metric_all("vellum_syncs_total"))
    }

    /// Takes the notes of the measurements so far.
    fn take_notes(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .notes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Kills one backup; returns its index.
    fn kill_backup(&mut self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<usize> {
        let primary = runtime.block_on(self.cluster.wait_primary(Duration::from_secs(60)))?;
        let backup = (usize::from(primary) + 1) % 3;
        self.cluster.kill(backup)?;
        Ok(backup)
    }

    /// Starts the killed `backup` again and times how long it takes, with
    /// no load, to commit every op the others committed while it was down
    /// (repair from its peers): the rate that bounds how soon a restarted
    /// replica can stand in for a quorum (the crash test's longest window).
    fn catch_up(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        backup: usize,
    ) -> anyhow::Result<String> {
        let commits = |health: &[Option<crate::api::Health>]| -> Vec<Option<u64>> {
            health
                .iter()
                .map(|h| h.as_ref().map(|h| h.commit))
                .collect()
        };
        let before = commits(&runtime.block_on(self.cluster.health()));
        let target = before.iter().flatten().copied().max().unwrap_or(0);
        self.cluster.start_replica(backup)?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(CATCH_UP_WAIT_S);
        let mut first_seen: Option<u64> = None;
        loop {
            let now = commits(&runtime.block_on(self.cluster.health()));
            if let Some(commit) = now.get(backup).copied().flatten() {
                first_seen.get_or_insert(commit);
                if commit >= target {
                    let took = started.elapsed();
                    let behind = target.saturating_sub(first_seen.unwrap_or(0));
                    return Ok(format!(
                        "catch-up: replica {backup} restarted {behind} ops behind (commit {} of {target} when it first answered) and committed op {target} {:.2} s after its start: {:.0} ops/s including its start",
                        first_seen.unwrap_or(0),
                        took.as_secs_f64(),
                        behind as f64 / took.as_secs_f64().max(1e-9),
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Ok(format!(
                    "catch-up: replica {backup} had not reached op {target} {CATCH_UP_WAIT_S} s after its start (commit {:?})",
                    now.get(backup).copied().flatten()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.cluster.stop()?;
        remove_dir_if_exists(&self.dir)?;
        Ok(())
    }
}

/// Every ratio line: vellum's append rows against the append baselines (and
/// the degraded cluster against the healthy one), the cluster's reads
/// against the databases' point reads, bulk ingest against raw 1 MiB writes.
fn ratios(measurements: &[Measurement]) -> Vec<Ratio> {
    let mut out = append_ratios(measurements);
    out.extend(read_ratios(measurements));
    out.extend(bulk_ratios(measurements));
    out.extend(floor_ratios(measurements));
    out
}

/// The cluster's single-event appends and reads against the API floor at
/// the same concurrency: the share of the bare request rate they reach.
fn floor_ratios(measurements: &[Measurement]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for floor in measurements
        .iter()
        .filter(|m| m.system == CLUSTER_API_FLOOR_SYSTEM)
    {
        for first in measurements.iter().filter(|m| {
            m.concurrency == floor.concurrency
                && [CLUSTER_SYSTEM, CLUSTER_READS_SYSTEM].contains(&m.system.as_str())
        }) {
            out.push(ratio(first, floor, ThroughputUnit::RequestsPerS));
        }
    }
    out
}

fn append_ratios(measurements: &[Measurement]) -> Vec<Ratio> {
    let vellums = ["vellum 1 replica", CLUSTER_SYSTEM, CLUSTER_DEGRADED_SYSTEM];
    let mut out = Vec::new();
    for vellum in measurements
        .iter()
        .filter(|m| vellums.contains(&m.system.as_str()))
    {
        let compared = |m: &&Measurement| {
            m.concurrency == vellum.concurrency
                && (APPEND_BASELINES.contains(&m.system.as_str())
                    || (vellum.system == CLUSTER_DEGRADED_SYSTEM && m.system == CLUSTER_SYSTEM))
        };
        for base in measurements.iter().filter(compared) {
            out.push(ratio(vellum, base, ThroughputUnit::EventsPerS));
        }
    }
    // The tile store's cost: tiles on against the default (off), same run.
    for tiles in measurements
        .iter()
        .filter(|m| m.system == VELLUM_TILES_SYSTEM)
    {
        let default = measurements
            .iter()
            .find(|m| m.system == "vellum 1 replica" && m.concurrency == tiles.concurrency);
        if let Some(default) = default {
            out.push(ratio(tiles, default, ThroughputUnit::EventsPerS));
        }
    }
    out
}

fn read_ratios(measurements: &[Measurement]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for reads in measurements.iter().filter(|m| {
        [CLUSTER_READS_SYSTEM, CLUSTER_SPREAD_READS_SYSTEM].contains(&m.system.as_str())
    }) {
        let spread = reads.system == CLUSTER_SPREAD_READS_SYSTEM;
        for base in measurements.iter().filter(|m| {
            m.concurrency == reads.concurrency
                && ([SQLITE_READS_SYSTEM, POSTGRES_READS_SYSTEM].contains(&m.system.as_str())
                    || (spread && m.system == CLUSTER_READS_SYSTEM))
        }) {
            out.push(ratio(reads, base, ThroughputUnit::ReadsPerS));
        }
    }
    out
}

fn bulk_ratios(measurements: &[Measurement]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for bulk in measurements
        .iter()
        .filter(|m| m.system.starts_with(CLUSTER_BATCH_SYSTEM_PREFIX))
    {
        for base in measurements.iter().filter(|m| m.system == RAW_BULK_SYSTEM) {
            out.push(ratio(bulk, base, ThroughputUnit::MbPerS));
        }
    }
    out
}

/// `first` over `base` in `unit` and in p99 latency.
fn ratio(first: &Measurement, base: &Measurement, unit: ThroughputUnit) -> Ratio {
    let (top, bottom) = match unit {
        ThroughputUnit::MbPerS => (first.mb_per_s, base.mb_per_s),
        ThroughputUnit::EventsPerS | ThroughputUnit::ReadsPerS | ThroughputUnit::RequestsPerS => {
            (first.events_per_s, base.events_per_s)
        }
    };
    Ratio {
        concurrency: first.concurrency,
        what: format!("{} / {}", first.system, base.system),
        throughput: top / bottom.max(1e-9),
        throughput_unit: unit,
        p99_latency: first.p99_us as f64 / (base.p99_us.max(1)) as f64,
    }
}

fn remove_dir_if_exists(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl BenchReport {
    /// A table for people.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "event size {} bytes; one event per append (batch rows: the batch size); \
             reads rows count single-event reads, raw rows writes",
            self.event_bytes
        );
        let _ = writeln!(
            out,
            "{:<33} {:>5} {:>8} {:>11} {:>8} {:>9} {:>9} {:>9}",
            "system", "conc", "appends", "events/s", "MB/s", "p50 us", "p99 us", "p999 us"
        );
        for m in &self.measurements {
            let _ = writeln!(
                out,
                "{:<33} {:>5} {:>8} {:>11.0} {:>8.2} {:>9} {:>9} {:>9}",
                m.system,
                m.concurrency,
                m.appends,
                m.events_per_s,
                m.mb_per_s,
                m.p50_us,
                m.p99_us,
                m.p999_us
            );
        }
        let _ = writeln!(out, "ratios (same run):");
        for r in &self.ratios {
            let _ = writeln!(
                out,
                "  conc {:>3}  {:<56} {:>8} x{}  p99 latency x{}",
                r.concurrency,
                r.what,
                r.throughput_unit.as_str(),
                ratio_text(r.throughput),
                ratio_text(r.p99_latency)
            );
        }
        if let Some(v) = &self.verify {
            let _ = writeln!(
                out,
                "verify: {:.1} MB, {} events: verify {:.2} s ({:.1} s/GB, {:.0} events/s) vs sha-256 pass {:.2} s ({:.1} s/GB): x{:.2}",
                v.log_bytes as f64 / 1e6,
                v.events,
                v.verify_s,
                v.verify_s_per_gb,
                v.verify_events_per_s,
                v.sha256_s,
                v.sha256_s_per_gb,
                v.ratio
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

/// A ratio with two decimals, or three significant digits below 0.1 (so a
/// small ratio never prints as 0.00).
fn ratio_text(ratio: f64) -> String {
    let decimals = match ratio > 0.0 && ratio < 0.1 {
        true => (2.0 - ratio.log10().floor()).clamp(2.0, 9.0) as usize,
        false => 2,
    };
    format!("{ratio:.decimals$}")
}

/// Events per op while building the verify log (big ops make it quick to build).
const VERIFY_EVENTS_PER_OP: usize = 256;

/// Builds a log of about `verify_mb` MB, then times the log checks of
/// `vellum verify` against one read-and-SHA-256 pass over the same files.
fn bench_verify(config: &BenchConfig) -> anyhow::Result<VerifyMeasurement> {
    let dir = config.dir.join("verify");
    remove_dir_if_exists(&dir)?;
    crate::init::init_data_dir(&dir, None)?;
    let options = LogOptions {
        without_index: true,
        ..LogOptions::default()
    };
    let (log, _) = LocalLog::open(&dir, options)?;
    let payload = Bytes::from(sample_payload(config.event_bytes));
    let batch: Vec<Bytes> = (0..VERIFY_EVENTS_PER_OP).map(|_| payload.clone()).collect();
    let target_bytes = config.verify_mb.saturating_mul(1_000_000);
    let mut written = 0u64;
    let mut stream = StreamId::USER_MIN;
    while written < target_bytes {
        log.append(stream, &batch, None, None)?;
        written += (VERIFY_EVENTS_PER_OP * config.event_bytes) as u64;
        stream = StreamId::USER_MIN + (stream + 1) % 64;
    }
    log.close()?;
    let segments = crate::datadir::DataDir::new(&dir).segments();
    let policy = crate::log::load_policy(&crate::datadir::DataDir::new(&dir).policy())?;

    let started = Instant::now();
    let verification = vellum_audit::verify::verify_log_dir(&segments, &policy, &mut |_| {});
    let verify_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        verification
            .checks
            .iter()
            .all(vellum_audit::report::Check::passed),
        "verify failed on the bench log"
    );
    let started = Instant::now();
    let mut log_bytes = 0u64;
    let mut digest_sink = 0u8;
    for entry in std::fs::read_dir(&segments)? {
        let bytes = std::fs::read(entry?.path())?;
        log_bytes += bytes.len() as u64;
        digest_sink ^= vellum_audit::hash::sha256(&[&bytes])[0];
    }
    let sha256_s = started.elapsed().as_secs_f64();
    std::hint::black_box(digest_sink);
    remove_dir_if_exists(&dir)?;
    let gb = log_bytes as f64 / 1e9;
    let events = verification.facts.events.len() as u64;
    Ok(VerifyMeasurement {
        log_bytes,
        events,
        verify_s,
        sha256_s,
        ratio: verify_s / sha256_s.max(1e-9),
        verify_s_per_gb: verify_s / gb.max(1e-12),
        sha256_s_per_gb: sha256_s / gb.max(1e-12),
        verify_events_per_s: events as f64 / verify_s.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, concurrency: usize, events_per_s: f64, mb_per_s: f64) -> Measurement {
        Measurement {
            system: system.to_string(),
            concurrency,
            appends: 100,
            events_per_op: 1,
            events_per_s,
            mb_per_s,
            p50_us: 100,
            p99_us: 1000,
            p999_us: 2000,
        }
    }

    /// Goal: reads are compared only with the databases' point reads at the
    /// same concurrency, bulk ingest only with raw 1 MiB writes (by MB/s),
    /// and the append rows never with a read or bulk row.
    #[test]
    fn ratio_lines_pair_like_with_like() {
        let measurements = [
            row(CLUSTER_SYSTEM, 64, 1000.0, 1.0),
            row("sqlite", 64, 500.0, 0.5),
            row(CLUSTER_READS_SYSTEM, 64, 20_000.0, 20.0),
            row(SQLITE_READS_SYSTEM, 64, 40_000.0, 40.0),
            row(POSTGRES_READS_SYSTEM, 64, 10_000.0, 10.0),
            row(POSTGRES_READS_SYSTEM, 1, 3_000.0, 3.0),
            row(
                &format!("{CLUSTER_BATCH_SYSTEM_PREFIX}200"),
                bulk::BULK_CLIENTS,
                50_000.0,
                51.2,
            ),
            row(RAW_BULK_SYSTEM, 1, 200.0, 204.8),
        ];
        let lines: Vec<(String, ThroughputUnit, f64)> = ratios(&measurements)
            .into_iter()
            .map(|r| (r.what, r.throughput_unit, r.throughput))
            .collect();
        let expected = [
            (
                "vellum 3 replicas / sqlite",
                ThroughputUnit::EventsPerS,
                2.0,
            ),
            (
                "vellum 3 replicas, reads / sqlite reads",
                ThroughputUnit::ReadsPerS,
                0.5,
            ),
            (
                "vellum 3 replicas, reads / postgresql reads",
                ThroughputUnit::ReadsPerS,
                2.0,
            ),
            (
                "vellum 3 replicas, batch 200 / raw 1 MiB write+fdatasync",
                ThroughputUnit::MbPerS,
                0.25,
            ),
        ];
        assert_eq!(lines.len(), expected.len(), "{lines:?}");
        for ((what, unit, throughput), (want_what, want_unit, want)) in lines.iter().zip(expected) {
            assert_eq!((what.as_str(), *unit), (want_what, want_unit));
            assert!(
                (throughput - want).abs() < 1e-9,
                "{what}: {throughput} != {want}"
            );
        }
    }

    /// Goal: a small ratio keeps three significant digits instead of
    /// printing as zero; others keep two decimals.
    #[test]
    fn ratio_text_never_rounds_a_ratio_to_zero() {
        for (ratio, text) in [
            (2.0, "2.00"),
            (0.25, "0.25"),
            (0.0037, "0.00370"),
            (0.06123, "0.0612"),
            (0.0, "0.00"),
        ] {
            assert_eq!(ratio_text(ratio), text);
        }
    }

    /// Goal: a batched row counts every event of every append, in events/s
    /// and in payload MB/s.
    #[test]
    fn batched_measurement_counts_events_not_appends() {
        let m = batched_measurement("b", 8, 1000, 200, vec![10; 50], Duration::from_secs(1));
        assert_eq!((m.appends, m.events_per_op), (50, 200));
        assert!((m.events_per_s - 10_000.0).abs() < 1e-6, "{m:?}");
        assert!((m.mb_per_s - 10.0).abs() < 1e-9, "{m:?}");
    }
}
