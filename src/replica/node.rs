//! The client API's view of a running replica: `server::node::Node` over the
//! replica's log. Writes go through the VSR core only on the primary; a
//! backup answers `NotPrimary` and the server forwards the request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::api::{AppendReceipt, ConsistencyAnswer, Health, LogEvent};
use crate::log::{ClientRequest, LocalLog, LogError, receipt};
use crate::net::Transport;
use crate::server::node::{AppendCall, Node, NodeError, NodeMetrics};
use crate::vsr::Status;

/// How often a subscription waiting for new events looks again.
const EVENTS_POLL_MS: u64 = 10;

/// A replica's log served to clients.
#[derive(Debug)]
pub struct ReplicaNode {
    log: Arc<LocalLog>,
    transport: Option<Arc<dyn Transport>>,
    trail: super::TrailBatcher,
}

impl ReplicaNode {
    /// Serves `log`; `transport` supplies the network counters.
    pub fn new(log: Arc<LocalLog>, transport: Option<Arc<dyn Transport>>) -> ReplicaNode {
        ReplicaNode {
            log,
            transport,
            trail: super::TrailBatcher::default(),
        }
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Normal => "normal",
        Status::ViewChange => "view_change",
        Status::Recovering => "recovering",
    }
}

/// Maps the log's errors to the API's kinds.
pub fn node_error(error: LogError) -> NodeError {
    match error {
        LogError::Refused(reason) => NodeError::Refused(reason),
        LogError::WrongExpectedOffset {
            stream,
            expected,
            actual,
        } => NodeError::WrongExpectedOffset {
            stream,
            expected,
            actual,
        },
        reused @ LogError::IdempotencyKeyReused { .. } => {
            NodeError::IdempotencyKeyReused(reused.to_string())
        }
        LogError::UnknownStream(stream) => {
            NodeError::NotFound(format!("stream {stream} has no committed events"))
        }
        LogError::Indeterminate(reason) => NodeError::Indeterminate(reason),
        LogError::Busy(reason) | LogError::DataDir(reason) => NodeError::Unavailable(reason),
        other => NodeError::Storage(other.to_string()),
    }
}

fn log_event(stream: u64, event: &crate::log::ReadEvent) -> LogEvent {
    LogEvent {
        position: event.position,
        stream,
        offset: event.offset,
        base64: base64::engine::general_purpose::STANDARD.encode(&event.payload),
        salt: base64::engine::general_purpose::STANDARD.encode(event.salt),
    }
}

impl ReplicaNode {
    /// `NotPrimary` unless this replica is the primary in normal status.
    fn primary_or_refuse(&self) -> Result<(), NodeError> {
        let role = self.log.role();
        match role.is_primary {
            true => Ok(()),
            false => Err(NodeError::NotPrimary {
                replica: role.replica,
                primary: role.normal.then_some(role.primary),
            }),
        }
    }
}

impl Node for ReplicaNode {
    fn role(&self) -> crate::server::node::NodeRole {
        let role = self.log.role();
        crate::server::node::NodeRole {
            replica: role.replica,
            is_primary: role.is_primary,
            primary: role.normal.then_some(role.primary),
        }
    }

    fn health(&self) -> Health {
        let status = self.log.status();
        Health {
            status: status_name(status.status).to_string(),
            replica: status.replica,
            replica_count: status.replica_count,
            view: status.view,
            primary: status.primary,
            is_primary: status.is_primary,
            commit: status.commit,
            op: status.op,
            events: status.events,
        }
    }

    fn append(&self, call: AppendCall) -> Result<AppendReceipt, NodeError> {
        self.primary_or_refuse()?;
        let client = call
            .idempotency
            .map(|(client, request)| ClientRequest { client, request });
        let appended = self
            .log
            .append_recorded(
                call.stream,
                &call.events,
                call.expected_offset,
                client,
                call.trail,
            )
            .map_err(node_error)?;
        let receipt = receipt(&self.log, &appended).map_err(node_error)?;
        Ok(AppendReceipt {
            stream: receipt.stream,
            first_offset: receipt.first_offset,
            next_offset: receipt.next_offset,
            first_position: receipt.first_position,
            op: receipt.op,
            duplicate: appended.duplicate,
            certificate: receipt.certificate,
            proofs: receipt.proofs,
            salts: receipt.salts,
        })
    }

