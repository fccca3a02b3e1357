//! Bearer tokens and roles for the client API.
//!
//! Tokens are stored hashed, so a leaked tokens file does not leak a usable
//! credential: one line per principal,
//! `sha256:<hex of SHA-256(token)> <principal> <role> [streams=<scope>] [expires=<time>]`;
//! blank lines and lines starting with `#` are ignored. `expires=` (RFC
//! 3339 UTC, `YYYY-MM-DDTHH:MM:SSZ`: `crate::server::credentials`) ends
//! the credential at that second: it is then refused with 401
//! `credential_expired`. Without it the line never expires. The scope ([`Scope`])
//! names the streams the principal may touch besides what its role allows:
//! `*` (every stream), or a comma-separated list of stream ids and inclusive
//! ranges `lo-hi`. A line without `streams=` (every line written before
//! scopes existed) grants no stream: minimum necessary by default. A presented token is hashed and compared
//! with every stored digest in constant time. Hashing first already makes
//! the comparison's timing independent of the secret (an attacker controls
//! the token but not its digest, so early exits leak nothing useful about a
//! stored token); the constant-time compare is belt and braces.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Prefix of every generated token (lets secret scanners recognise them).
pub const TOKEN_PREFIX: &str = "vlm_";
/// Random bytes in a generated token.
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// Most principals one tokens file may hold.
pub const PRINCIPALS_MAX: usize = 10_000;
/// Longest principal name, in bytes.
pub const PRINCIPAL_BYTES_MAX: usize = 128;
/// Most items (ids or ranges) one scope may list.
pub const SCOPE_ITEMS_MAX: usize = 1024;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Append, read, subscribe, prove.
    Writer,
    /// Read, subscribe, prove.
    Reader,
    /// Proofs, certificates and consistency proofs only (no event
    /// payloads); the only role that may follow the log as tlog-tiles.
    Auditor,
    /// Key custody only (P6): shreds streams, sets and lifts legal holds,
    /// sets retention floors, and reads the access trail; never payloads.
    PrivacyOfficer,
}

/// One kind of API call, as far as authorization is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `POST /v1/streams/{stream}/append`.
    Append,
    /// `GET /v1/streams/{stream}/events`.
    ReadStream,
    /// `GET /v1/log`.
    ReadLog,
    /// `GET /v1/subscribe`.
    Subscribe,
    /// `GET /v1/streams/{stream}/events/{offset}/proof`.
    Proof,
    /// `GET /v1/consistency`.
    Consistency,
    /// `GET /v1/certificate`.
    Certificate,
    /// `POST /v1/export/events`.
    ExportEvents,
    /// `GET /v1/export/audit`.
    ExportAudit,
    /// `POST /v1/verifications`.
    RecordVerification,
    /// `GET /v1/tlog/checkpoint` (C2SP tlog-tiles).
    TlogCheckpoint,
    /// `GET /v1/tlog/tile/...`: hash tiles and entry bundles (C2SP tlog-tiles).
    TlogTiles,
    /// `POST /v1/streams/{stream}/break-glass`: emergency access.
    BreakGlass,
    /// `POST /v1/streams/{stream}/shred`: destroy the stream's data keys.
    Shred,
    /// `POST /v1/streams/{stream}/hold`: set a legal hold.
    Hold,
    /// `POST /v1/streams/{stream}/hold/release`: lift a legal hold.
    ReleaseHold,
    /// `POST /v1/streams/{stream}/retention`: raise the retention floor.
    Retain,
    /// `POST /v1/groups`: create a consumer group.
    GroupCreate,
    /// `GET /v1/groups/{group}`: a consumer group's state.
    GroupGet,
    /// `DELETE /v1/groups/{group}`: delete a consumer group.
    GroupDelete,
    /// `POST /v1/groups/{group}/pull`: lease events of a consumer group.
    GroupPull,
    /// `POST /v1/groups/{group}/ack`: events processed.
    GroupAck,
    /// `POST /v1/groups/{group}/nack`: events failed (retry or park).
    GroupNack,
    /// `GET /v1/groups/{group}/parked`: a consumer group's parked events.
    GroupParked,
    /// `POST /v1/groups/{group}/replay`: deliver parked events again.
    GroupReplay,
}

