//! Export bundles: `vellum export events` writes a directory holding a
//! stream's events (plaintext and salt), an inclusion proof of each, the
//! commit certificate the proofs are against, and a signed manifest;
//! `vellum verify --bundle DIR --policy P` checks it offline, with the
//! auditor's pinned policy only — no cluster, no keys, nothing trusted from
//! the bundle itself (P2, P3).
//!
//! What a verified bundle proves: each plaintext is the one committed to by
//! a leaf at the stated position, stream and offset (the salted commitment
//! of `vellum-audit::leaf`), each leaf is in the tree a quorum of pinned
//! replicas certified, and the events are exactly the stream's offsets the
//! query names, none dropped, none repeated. The manifest signature only
//! adds who exported it and that the files are the ones written; the proofs
//! stand without it.
//!
//! Layout (`vellum-bundle/v1`; every text file UTF-8 with `\n` line ends):
//!
//! ```text
//! DIR/
//!   events.ndjson    one JSON object per line, in offset order:
//!                    {"stream":u64,"offset":u64,"position":u64,"op":u64,
//!                     "plaintext_base64":"…","plaintext_utf8":"…" (only when
//!                     valid UTF-8),"salt":"<64 lowercase hex>"}
//!   proofs.ndjson    line N is the proof of events.ndjson line N:
//!                    {"position":u64,"proof":"<c2sp.org/tlog-proof@v1 text,
//!                     extra = the 97-byte leaf preimage>"}
//!   certificate.txt  the commit certificate (signed checkpoint) every proof
//!                    is against
//!   manifest.json    pretty JSON, members in this order: format, kind,
//!                    exported_by, principal, purpose, time_ns, query
//!                    {stream,from,to}, checkpoint {origin,size,root hex},
//!                    files [{name,sha256,bytes,records}] (the three files
//!                    above), trailer {"events":n,"end":true}; then "\n"
//!   manifest.sig     C2SP signed note, text "vellum-bundle/v1\n<manifest.json
//!                    SHA-256, lowercase hex>\n", signed by the exporting
//!                    replica's key
//!   cosignatures.txt optional, not in the manifest: witness cosignature
//!                    lines (c2sp.org/tlog-cosignature) over certificate.txt,
//!                    added after export (`vellum witness submit --bundle`);
//!                    they authenticate themselves, so no manifest entry
//!   cosigned.txt     optional, not in the manifest, never with
//!                    cosignatures.txt: "vellum-cosigned/v1\n", the RFC 9162
//!                    consistency proof (base64 hashes, one per line) from an
//!                    older checkpoint outside witnesses cosigned to
//!                    certificate.txt, a blank line, then that cosigned
//!                    certificate (replica signatures and cosignature lines)
//! ```
//!
//! `records` is the number of lines of an `.ndjson` file and 1 for
//! `certificate.txt`. Proofs are lines of one file rather than one file per
//! event so a bundle of a million events is five files, five fsyncs and a
//! manifest of constant size.
//!
//! Incompleteness is detected as follows. The writer writes and fsyncs the
//! data files, then the manifest, then `manifest.sig`, then fsyncs the
//! directory. A bundle without `manifest.sig` is incomplete. A manifest is
//! complete when (1) it is one JSON object followed by exactly one `\n`
//! (a cut inside the JSON fails to parse: "truncated"), (2) its LAST member
//! is `trailer` (checked on the member order of the text, not on a map), and
//! (3) the trailer is `{"events": to - from, "end": true}`. Any other cut
//! also changes the manifest's SHA-256, which `manifest.sig` names.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use vellum_audit::DecodeError;
use vellum_audit::checkpoint::Certificate;
use vellum_audit::hash::{Hash, to_hex};
use vellum_audit::leaf::{LeafPreimage, commitment};
use vellum_audit::note::{NOTE_BYTES_MAX, Note, NoteError, NoteSigner, Verifier};
use vellum_audit::policy::Policy;
use vellum_audit::proof::InclusionProof;
use vellum_audit::report::{Check, FailureKind, PolicySummary, Reached, Report};

/// The bundle format, first line of the manifest signature text.
pub const BUNDLE_FORMAT: &str = "vellum-bundle/v1";
/// The only bundle kind today.
pub const BUNDLE_KIND_EVENTS: &str = "events";
/// The most events one bundle holds (writer and verifier).
pub const BUNDLE_EVENTS_MAX: u64 = 1_000_000;
/// The longest line of an `.ndjson` file: a 1 MiB event as base64 and as
/// JSON-escaped UTF-8 (at most 6 bytes per byte), with room to spare.
pub const BUNDLE_LINE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The largest manifest accepted, in bytes (its size does not grow with events).
pub const MANIFEST_BYTES_MAX: u64 = 64 * 1024;
/// The most directory entries looked at when listing a bundle.
pub const BUNDLE_ENTRIES_MAX: usize = 64;

/// The events file.
pub const EVENTS_FILE: &str = "events.ndjson";
/// The proofs file.
pub const PROOFS_FILE: &str = "proofs.ndjson";
/// The certificate file.
pub const CERTIFICATE_FILE: &str = "certificate.txt";
/// The optional file of witness cosignature lines over the certificate
/// (c2sp.org/tlog-cosignature), added after export: not in the manifest.
pub const COSIGNATURES_FILE: &str = "cosignatures.txt";
/// The optional file carrying an older cosigned checkpoint and the
/// consistency proof from it to the certificate: not in the manifest.
pub const COSIGNED_FILE: &str = "cosigned.txt";
/// The first line of [`COSIGNED_FILE`] (its format version).
pub const COSIGNED_HEADER: &str = "vellum-cosigned/v1";
/// The manifest.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest signature.
pub const MANIFEST_SIG_FILE: &str = "manifest.sig";

/// The files the manifest lists, in manifest order.
pub const DATA_FILES: [&str; 3] = [EVENTS_FILE, PROOFS_FILE, CERTIFICATE_FILE];

/// One event to export, with its proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedEvent {
    /// The stream.
    pub stream: u64,
    /// Its offset in the stream.
    pub offset: u64,
    /// Its global position (leaf index).
    pub position: u64,
    /// The op that carried it.
    pub op: u64,
    /// The decrypted payload.
    pub plaintext: Vec<u8>,
    /// The commitment salt from inside the ciphertext.
    pub salt: [u8; 32],
    /// c2sp.org/tlog-proof@v1 text with the leaf preimage as `extra`.
    pub proof: String,
}