    fn read_stream(&self, stream: u64, from: u64, max: u64) -> Result<Vec<LogEvent>, NodeError> {
        let events = self.log.read(stream, from, max).map_err(node_error)?;
        Ok(events.iter().map(|e| log_event(stream, e)).collect())
    }

    fn read_log(&self, from: u64, max: u64) -> Result<Vec<LogEvent>, NodeError> {
        let events = self.log.read_log(from, max).map_err(node_error)?;
        Ok(events.iter().map(|(s, e)| log_event(*s, e)).collect())
    }

    fn committed_events(&self) -> u64 {
        self.log.committed_events()
    }

    fn wait_events(&self, seen: u64, timeout_ms: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let events = self.log.committed_events();
            if events > seen || Instant::now() >= deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(EVENTS_POLL_MS));
        }
    }

    fn proof(&self, stream: u64, offset: u64) -> Result<String, NodeError> {
        match self.log.inclusion_proof(stream, offset) {
            Ok(proof) => Ok(proof.encode()),
            Err(LogError::Refused(reason)) => Err(NodeError::NotFound(reason)),
            Err(other) => Err(node_error(other)),
        }
    }

    fn consistency(&self, from: u64, to: Option<u64>) -> Result<ConsistencyAnswer, NodeError> {
        let proof = self.log.consistency_proof(from, to).map_err(node_error)?;
        Ok(ConsistencyAnswer {
            from: proof.old_size,
            to: proof.new_size,
            hashes: proof.hashes.iter().map(hex).collect(),
            certificate: proof.checkpoint.encode(),
        })
    }

    fn certificate(&self) -> Option<(u64, String)> {
        self.log
            .latest_certificate()
            .map(|c| (c.checkpoint.size, c.encode()))
    }

    fn export_events(
        &self,
        call: crate::server::node::ExportCall,
    ) -> Result<Vec<(String, Vec<u8>)>, NodeError> {
        let (events, certificate) = self
            .log
            .export_events(call.stream, call.from, call.to)
            .map_err(node_error)?;
        let signer = self.log.signer();
        let request = vellum_compliance::bundle::BundleRequest {
            stream: call.stream,
            from: call.from,
            to: call.to,
            principal: call.principal,
            purpose: call.purpose,
            time_ns: crate::log::now_ns(),
            exported_by: signer.name().to_string(),
        };
        vellum_compliance::bundle::build_bundle(&request, &certificate, &events, signer)
            // The inputs come from this replica's own log, so a refusal here
            // means the request named a range the certificate does not cover.
            .map_err(|e| NodeError::Refused(format!("cannot build the export bundle: {e}")))
    }

    fn audit_records(
        &self,
        from_ns: Option<u64>,
        to_ns: Option<u64>,
        stream: Option<u64>,
    ) -> Result<(String, Vec<(vellum_compliance::trail::AccessEvent, u64)>), NodeError> {
        let records = self
            .log
            .trail_events()
            .map_err(node_error)?
            .into_iter()
            .filter(|(e, _)| from_ns.is_none_or(|f| e.time_ns >= f))
            .filter(|(e, _)| to_ns.is_none_or(|t| e.time_ns < t))
            .filter(|(e, _)| stream.is_none_or(|s| e.names_stream(s)))
            .collect();
        Ok((self.log.signer().name().to_string(), records))
    }

    fn record_access(
        &self,
        events: Vec<vellum_compliance::trail::AccessEvent>,
    ) -> Result<(), NodeError> {
        self.primary_or_refuse()?;
        self.trail.record(&self.log, events)
    }

    fn metrics(&self) -> NodeMetrics {
        let status = self.log.status();
        let net = self.transport.as_ref().map(|t| t.stats());
        NodeMetrics {
            commit: status.commit,
            op: status.op,
            view: status.view,
            events: status.events,
            messages_sent: net.as_ref().map_or(0, |n| n.sent),
            messages_received: net.as_ref().map_or(0, |n| n.received),
            frames_dropped: net
                .as_ref()
                .map_or(0, |n| n.frames_dropped + n.queue_dropped),
            syncs: self.log.storage_syncs(),
        }
    }
}

fn hex(hash: &vellum_audit::hash::Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