/// How a route's stream data is matched against the caller's [`Scope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeRule {
    /// The route touches no stream's data (certificates, consistency
    /// proofs, recording a verification): any scope.
    Unscoped,
    /// The stream in the path must be in scope (or, for the actions
    /// [`Action::break_glass_opens`], under an open break-glass grant).
    PathStream,
    /// The stream in the body must be in scope (checked by the handler).
    BodyStream,
    /// Global reads and subscriptions: events of streams out of scope are
    /// left out of the answer (never a 403).
    FilterEvents,
    /// The access-trail export: `?stream=` must be in scope; without it,
    /// the scope must be `*`.
    StreamQueryOrAll,
    /// Bulk views of every stream (tlog tiles): the scope must be `*`.
    AllStreams,
    /// Break-glass: opens access to a stream out of scope; any scope.
    OpensBreakGlass,
    /// Consumer groups: the group's stream filter (every user stream when
    /// it has none) must be inside the scope (checked by the handler, which
    /// knows the group).
    GroupStreams,
}

impl Action {
    /// The access-trail action this route records.
    pub fn trail_action(self) -> vellum_compliance::trail::AccessAction {
        use vellum_compliance::trail::AccessAction as A;
        match self {
            Action::Append => A::Append,
            Action::ReadStream => A::ReadStream,
            Action::ReadLog => A::ReadLog,
            Action::Subscribe => A::Subscribe,
            Action::Proof => A::Proof,
            Action::Consistency => A::Consistency,
            Action::Certificate => A::Certificate,
            Action::ExportEvents => A::Export,
            Action::ExportAudit => A::ExportTrail,
            Action::RecordVerification => A::Verify,
            // The tlog-tiles routes serve what the proof routes serve, in
            // another layout: the trail's `detail` names the tile.
            Action::TlogCheckpoint => A::Certificate,
            Action::TlogTiles => A::Proof,
            Action::BreakGlass => A::BreakGlass,
            Action::Shred => A::Shred,
            Action::Hold => A::LegalHold,
            Action::ReleaseHold => A::LegalHoldRelease,
            Action::Retain => A::Retention,
            // A delivery discloses events, like a subscription's window.
            Action::GroupPull => A::Subscribe,
            Action::GroupCreate
            | Action::GroupGet
            | Action::GroupDelete
            | Action::GroupAck
            | Action::GroupNack
            | Action::GroupParked
            | Action::GroupReplay => A::ConsumerGroup,
        }
    }

    /// How this action's stream data is matched against the caller's scope.
    pub fn scope_rule(self) -> ScopeRule {
        match self {
            Action::Append
            | Action::ReadStream
            | Action::Proof
            | Action::Shred
            | Action::Hold
            | Action::ReleaseHold
            | Action::Retain => ScopeRule::PathStream,
            Action::ExportEvents => ScopeRule::BodyStream,
            Action::ReadLog | Action::Subscribe => ScopeRule::FilterEvents,
            Action::ExportAudit => ScopeRule::StreamQueryOrAll,
            Action::TlogTiles => ScopeRule::AllStreams,
            Action::Consistency
            | Action::Certificate
            | Action::RecordVerification
            | Action::TlogCheckpoint => ScopeRule::Unscoped,
            Action::BreakGlass => ScopeRule::OpensBreakGlass,
            Action::GroupCreate
            | Action::GroupGet
            | Action::GroupDelete
            | Action::GroupPull
            | Action::GroupAck
            | Action::GroupNack
            | Action::GroupParked
            | Action::GroupReplay => ScopeRule::GroupStreams,
        }
    }

    /// Creating, deleting a consumer group and replaying its parked
    /// events: a writer's (an operator's) call; readers consume.
    pub fn is_group_admin(self) -> bool {
        matches!(
            self,
            Action::GroupCreate | Action::GroupDelete | Action::GroupReplay
        )
    }

    /// The consumer-group actions.
    pub fn is_group(self) -> bool {
        self.scope_rule() == ScopeRule::GroupStreams
    }