/// What was exported, by whom, when, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRequest {
    /// The stream.
    pub stream: u64,
    /// First offset.
    pub from: u64,
    /// One past the last offset.
    pub to: u64,
    /// Who asked for the export.
    pub principal: String,
    /// The purpose of use given.
    pub purpose: Option<String>,
    /// When, unix nanoseconds.
    pub time_ns: u64,
    /// The key name of the exporting replica (it signs the manifest).
    pub exported_by: String,
}

/// One file as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// File name inside the bundle.
    pub name: String,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Lines (`.ndjson`) or 1 (`certificate.txt`).
    pub records: u64,
}

/// The exported range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// The stream.
    pub stream: u64,
    /// First offset.
    pub from: u64,
    /// One past the last offset.
    pub to: u64,
}

/// The checkpoint the proofs are against, for readers of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSummary {
    /// The log origin.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root, lowercase hex.
    pub root: String,
}

/// The manifest's last member, written last so a cut shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trailer {
    /// Events in the bundle.
    pub events: u64,
    /// Always true.
    pub end: bool,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// [`BUNDLE_KIND_EVENTS`].
    pub kind: String,
    /// The exporting replica's key name.
    pub exported_by: String,
    /// Who asked.
    pub principal: String,
    /// Why.
    pub purpose: Option<String>,
    /// When, unix nanoseconds.
    pub time_ns: u64,
    /// The range exported.
    pub query: Query,
    /// The certificate's checkpoint.
    pub checkpoint: CheckpointSummary,
    /// The data files.
    pub files: Vec<FileEntry>,
    /// Absent only in an incomplete manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailer: Option<Trailer>,
}

/// What [`write_bundle`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSummary {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Events written.
    pub events: u64,
    /// Bytes of all five files.
    pub bytes: u64,
    /// SHA-256 of `manifest.json`, lowercase hex.
    pub manifest_sha256: String,
    /// The data files as the manifest lists them.
    pub files: Vec<FileEntry>,
}

/// Why a bundle was not written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The target exists and is not an empty directory.
    #[error("{dir}: exists and is not an empty directory; a bundle needs a new or empty one")]
    NotEmpty { dir: PathBuf },
    /// Creating, writing or syncing failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A range that is reversed or larger than [`BUNDLE_EVENTS_MAX`].
    #[error("query {from}..{to} of stream {stream}: {reason}")]
    Query {
        stream: u64,
        from: u64,
        to: u64,
        reason: String,
    },
    /// An event that does not fit the request or its own proof.
    #[error("event {index} (offset {offset}): {reason}")]
    Event {
        index: usize,
        offset: u64,
        reason: String,
    },
    /// The certificate text does not parse.
    #[error("certificate: {0}")]
    Certificate(#[from] DecodeError),
    /// The manifest could not be signed.
    #[error("manifest signature: {0}")]
    Sign(#[from] NoteError),
}

/// One line of `events.ndjson`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    stream: u64,
    offset: u64,
    position: u64,
    op: u64,
    plaintext_base64: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plaintext_utf8: Option<String>,
    salt: String,
}

/// One line of `proofs.ndjson`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofLine {
    position: u64,
    proof: String,
}

/// The signed text of `manifest.sig`.
pub fn manifest_sig_text(manifest_sha256: &Hash) -> String {
    format!("{BUNDLE_FORMAT}\n{}\n", to_hex(manifest_sha256))
}

/// The `records` of a bundle file with `lines` newline characters.
fn records_of(name: &str, lines: u64) -> u64 {
    if name == CERTIFICATE_FILE { 1 } else { lines }
}

// ---------------------------------------------------------------- writing

/// Builds a bundle of `events` (the request's whole range, in offset order,
/// every proof against `certificate`) in memory: its files as (name,
/// bytes), in the order they must be written (data files, the manifest,
/// then `manifest.sig` last). A replica builds it; the client writes it.
pub fn build_bundle(
    request: &BundleRequest,
    certificate: &str,
    events: &[ExportedEvent],
    signer: &dyn NoteSigner,
) -> Result<Vec<(String, Vec<u8>)>, BundleError> {
    let parsed = Certificate::parse(certificate)?;
    check_inputs(request, &parsed, events)?;
    let mut events_bytes = Vec::new();
    let mut proofs_bytes = Vec::new();
    for event in events {
        let line = serde_json::to_vec(&event_line(event)).expect("plain data always serializes");
        events_bytes.extend_from_slice(&line);
        events_bytes.push(b'\n');
        let proof = ProofLine {
            position: event.position,
            proof: event.proof.clone(),
        };
        let line = serde_json::to_vec(&proof).expect("plain data always serializes");
        proofs_bytes.extend_from_slice(&line);
        proofs_bytes.push(b'\n');
    }
    let certificate_bytes = certificate.as_bytes().to_vec();
    let files = vec![
        entry_of(EVENTS_FILE, &events_bytes),
        entry_of(PROOFS_FILE, &proofs_bytes),
        entry_of(CERTIFICATE_FILE, &certificate_bytes),
    ];
    let manifest = manifest_for(request, &parsed, files, events.len() as u64);
    let manifest_text = encode_manifest(&manifest);
    let manifest_hash: Hash = Sha256::digest(manifest_text.as_bytes()).into();
    let note = Note::sign(&manifest_sig_text(&manifest_hash), &[signer])?;
    Ok(vec![
        (EVENTS_FILE.to_string(), events_bytes),
        (PROOFS_FILE.to_string(), proofs_bytes),
        (CERTIFICATE_FILE.to_string(), certificate_bytes),
        (MANIFEST_FILE.to_string(), manifest_text.into_bytes()),
        (MANIFEST_SIG_FILE.to_string(), note.encode().into_bytes()),
    ])
}

/// The manifest entry of a file held in memory.
fn entry_of(name: &str, bytes: &[u8]) -> FileEntry {
    let hash: Hash = Sha256::digest(bytes).into();
    let lines = bytes.iter().filter(|b| **b == b'\n').count() as u64;
    FileEntry {
        name: name.to_string(),
        sha256: to_hex(&hash),
        bytes: bytes.len() as u64,
        records: records_of(name, lines),
    }
}

