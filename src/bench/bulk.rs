//! The bulk-ingest measurement of `vellum bench --batch N`: [`BULK_CLIENTS`]
//! client threads appending N events of `--event-bytes` per append to the
//! healthy three-replica cluster, against one thread writing 1 MiB and
//! fdatasyncing in a loop on the same directory. The ratio that matters is
//! payload bandwidth (MB/s).

use base64::Engine as _;
use bytes::Bytes;

use super::{
    BenchCluster, BenchConfig, CLUSTER_BATCH_SYSTEM_PREFIX, Measurement, RAW_BULK_SYSTEM,
    batched_measurement, drive_threads, measurement,
};
use crate::api::{APPEND_EVENTS_MAX, AppendRequest, EventIn, IdempotencyKey};
use crate::types::{EventPersister as _, StreamId};

/// Largest `--batch`: the events one append may carry.
pub const BATCH_MAX: usize = APPEND_EVENTS_MAX;
/// Appending client threads of the bulk measurement.
pub const BULK_CLIENTS: usize = 8;
/// Bytes per write of the raw bulk baseline.
pub const RAW_BULK_WRITE_BYTES: usize = 1024 * 1024;
/// Writes of the raw bulk baseline, at most (bounds its file to 1 GiB).
pub const RAW_BULK_WRITES_MAX: u64 = 1024;

/// Refuses a batch size the server would refuse: more events than one
/// append carries, or a request body above its limit. 0 (skip) passes.
pub(super) fn check_batch(batch: usize, event_bytes: usize) -> anyhow::Result<()> {
    if batch == 0 {
        return Ok(());
    }
    anyhow::ensure!(
        batch <= BATCH_MAX,
        "--batch must be 0 (skip) or 1..={BATCH_MAX} (the events one append carries), not {batch}"
    );
    let limit = crate::api::REQUEST_BODY_BYTES_MAX;
    // The base64 alone: a quick refusal before building a huge request.
    let base64_bytes = batch.saturating_mul(event_bytes.div_ceil(3).saturating_mul(4));
    let body_bytes = match base64_bytes > limit {
        true => base64_bytes,
        false => request_body_bytes(batch, event_bytes)?,
    };
    anyhow::ensure!(
        body_bytes <= limit,
        "--batch {batch} of {event_bytes}-byte events makes an append request of at least \
         {body_bytes} bytes, above the server's limit of {limit}; use a smaller --batch or \
         --event-bytes"
    );
    Ok(())
}

/// The JSON body of an append of `batch` bench events, as the client sends it.
fn request_body_bytes(batch: usize, event_bytes: usize) -> anyhow::Result<usize> {
    let event =
        base64::engine::general_purpose::STANDARD.encode(super::sample_payload(event_bytes));
    let request = AppendRequest {
        events: vec![
            EventIn {
                base64: Some(event),
                ..EventIn::default()
            };
            batch
        ],
        expected_offset: None,
        idempotency: Some(IdempotencyKey {
            session: format!("{:032x}", u128::MAX),
            request: crate::bounds::EDGE_INTEGER_MAX,
        }),
        purpose: None,
    };
    Ok(serde_json::to_vec(&request)?.len())
}

/// Bulk ingest on the cluster and the raw 1 MiB baseline (nothing when
/// `--batch` is 0).
pub(super) fn measure(
    config: &BenchConfig,
    cluster: &BenchCluster,
    payload: &Bytes,
    progress: &dyn Fn(&str),
    measurements: &mut Vec<Measurement>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    if config.batch == 0 {
        notes.push("bulk ingest skipped: no --batch N given".to_string());
        return Ok(());
    }
    let system = format!("{CLUSTER_BATCH_SYSTEM_PREFIX}{}", config.batch);
    progress(&format!("{system}, {BULK_CLIENTS} appenders"));
    let batch = vec![payload.clone(); config.batch];
    let (latencies, elapsed) = drive_threads(config, BULK_CLIENTS, &|worker| {
        cluster
            .persister
            .persist_blocking(StreamId(StreamId::USER_MIN + worker as u64), batch.clone())?;
        Ok(())
    })?;
    measurements.push(batched_measurement(
        &system,
        BULK_CLIENTS,
        payload.len(),
        config.batch as u64,
        latencies,
        elapsed,
    ));
    progress(RAW_BULK_SYSTEM);
    measurements.push(raw_bulk(config)?);
    Ok(())
}

/// One thread appending 1 MiB to a file and fdatasyncing, bounded by
/// `--appends`, [`RAW_BULK_WRITES_MAX`] and `--seconds`.
fn raw_bulk(config: &BenchConfig) -> anyhow::Result<Measurement> {
    let block = super::sample_payload(RAW_BULK_WRITE_BYTES);
    let bounded = BenchConfig {
        appends: config.appends.min(RAW_BULK_WRITES_MAX),
        ..config.clone()
    };
    let (latencies, elapsed) = super::raw_fdatasync_loop(&bounded, 1, "raw-bulk.bin", &block)?;
    Ok(measurement(
        RAW_BULK_SYSTEM,
        1,
        block.len(),
        latencies,
        elapsed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: `--batch` passes 0 and sizes the server takes, and refuses more
    /// events than one append carries or a body above the request limit.
    #[test]
    fn batch_bounds() {
        for (batch, event_bytes) in [(0, 1024), (1, 1024), (200, 1024), (BATCH_MAX, 64)] {
            check_batch(batch, event_bytes).expect("accepted");
        }
        let too_many = check_batch(BATCH_MAX + 1, 64).expect_err("above the per-append max");
        assert!(
            too_many.to_string().contains("--batch must be"),
            "{too_many}"
        );
        for (batch, event_bytes) in [(4000, 1024), (10, 1024 * 1024)] {
            let too_big = check_batch(batch, event_bytes).expect_err("above the body limit");
            assert!(
                too_big.to_string().contains("above the server's limit"),
                "{too_big}"
            );
        }
    }
}