    /// The key-custody actions (P6): the privacy officer's alone.
    pub fn is_custody(self) -> bool {
        matches!(
            self,
            Action::Shred | Action::Hold | Action::ReleaseHold | Action::Retain
        )
    }

    /// Whether an open break-glass grant on a stream lets this action
    /// touch it: reading the stream and its proofs. Appends, exports (a
    /// disclosure to someone else) and global reads are not emergencies.
    pub fn break_glass_opens(self) -> bool {
        matches!(self, Action::ReadStream | Action::Proof)
    }

    /// The name used in logs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::Append => "append",
            Action::ReadStream => "read_stream",
            Action::ReadLog => "read_log",
            Action::Subscribe => "subscribe",
            Action::Proof => "proof",
            Action::Consistency => "consistency",
            Action::Certificate => "certificate",
            Action::ExportEvents => "export_events",
            Action::ExportAudit => "export_audit",
            Action::RecordVerification => "record_verification",
            Action::TlogCheckpoint => "tlog_checkpoint",
            Action::TlogTiles => "tlog_tiles",
            Action::BreakGlass => "break_glass",
            Action::Shred => "shred",
            Action::Hold => "hold",
            Action::ReleaseHold => "release_hold",
            Action::Retain => "retain",
            Action::GroupCreate => "group_create",
            Action::GroupGet => "group_get",
            Action::GroupDelete => "group_delete",
            Action::GroupPull => "group_pull",
            Action::GroupAck => "group_ack",
            Action::GroupNack => "group_nack",
            Action::GroupParked => "group_parked",
            Action::GroupReplay => "group_replay",
        }
    }
}

impl Role {
    /// Whether this role may perform `action`.
    pub fn allows(self, action: Action) -> bool {
        match self {
            // Only auditors record verification runs: a "verification
            // passed" entry in the trail is an auditor's statement.
            // The tlog-tiles routes hand out the whole log's leaf preimages
            // in bulk, for auditing tools: auditors only.
            // Break-glass is for those who read patient data (writers
            // and readers), never for auditors.
            Role::Writer => {
                !action.is_custody()
                    && !matches!(
                        action,
                        Action::RecordVerification | Action::TlogCheckpoint | Action::TlogTiles
                    )
            }
            Role::Reader => {
                !action.is_custody()
                    && !action.is_group_admin()
                    && !matches!(
                        action,
                        Action::Append
                            | Action::RecordVerification
                            | Action::TlogCheckpoint
                            | Action::TlogTiles
                    )
            }
            // Auditors see proofs and the access trail, never plaintext.
            Role::Auditor => matches!(
                action,
                Action::Proof
                    | Action::Consistency
                    | Action::Certificate
                    | Action::ExportAudit
                    | Action::RecordVerification
                    | Action::TlogCheckpoint
                    | Action::TlogTiles
            ),
            // Key custody, the trail that records it, and the certificate
            // (to tie a shred's position to a signed tree): no payloads.
            Role::PrivacyOfficer => {
                action.is_custody() || matches!(action, Action::ExportAudit | Action::Certificate)
            }
        }
    }

    /// The name used in the tokens file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Auditor => "auditor",
            Role::PrivacyOfficer => "privacy-officer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "writer" => Ok(Role::Writer),
            "reader" => Ok(Role::Reader),
            "auditor" => Ok(Role::Auditor),
            "privacy-officer" => Ok(Role::PrivacyOfficer),
            other => Err(format!(
                "unknown role {other:?} (expected writer, reader, auditor or privacy-officer)"
            )),
        }
    }
}

/// An authenticated caller; put in the request's extensions by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal's name from the tokens file.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Which streams it may do it to.
    pub scope: Scope,
}

/// The streams a principal may touch (read, append, prove, export), on top
/// of what its role allows. Ranges are inclusive, sorted, merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    all: bool,
    ranges: Vec<(u64, u64)>,
}

impl Scope {
    /// Every stream (`streams=*`).
    pub fn all() -> Scope {
        Scope {
            all: true,
            ranges: Vec::new(),
        }
    }

    /// No stream (a line without `streams=`).
    pub fn none() -> Scope {
        Scope::default()
    }

