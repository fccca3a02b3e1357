//! The read measurement of `vellum bench`: single-event reads from the
//! healthy three-replica cluster through the Rust client, against SQLite and
//! PostgreSQL point reads by primary key, at each concurrency level.
//!
//! Every system reads the same set of distinct events (each payload carries
//! its number, so a wrong event cannot pass for the right one), and every
//! answer is checked byte for byte: a wrong answer fails the run, because a
//! bench that counts errors as reads measures nothing. The cluster records
//! each read in its access trail (one trail leaf per access) before it
//! answers; after each level the bench checks that the global log grew by at
//! least one leaf per read, between two marker appends around the reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;

use super::{
    BenchCluster, BenchConfig, CLUSTER_API_FLOOR_SYSTEM, CLUSTER_READS_SYSTEM,
    CLUSTER_SPREAD_READS_SYSTEM, Measurement, POSTGRES_READS_SYSTEM, SQLITE_READS_SYSTEM,
    drive_tasks, measurement,
};
use crate::api::StreamEvents;
use crate::client::Client;
use crate::types::StreamId;

/// Distinct events each system reads back, at most (fewer when `--appends`
/// is smaller).
pub const READ_TARGETS_MAX: u64 = 256;

/// One event the reads ask for, and the bytes it must hold.
#[derive(Debug, Clone)]
struct Target {
    stream: u64,
    offset: u64,
    /// Its global position (a read asks for a prefix past it).
    position: u64,
    payload: Bytes,
}

/// Seeds the events to read, then measures reads on every system at every
/// concurrency level.
pub(super) fn measure(
    config: &BenchConfig,
    cluster: &BenchCluster,
    runtime: &tokio::runtime::Runtime,
    progress: &dyn Fn(&str),
    measurements: &mut Vec<Measurement>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    progress("appending the events to read");
    let client = cluster.cluster.client(None)?;
    let targets = Arc::new(runtime.block_on(seed(config, &client))?);
    let payloads: Arc<Vec<Bytes>> = Arc::new(targets.iter().map(|t| t.payload.clone()).collect());
    notes.push(format!(
        "reads: every system reads the same {} distinct events of {} bytes, one per read, \
         round robin; every answer is checked byte for byte",
        targets.len(),
        payloads[0].len()
    ));
    let readers = runtime.block_on(reader_clients(cluster))?;
    notes.push(format!(
        "reads: {CLUSTER_READS_SYSTEM} go to the primary (replica {}) only; \
         {CLUSTER_SPREAD_READS_SYSTEM} are spread round robin over every replica \
         (backups serve them from their certified prefix and relay the trail record \
         to the primary before answering)",
        readers.primary
    ));
    for &concurrency in &config.concurrency {
        for (system, reader) in [
            (CLUSTER_READS_SYSTEM, &readers.primary_only),
            (CLUSTER_SPREAD_READS_SYSTEM, &readers.spread),
        ] {
            progress(&format!("{system}, {concurrency} readers"));
            let before = runtime.block_on(mark(&client))?;
            let reads = cluster_reads(config, reader, runtime, concurrency, &targets, system)?;
            let after = runtime.block_on(mark(&client))?;
            let grew = check_trail_grew(before, after, reads.appends)?;
            notes.push(format!(
                "{system}, {concurrency} readers: the global log grew by {grew} \
                 leaves between two marker appends around {} reads (each access is one \
                 access-trail leaf, recorded before its answer): checked at least reads + 1",
                reads.appends
            ));
            measurements.push(reads);
        }
        progress(&format!(
            "{CLUSTER_API_FLOOR_SYSTEM}, {concurrency} clients"
        ));
        measurements.push(api_floor(
            config,
            &readers.primary_only,
            runtime,
            concurrency,
        )?);
        progress(&format!("{SQLITE_READS_SYSTEM}, {concurrency} readers"));
        measurements.push(runtime.block_on(sqlite_reads(config, concurrency, &payloads))?);
        if let Some(url) = &config.postgres_url {
            progress(&format!("{POSTGRES_READS_SYSTEM}, {concurrency} readers"));
            measurements.push(runtime.block_on(postgres_reads(
                url,
                config,
                concurrency,
                &payloads,
            ))?);
        }
    }
    Ok(())
}

/// The read clients: one that talks to the primary only, one that spreads
/// reads over every replica.
struct Readers {
    primary: usize,
    primary_only: Client,
    spread: Client,
}

