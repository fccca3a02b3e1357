//! `GET /v1/export/audit` as a streamed body. The access trail grows with
//! the log (one event per API request), so the answer is written as the
//! trail is read, a page ([`crate::server::node::TRAIL_PAGE_EVENTS_MAX`]
//! events) at a time,
//! and no more than one page is held, whatever the trail's length. The
//! bytes are exactly what serializing the whole [`api::AuditExport`] gives
//! (`{"source":…,"records":[…]}`, compact JSON), so clients that read the
//! answer whole are unchanged.
//!
//! The export holds the trail as committed when the request was handled
//! ([`Node::trail_snapshot`]), so its own access record (committed before
//! the first byte is sent) is never in it. A page that cannot be read
//! after the answer started breaks the body off: the client sees an
//! incomplete answer, never a shorter export that parses.

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use vellum_compliance::trail::AccessEvent;

use super::{ApiError, AppState, run_blocking};
use crate::api;
use crate::server::node::{TrailPage, TrailSnapshot};

/// Which trail events an export lists (the query of the request).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditFilter {
    /// From this time (unix ns), included.
    pub from_ns: Option<u64>,
    /// Until this time, excluded.
    pub to_ns: Option<u64>,
    /// Only events naming this stream.
    pub stream: Option<u64>,
}

impl AuditFilter {
    fn keeps(&self, event: &AccessEvent) -> bool {
        self.from_ns.is_none_or(|f| event.time_ns >= f)
            && self.to_ns.is_none_or(|t| event.time_ns < t)
            && self.stream.is_none_or(|s| event.names_stream(s))
    }
}

/// The export's writer: adds the JSON of each kept record to a chunk.
#[derive(Debug, Default)]
struct Writer {
    filter: AuditFilter,
    written: u64,
}

impl Writer {
    /// The answer's first bytes: the object up to the records' `[`.
    fn head(source: &str) -> Vec<u8> {
        let mut out = b"{\"source\":".to_vec();
        serde_json::to_writer(&mut out, source).expect("a string always serializes");
        out.extend_from_slice(b",\"records\":[");
        out
    }

    /// The kept records of `events`, each after a comma unless first.
    fn records(&mut self, out: &mut Vec<u8>, events: Vec<(AccessEvent, u64)>) {
        for (event, position) in events {
            if !self.filter.keeps(&event) {
                continue;
            }
            if self.written > 0 {
                out.push(b',');
            }
            let record = api::AuditRecord { position, event };
            serde_json::to_writer(&mut *out, &record).expect("a trail record always serializes");
            self.written += 1;
        }
    }

    /// The answer's last bytes.
    const TAIL: &'static [u8] = b"]}";
}

/// Where the body is.
enum Cursor {
    /// The head and the first page, read before the answer started.
    First(TrailPage),
    /// The next page starts at this trail offset.
    Next(u64),
    /// Every page is written: the tail is next.
    Tail,
    Done,
}