    /// True for `streams=*`.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// True when the scope grants no stream.
    pub fn is_empty(&self) -> bool {
        !self.all && self.ranges.is_empty()
    }

    /// Whether `stream` is in the scope.
    pub fn contains(&self, stream: u64) -> bool {
        if self.all {
            return true;
        }
        // Sorted and disjoint: the last range starting at or below `stream`.
        let index = self.ranges.partition_point(|(lo, _)| *lo <= stream);
        index > 0 && self.ranges[index - 1].1 >= stream
    }

    /// Whether every stream of `first..=last` is in the scope.
    pub fn covers(&self, first: u64, last: u64) -> bool {
        if self.all {
            return true;
        }
        let index = self.ranges.partition_point(|(lo, _)| *lo <= first);
        index > 0 && self.ranges[index - 1].1 >= last
    }

    /// Parses the text after `streams=`: `*`, or ids and `lo-hi` ranges
    /// separated by commas. Every number is in its one canonical spelling
    /// (no sign, no leading zero, at most i64::MAX); a range must not be
    /// reversed; nothing may be empty.
    pub fn parse(text: &str) -> Result<Scope, String> {
        if text == "*" {
            return Ok(Scope::all());
        }
        if text.is_empty() {
            return Err("streams= is empty (leave it out to grant no stream)".to_string());
        }
        let items: Vec<&str> = text.split(',').collect();
        if items.len() > SCOPE_ITEMS_MAX {
            return Err(format!(
                "streams= lists {} items, more than {SCOPE_ITEMS_MAX}",
                items.len()
            ));
        }
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            ranges.push(parse_scope_item(item)?);
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ok(Scope {
            all: false,
            ranges: merged,
        })
    }
}

