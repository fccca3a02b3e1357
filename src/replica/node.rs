//! The client API's view of a running replica: `server::node::Node` over the
//! replica's log. Writes go through the VSR core only on the primary; a
//! backup answers `NotPrimary` and the server forwards the request.

use super::witness_feed::WitnessFeed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::api::{AppendReceipt, ConsistencyAnswer, Health, LogEvent};
use vellum_compliance::bundle::BundleError;

use crate::crypto::CryptoError;
use crate::log::{ClientRequest, LocalLog, LogError, receipt};
use crate::net::Transport;
use crate::server::node::{
    AppendCall, AppendError, BatchRefusal, CustodyCall, CustodyDone, CustodyError, ExportCall,
    ExportError, FaultKind, InternalFault, Node, NodeMetrics, ProofError, ReadError, Shredded,
    TRAIL_PAGE_EVENTS_MAX, TlogError, TrailError, TrailPage, TrailSnapshot, Unavailable,
};
use crate::vsr::{RequestRefusal, Status};

/// How often a subscription waiting for new events looks again.
const EVENTS_POLL_MS: u64 = 10;

/// A replica's log served to clients.
#[derive(Debug)]
pub struct ReplicaNode {
    log: Arc<LocalLog>,
    transport: Option<Arc<dyn Transport>>,
    trail: super::TrailBatcher,
    custody: Arc<super::Custody>,
    groups: Arc<super::groups::Groups>,
    witnesses: Option<Arc<WitnessFeed>>,
}

impl ReplicaNode {
    /// Serves `log`; `transport` supplies the network counters; `custody`
    /// is the log's key custody (its applier runs beside).
    pub fn new(
        log: Arc<LocalLog>,
        transport: Option<Arc<dyn Transport>>,
        custody: Arc<super::Custody>,
    ) -> ReplicaNode {
        ReplicaNode {
            groups: Arc::new(super::groups::Groups::new(Arc::clone(&log))),
            log,
            transport,
            trail: super::TrailBatcher::default(),
            custody,
            witnesses: None,
        }
    }

    /// The consumer groups (for their reaper thread).
    pub fn groups(&self) -> &Arc<super::groups::Groups> {
        &self.groups
    }

    /// Serves the witness cosignatures `witnesses` keeps: in proofs and
    /// bundles against a cosigned checkpoint, and in `/metrics`.
    pub fn with_witnesses(mut self, witnesses: Arc<WitnessFeed>) -> ReplicaNode {
        self.witnesses = Some(witnesses).filter(|w| !w.is_empty());
        self
    }

    /// The kept cosigned sizes, newest first (none without witnesses).
    fn cosigned_sizes(&self) -> Vec<u64> {
        self.witnesses
            .as_ref()
            .map_or_else(Vec::new, |w| w.cosigned_sizes())
    }

    /// `certificate` with every kept cosignature over its checkpoint.
    fn cosigned(&self, certificate: &mut vellum_audit::checkpoint::Certificate) {
        if let Some(witnesses) = &self.witnesses {
            for line in witnesses.cosignatures_for(certificate) {
                if certificate.note.signatures.len() < vellum_audit::note::SIGNATURES_MAX {
                    certificate.note.signatures.push(line);
                }
            }
        }
    }
}

/// A stream the key store already refuses (its keys are destroyed) while
/// the custody state has not applied the shred event yet: no position.
fn shredded_in_store(stream: u64) -> Shredded {
    Shredded {
        stream,
        position: None,
    }
}