/// The answer of an export whose snapshot and first page are read (a
/// failure there is an ordinary error answer): status 200, content type
/// JSON, the body streamed.
pub(crate) fn answer(
    state: AppState,
    snapshot: TrailSnapshot,
    filter: AuditFilter,
    first: TrailPage,
) -> Response {
    let source = snapshot.source.clone();
    let writer = Writer { filter, written: 0 };
    let start = (Cursor::First(first), writer);
    let chunks = futures_util::stream::unfold(start, move |(cursor, mut writer)| {
        let state = state.clone();
        let source = source.clone();
        let end = snapshot.end;
        async move {
            let (chunk, next) = match cursor {
                Cursor::Done => return None,
                Cursor::Tail => (Writer::TAIL.to_vec(), Cursor::Done),
                Cursor::First(page) => {
                    let mut chunk = Writer::head(&source);
                    let next = page.next.map_or(Cursor::Tail, Cursor::Next);
                    writer.records(&mut chunk, page.events);
                    (chunk, next)
                }
                Cursor::Next(from) => {
                    match run_blocking(&state, move |node| node.trail_page(from, end)).await {
                        Ok(Ok(page)) => {
                            let mut chunk = Vec::new();
                            let next = page.next.map_or(Cursor::Tail, Cursor::Next);
                            writer.records(&mut chunk, page.events);
                            (chunk, next)
                        }
                        Ok(Err(error)) => {
                            return Some((
                                Err(broken(ApiError::from(error))),
                                (Cursor::Done, writer),
                            ));
                        }
                        Err(error) => return Some((Err(broken(error)), (Cursor::Done, writer))),
                    }
                }
            };
            Some((Ok(Bytes::from(chunk)), (next, writer)))
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The whole answer of an export, written to `out` page by page as the
/// handler streams it (the same bytes), with `page(from)` reading the
/// page at trail offset `from`: for callers without a runtime (tests of
/// the export's memory and bytes). Returns the records written.
pub fn write_audit_export<E: From<std::io::Error>>(
    source: &str,
    filter: AuditFilter,
    mut page: impl FnMut(u64) -> Result<TrailPage, E>,
    out: &mut dyn std::io::Write,
) -> Result<u64, E> {
    let mut writer = Writer { filter, written: 0 };
    let mut chunk = Writer::head(source);
    let mut next = Some(0);
    while let Some(from) = next {
        let read = page(from)?;
        next = read.next;
        writer.records(&mut chunk, read.events);
        out.write_all(&chunk)?;
        chunk.clear();
    }
    out.write_all(Writer::TAIL)?;
    Ok(writer.written)
}

/// A page that failed after the answer started: logged, and the body is
/// broken off with it.
fn broken(error: ApiError) -> std::io::Error {
    tracing::error!(error = ?error, "access-trail export broken off: a page could not be read");
    std::io::Error::other("the access trail could not be read to the end of the export")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vellum_compliance::trail::AccessAction;

    fn event(i: u64) -> AccessEvent {
        AccessEvent {
            v: vellum_compliance::trail::ACCESS_EVENT_VERSION,
            time_ns: 1_000 + i,
            principal: format!("dr \"{i}\" ✓"),
            role: "reader".into(),
            action: AccessAction::ReadStream,
            stream: Some(16 + i % 2),
            from: Some(i),
            to: Some(i + 1),
            purpose: i.is_multiple_of(3).then(|| "TREAT\n,\u{7}".to_string()),
            outcome: "success".into(),
            remote: Some("127.0.0.1:1".into()),
            detail: None,
            recipient: None,
            description: None,
            streams: i.is_multiple_of(4).then(|| vec![1, 2]),
            streams_truncated: false,
            count: i.is_multiple_of(5).then_some(3),
            break_glass: None,
        }
    }

    /// Goal: the streamed body, written page by page with the filter, is
    /// byte for byte the JSON of the whole `AuditExport` it replaced, for
    /// empty, one-page and many-page trails and every filter.
    #[test]
    fn paged_body_equals_the_whole_answer() {
        let filters = [
            AuditFilter::default(),
            AuditFilter {
                from_ns: Some(1_003),
                to_ns: Some(1_011),
                stream: None,
            },
            AuditFilter {
                stream: Some(17),
                ..AuditFilter::default()
            },
            AuditFilter {
                from_ns: Some(u64::MAX),
                ..AuditFilter::default()
            },
        ];
        for n in [0u64, 1, 5, 23] {
            let events: Vec<(AccessEvent, u64)> = (0..n).map(|i| (event(i), i * 3)).collect();
            for filter in filters {
                let whole = api::AuditExport {
                    source: "vellum-r0 \"k\"".into(),
                    records: events
                        .iter()
                        .filter(|(e, _)| filter.keeps(e))
                        .map(|(e, p)| api::AuditRecord {
                            position: *p,
                            event: e.clone(),
                        })
                        .collect(),
                };
                let expected = serde_json::to_vec(&whole).expect("json");
                for page in [1usize, 2, 7, 100] {
                    let mut writer = Writer { filter, written: 0 };
                    let mut body = Writer::head(&whole.source);
                    for chunk in events.chunks(page) {
                        writer.records(&mut body, chunk.to_vec());
                    }
                    body.extend_from_slice(Writer::TAIL);
                    assert_eq!(
                        String::from_utf8_lossy(&body),
                        String::from_utf8_lossy(&expected),
                        "n {n} page {page} {filter:?}"
                    );
                }
            }
        }
    }
}