impl fmt::Display for Scope {
    /// The `streams=` text of this scope (`-` when it grants nothing).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all {
            return f.write_str("*");
        }
        if self.ranges.is_empty() {
            return f.write_str("-");
        }
        for (i, (lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// One item of a scope: `N` or `lo-hi`.
fn parse_scope_item(item: &str) -> Result<(u64, u64), String> {
    let number = |text: &str| {
        crate::bounds::parse_canonical("stream", text)
            .map_err(|e| format!("streams= item {item:?}: {e}"))
    };
    if item == "*" {
        return Err("streams=*: `*` must stand alone".to_string());
    }
    match item.split_once('-') {
        None => number(item).map(|n| (n, n)),
        Some((lo, hi)) => {
            let (lo, hi) = (number(lo)?, number(hi)?);
            if lo > hi {
                return Err(format!(
                    "streams= item {item:?}: the range is reversed (write {hi}-{lo})"
                ));
            }
            Ok((lo, hi))
        }
    }
}

/// Why a tokens file (or a client certificates file, which has the same
/// lines: `crate::server::mtls`) could not be loaded; `kind` names which.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read {kind} file {path}: {source}")]
    Read {
        /// `tokens` or `client certificates`.
        kind: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{kind} file {path} line {line}: {reason}")]
    Line {
        /// `tokens` or `client certificates`.
        kind: &'static str,
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Anyone may write the file, so anyone could add a token.
    #[error(
        "{kind} file {path} is writable by others (mode {mode:04o}); refused (fix: chmod o-w {path})"
    )]
    Insecure {
        /// `tokens` or `client certificates`.
        kind: &'static str,
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file holds more than [`PRINCIPALS_MAX`] principals.
    #[error("{kind} file {path} holds more than {PRINCIPALS_MAX} principals")]
    TooMany {
        /// `tokens` or `client certificates`.
        kind: &'static str,
        /// The file.
        path: String,
    },
}

/// The `kind` of a tokens file in [`AuthError`].
pub(crate) const TOKENS_KIND: &str = "tokens";

#[derive(Debug, Clone)]
struct Entry {
    digest: [u8; 32],
    principal: Principal,
    /// `expires=`, in unix seconds: refused from this second on.
    expires_s: Option<u64>,
}

/// Why a presented credential did not authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No line holds it (never issued, or revoked: its line was removed).
    Unknown,
    /// Its line's `expires=` has passed.
    Expired {
        /// Whose it was.
        principal: String,
        /// When it expired, unix seconds.
        expires_s: u64,
    },
}

/// The set of known tokens (as digests) and who they belong to.
#[derive(Debug, Clone, Default)]
pub struct TokenStore {
    entries: Vec<Entry>,
}

impl TokenStore {
    /// Reads a tokens file; errors name the file and line.
    pub fn load(path: &Path) -> Result<TokenStore, AuthError> {
        Self::load_kind(path, TOKENS_KIND)
    }

    /// Reads a file of `sha256:<hex> <principal> <role> [streams=<scope>]`
    /// lines; `kind` names it in errors and warnings.
    pub(crate) fn load_kind(path: &Path, kind: &'static str) -> Result<TokenStore, AuthError> {
        use std::os::unix::fs::MetadataExt as _;
        let shown = path.display().to_string();
        let read_error = |source| AuthError::Read {
            kind,
            path: shown.clone(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read_error)?.mode() & 0o7777;
        // Digests are not secrets, but whoever may write the file may add a token.
        if mode & 0o002 != 0 {
            return Err(AuthError::Insecure {
                kind,
                path: shown,
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        let store = parse(kind, &shown, &text)?;
        for (principal, at) in store.expired(crate::server::credentials::now_unix_s()) {
            // Loaded all the same (the file stays usable as its lines
            // expire one by one); said, so the operator can clean up.
            tracing::warn!(
                path = %shown,
                principal,
                expired = %crate::server::credentials::format_expires(at),
                "the principal's {kind} line has expired: it is refused with 401 credential_expired"
            );
        }
        for entry in store
            .entries
            .iter()
            .filter(|e| e.principal.scope.is_empty())
        {
            // Minimum necessary by default: say so, since a tokens file
            // written before scopes existed now grants no stream.
            tracing::warn!(
                path = %shown,
                principal = %entry.principal.name,
                "the principal's {kind} line grants no stream (it has no streams=<scope>): \
                 stream routes answer 403 scope_denied"
            );
        }
        Ok(store)
    }

    /// Parses tokens-file text held in memory (errors call it `<memory>`).
    pub fn from_lines(text: &str) -> Result<TokenStore, AuthError> {
        parse(TOKENS_KIND, "<memory>", text)
    }

    /// [`TokenStore::from_lines`] for a file of another `kind`.
    pub(crate) fn from_lines_kind(text: &str, kind: &'static str) -> Result<TokenStore, AuthError> {
        parse(kind, "<memory>", text)
    }

    /// Principals known to the store.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no principal may call the API.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal owning `token` at `now_s` (unix seconds), or why
    /// not. Looks at every entry so the time taken does not depend on
    /// which entry matches.
    pub fn authenticate(&self, token: &str, now_s: u64) -> Result<&Principal, Refusal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_digest(&digest, now_s)
    }

    /// The principal whose line holds `digest` at `now_s`, comparing every
    /// entry without an early exit.
    pub(crate) fn by_digest(&self, digest: &[u8; 32], now_s: u64) -> Result<&Principal, Refusal> {
        let mut found = None;
        for entry in &self.entries {
            if digests_equal(&entry.digest, digest) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(Refusal::Unknown)?;
        match entry.expires_s {
            Some(expires_s) if now_s >= expires_s => Err(Refusal::Expired {
                principal: entry.principal.name.clone(),
                expires_s,
            }),
            _ => Ok(&entry.principal),
        }
    }

    /// The principals whose lines have expired by `now_s`, with when.
    pub fn expired(&self, now_s: u64) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().filter_map(move |e| {
            e.expires_s
                .filter(|at| now_s >= *at)
                .map(|at| (e.principal.name.as_str(), at))
        })
    }

    /// The principals' names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.principal.name.as_str())
    }
}

/// Compares two digests without an early exit.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut difference = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        difference |= x ^ y;
    }
    difference == 0
}

fn parse(kind: &'static str, path: &str, text: &str) -> Result<TokenStore, AuthError> {
    let mut entries: Vec<Entry> = Vec::new();
    // Seen digests and names: a file of PRINCIPALS_MAX lines is checked in
    // linear time (comparing every pair took seconds at 10,000 lines).
    let mut digests = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |reason: String| AuthError::Line {
            kind,
            path: path.to_string(),
            line: index + 1,
            reason,
        };
        let entry = parse_line(line).map_err(fail)?;
        if !digests.insert(entry.digest) {
            return Err(fail("the same digest appears twice".to_string()));
        }
        if !names.insert(entry.principal.name.clone()) {
            return Err(fail(format!(
                "principal {:?} appears twice",
                entry.principal.name
            )));
        }
        if entries.len() >= PRINCIPALS_MAX {
            return Err(AuthError::TooMany {
                kind,
                path: path.to_string(),
            });
        }
        entries.push(entry);
    }
    Ok(TokenStore { entries })
}