/// Writes a bundle (see [`build_bundle`]) into `dir`, which must not exist
/// or be empty. Every file and the directory are fsynced before it returns;
/// no byte is written outside `dir`.
pub fn write_bundle(
    dir: &Path,
    request: &BundleRequest,
    certificate: &str,
    events: &[ExportedEvent],
    signer: &dyn NoteSigner,
) -> Result<BundleSummary, BundleError> {
    let built = build_bundle(request, certificate, events, signer)?;
    prepare_dir(dir)?;
    let mut entries = Vec::with_capacity(built.len());
    for (name, bytes) in &built {
        entries.push(write_file(dir, name, |out| out.write_all(bytes))?);
    }
    sync_dir(dir)?;
    let manifest_hash: Hash = built
        .iter()
        .find(|(name, _)| name == MANIFEST_FILE)
        .map(|(_, bytes)| Sha256::digest(bytes).into())
        .expect("build_bundle always makes a manifest");
    let bytes = entries.iter().map(|e| e.bytes).sum();
    entries.truncate(DATA_FILES.len());
    Ok(BundleSummary {
        dir: dir.to_path_buf(),
        events: events.len() as u64,
        bytes,
        manifest_sha256: to_hex(&manifest_hash),
        files: entries,
    })
}

/// The manifest text: pretty JSON in struct order (trailer last), then `\n`.
pub fn encode_manifest(manifest: &Manifest) -> String {
    let mut text = serde_json::to_string_pretty(manifest).expect("a manifest always serializes");
    text.push('\n');
    text
}

fn manifest_for(
    request: &BundleRequest,
    certificate: &Certificate,
    files: Vec<FileEntry>,
    events: u64,
) -> Manifest {
    let checkpoint = &certificate.checkpoint;
    Manifest {
        format: BUNDLE_FORMAT.to_string(),
        kind: BUNDLE_KIND_EVENTS.to_string(),
        exported_by: request.exported_by.clone(),
        principal: request.principal.clone(),
        purpose: request.purpose.clone(),
        time_ns: request.time_ns,
        query: Query {
            stream: request.stream,
            from: request.from,
            to: request.to,
        },
        checkpoint: CheckpointSummary {
            origin: checkpoint.origin.clone(),
            size: checkpoint.size,
            root: to_hex(&checkpoint.root),
        },
        files,
        trailer: Some(Trailer { events, end: true }),
    }
}

fn event_line(event: &ExportedEvent) -> EventLine {
    EventLine {
        stream: event.stream,
        offset: event.offset,
        position: event.position,
        op: event.op,
        plaintext_base64: BASE64.encode(&event.plaintext),
        plaintext_utf8: String::from_utf8(event.plaintext.clone()).ok(),
        salt: to_hex(&event.salt),
    }
}

/// Refuses a bundle that could not verify: wrong range, or an event that
/// its own proof contradicts. Signatures are the verifier's job (it alone
/// holds the policy); everything else is checked here, before any write.
fn check_inputs(
    request: &BundleRequest,
    certificate: &Certificate,
    events: &[ExportedEvent],
) -> Result<(), BundleError> {
    let query_error = |reason: String| BundleError::Query {
        stream: request.stream,
        from: request.from,
        to: request.to,
        reason,
    };
    let Some(count) = request.to.checked_sub(request.from) else {
        return Err(query_error("the range is reversed".into()));
    };
    if count > BUNDLE_EVENTS_MAX {
        return Err(query_error(format!(
            "{count} events is more than the limit of {BUNDLE_EVENTS_MAX}"
        )));
    }
    if events.len() as u64 != count {
        return Err(query_error(format!("{} events given", events.len())));
    }
    let mut previous_position = None;
    for (index, event) in events.iter().enumerate() {
        let fail = |reason: String| BundleError::Event {
            index,
            offset: event.offset,
            reason,
        };
        let expected = EventExpectation {
            stream: request.stream,
            offset: request.from.checked_add(index as u64),
            previous_position,
        };
        let line = event_line(event);
        let decoded = decode_event(&line).map_err(fail)?;
        check_range(&line, &expected).map_err(fail)?;
        let proof = InclusionProof::parse(&event.proof).map_err(|e| fail(e.to_string()))?;
        if proof.checkpoint.checkpoint != certificate.checkpoint {
            return Err(fail("the proof is against another checkpoint".into()));
        }
        let leaf = proof_leaf(&proof).map_err(fail)?;
        check_leaf(&line, &decoded, &leaf, proof.index).map_err(fail)?;
        previous_position = Some(event.position);
    }
    Ok(())
}

fn prepare_dir(dir: &Path) -> Result<(), BundleError> {
    let io = |source| BundleError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if dir.exists() {
        let empty = dir.is_dir() && fs::read_dir(dir).map_err(io)?.next().is_none();
        if !empty {
            return Err(BundleError::NotEmpty {
                dir: dir.to_path_buf(),
            });
        }
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io)?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

fn sync_dir(dir: &Path) -> Result<(), BundleError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| BundleError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// A writer that hashes, counts bytes and counts newlines as it goes.
struct Tally<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
    lines: u64,
}

