//! `vellum-projection`: a worked projection service. It follows a
//! persistent subscription (a consumer group) of a Vellum cluster and keeps
//! a patient summary per stream in PostgreSQL.
//!
//! Why it exists: it shows the rule a projection over an at-least-once,
//! competing-consumer delivery must keep. The group delivers an event
//! again after a crash (the ack never arrived), and after a restart the
//! events the dead consumer held come back only when their leases expire,
//! possibly after later ones. So the projection keeps each stream's last
//! applied offset *in the summary row it changes, in the same
//! transaction*: an event at or below it was applied already (skipped and
//! acked: never applied twice), the next offset is applied, and one beyond
//! it (an earlier event of the patient is still out) is left unacked, to be
//! delivered again once its lease expires, so each patient's events apply
//! in order. Run it with the group starting at `beginning` (each stream's
//! first event is offset 0).
//!
//! The summary of a stream: its event count, its last offset, the `type`
//! (or FHIR `resourceType`) of its last event when the payload is JSON with
//! one, and a digest chained over every applied payload in order
//! (SHA-256 of the previous digest and the payload), so two runs that
//! applied the same events in the same order have the same digest.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Parser;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgPool;
use vellum::server::groups::{DeliveredEvent, GroupDelivery};

/// Events one pull asks for.
const PULL_EVENTS_MAX: u64 = 50;
/// How long one pull waits for an event, in milliseconds.
const PULL_WAIT_MS: u64 = 1000;
/// Longest a request may take before the service gives up on it.
const REQUEST_TIMEOUT_MS: u64 = 30_000;

/// Follow a consumer group and keep a patient summary in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "vellum-projection")]
struct Args {
    /// Base URL of any replica's client API (a backup forwards).
    #[arg(long)]
    api: String,
    /// The cluster CA's certificate (PEM), e.g. `<dev dir>/ca.pem`.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// A bearer token (writer to create the group; reader suffices to consume).
    #[arg(long, env = "VELLUM_TOKEN")]
    token: String,
    /// PostgreSQL URL of the summary.
    #[arg(long, env = "VELLUM_PROJECTION_POSTGRES_URL")]
    postgres: String,
    /// The consumer group.
    #[arg(long, default_value = "patient-summary")]
    group: String,
    /// Create the group first (if it does not exist) with this stream
    /// filter, e.g. `5001-5999`; needs a writer token.
    #[arg(long)]
    create_with_streams: Option<String>,
    /// With `--create-with-streams`: the group's lease in milliseconds (a
    /// restarted projection waits this long for the events its dead
    /// predecessor held).
    #[arg(long, default_value_t = 5000)]
    lease_ms: u64,
    /// Exit 0 after this many milliseconds without an event and with none
    /// held back (default: run until killed).
    #[arg(long)]
    exit_when_idle_ms: Option<u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = PgPool::connect(&args.postgres)
        .await
        .context("connecting to PostgreSQL")?;
    create_tables(&pool).await?;
    let ca = std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).context("the CA certificate")?)
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .build()?;
    let api = Api {
        http,
        base: args.api.trim_end_matches('/').to_string(),
        token: args.token.clone(),
        group: args.group.clone(),
    };
    if let Some(streams) = &args.create_with_streams {
        api.create(streams, args.lease_ms).await?;
    }
    let consumer = format!("projection-{}", std::process::id());
    let mut idle_since = Instant::now();
    let mut held_back = 0usize;
    loop {
        let delivery = api.pull(&consumer).await?;
        if delivery.events.is_empty() {
            let idle = u64::try_from(idle_since.elapsed().as_millis()).unwrap_or(u64::MAX);
            if held_back == 0 && args.exit_when_idle_ms.is_some_and(|limit| idle >= limit) {
                return Ok(());
            }
            continue;
        }
        idle_since = Instant::now();
        held_back = 0;
        let mut done = Vec::with_capacity(delivery.events.len());
        for event in &delivery.events {
            match apply(&pool, &args.group, event).await? {
                Applied::Now | Applied::Before => done.push(event.event.position),
                Applied::NotYet => held_back += 1,
            }
        }
        // Acked only once committed in PostgreSQL: a crash before this line
        // delivers them again, and `apply` skips what it had applied.
        if !done.is_empty() {
            api.ack(&done).await?;
        }
    }
}

/// What `apply` did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// Applied now.
    Now,
    /// Applied before (a redelivery): nothing to do but ack.
    Before,
    /// An earlier event of the stream is not applied yet: left unacked.
    NotYet,
}