fn parse_line(line: &str) -> Result<Entry, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (digest, name, role, options) = match fields.as_slice() {
        [digest, name, role, options @ ..] if options.len() <= 2 => (digest, name, role, options),
        _ => {
            return Err(format!(
                "expected `sha256:<hex> <principal> <role> [streams=<scope>] [expires=<time>]`, \
                 found {} fields",
                fields.len()
            ));
        }
    };
    let (scope, expires_s) = parse_options(options)?;
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| "the digest must start with `sha256:`".to_string())?;
    // Any case is accepted in the file; the digest is compared as bytes.
    let digest = vellum_audit::hash::from_hex(&hex.to_ascii_lowercase()).ok_or_else(|| {
        format!(
            "the digest must be 64 hex digits, found {:?}",
            hex.chars().take(80).collect::<String>()
        )
    })?;
    check_principal(name)?;
    let role = role.parse::<Role>()?;
    Ok(Entry {
        digest,
        principal: Principal {
            name: (*name).to_string(),
            role,
            scope,
        },
        expires_s,
    })
}

/// The fields after the role: `streams=<scope>` and `expires=<time>`, each
/// at most once, in either order.
fn parse_options(options: &[&str]) -> Result<(Scope, Option<u64>), String> {
    let (mut scope, mut expires_s) = (None, None);
    for option in options {
        if let Some(text) = option.strip_prefix("streams=") {
            if scope.replace(Scope::parse(text)?).is_some() {
                return Err("streams= appears twice".to_string());
            }
        } else if let Some(text) = option.strip_prefix("expires=") {
            let at = crate::server::credentials::parse_expires(text)?;
            if expires_s.replace(at).is_some() {
                return Err("expires= appears twice".to_string());
            }
        } else {
            return Err(format!(
                "after the role, expected `streams=<scope>` or `expires=<time>`, found {:?}",
                option.chars().take(80).collect::<String>()
            ));
        }
    }
    Ok((scope.unwrap_or_else(Scope::none), expires_s))
}

fn check_principal(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._@-:".contains(c);
    if name.is_empty() || name.len() > PRINCIPAL_BYTES_MAX || !name.chars().all(allowed) {
        return Err(format!(
            "principal {name:?} must be 1 to {PRINCIPAL_BYTES_MAX} of A-Z a-z 0-9 . _ @ - :"
        ));
    }
    Ok(())
}

/// A fresh token: `vlm_` + 32 random bytes as 64 lowercase hex digits (the
/// shape `vellum init`/`dev` give out, `crate::cluster::generate_token`).
pub fn generate_token() -> String {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    format!("{TOKEN_PREFIX}{}", vellum_audit::hash::to_hex(&bytes))
}

/// The tokens-file line for `token` (which is not stored, only its
/// digest), granting `scope`; an empty scope writes no `streams=` member.
pub fn token_line(token: &str, principal: &str, role: Role, scope: &Scope) -> String {
    digest_line(
        &Sha256::digest(token.as_bytes()).into(),
        principal,
        role,
        scope,
    )
}

/// The line granting `principal` to whoever presents what hashes to
/// `digest` (a token's SHA-256, or a client certificate's fingerprint).
pub fn digest_line(digest: &[u8; 32], principal: &str, role: Role, scope: &Scope) -> String {
    let hex = vellum_audit::hash::to_hex(digest);
    if scope.is_empty() {
        format!("sha256:{hex} {principal} {role}")
    } else {
        format!("sha256:{hex} {principal} {role} streams={scope}")
    }
}