impl<W: Write> Write for Tally<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        self.lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Creates `dir/name` (new), fills it, fsyncs it; returns its entry.
fn write_file(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<FileEntry, BundleError> {
    let path = dir.join(name);
    let io = |source| BundleError::Io {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io)?;
    let mut tally = Tally {
        inner: BufWriter::new(file),
        hasher: Sha256::new(),
        bytes: 0,
        lines: 0,
    };
    fill(&mut tally).map_err(io)?;
    let file = tally.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    let hash: Hash = tally.hasher.finalize().into();
    Ok(FileEntry {
        name: name.to_string(),
        sha256: to_hex(&hash),
        bytes: tally.bytes,
        records: records_of(name, tally.lines),
    })
}

// ------------------------------------------------ checks shared by both sides

/// An event's plaintext and salt, decoded.
struct DecodedEvent {
    plaintext: Vec<u8>,
    salt: [u8; 32],
}

fn decode_event(line: &EventLine) -> Result<DecodedEvent, String> {
    let plaintext = BASE64
        .decode(&line.plaintext_base64)
        .map_err(|_| "plaintext_base64 is not base64".to_string())?;
    if let Some(text) = &line.plaintext_utf8
        && text.as_bytes() != plaintext.as_slice()
    {
        return Err("plaintext_utf8 is not the text of plaintext_base64".into());
    }
    let salt =
        vellum_audit::hash::from_hex(&line.salt).ok_or("salt is not 64 lowercase hex digits")?;
    Ok(DecodedEvent { plaintext, salt })
}

/// Where the next event must be: the query's stream, the next offset, a
/// position after the previous one.
struct EventExpectation {
    stream: u64,
    /// `None` when the line is past the largest offset (u64::MAX).
    offset: Option<u64>,
    previous_position: Option<u64>,
}

fn check_range(line: &EventLine, expected: &EventExpectation) -> Result<(), String> {
    if line.stream != expected.stream {
        return Err(format!(
            "stream {} is not the query's stream {}",
            line.stream, expected.stream
        ));
    }
    let Some(offset) = expected.offset else {
        return Err("the line is past the largest offset a query can name".into());
    };
    if line.offset != offset {
        return Err(format!(
            "offset {} where {} was expected: events must be the query's range, dense, in order",
            line.offset, offset
        ));
    }
    if let Some(previous) = expected.previous_position
        && line.position <= previous
    {
        return Err(format!(
            "position {} does not follow the previous position {previous} (duplicate or reordered)",
            line.position
        ));
    }
    Ok(())
}

/// The leaf preimage of a proof whose `extra` is a Vellum leaf.
fn proof_leaf(proof: &InclusionProof) -> Result<LeafPreimage, String> {
    let extra = proof
        .extra
        .as_ref()
        .ok_or("the proof has no extra line holding the leaf preimage")?;
    LeafPreimage::decode(extra).map_err(|e| e.to_string())
}

/// The leaf must name the event's position, stream, offset and op, and
/// commit to its salt and plaintext.
fn check_leaf(
    line: &EventLine,
    decoded: &DecodedEvent,
    leaf: &LeafPreimage,
    index: u64,
) -> Result<(), String> {
    if index != line.position {
        return Err(format!(
            "the proof is for position {index}, the event is at position {}",
            line.position
        ));
    }
    let fields = [
        ("position", leaf.global_position, line.position),
        ("stream", leaf.stream, line.stream),
        ("offset", leaf.stream_offset, line.offset),
        ("op", leaf.op, line.op),
    ];
    for (name, in_leaf, in_event) in fields {
        if in_leaf != in_event {
            return Err(format!(
                "the leaf's {name} is {in_leaf}, the event's is {in_event}"
            ));
        }
    }
    if commitment(&decoded.salt, &decoded.plaintext) != leaf.commitment {
        return Err("commitment(salt, plaintext) is not the leaf's commitment: \
                    the plaintext or salt was changed"
            .into());
    }
    Ok(())
}

// ------------------------------------------------------------ verification

/// Verifies the bundle in `dir` against the auditor's `policy` (keys are
/// never taken from the bundle). Checks, in order: "bundle manifest",
/// "bundle files", "bundle certificate", "bundle events". Every failure
/// names the file and the line or position.
pub fn verify_bundle(dir: &Path, policy: &Policy) -> Report {
    let started = SystemTime::now();
    let (manifest_check, manifest) = check_manifest(dir, policy);
    let files_check = check_files(dir, manifest.as_ref());
    let (certificate_check, certificate, reached) = check_certificate(dir, policy);
    // The witness quorum is checked once, on certificate.txt (with the
    // cosignatures file); every proof must be against that same checkpoint,
    // so the proofs need only the replica quorum.
    let replica_policy = policy.replicas_only();
    let events_check = check_events(
        dir,
        &replica_policy,
        manifest.as_ref().map(|m| m.query),
        certificate.as_ref(),
    );
    Report::new(
        format!("bundle {}", dir.display()),
        PolicySummary::from_policy(policy),
        vec![manifest_check, files_check, certificate_check, events_check],
        reached,
    )
    .with_times(started, SystemTime::now())
}

/// Reads a whole file of at most `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("larger than the limit of {limit} bytes"));
    }
    Ok(bytes)
}

fn check_manifest(dir: &Path, policy: &Policy) -> (Check, Option<Manifest>) {
    let mut check = Check::start("bundle manifest");
    check_listing(&mut check, dir);
    let bytes = match read_bounded(&dir.join(MANIFEST_FILE), MANIFEST_BYTES_MAX) {
        Ok(bytes) => bytes,
        Err(e) => {
            check.fail(FailureKind::BundleMismatch, MANIFEST_FILE, e);
            return (check.finish(), None);
        }
    };
    let signers = check_manifest_sig(&mut check, dir, &manifest_keys(dir, policy), &bytes);
    let manifest = match parse_manifest(&bytes) {
        Ok(manifest) => manifest,
        Err((location, message)) => {
            check.fail(FailureKind::BundleMismatch, location, message);
            return (check.finish(), None);
        }
    };
    check_manifest_fields(&mut check, &manifest);
    if let Some(signers) = signers
        && !signers.contains(&manifest.exported_by)
    {
        check.fail(
            FailureKind::BundleMismatch,
            MANIFEST_SIG_FILE,
            format!(
                "signed by [{}], not by exported_by {}",
                signers.join(", "),
                manifest.exported_by
            ),
        );
    }
    check.count(
        "events claimed",
        manifest.query.to.saturating_sub(manifest.query.from),
    );
    (check.finish(), Some(manifest))
}

/// Every directory entry must be a bundle file.
fn check_listing(check: &mut Check, dir: &Path) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            check.fail(
                FailureKind::BundleMismatch,
                dir.display().to_string(),
                format!("cannot list: {e}"),
            );
            return;
        }
    };
    let known = [
        MANIFEST_FILE,
        MANIFEST_SIG_FILE,
        EVENTS_FILE,
        PROOFS_FILE,
        CERTIFICATE_FILE,
        COSIGNATURES_FILE,
        COSIGNED_FILE,
    ];
    for (seen, entry) in entries.enumerate() {
        if seen == BUNDLE_ENTRIES_MAX {
            check.fail(
                FailureKind::BundleMismatch,
                dir.display().to_string(),
                "more entries than any bundle has",
            );
            return;
        }
        let name = match entry {
            Ok(entry) => entry.file_name().to_string_lossy().into_owned(),
            Err(e) => {
                check.fail(
                    FailureKind::BundleMismatch,
                    dir.display().to_string(),
                    format!("cannot list: {e}"),
                );
                return;
            }
        };
        if !known.contains(&name.as_str()) {
            check.fail(
                FailureKind::BundleMismatch,
                name,
                format!("is not part of a {BUNDLE_FORMAT} bundle (an extra file)"),
            );
        }
    }
}