/// Finds the primary and builds the two read clients.
async fn reader_clients(cluster: &BenchCluster) -> anyhow::Result<Readers> {
    let local = &cluster.cluster;
    let client = local.client(None)?;
    let health = client.health_all().await;
    let primary = health
        .iter()
        .position(|(_, h)| h.as_ref().is_ok_and(|h| h.is_primary))
        .ok_or_else(|| anyhow::anyhow!("no replica reports itself primary"))?;
    let build = |endpoints: Vec<String>, spread: bool| {
        let mut config =
            crate::client::ClientConfig::new(endpoints, local.dev.writer_token.clone());
        config.ca_pem = Some(local.ca_pem().to_vec());
        config.spread_reads = spread;
        Client::new(config)
    };
    Ok(Readers {
        primary,
        primary_only: build(vec![local.dev.api_urls[primary].clone()], false)?,
        spread: build(local.dev.api_urls.clone(), true)?,
    })
}

/// A payload of about `bytes` bytes that carries `number`: distinct events
/// of the bench's usual size.
fn numbered_payload(bytes: usize, number: u64) -> Bytes {
    let mut out =
        format!("{{\"resourceType\":\"Observation\",\"seq\":{number},\"note\":\"").into_bytes();
    while out.len() + 2 < bytes {
        out.push(b'x');
    }
    out.extend_from_slice(b"\"}");
    Bytes::from(out)
}

/// Appends the distinct events to read, one per append, spread over the
/// streams the append phase wrote; bounded by `--appends`,
/// [`READ_TARGETS_MAX`] and `--seconds` (at least one event).
async fn seed(config: &BenchConfig, client: &Client) -> anyhow::Result<Vec<Target>> {
    let count = config.appends.min(READ_TARGETS_MAX);
    let streams = config.concurrency.iter().copied().max().unwrap_or(1) as u64;
    let deadline = Instant::now() + config.time_limit;
    let mut targets = Vec::new();
    for number in 0..count {
        if !targets.is_empty() && Instant::now() >= deadline {
            break;
        }
        let stream = StreamId::USER_MIN + number % streams;
        let payload = numbered_payload(config.event_bytes, number);
        let receipt = client.append(stream, vec![payload.clone()], None).await?;
        targets.push(Target {
            stream,
            offset: receipt.first_offset,
            position: receipt.first_position,
            payload,
        });
    }
    Ok(targets)
}

/// Appends one small event and returns its global position.
async fn mark(client: &Client) -> anyhow::Result<u64> {
    let marker = Bytes::from_static(b"{\"bench\":\"trail mark\"}");
    let receipt = client
        .append(StreamId::USER_MIN, vec![marker], None)
        .await?;
    Ok(receipt.first_position)
}

/// `concurrency` tasks reading the targets round robin, one event per read.
fn cluster_reads(
    config: &BenchConfig,
    client: &Client,
    runtime: &tokio::runtime::Runtime,
    concurrency: usize,
    targets: &Arc<Vec<Target>>,
    system: &str,
) -> anyhow::Result<Measurement> {
    let next = Arc::new(AtomicU64::new(0));
    let client = client.clone();
    let all = Arc::clone(targets);
    let (latencies, elapsed) = runtime.block_on(drive_tasks(config, concurrency, move |_| {
        let client = client.clone();
        let target = pick(&all, &next).clone();
        async move {
            // Read-your-writes: a backup waits until it serves the event
            // (asked of the primary too, so both rows do the same work).
            let min_position = target.position + 1;
            let answer = client
                .read_stream_at_least(target.stream, target.offset, 1, min_position)
                .await?;
            check_read(&target, &answer)
        }
    }))?;
    Ok(measurement(
        system,
        concurrency,
        targets[0].payload.len(),
        latencies,
        elapsed,
    ))
}

/// `concurrency` tasks asking the primary for its health: the request rate
/// of the API itself (see [`CLUSTER_API_FLOOR_SYSTEM`]). Every answer must
/// be a health document from the primary, or the run fails.
fn api_floor(
    config: &BenchConfig,
    client: &Client,
    runtime: &tokio::runtime::Runtime,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let client = client.clone();
    let (latencies, elapsed) = runtime.block_on(drive_tasks(config, concurrency, move |_| {
        let client = client.clone();
        async move {
            let answers = client.health_all().await;
            let [(endpoint, answer)] = answers.as_slice() else {
                anyhow::bail!(
                    "the floor client asks one replica, got {} answers",
                    answers.len()
                );
            };
            match answer {
                Ok(health) if health.is_primary => Ok(()),
                Ok(_) => anyhow::bail!("{endpoint} answered health but is no longer the primary"),
                Err(e) => anyhow::bail!("health of {endpoint}: {e}"),
            }
        }
    }))?;
    Ok(measurement(
        CLUSTER_API_FLOOR_SYSTEM,
        concurrency,
        0,
        latencies,
        elapsed,
    ))
}