impl From<LogError> for CustodyError {
    fn from(error: LogError) -> CustodyError {
        match unserved(error) {
            Unserved::Unavailable(u) => CustodyError::Unavailable(u),
            Unserved::Indeterminate(reason) => CustodyError::Indeterminate { reason },
            Unserved::Internal(fault) => CustodyError::Internal(fault),
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

/// What every operation answers alike when the log did not serve it: a
/// transient state (503), an unknown outcome, or a fault of this replica
/// (500). Each operation's `From<LogError>` matches its own refusals first
/// and hands the rest here; a refusal an operation cannot produce reaching
/// this point is a bug in the replica, so it is an internal fault, never a
/// caller's mistake (4xx).
enum Unserved {
    Unavailable(Unavailable),
    Indeterminate(String),
    Internal(InternalFault),
}

fn unserved(error: LogError) -> Unserved {
    let fault =
        |kind, detail: &dyn std::fmt::Display| Unserved::Internal(InternalFault::new(kind, detail));
    match error {
        LogError::Indeterminate(reason) => Unserved::Indeterminate(reason),
        // The core rejected the shell's sealed record: nothing was
        // prepared, but the primacy may be moving; the client retries.
        LogError::Refused(RequestRefusal::SealMismatch) => {
            Unserved::Indeterminate(RequestRefusal::SealMismatch.to_string())
        }
        LogError::Refused(RequestRefusal::QueueFull) => {
            Unserved::Unavailable(Unavailable::QueueFull)
        }
        LogError::ReadOnly => Unserved::Unavailable(Unavailable::ReadOnly),
        LogError::NotDurable { op } => Unserved::Unavailable(Unavailable::NotDurable { op }),
        LogError::Busy(detail) | LogError::DataDir(detail) => {
            Unserved::Unavailable(Unavailable::DataDir { detail })
        }
        LogError::Randomness(detail) => fault(FaultKind::Randomness, &detail),
        LogError::Crypto(e) => fault(FaultKind::Crypto, &e),
        LogError::Corrupt(detail) => fault(FaultKind::Corruption, &detail),
        e @ (LogError::Storage(_) | LogError::Poisoned(_)) => fault(FaultKind::Storage, &e),
        unexpected => fault(FaultKind::Unexpected, &unexpected),
    }
}

impl From<LogError> for AppendError {
    fn from(error: LogError) -> AppendError {
        match error {
            LogError::ReservedStream { stream }
            | LogError::Refused(RequestRefusal::ReservedStream { stream }) => {
                AppendError::ReservedStream { stream }
            }
            LogError::Refused(RequestRefusal::StaleRequest { request, latest }) => {
                AppendError::StaleRequest { request, latest }
            }
            LogError::NoEvents => AppendError::Batch(BatchRefusal::NoEvents),
            LogError::TooManyEvents { count } => AppendError::Batch(BatchRefusal::TooManyEvents {
                count,
                max: crate::log::EVENTS_PER_APPEND_MAX,
            }),
            LogError::Refused(RequestRefusal::EventCount { count, max }) => {
                AppendError::Batch(match count {
                    0 => BatchRefusal::NoEvents,
                    _ => BatchRefusal::TooManyEvents {
                        count,
                        max: usize::try_from(max).unwrap_or(usize::MAX),
                    },
                })
            }
            LogError::EventTooLarge { index, .. } => {
                AppendError::Batch(BatchRefusal::EventTooLarge {
                    index,
                    max: crate::log::EVENT_BYTES_MAX,
                })
            }
            LogError::Refused(RequestRefusal::EventTooLarge { index, max }) => {
                AppendError::Batch(BatchRefusal::EventTooLarge { index, max })
            }
            LogError::Refused(RequestRefusal::BatchTooLarge { bytes }) => {
                AppendError::Batch(BatchRefusal::TooLarge { bytes })
            }
            LogError::WrongExpectedOffset {
                stream,
                expected,
                actual,
            } => AppendError::WrongExpectedOffset {
                stream,
                expected,
                actual,
            },
            LogError::IdempotencyKeyReused { stream, request } => {
                AppendError::IdempotencyKeyReused { stream, request }
            }
            LogError::DuplicateEventId {
                stream,
                index,
                id,
                offset,
                first,
            } => AppendError::DuplicateEventId {
                stream,
                index,
                id,
                offset,
                first,
            },
            LogError::BadEnvelope(detail) => AppendError::InvalidEnvelope { detail },
            LogError::Crypto(CryptoError::Shredded { stream }) => {
                AppendError::Shredded(shredded_in_store(stream))
            }
            // A client id the node itself picked (or the API checked)
            // cannot be 0: reaching here is the replica's bug.
            other => match unserved(other) {
                Unserved::Unavailable(u) => AppendError::Unavailable(u),
                Unserved::Indeterminate(reason) => AppendError::Indeterminate { reason },
                Unserved::Internal(fault) => AppendError::Internal(fault),
            },
        }
    }
}

impl From<LogError> for ReadError {
    fn from(error: LogError) -> ReadError {
        match error {
            LogError::UnknownStream(stream) => ReadError::UnknownStream { stream },
            LogError::Crypto(CryptoError::Shredded { stream }) => {
                ReadError::Shredded(shredded_in_store(stream))
            }
            other => match unserved(other) {
                Unserved::Unavailable(u) => ReadError::Unavailable(u),
                // A read has no unknown outcome; the log does not answer
                // one, so this is a fault of the replica.
                Unserved::Indeterminate(reason) => {
                    ReadError::Internal(InternalFault::new(FaultKind::Unexpected, reason))
                }
                Unserved::Internal(fault) => ReadError::Internal(fault),
            },
        }
    }
}

impl From<LogError> for ProofError {
    fn from(error: LogError) -> ProofError {
        match error {
            LogError::NoSuchEvent { stream, offset } => ProofError::NoSuchEvent { stream, offset },
            LogError::NotCertifiedYet { stream, offset } => {
                ProofError::NotCertifiedYet { stream, offset }
            }
            LogError::NoCertificateAtSize { size } => ProofError::NoCertificate { size },
            LogError::NothingCertified => ProofError::NoCertificate { size: None },
            LogError::ConsistencyRange { old_size, new_size } => ProofError::ConsistencyRange {
                from: old_size,
                to: new_size,
            },
            other => match unserved(other) {
                Unserved::Unavailable(u) => ProofError::Unavailable(u),
                Unserved::Indeterminate(reason) => {
                    ProofError::Internal(InternalFault::new(FaultKind::Unexpected, reason))
                }
                Unserved::Internal(fault) => ProofError::Internal(fault),
            },
        }
    }
}

impl From<LogError> for ExportError {
    fn from(error: LogError) -> ExportError {
        match error {
            LogError::UnknownStream(stream) => ExportError::UnknownStream { stream },
            LogError::Crypto(CryptoError::Shredded { stream }) => {
                ExportError::Shredded(shredded_in_store(stream))
            }
            LogError::ExportRange { from, to } => ExportError::Range {
                from,
                to,
                max: crate::log::EXPORT_EVENTS_MAX,
            },
            LogError::ExportBeyondStream {
                stream,
                committed,
                to,
            } => ExportError::BeyondStream {
                stream,
                committed,
                to,
            },
            LogError::NothingCertified => ExportError::NothingCertified,
            other => match unserved(other) {
                Unserved::Unavailable(u) => ExportError::Unavailable(u),
                Unserved::Indeterminate(reason) => {
                    ExportError::Internal(InternalFault::new(FaultKind::Unexpected, reason))
                }
                Unserved::Internal(fault) => ExportError::Internal(fault),
            },
        }
    }
}

impl From<LogError> for TlogError {
    fn from(error: LogError) -> TlogError {
        match error {
            LogError::TileBeyondCheckpoint { path, size } => {
                TlogError::BeyondCheckpoint { path, size }
            }
            other => match unserved(other) {
                Unserved::Unavailable(u) => TlogError::Unavailable(u),
                Unserved::Indeterminate(reason) => {
                    TlogError::Internal(InternalFault::new(FaultKind::Unexpected, reason))
                }
                Unserved::Internal(fault) => TlogError::Internal(fault),
            },
        }
    }
}

impl From<LogError> for TrailError {
    fn from(error: LogError) -> TrailError {
        // The replica writes the trail itself: no refusal is the caller's.
        match unserved(error) {
            Unserved::Unavailable(u) => TrailError::Unavailable(u),
            Unserved::Indeterminate(reason) => TrailError::Indeterminate { reason },
            Unserved::Internal(fault) => TrailError::Internal(fault),
        }
    }
}

/// A bundle the replica builds from its own log fails only through its own
/// fault, except for a range the bundle format cannot hold (the caller's).
fn export_bundle_error(error: BundleError, call: &ExportCall) -> ExportError {
    match error {
        BundleError::Query { .. } => ExportError::Range {
            from: call.from,
            to: call.to,
            max: crate::log::EXPORT_EVENTS_MAX,
        },
        other => ExportError::Internal(InternalFault::new(FaultKind::Bundle, other)),
    }
}

pub(super) fn log_event(stream: u64, event: &crate::log::ReadEvent) -> LogEvent {
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = LogEvent {
        position: event.position,
        stream,
        offset: event.offset,
        base64: base64(&event.payload),
        envelope: false,
        id: None,
        event_type: None,
        content_type: None,
        metadata: None,
        salt: base64(&event.salt),
    };
    if event.enveloped {
        // The writer checked every envelope (`log::validate_envelopes`)
        // and the AEAD vouches for the bytes, so this decodes; if it ever
        // did not, the reader gets the committed bytes as the payload.
        match vellum_audit::envelope::Envelope::decode(&event.payload) {
            Ok(envelope) => {
                out.base64 = base64(&envelope.payload);
                out.envelope = true;
                out.id = envelope
                    .id
                    .as_ref()
                    .map(vellum_audit::envelope::format_uuid);
                out.event_type = envelope.event_type;
                out.content_type = envelope.content_type;
                out.metadata = envelope.metadata;
            }
            Err(error) => {
                tracing::error!(%error, stream, offset = event.offset, "an enveloped event does not decode");
            }
        }
    }
    out
}

impl ReplicaNode {
    /// `NotPrimary` unless this replica is the primary in normal status.
    fn primary_or_refuse(&self) -> Result<(), Unavailable> {
        let role = self.log.role();
        match role.is_primary {
            true => Ok(()),
            false => Err(Unavailable::NotPrimary {
                replica: role.replica,
                primary: role.normal.then_some(role.primary),
            }),
        }
    }
}

impl ReplicaNode {
    /// The end of the prefix this replica serves reads from: at the
    /// primary, its committed events; at a backup, no more than its newest
    /// certificate covers (a quorum signed that prefix), so a backup never
    /// answers with an op that is not provably committed, whatever its
    /// own commit number says.
    fn served_events(&self) -> u64 {
        let committed = self.log.committed_events();
        let is_primary = self.log.role().is_primary;
        let certified = match is_primary {
            true => None,
            false => Some(
                self.log
                    .latest_certificate()
                    .map_or(0, |c| c.checkpoint.size),
            ),
        };
        served_bound(is_primary, committed, certified)
    }
}

/// The end of the prefix a replica serves reads from, given whether it is
/// the primary, its committed events and (at a backup) its newest
/// certificate's tree size (None: none looked up).
fn served_bound(is_primary: bool, committed: u64, certified: Option<u64>) -> u64 {
    match is_primary {
        true => committed,
        false => committed.min(certified.unwrap_or(0)),
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

    fn append(&self, call: AppendCall) -> Result<AppendReceipt, AppendError> {
        self.primary_or_refuse()?;
        if let Some(shredded) = self.custody.shredded(call.stream) {
            return Err(AppendError::Shredded(shredded));
        }
        let client = call
            .idempotency
            .map(|(client, request)| ClientRequest { client, request });
        let appended = self.log.append_recorded(
            call.stream,
            &call.events,
            call.expected_offset,
            client,
            call.trail,
            call.enveloped,
        )?;
        let receipt = receipt(&self.log, &appended)?;
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

    fn read_stream(&self, stream: u64, from: u64, max: u64) -> Result<Vec<LogEvent>, ReadError> {
        if let Some(shredded) = self.custody.shredded(stream) {
            return Err(ReadError::Shredded(shredded));
        }
        // The bound is taken before the read: the read may only go beyond
        // it where the prefix grew meanwhile, and those events are cut.
        let served = self.served_events();
        let events = self.log.read(stream, from, max)?;
        Ok(events
            .iter()
            .filter(|e| e.position < served)
            .map(|e| log_event(stream, e))
            .collect())
    }

    fn read_log(&self, from: u64, max: u64) -> Result<Vec<LogEvent>, ReadError> {
        let served = self.served_events();
        let events = self.log.read_log(from, max)?;
        Ok(events
            .iter()
            .filter(|(_, e)| e.position < served)
            .map(|(s, e)| log_event(*s, e))
            .collect())
    }

    fn committed_events(&self) -> u64 {
        self.served_events()
    }

    fn wait_events(&self, seen: u64, timeout_ms: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let events = self.served_events();
            if events > seen || Instant::now() >= deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(EVENTS_POLL_MS));
        }
    }

    fn proof(&self, stream: u64, offset: u64) -> Result<String, ProofError> {
        // Against the newest checkpoint a witness cosigned that covers the
        // event, with the cosignatures; else against the latest certificate.
        for size in self.cosigned_sizes() {
            if let Ok(mut proof) = self.log.inclusion_proof_at(stream, offset, Some(size)) {
                self.cosigned(&mut proof.checkpoint);
                return Ok(proof.encode());
            }
        }
        Ok(self.log.inclusion_proof(stream, offset)?.encode())
    }

    fn consistency(&self, from: u64, to: Option<u64>) -> Result<ConsistencyAnswer, ProofError> {
        let proof = self.log.consistency_proof(from, to)?;
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

    fn tlog_tile(
        &self,
        tile: vellum_audit::tiles::TileId,
    ) -> Result<Vec<vellum_audit::hash::Hash>, TlogError> {
        Ok(self.log.tile_hashes(tile)?)
    }

    fn tlog_entries(
        &self,
        bundle: vellum_audit::tiles::EntryBundleId,
    ) -> Result<Vec<vellum_audit::leaf::LeafPreimage>, TlogError> {
        Ok(self.log.entry_bundle(bundle)?)
    }

    fn export_events(&self, call: ExportCall) -> Result<Vec<(String, Vec<u8>)>, ExportError> {
        if let Some(shredded) = self.custody.shredded(call.stream) {
            return Err(ExportError::Shredded(shredded));
        }
        // Against the newest cosigned checkpoint covering the range, with
        // its cosignatures in `cosignatures.txt`; else against the latest
        // certificate, with the newest cosigned checkpoint and the
        // consistency proof from it in `cosigned.txt` when one is kept.
        let cosigned = self.cosigned_sizes().into_iter().find_map(|size| {
            self.log
                .export_events_at(call.stream, call.from, call.to, Some(size))
                .ok()
        });
        let (events, certificate) = match cosigned {
            Some(found) => found,
            None => self.log.export_events(call.stream, call.from, call.to)?,
        };
        let signer = self.log.signer();
        let request = vellum_compliance::bundle::BundleRequest {
            stream: call.stream,
            from: call.from,
            to: call.to,
            principal: call.principal.clone(),
            purpose: call.purpose.clone(),
            time_ns: crate::log::now_ns(),
            exported_by: signer.name().to_string(),
        };
        let mut files =
            vellum_compliance::bundle::build_bundle(&request, &certificate, &events, signer)
                .map_err(|e| export_bundle_error(e, &call))?;
        if let Some(lines) = self.cosignature_file(&certificate) {
            files.push((
                vellum_compliance::bundle::COSIGNATURES_FILE.to_string(),
                lines.into_bytes(),
            ));
        } else if let Some(text) = self.cosigned_file(&certificate) {
            files.push((
                vellum_compliance::bundle::COSIGNED_FILE.to_string(),
                text.into_bytes(),
            ));
        }
        Ok(files)
    }

    fn trail_snapshot(&self) -> Result<TrailSnapshot, TrailError> {
        Ok(TrailSnapshot {
            source: self.log.signer().name().to_string(),
            end: self.served_events(),
        })
    }

    fn trail_page(&self, from: u64, end: u64) -> Result<TrailPage, TrailError> {
        let (events, next) = self.log.trail_page(from, end, TRAIL_PAGE_EVENTS_MAX)?;
        Ok(TrailPage { events, next })
    }

    fn record_access(
        &self,
        events: Vec<vellum_compliance::trail::AccessEvent>,
    ) -> Result<(), TrailError> {
        self.primary_or_refuse()?;
        self.trail.record(&self.log, events)
    }

    fn metrics(&self) -> NodeMetrics {
        let status = self.log.status();
        let net = self.transport.as_ref().map(|t| t.stats());
        let custody = self.custody.counts();
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
            signing_failures: self.log.signing_failures(),
            shreds: custody.shreds,
            holds: custody.holds,
            releases: custody.releases,
            retentions: custody.retentions,
            custody_refused: custody.refused,
            witnesses: self
                .witnesses
                .as_ref()
                .map_or_else(Vec::new, |w| w.status()),
        }
    }

    fn custody(&self, call: CustodyCall) -> Result<CustodyDone, CustodyError> {
        self.primary_or_refuse()?;
        self.custody.request(&call)
    }

    fn pending_kek_rotations(
        &self,
    ) -> Result<Vec<vellum_compliance::trail::AccessEvent>, TrailError> {
        let records = crate::crypto::pending_rotation_records(&self.log.data_dir().keys())
            .map_err(|e| TrailError::Internal(internal_kek_fault(&e)))?;
        let principal = self.log.signer().name().to_string();
        Ok(records
            .iter()
            .map(|record| kek_rotated_event(&principal, record))
            .collect())
    }

    fn replica_key_name(&self, replica: u8) -> Option<String> {
        self.log
            .policy()
            .verifiers
            .get(usize::from(replica))
            .map(|v| v.name().to_string())
    }

    fn pending_signing_rotations(
        &self,
    ) -> Result<Vec<vellum_compliance::trail::AccessEvent>, TrailError> {
        let rotations = crate::crypto::pending_signing_announcements(&self.log.data_dir().keys())
            .map_err(|e| TrailError::Internal(internal_signing_fault(&e)))?;
        let principal = self.log.signer().name().to_string();
        let policy = self.log.policy();
        let time_ns = crate::log::now_ns();
        rotations
            .iter()
            .map(|rotation| {
                // Never announce what a verifier would refuse: a line
                // edited on disk is an operator's problem to fix, named here.
                vellum_audit::key_history::check_announcement(policy, rotation).map_err(|e| {
                    TrailError::Internal(crate::server::node::InternalFault::new(
                        crate::server::node::FaultKind::Crypto,
                        format!("signing-key rotation in keys/signing-rotations is refused: {e}"),
                    ))
                })?;
                Ok(vellum_compliance::trail::signing_key_rotated_event(
                    &principal,
                    time_ns,
                    &rotation.to_line(),
                ))
            })
            .collect()
    }

    fn signing_rotations_recorded(&self, recorded: usize) -> Result<(), TrailError> {
        crate::crypto::signing_announcements_logged(&self.log.data_dir().keys(), recorded)
            .map_err(|e| TrailError::Internal(internal_signing_fault(&e)))
    }

    fn check_signing_rotation(
        &self,
        replica: u8,
        event: &vellum_compliance::trail::AccessEvent,
    ) -> Result<(), String> {
        check_signing_rotation_event(self.log.policy(), replica, event)
    }

    fn kek_rotations_recorded(&self, recorded: usize) -> Result<(), TrailError> {
        crate::crypto::clear_rotation_records(&self.log.data_dir().keys(), recorded)
            .map_err(|e| TrailError::Internal(internal_kek_fault(&e)))
    }

    fn group(
        &self,
        call: crate::server::groups::GroupCall,
    ) -> Result<crate::server::groups::GroupAnswer, crate::server::groups::GroupError> {
        if call != crate::server::groups::GroupCall::Metrics {
            self.primary_or_refuse()?;
        }
        self.groups.call(call)
    }
}

/// The access-trail event of one KEK rotation of this replica: role
/// `system`, the replica's key name as principal, the fingerprints in
/// `detail` (no key material).
fn kek_rotated_event(
    principal: &str,
    record: &crate::crypto::RotatedRecord,
) -> vellum_compliance::trail::AccessEvent {
    vellum_compliance::trail::system_event(
        principal,
        record.started_ns,
        vellum_compliance::trail::AccessAction::KekRotated,
        vellum_compliance::trail::clip_text(&format!(
            "kek rotated: old {} -> new {} ({})",
            record.old_fingerprint, record.new_fingerprint, record.kek
        )),
    )
}

/// Whether replica `replica` may commit the `signing_key_rotated` event
/// `event` under `policy` (see `Node::check_signing_rotation`).
pub(crate) fn check_signing_rotation_event(
    policy: &vellum_audit::policy::Policy,
    replica: u8,
    event: &vellum_compliance::trail::AccessEvent,
) -> Result<(), String> {
    let own_name = policy.verifiers.get(usize::from(replica)).map(|v| v.name());
    if own_name != Some(event.principal.as_str()) {
        return Err(format!(
            "a signing_key_rotated record must name the relaying replica {replica} as principal"
        ));
    }
    let line = event.detail.as_deref().unwrap_or_default();
    let rotation = vellum_audit::key_history::KeyRotation::parse_line(line)
        .map_err(|e| format!("signing_key_rotated detail: {e}"))?;
    if rotation.replica != usize::from(replica) {
        return Err(format!(
            "replica {replica} may announce only its own rotations, not replica {}'s",
            rotation.replica
        ));
    }
    vellum_audit::key_history::check_announcement(policy, &rotation)
        .map_err(|e| format!("signing_key_rotated refused: {e}"))
}

fn internal_signing_fault(error: &CryptoError) -> crate::server::node::InternalFault {
    crate::server::node::InternalFault::new(
        crate::server::node::FaultKind::Crypto,
        format!("signing-key rotation records: {error}"),
    )
}

fn internal_kek_fault(error: &CryptoError) -> crate::server::node::InternalFault {
    crate::server::node::InternalFault::new(
        crate::server::node::FaultKind::Crypto,
        format!("kek rotation records: {error}"),
    )
}

impl ReplicaNode {
    /// The `cosigned.txt` of a bundle against `certificate_text` (a
    /// certificate no kept cosignature is over): the newest kept cosigned
    /// checkpoint and the consistency proof from it, if one is kept below.
    fn cosigned_file(&self, certificate_text: &str) -> Option<String> {
        let cosigned = self.witnesses.as_ref()?.newest_cosigned()?;
        let certificate = vellum_audit::checkpoint::Certificate::parse(certificate_text).ok()?;
        let (old, new) = (cosigned.checkpoint.size, certificate.checkpoint.size);
        if old == 0 || old >= new {
            return None;
        }
        let proof = self.log.consistency_proof(old, Some(new)).ok()?;
        (proof.checkpoint.checkpoint == certificate.checkpoint)
            .then(|| vellum_compliance::bundle::encode_cosigned(&proof.hashes, &cosigned))
    }

    /// The `cosignatures.txt` of a bundle against `certificate_text`: the
    /// kept cosignature lines over it, if any.
    fn cosignature_file(&self, certificate_text: &str) -> Option<String> {
        let witnesses = self.witnesses.as_ref()?;
        let certificate = vellum_audit::checkpoint::Certificate::parse(certificate_text).ok()?;
        let lines: String = witnesses
            .cosignatures_for(&certificate)
            .iter()
            .map(|l| l.line())
            .collect();
        (!lines.is_empty()).then_some(lines)
    }
}

fn hex(hash: &vellum_audit::hash::Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a backup serves no position its newest certificate does not
    /// cover (none without a certificate), even when its commit number is
    /// ahead; the primary serves its committed prefix.
    #[test]
    fn a_backup_serves_only_its_certified_prefix() {
        assert_eq!(served_bound(true, 10, None), 10);
        assert_eq!(served_bound(false, 10, Some(7)), 7, "commit ahead of cert");
        assert_eq!(served_bound(false, 7, Some(10)), 7, "cert ahead of commit");
        assert_eq!(served_bound(false, 10, None), 0, "no certificate yet");
        assert_eq!(served_bound(false, 10, Some(0)), 0);
    }

    /// Goal: the log's errors map to each operation's typed variants, and
    /// every internal fault (the random source above all) is `Internal`
    /// (500), never a refusal (4xx); a refusal an operation cannot produce
    /// is an internal fault there too.
    #[test]
    fn log_errors_map_to_typed_operation_errors() {
        let random = AppendError::from(LogError::Randomness("getrandom failed".into()));
        assert!(
            matches!(&random, AppendError::Internal(f) if f.kind == FaultKind::Randomness),
            "{random:?}"
        );
        let storage = AppendError::from(LogError::Storage(crate::storage::StorageError::Closed));
        assert!(
            matches!(&storage, AppendError::Internal(f) if f.kind == FaultKind::Storage),
            "{storage:?}"
        );
        assert_eq!(
            AppendError::from(LogError::Refused(RequestRefusal::ReservedStream {
                stream: 3
            })),
            AppendError::ReservedStream { stream: 3 }
        );
        assert_eq!(
            AppendError::from(LogError::Refused(RequestRefusal::StaleRequest {
                request: 1,
                latest: 4
            })),
            AppendError::StaleRequest {
                request: 1,
                latest: 4
            }
        );
        assert_eq!(
            AppendError::from(LogError::Refused(RequestRefusal::QueueFull)),
            AppendError::Unavailable(Unavailable::QueueFull)
        );
        assert_eq!(
            AppendError::from(LogError::WrongExpectedOffset {
                stream: 20,
                expected: 5,
                actual: 2
            }),
            AppendError::WrongExpectedOffset {
                stream: 20,
                expected: 5,
                actual: 2
            }
        );
        // The node picks client ids itself: client 0 reaching it is a bug.
        let reserved = AppendError::from(LogError::Refused(RequestRefusal::ReservedClient));
        assert!(
            matches!(&reserved, AppendError::Internal(f) if f.kind == FaultKind::Unexpected),
            "{reserved:?}"
        );
        assert_eq!(
            ReadError::from(LogError::UnknownStream(9)),
            ReadError::UnknownStream { stream: 9 }
        );
        assert_eq!(
            ProofError::from(LogError::NoSuchEvent {
                stream: 9,
                offset: 1
            }),
            ProofError::NoSuchEvent {
                stream: 9,
                offset: 1
            }
        );
        assert_eq!(
            ProofError::from(LogError::NotDurable { op: 7 }),
            ProofError::Unavailable(Unavailable::NotDurable { op: 7 })
        );
        assert_eq!(
            TlogError::from(LogError::TileBeyondCheckpoint {
                path: "tile/0/001".into(),
                size: 9
            }),
            TlogError::BeyondCheckpoint {
                path: "tile/0/001".into(),
                size: 9
            }
        );
        assert_eq!(
            TlogError::from(LogError::NotDurable { op: 3 }),
            TlogError::Unavailable(Unavailable::NotDurable { op: 3 })
        );
        let corrupt = TlogError::from(LogError::Corrupt("leaf".into()));
        assert!(
            matches!(&corrupt, TlogError::Internal(f) if f.kind == FaultKind::Corruption),
            "{corrupt:?}"
        );
        // An append's refusal answering an export is the replica's fault.
        let export = ExportError::from(LogError::NoEvents);
        assert!(matches!(export, ExportError::Internal(_)), "{export:?}");
        assert_eq!(
            ExportError::from(LogError::ExportRange { from: 3, to: 3 }),
            ExportError::Range {
                from: 3,
                to: 3,
                max: crate::log::EXPORT_EVENTS_MAX
            }
        );
    }

    /// Goal: a primary commits a relayed signing-key announcement only
    /// when it is the relaying replica's own (principal and rotated
    /// replica) and verifies under the primary's policy; a tampered op, a
    /// swapped signature, another replica's name or rotation, and garbage
    /// are refused with what is wrong.
    #[test]
    fn a_relayed_signing_rotation_must_be_the_replicas_own_and_verify() {
        use vellum_audit::key_history::KeyRotation;
        use vellum_audit::note::Signer;
        use vellum_compliance::trail::signing_key_rotated_event;
        const ORIGIN: &str = "vellum.local/cluster/00112233445566778899aabbccddeeff";
        let signers: Vec<Signer> = (0..3u8)
            .map(|i| {
                Signer::from_seed(&format!("vellum-00112233-r{i}"), [i + 1; 32]).expect("name")
            })
            .collect();
        let policy = vellum_audit::policy::Policy::new(
            ORIGIN,
            signers.iter().map(Signer::verifier).collect(),
            2,
        )
        .expect("policy");
        let new = Signer::from_seed("vellum-00112233-r1", [9; 32]).expect("name");
        let rotation = KeyRotation::sign(ORIGIN, 1, 50, &signers[1], &new);
        let event = |principal: &str, line: String| signing_key_rotated_event(principal, 1, &line);
        let name1 = signers[1].name();
        check_signing_rotation_event(&policy, 1, &event(name1, rotation.to_line()))
            .expect("its own, verifying");
        let pinned = policy
            .clone()
            .with_rotations(vec![rotation.clone()])
            .expect("pins");
        check_signing_rotation_event(&pinned, 1, &event(name1, rotation.to_line()))
            .expect("pinned as is");
        let mut moved = rotation.clone();
        moved.from_op = 51;
        let mut swapped = rotation.clone();
        swapped.new_signature = swapped.old_signature;
        let of_replica_2 = KeyRotation::sign(ORIGIN, 2, 50, &signers[2], &new);
        for (replica, principal, line, why) in [
            (1, name1, moved.to_line(), "not signed by its key in force"),
            (1, name1, swapped.to_line(), "not signed by the new key"),
            (1, signers[2].name(), rotation.to_line(), "as principal"),
            (1, name1, of_replica_2.to_line(), "only its own rotations"),
            (
                2,
                signers[2].name(),
                rotation.to_line(),
                "only its own rotations",
            ),
            (1, name1, "rotation 1 50 garbage".to_string(), "detail"),
        ] {
            let error = check_signing_rotation_event(&policy, replica, &event(principal, line))
                .expect_err("refused");
            assert!(error.contains(why), "{why}: {error}");
        }
    }
}