/// The keys `manifest.sig` may be signed by: the pinned keys, or with
/// pinned signing-key rotations, each replica's key in force at the op
/// `certificate.txt` certifies and every key it rotated to after that op
/// (the replica exports at that certificate or later, with the key it then
/// holds). A key retired at or before that op does not count. When that op
/// is unknown (the certificate check fails then), every key of the history.
fn manifest_keys(dir: &Path, policy: &Policy) -> Vec<Verifier> {
    if policy.rotations.is_empty() {
        return policy.verifiers.clone();
    }
    let op = read_bounded(&dir.join(CERTIFICATE_FILE), NOTE_BYTES_MAX as u64)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| Certificate::parse(&text).ok())
        .and_then(|certificate| certificate.certified_op())
        .unwrap_or(0);
    let mut keys: Vec<Verifier> = policy.at_op(op).verifiers.clone();
    keys.extend(
        policy
            .rotations
            .iter()
            .filter(|rotation| rotation.from_op > op)
            .map(|rotation| rotation.new.clone()),
    );
    keys
}

/// Checks `manifest.sig` against `keys` ([`manifest_keys`]); returns the
/// names of the pinned keys that signed.
fn check_manifest_sig(
    check: &mut Check,
    dir: &Path,
    keys: &[Verifier],
    manifest: &[u8],
) -> Option<Vec<String>> {
    let text = read_bounded(&dir.join(MANIFEST_SIG_FILE), NOTE_BYTES_MAX as u64)
        .and_then(|b| String::from_utf8(b).map_err(|_| "is not UTF-8".to_string()));
    let note = match text.map(|t| Note::parse(&t)) {
        Err(e) => {
            check.fail(FailureKind::BundleMismatch, MANIFEST_SIG_FILE, e);
            return None;
        }
        Ok(Err(e)) => {
            check.fail(
                FailureKind::BundleMismatch,
                format!("{MANIFEST_SIG_FILE} {}", e.location),
                e.to_string(),
            );
            return None;
        }
        Ok(Ok(note)) => note,
    };
    let hash: Hash = Sha256::digest(manifest).into();
    if note.text != manifest_sig_text(&hash) {
        check.fail(
            FailureKind::BundleMismatch,
            format!("{MANIFEST_SIG_FILE} line 2"),
            format!(
                "signed text {:?} does not name manifest.json's sha256 {}",
                note.text,
                to_hex(&hash)
            ),
        );
    }
    match note.verify(keys) {
        Ok(signers) => Some(signers.iter().map(|v| v.name().to_string()).collect()),
        Err(e) => {
            check.fail(
                FailureKind::BundleMismatch,
                MANIFEST_SIG_FILE,
                format!("not validly signed by a key the policy pins: {e}"),
            );
            None
        }
    }
}

/// Collects the top-level member names of a JSON object in text order.
struct MemberOrder(Vec<String>);

impl<'de> Deserialize<'de> for MemberOrder {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = MemberOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<MemberOrder, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    names.push(name);
                }
                Ok(MemberOrder(names))
            }
        }
        deserializer.deserialize_map(Names)
    }
}

const NO_TRAILER: &str =
    "no trailer as the last member: the manifest is incomplete (the trailer is written last)";

/// Parses a complete manifest (see the module documentation); the error is
/// (location, message).
fn parse_manifest(bytes: &[u8]) -> Result<Manifest, (String, String)> {
    let at_end = format!("{MANIFEST_FILE} at byte {}", bytes.len());
    let members: MemberOrder = serde_json::from_slice(bytes).map_err(|e| {
        let place = format!("{MANIFEST_FILE} line {} column {}", e.line(), e.column());
        if e.is_eof() {
            (
                place,
                "truncated: the JSON ends before the manifest does".to_string(),
            )
        } else {
            (place, format!("not a JSON object: {e}"))
        }
    })?;
    if !bytes.ends_with(b"}\n") {
        return Err((
            at_end,
            "does not end with the object's '}' and one newline".into(),
        ));
    }
    if members.0.last().map(String::as_str) != Some("trailer") {
        return Err((MANIFEST_FILE.to_string(), NO_TRAILER.into()));
    }
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| {
        (
            format!("{MANIFEST_FILE} line {} column {}", e.line(), e.column()),
            format!("not a {BUNDLE_FORMAT} manifest: {e}"),
        )
    })?;
    if manifest.trailer.is_none() {
        // `"trailer": null` as the last member.
        return Err((MANIFEST_FILE.to_string(), NO_TRAILER.into()));
    }
    Ok(manifest)
}

fn check_manifest_fields(check: &mut Check, manifest: &Manifest) {
    if manifest.format != BUNDLE_FORMAT || manifest.kind != BUNDLE_KIND_EVENTS {
        check.fail(
            FailureKind::BundleMismatch,
            MANIFEST_FILE,
            format!(
                "format {:?} kind {:?}, expected {BUNDLE_FORMAT:?} {BUNDLE_KIND_EVENTS:?}",
                manifest.format, manifest.kind
            ),
        );
    }
    let query = manifest.query;
    let count = query.to.checked_sub(query.from);
    match count {
        None => check.fail(
            FailureKind::BundleMismatch,
            MANIFEST_FILE,
            format!("query {}..{} is reversed", query.from, query.to),
        ),
        Some(n) if n > BUNDLE_EVENTS_MAX => check.fail(
            FailureKind::BundleMismatch,
            MANIFEST_FILE,
            format!("query of {n} events is more than the limit of {BUNDLE_EVENTS_MAX}"),
        ),
        _ => {}
    }
    let trailer = manifest
        .trailer
        .expect("parse_manifest requires the trailer");
    if !trailer.end || Some(trailer.events) != count {
        check.fail(
            FailureKind::BundleMismatch,
            format!("{MANIFEST_FILE} trailer"),
            format!(
                "trailer {{\"events\": {}, \"end\": {}}} does not close a manifest of query {}..{}",
                trailer.events, trailer.end, query.from, query.to
            ),
        );
    }
}