async fn create_tables(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS patient_summary (
            group_name TEXT NOT NULL,
            stream BIGINT NOT NULL,
            events BIGINT NOT NULL,
            last_offset BIGINT NOT NULL,
            last_type TEXT,
            digest TEXT NOT NULL,
            PRIMARY KEY (group_name, stream))",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Applies one delivered event to its stream's summary row in one
/// transaction that also moves the row's last applied offset.
async fn apply(pool: &PgPool, group: &str, delivered: &DeliveredEvent) -> anyhow::Result<Applied> {
    let event = &delivered.event;
    let stream = i64::try_from(event.stream)?;
    let offset = i64::try_from(event.offset)?;
    let payload = base64::engine::general_purpose::STANDARD.decode(&event.base64)?;
    let mut tx = pool.begin().await?;
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT last_offset, digest FROM patient_summary
         WHERE group_name = $1 AND stream = $2 FOR UPDATE",
    )
    .bind(group)
    .bind(stream)
    .fetch_optional(&mut *tx)
    .await?;
    let (next, previous) = match &row {
        Some((last, digest)) => (last + 1, digest.as_str()),
        None => (0, ""),
    };
    if offset < next {
        return Ok(Applied::Before);
    }
    if offset > next {
        return Ok(Applied::NotYet);
    }
    let digest = chained(previous, &payload);
    sqlx::query(
        "INSERT INTO patient_summary (group_name, stream, events, last_offset, last_type, digest)
         VALUES ($1, $2, 1, $3, $4, $5)
         ON CONFLICT (group_name, stream) DO UPDATE SET
           events = patient_summary.events + 1, last_offset = $3,
           last_type = COALESCE($4, patient_summary.last_type), digest = $5",
    )
    .bind(group)
    .bind(stream)
    .bind(offset)
    .bind(event_type(&payload))
    .bind(&digest)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Applied::Now)
}

/// SHA-256 of the previous digest (hex) and the payload, as hex.
fn chained(previous: &str, payload: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(payload);
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The payload's `type` or FHIR `resourceType`, when it is JSON with one.
fn event_type(payload: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    ["type", "resourceType"]
        .iter()
        .find_map(|key| value.get(key)?.as_str().map(str::to_string))
}

/// The group routes of one cluster.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    group: String,
}

impl Api {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let answer = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        let status = answer.status().as_u16();
        Ok((status, answer.json().await.unwrap_or(Value::Null)))
    }

    async fn create(&self, streams: &str, lease_ms: u64) -> anyhow::Result<()> {
        let body = json!({
            "name": self.group, "streams": streams, "start": "beginning",
            "lease_ms": lease_ms, "retry_max": 20
        });
        match self.post("/v1/groups", &body).await? {
            (201, _) => Ok(()),
            (409, answer) if answer["error"]["code"] == "group_exists" => Ok(()),
            (status, answer) => bail!("creating group {}: {status} {answer}", self.group),
        }
    }

    /// One pull; a 503 (view change, a new primary catching up) is an
    /// empty delivery, so the loop asks again.
    async fn pull(&self, consumer: &str) -> anyhow::Result<GroupDelivery> {
        let body = json!({ "consumer": consumer, "max": PULL_EVENTS_MAX, "wait_ms": PULL_WAIT_MS });
        let path = format!("/v1/groups/{}/pull", self.group);
        match self.post(&path, &body).await {
            Ok((200, answer)) => Ok(serde_json::from_value(answer)?),
            Ok((503, _)) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(GroupDelivery {
                    group: self.group.clone(),
                    consumer: consumer.to_string(),
                    events: Vec::new(),
                    lease_ms: 0,
                })
            }
            Ok((status, answer)) => bail!("pull from {}: {status} {answer}", self.group),
        }
    }

    /// Acks `positions`, retrying a 503 (the events are applied; an ack
    /// lost for good only means they come again and are skipped).
    async fn ack(&self, positions: &[u64]) -> anyhow::Result<()> {
        let path = format!("/v1/groups/{}/ack", self.group);
        let body = json!({ "positions": positions });
        for _ in 0..10 {
            match self.post(&path, &body).await {
                Ok((200, _)) => return Ok(()),
                // A new primary re-delivers what it had not seen acked.
                Ok((409, answer)) if answer["error"]["code"] == "not_delivered" => return Ok(()),
                Ok((503, _)) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Ok((status, answer)) => bail!("ack to {}: {status} {answer}", self.group),
            }
        }
        Ok(())
    }
}