/// The next item, round robin.
fn pick<'a, T>(items: &'a [T], next: &AtomicU64) -> &'a T {
    assert!(!items.is_empty(), "the read phase seeds at least one event");
    let i = next.fetch_add(1, Ordering::Relaxed) % items.len() as u64;
    &items[usize::try_from(i).expect("an index below a Vec's length fits usize")]
}

/// Fails unless `answer` holds exactly the asked event with its bytes.
fn check_read(target: &Target, answer: &StreamEvents) -> anyhow::Result<()> {
    let (stream, offset) = (target.stream, target.offset);
    let [event] = answer.events.as_slice() else {
        anyhow::bail!(
            "read of stream {stream} offset {offset} answered {} events, not 1",
            answer.events.len()
        );
    };
    anyhow::ensure!(
        event.stream == stream && event.offset == offset,
        "read of stream {stream} offset {offset} answered stream {} offset {}",
        event.stream,
        event.offset
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&event.base64)
        .map_err(|e| anyhow::anyhow!("read of stream {stream} offset {offset}: base64: {e}"))?;
    check_bytes(
        &format!("stream {stream} offset {offset}"),
        &bytes,
        &target.payload,
    )
}

/// Fails unless a read of `what` gave back the bytes written there.
fn check_bytes(what: &str, got: &[u8], written: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(
        got == written,
        "read of {what} answered {} bytes that differ from the {} written",
        got.len(),
        written.len()
    );
    Ok(())
}

/// Checks that the global log grew by at least one leaf per read between
/// the marker appends at positions `before` and `after` (the first marker's
/// own event is the `+ 1`); returns the growth.
fn check_trail_grew(before: u64, after: u64, reads: u64) -> anyhow::Result<u64> {
    let grew = after.checked_sub(before).ok_or_else(|| {
        anyhow::anyhow!("the marker append after the reads is at position {after}, before {before}")
    })?;
    anyhow::ensure!(
        grew >= reads.saturating_add(1),
        "the access trail did not record every read: the global log grew by {grew} leaves \
         around {reads} reads (at least {} expected)",
        reads.saturating_add(1)
    );
    Ok(grew)
}

/// Point reads by primary key from a SQLite table of the same payloads.
async fn sqlite_reads(
    config: &BenchConfig,
    concurrency: usize,
    payloads: &Arc<Vec<Bytes>>,
) -> anyhow::Result<Measurement> {
    let path = config.dir.join(format!("sqlite-reads-{concurrency}.db"));
    let pool = super::sqlite_pool(&path, concurrency).await?;
    sqlx::query("CREATE TABLE events (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        .execute(&pool)
        .await?;
    let mut tx = pool.begin().await?;
    for (id, payload) in payloads.iter().enumerate() {
        sqlx::query("INSERT INTO events (id, payload) VALUES (?, ?)")
            .bind(i64::try_from(id)?)
            .bind(payload.as_ref())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let next = Arc::new(AtomicU64::new(0));
    let task_pool = pool.clone();
    let all = Arc::clone(payloads);
    let result = drive_tasks(config, concurrency, move |_| {
        let pool = task_pool.clone();
        let id = next.fetch_add(1, Ordering::Relaxed) % all.len() as u64;
        let all = Arc::clone(&all);
        async move {
            let (got,): (Vec<u8>,) = sqlx::query_as("SELECT payload FROM events WHERE id = ?")
                .bind(i64::try_from(id)?)
                .fetch_one(&pool)
                .await?;
            check_bytes(&format!("sqlite row {id}"), &got, row(&all, id))
        }
    })
    .await;
    pool.close().await;
    super::remove_sqlite_files(&path);
    let (latencies, elapsed) = result?;
    Ok(measurement(
        SQLITE_READS_SYSTEM,
        concurrency,
        payloads[0].len(),
        latencies,
        elapsed,
    ))
}

/// Point reads by primary key from a PostgreSQL table of the same payloads.
async fn postgres_reads(
    url: &str,
    config: &BenchConfig,
    concurrency: usize,
    payloads: &Arc<Vec<Bytes>>,
) -> anyhow::Result<Measurement> {
    let pool = super::postgres_pool(url, concurrency).await?;
    let table = super::postgres_table_name()?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, payload BYTEA NOT NULL)"
    )))
    .execute(&pool)
    .await?;
    let result = postgres_read_rows(&pool, &table, config, concurrency, payloads).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    let (latencies, elapsed) = result?;
    Ok(measurement(
        POSTGRES_READS_SYSTEM,
        concurrency,
        payloads[0].len(),
        latencies,
        elapsed,
    ))
}