fn check_files(dir: &Path, manifest: Option<&Manifest>) -> Check {
    let Some(manifest) = manifest else {
        return Check::not_run("bundle files", "the manifest is missing or unreadable");
    };
    let mut check = Check::start("bundle files");
    for (i, entry) in manifest.files.iter().enumerate() {
        let first = manifest.files.iter().position(|f| f.name == entry.name);
        if !DATA_FILES.contains(&entry.name.as_str()) {
            check.fail(
                FailureKind::BundleMismatch,
                format!("{MANIFEST_FILE} files[{i}]"),
                format!(
                    "claims file {:?}, which is not part of a {BUNDLE_FORMAT} bundle",
                    entry.name
                ),
            );
        } else if first != Some(i) {
            check.fail(
                FailureKind::BundleMismatch,
                format!("{MANIFEST_FILE} files[{i}]"),
                format!("lists {} twice", entry.name),
            );
        }
    }
    for name in DATA_FILES {
        let Some(entry) = manifest.files.iter().find(|f| f.name == name) else {
            check.fail(
                FailureKind::BundleMismatch,
                MANIFEST_FILE,
                format!("lists no {name}"),
            );
            continue;
        };
        match file_tally(&dir.join(name)) {
            Err(e) => check.fail(
                FailureKind::BundleMismatch,
                name,
                format!("cannot read: {e}"),
            ),
            Ok((hash, bytes, lines)) => {
                compare_file(
                    &mut check,
                    entry,
                    &to_hex(&hash),
                    bytes,
                    records_of(name, lines),
                );
            }
        }
        check.count("files", 1);
    }
    check.finish()
}

fn compare_file(check: &mut Check, entry: &FileEntry, sha256: &str, bytes: u64, records: u64) {
    if entry.sha256 != sha256 {
        check.fail(
            FailureKind::BundleMismatch,
            entry.name.as_str(),
            format!("sha256 {sha256}, the manifest says {}", entry.sha256),
        );
    }
    if entry.bytes != bytes {
        check.fail(
            FailureKind::BundleMismatch,
            entry.name.as_str(),
            format!("{bytes} bytes, the manifest says {}", entry.bytes),
        );
    }
    if entry.records != records {
        check.fail(
            FailureKind::BundleMismatch,
            entry.name.as_str(),
            format!("{records} records, the manifest says {}", entry.records),
        );
    }
}

/// SHA-256, size and newline count of a file, read in blocks.
fn file_tally(path: &Path) -> std::io::Result<(Hash, u64, u64)> {
    let mut file = File::open(path)?;
    let mut tally = Tally {
        inner: std::io::sink(),
        hasher: Sha256::new(),
        bytes: 0,
        lines: 0,
    };
    std::io::copy(&mut file, &mut tally)?;
    Ok((tally.hasher.finalize().into(), tally.bytes, tally.lines))
}

fn check_certificate(dir: &Path, policy: &Policy) -> (Check, Option<Certificate>, Option<Reached>) {
    let mut check = Check::start("bundle certificate");
    let text = read_bounded(&dir.join(CERTIFICATE_FILE), NOTE_BYTES_MAX as u64)
        .and_then(|b| String::from_utf8(b).map_err(|_| "is not UTF-8".to_string()));
    let text = match text {
        Ok(text) => text,
        Err(e) => {
            check.fail(FailureKind::BundleMismatch, CERTIFICATE_FILE, e);
            return (check.finish(), None, None);
        }
    };
    let certificate = match Certificate::parse(&text) {
        Ok(certificate) => certificate,
        Err(e) => {
            check.fail(
                FailureKind::BundleMismatch,
                format!("{CERTIFICATE_FILE} {}", e.location),
                e.to_string(),
            );
            return (check.finish(), None, None);
        }
    };
    if dir.join(COSIGNED_FILE).exists() {
        let (check, reached) = check_with_cosigned(check, dir, policy, &certificate, text);
        return (check, Some(certificate), reached);
    }
    let mut cosigned = certificate.clone();
    if let Err((place, why)) = add_cosignatures(dir, &mut cosigned) {
        check.fail(FailureKind::BundleMismatch, place, why);
        return (check.finish(), Some(certificate), None);
    }
    let reached = match cosigned.verify(policy) {
        Ok(verified) => {
            check.count("signatures", verified.signers.len() as u64);
            if !policy.cosigners.is_empty() {
                check.count("witness cosignatures", verified.cosigners.len() as u64);
                let names: Vec<String> = verified
                    .cosigners
                    .iter()
                    .map(|c| format!("{}+{}", c.key.name(), to_hex(&c.key.key_id())))
                    .collect();
                check.note = Some(format!("cosigned by: {}", names.join(", ")));
            }
            Some(Reached {
                tree_size: verified.checkpoint.size,
                root: to_hex(&verified.checkpoint.root),
                signed_by: verified
                    .signers
                    .iter()
                    .map(|v| format!("{}+{}", v.name(), to_hex(&v.key_id())))
                    .collect(),
                checkpoint: text,
            })
        }
        Err(e) => {
            check.fail(
                FailureKind::BundleMismatch,
                CERTIFICATE_FILE,
                format!("not a quorum certificate under the policy: {e}"),
            );
            None
        }
    };
    (check.finish(), Some(certificate), reached)
}

/// The certificate check of a bundle with `cosigned.txt`: certificate.txt
/// must verify under the replica quorum, the cosigned checkpoint under the
/// whole policy (witness quorum included), and the consistency proof must
/// show the cosigned tree is a prefix of certificate.txt's.
fn check_with_cosigned(
    mut check: Check,
    dir: &Path,
    policy: &Policy,
    certificate: &Certificate,
    text: String,
) -> (Check, Option<Reached>) {
    if dir.join(COSIGNATURES_FILE).exists() {
        check.fail(
            FailureKind::BundleMismatch,
            COSIGNED_FILE,
            format!("a bundle holds {COSIGNATURES_FILE} or {COSIGNED_FILE}, not both"),
        );
        return (check.finish(), None);
    }
    let verified = match certificate.verify(&policy.replicas_only()) {
        Ok(verified) => verified,
        Err(e) => {
            check.fail(
                FailureKind::BundleMismatch,
                CERTIFICATE_FILE,
                format!("not a quorum certificate under the policy: {e}"),
            );
            return (check.finish(), None);
        }
    };
    let cosigned = match check_cosigned(dir, policy, certificate) {
        Ok(cosigned) => cosigned,
        Err((place, why)) => {
            check.fail(FailureKind::BundleMismatch, place, why);
            return (check.finish(), None);
        }
    };
    check.count("signatures", verified.signers.len() as u64);
    check.count("cosigned tree size", cosigned.checkpoint.size);
    if !policy.cosigners.is_empty() {
        check.count("witness cosignatures", cosigned.cosigners.len() as u64);
        let names: Vec<String> = cosigned
            .cosigners
            .iter()
            .map(|c| format!("{}+{}", c.key.name(), to_hex(&c.key.key_id())))
            .collect();
        check.note = Some(format!(
            "cosigned by: {} at tree size {}, which certificate.txt (tree size {}) extends",
            names.join(", "),
            cosigned.checkpoint.size,
            certificate.checkpoint.size
        ));
    }
    let reached = Reached {
        tree_size: verified.checkpoint.size,
        root: to_hex(&verified.checkpoint.root),
        signed_by: verified
            .signers
            .iter()
            .map(|v| format!("{}+{}", v.name(), to_hex(&v.key_id())))
            .collect(),
        checkpoint: text,
    };
    (check.finish(), Some(reached))
}

/// Reads `cosigned.txt` and checks it against `certificate` (already
/// verified under the replica quorum): the place and reason of the first
/// failure, else the verified cosigned checkpoint.
fn check_cosigned(
    dir: &Path,
    policy: &Policy,
    certificate: &Certificate,
) -> Result<vellum_audit::checkpoint::VerifiedCertificate, (String, String)> {
    let whole = |why: String| (COSIGNED_FILE.to_string(), why);
    let text = read_bounded(&dir.join(COSIGNED_FILE), NOTE_BYTES_MAX as u64)
        .and_then(|b| String::from_utf8(b).map_err(|_| "is not UTF-8".to_string()))
        .map_err(whole)?;
    let (hashes, cosigned) = parse_cosigned(&text)?;
    let verified = cosigned.verify(policy).map_err(|e| {
        whole(format!(
            "the cosigned checkpoint does not verify under the policy: {e}"
        ))
    })?;
    let (old, new) = (&cosigned.checkpoint, &certificate.checkpoint);
    if old.size == 0 || old.size > new.size {
        return Err(whole(format!(
            "cosigned tree size {} is not between 1 and the certificate's {}",
            old.size, new.size
        )));
    }
    vellum_audit::merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &hashes)
        .map_err(|e| {
            whole(format!(
                "the consistency proof from tree size {} to {} does not verify: {e}",
                old.size, new.size
            ))
        })?;
    Ok(verified)
}

/// Parses `cosigned.txt`: its header line, the consistency proof's hashes
/// up to a blank line, then the cosigned certificate. Errors name the file
/// and line.
fn parse_cosigned(text: &str) -> Result<(Vec<Hash>, Certificate), (String, String)> {
    let at = |line: usize, why: &str| (format!("{COSIGNED_FILE} line {line}"), why.to_string());
    let Some(mut rest) = text
        .strip_prefix(COSIGNED_HEADER)
        .and_then(|r| r.strip_prefix('\n'))
    else {
        return Err(at(1, "the first line is not vellum-cosigned/v1"));
    };
    let mut hashes = Vec::new();
    let mut line = 2;
    while !rest.starts_with('\n') {
        let Some((hash, after)) = rest.split_once('\n') else {
            return Err(at(line, "no blank line before the cosigned certificate"));
        };
        if hashes.len() == vellum_audit::merkle::PROOF_HASHES_MAX {
            return Err(at(line, "more than 65 consistency proof hashes"));
        }
        let decoded: Hash = BASE64
            .decode(hash)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| at(line, "not the base64 of a 32-byte hash"))?;
        hashes.push(decoded);
        rest = after;
        line += 1;
    }
    let certificate = Certificate::parse_at(&rest[1..], line + 1)
        .map_err(|e| (format!("{COSIGNED_FILE} {}", e.location), e.to_string()))?;
    Ok((hashes, certificate))
}

/// `cosigned.txt` for a bundle against `certificate` (tree size n): the
/// consistency proof `hashes` from the older `cosigned` checkpoint (its
/// replica signatures and witness cosignature lines included) to n.
pub fn encode_cosigned(hashes: &[Hash], cosigned: &Certificate) -> String {
    let mut out = format!("{COSIGNED_HEADER}\n");
    for hash in hashes {
        out.push_str(&BASE64.encode(hash));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&cosigned.encode());
    out
}

/// Appends the lines of `cosignatures.txt`, if the bundle has one, to the
/// certificate's note; the place and reason when they are unreadable.
fn add_cosignatures(dir: &Path, certificate: &mut Certificate) -> Result<(), (String, String)> {
    let path = dir.join(COSIGNATURES_FILE);
    if !path.exists() {
        return Ok(());
    }
    let place = |what: String| (COSIGNATURES_FILE.to_string(), what);
    let text = read_bounded(&path, NOTE_BYTES_MAX as u64)
        .and_then(|b| String::from_utf8(b).map_err(|_| "is not UTF-8".to_string()))
        .map_err(place)?;
    let lines = vellum_audit::cosignature::parse_signature_lines(&text)
        .map_err(|e| (format!("{COSIGNATURES_FILE} {}", e.location), e.to_string()))?;
    let signatures = &mut certificate.note.signatures;
    if signatures.len() + lines.len() > vellum_audit::note::SIGNATURES_MAX {
        return Err(place(
            "too many signature lines with the certificate's".to_string(),
        ));
    }
    signatures.extend(lines);
    Ok(())
}