/// Fills `table` with the payloads, then reads them back by id.
async fn postgres_read_rows(
    pool: &sqlx::PgPool,
    table: &str,
    config: &BenchConfig,
    concurrency: usize,
    payloads: &Arc<Vec<Bytes>>,
) -> anyhow::Result<(Vec<u64>, std::time::Duration)> {
    let mut tx = pool.begin().await?;
    let insert = format!("INSERT INTO {table} (id, payload) VALUES ($1, $2)");
    for (id, payload) in payloads.iter().enumerate() {
        sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
            .bind(i64::try_from(id)?)
            .bind(payload.as_ref())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let next = Arc::new(AtomicU64::new(0));
    let task_pool = pool.clone();
    let all = Arc::clone(payloads);
    let select = format!("SELECT payload FROM {table} WHERE id = $1");
    drive_tasks(config, concurrency, move |_| {
        let pool = task_pool.clone();
        let id = next.fetch_add(1, Ordering::Relaxed) % all.len() as u64;
        let all = Arc::clone(&all);
        let select = select.clone();
        async move {
            let (got,): (Vec<u8>,) = sqlx::query_as(sqlx::AssertSqlSafe(select))
                .bind(i64::try_from(id)?)
                .fetch_one(&pool)
                .await?;
            check_bytes(&format!("postgresql row {id}"), &got, row(&all, id))
        }
    })
    .await
}

/// The payload of row `id` (always below the table's length: ids are taken
/// modulo it).
fn row(payloads: &[Bytes], id: u64) -> &[u8] {
    &payloads[usize::try_from(id).expect("a row id below a Vec's length fits usize")]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the trail check passes only when the log grew by at least one
    /// leaf per read plus the first marker's own event.
    #[test]
    fn trail_check_demands_one_leaf_per_read() {
        assert_eq!(check_trail_grew(100, 111, 10).expect("11 >= 10 + 1"), 11);
        assert_eq!(check_trail_grew(100, 130, 10).expect("more is fine"), 30);
        let short = check_trail_grew(100, 110, 10).expect_err("10 < 10 + 1");
        assert!(
            short.to_string().contains("did not record every read"),
            "{short}"
        );
        assert!(
            check_trail_grew(100, 99, 0).is_err(),
            "the log never shrinks"
        );
    }

    /// Goal: a read answer passes only when it holds exactly the asked event
    /// with the written bytes.
    #[test]
    fn read_check_refuses_any_other_event() {
        let target = Target {
            stream: 20,
            offset: 3,
            position: 9,
            payload: numbered_payload(64, 7),
        };
        let event = |stream, offset, bytes: &[u8]| crate::api::LogEvent {
            position: 9,
            stream,
            offset,
            base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            salt: String::new(),
            ..Default::default()
        };
        let answer = |events| StreamEvents {
            stream: 20,
            events,
            next_offset: 4,
        };
        let good = event(20, 3, &target.payload);
        check_read(&target, &answer(vec![good.clone()])).expect("the asked event");
        let other = numbered_payload(64, 8);
        for wrong in [
            vec![],
            vec![good.clone(), good.clone()],
            vec![event(21, 3, &target.payload)],
            vec![event(20, 4, &target.payload)],
            vec![event(20, 3, &other)],
        ] {
            assert!(
                check_read(&target, &answer(wrong.clone())).is_err(),
                "{wrong:?}"
            );
        }
    }

    /// Goal: numbered payloads have the bench's event size and differ by number.
    #[test]
    fn numbered_payloads_are_distinct_and_sized() {
        let a = numbered_payload(1024, 1);
        let b = numbered_payload(1024, 2);
        assert_eq!((a.len(), b.len()), (1024, 1024));
        assert_ne!(a, b);
        serde_json::from_slice::<serde_json::Value>(&a).expect("valid json");
    }
}