/// Reads one `\n`-terminated line of at most [`BUNDLE_LINE_BYTES_MAX`]
/// bytes; `Ok(None)` at the end of the file.
fn read_line(reader: &mut impl BufRead) -> Result<Option<String>, String> {
    let mut buf = Vec::new();
    reader
        .take(BUNDLE_LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.pop() != Some(b'\n') {
        return Err(if buf.len() >= BUNDLE_LINE_BYTES_MAX {
            format!("line longer than {BUNDLE_LINE_BYTES_MAX} bytes")
        } else {
            "last line has no newline: the file is truncated".to_string()
        });
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| "line is not UTF-8".to_string())
}

fn check_events(
    dir: &Path,
    policy: &Policy,
    query: Option<Query>,
    certificate: Option<&Certificate>,
) -> Check {
    let mut check = Check::start("bundle events");
    let open = |name: &str| File::open(dir.join(name)).map(BufReader::new);
    let (mut events, mut proofs) = match (open(EVENTS_FILE), open(PROOFS_FILE)) {
        (Ok(events), Ok(proofs)) => (events, proofs),
        (Err(e), _) => {
            check.fail(
                FailureKind::BundleMismatch,
                EVENTS_FILE,
                format!("cannot open: {e}"),
            );
            return check.finish();
        }
        (_, Err(e)) => {
            check.fail(
                FailureKind::BundleMismatch,
                PROOFS_FILE,
                format!("cannot open: {e}"),
            );
            return check.finish();
        }
    };
    if query.is_none() {
        check.note = Some("no readable manifest: the range is not checked".into());
    }
    let mut walk = EventWalk {
        policy,
        query,
        certificate,
        previous_position: None,
    };
    let mut count = 0u64;
    for line in 1..=BUNDLE_EVENTS_MAX + 1 {
        let (event, proof) = (read_line(&mut events), read_line(&mut proofs));
        let (event, proof) = match (event, proof) {
            (Ok(None), Ok(None)) => break,
            (Err(e), _) => return fail_and_finish(check, format!("{EVENTS_FILE} line {line}"), e),
            (_, Err(e)) => return fail_and_finish(check, format!("{PROOFS_FILE} line {line}"), e),
            (Ok(Some(_)), Ok(None)) => {
                let message = "missing: events.ndjson has more lines than proofs.ndjson";
                return fail_and_finish(check, format!("{PROOFS_FILE} line {line}"), message);
            }
            (Ok(None), Ok(Some(_))) => {
                let message = "a proof with no event: proofs.ndjson has more lines";
                return fail_and_finish(check, format!("{PROOFS_FILE} line {line}"), message);
            }
            (Ok(Some(event)), Ok(Some(proof))) => (event, proof),
        };
        if line > BUNDLE_EVENTS_MAX {
            let message = format!("more than {BUNDLE_EVENTS_MAX} events");
            return fail_and_finish(check, format!("{EVENTS_FILE} line {line}"), message);
        }
        walk.check_one(&mut check, line, &event, &proof);
        count += 1;
    }
    check.count("events", count);
    if let Some(query) = query {
        let expected = query.to.saturating_sub(query.from);
        if count != expected {
            check.fail(
                FailureKind::BundleMismatch,
                EVENTS_FILE,
                format!(
                    "{count} events, the query {}..{} has {expected}",
                    query.from, query.to
                ),
            );
        }
    }
    check.finish()
}

fn fail_and_finish(mut check: Check, location: String, message: impl Into<String>) -> Check {
    check.fail(FailureKind::BundleMismatch, location, message);
    check.finish()
}

/// The state of the event walk: what the next event must be.
struct EventWalk<'a> {
    policy: &'a Policy,
    query: Option<Query>,
    certificate: Option<&'a Certificate>,
    previous_position: Option<u64>,
}

impl EventWalk<'_> {
    /// Checks event line `line` and its proof line; records failures.
    fn check_one(&mut self, check: &mut Check, line: u64, event_text: &str, proof_text: &str) {
        let event: EventLine = match serde_json::from_str(event_text) {
            Ok(event) => event,
            Err(e) => {
                return check.fail(
                    FailureKind::BundleMismatch,
                    format!("{EVENTS_FILE} line {line}"),
                    format!("not a bundle event: {e}"),
                );
            }
        };
        let at_event = format!("{EVENTS_FILE} line {line} (position {})", event.position);
        let at_proof = format!("{PROOFS_FILE} line {line} (position {})", event.position);
        let previous = self.previous_position.replace(event.position);
        if let Some(query) = self.query {
            let expected = EventExpectation {
                stream: query.stream,
                offset: query.from.checked_add(line - 1),
                previous_position: previous,
            };
            if let Err(e) = check_range(&event, &expected) {
                check.fail(FailureKind::BundleMismatch, at_event.as_str(), e);
            }
        }
        let decoded = match decode_event(&event) {
            Ok(decoded) => decoded,
            Err(e) => return check.fail(FailureKind::BundleMismatch, at_event, e),
        };
        let proof_line: ProofLine = match serde_json::from_str(proof_text) {
            Ok(proof) => proof,
            Err(e) => {
                return check.fail(
                    FailureKind::BundleMismatch,
                    at_proof,
                    format!("not a bundle proof line: {e}"),
                );
            }
        };
        if proof_line.position != event.position {
            check.fail(
                FailureKind::BundleMismatch,
                at_proof.as_str(),
                format!(
                    "the proof line is for position {}, not the event's",
                    proof_line.position
                ),
            );
        }
        let proof = match InclusionProof::parse(&proof_line.proof) {
            Ok(proof) => proof,
            Err(e) => {
                return check.fail(
                    FailureKind::BundleMismatch,
                    format!("{at_proof} tlog-proof {}", e.location),
                    e.to_string(),
                );
            }
        };
        if let Some(certificate) = self.certificate
            && proof.checkpoint.checkpoint != certificate.checkpoint
        {
            check.fail(FailureKind::BundleMismatch,
                    at_proof.as_str(),
                    format!(
                        "the proof is against checkpoint size {}, not the bundle certificate's (size {})",
                        proof.checkpoint.checkpoint.size, certificate.checkpoint.size
                    ),
                );
        }
        match proof.verify_event(self.policy) {
            Err(e) => check.fail(
                FailureKind::BundleMismatch,
                at_proof,
                format!("does not verify under the policy: {e}"),
            ),
            Ok((_, leaf)) => {
                if let Err(e) = check_leaf(&event, &decoded, &leaf, proof.index) {
                    check.fail(FailureKind::BundleMismatch, at_event, e);
                }
            }
        }
    }
}
