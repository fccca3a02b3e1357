//! `GET /v1/export/audit` read as a stream: the answer is the whole access
//! trail of a period, which grows with the log, so the client never holds
//! it. [`Client::export_audit_stream`] returns the answer's body as it
//! arrives (no total timeout, no size cap: an idle timeout per chunk
//! instead), and [`read_audit_export`] parses it one record at a time,
//! handing each to the caller, who writes it out.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{
    AnswerContext, Attempt, Client, ClientError, RETRIES_MAX_LIMIT, audit_path, classify_answer,
    error_chain, read_body, summarize,
};
use crate::api::AuditRecord;

/// Chunks of a streamed export buffered between the network task and the
/// reader ([`AuditStream::into_reader`]).
const AUDIT_CHUNKS_BUFFERED_MAX: usize = 4;

/// The body of a `GET /v1/export/audit` answer, as it arrives.
#[derive(Debug)]
pub struct AuditStream {
    response: reqwest::Response,
    idle_timeout: Duration,
}

impl AuditStream {
    /// The next bytes of the body; `None` at its end. A body that stops
    /// for longer than the client's request timeout, or breaks off, is an
    /// error (a truncated export never reads as a complete one).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        match tokio::time::timeout(self.idle_timeout, self.response.chunk()).await {
            Err(_) => Err(ClientError::Transport(format!(
                "the access-trail export sent nothing for {} ms",
                self.idle_timeout.as_millis()
            ))),
            Ok(Err(error)) => Err(ClientError::Transport(format!(
                "the access-trail export broke off: {}",
                error_chain(&error)
            ))),
            Ok(Ok(chunk)) => Ok(chunk),
        }
    }

    /// A blocking reader of the body (for [`read_audit_export`] on a
    /// blocking thread); a task on the current runtime feeds it, at most
    /// [`AUDIT_CHUNKS_BUFFERED_MAX`] chunks ahead.
    pub fn into_reader(mut self) -> ChunkReader {
        let (sender, receiver) = tokio::sync::mpsc::channel(AUDIT_CHUNKS_BUFFERED_MAX);
        tokio::spawn(async move {
            loop {
                let next = self.chunk().await;
                let done = !matches!(next, Ok(Some(_)));
                let item = next.transpose();
                if let Some(item) = item
                    && sender.send(item).await.is_err()
                {
                    return;
                }
                if done {
                    return;
                }
            }
        });
        ChunkReader {
            receiver,
            current: Bytes::new(),
        }
    }
}

/// See [`AuditStream::into_reader`]. Reading blocks the calling thread:
/// never use it on a runtime's worker.
#[derive(Debug)]
pub struct ChunkReader {
    receiver: tokio::sync::mpsc::Receiver<Result<Bytes, ClientError>>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(error)) => return Err(std::io::Error::other(error.to_string())),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

impl Client {
    /// The access trail recorded in `[from_ns, to_ns)`, about `stream` if
    /// given, as a stream ([`read_audit_export`] parses it). Refusals and
    /// unreachable replicas are handled as for every read (the next
    /// replica is tried); once a replica answers 200, its body is the
    /// export.
    pub async fn export_audit_stream(
        &self,
        from_ns: Option<u64>,
        to_ns: Option<u64>,
        stream: Option<u64>,
    ) -> Result<AuditStream, ClientError> {
        let path = audit_path(from_ns, to_ns, stream)?;
        let inner = &self.inner;
        let count = inner.endpoints.len();
        let start = inner.preferred.load(Ordering::Relaxed) % count;
        let attempts = inner.config.retries_max.min(RETRIES_MAX_LIMIT) as usize + 1;
        let timeout = Duration::from_millis(inner.config.request_timeout_ms.max(1));
        let context = AnswerContext {
            stream: stream.unwrap_or(0),
            expected: None,
        };
        let mut failures = Vec::new();
        let mut last_transport = false;
        for attempt in 0..attempts {
            if attempt > 0 && attempt % count == 0 {
                tokio::time::sleep(Duration::from_millis(inner.config.retry_delay_ms)).await;
            }
            let index = (start + attempt) % count;
            let endpoint = &inner.endpoints[index];
            let request =
                super::with_token(inner.http.get(format!("{endpoint}{path}")), &inner.config)
                    .send();
            let response = match tokio::time::timeout(timeout, request).await {
                Err(_) => {
                    failures.push(format!("{endpoint}: no answer in time"));
                    last_transport = true;
                    continue;
                }
                Ok(Err(error)) => {
                    failures.push(format!("{endpoint}: {}", error_chain(&error)));
                    last_transport = true;
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            if status.is_success() {
                inner.preferred.store(index, Ordering::Relaxed);
                return Ok(AuditStream {
                    response,
                    idle_timeout: timeout,
                });
            }
            let Ok(body) = read_body::<IgnoredAny>(response).await else {
                failures.push(format!("{endpoint}: answer {status} cut short"));
                last_transport = true;
                continue;
            };
            match classify_answer::<IgnoredAny>(status, &body, context) {
                Attempt::Retry {
                    reason, transport, ..
                } => {
                    failures.push(format!("{endpoint}: {reason}"));
                    last_transport = transport;
                }
                Attempt::Done(Err(error)) => return Err(error),
                Attempt::Done(Ok(_)) => {
                    return Err(ClientError::Protocol(format!(
                        "the access-trail export answered {status}"
                    )));
                }
            }
        }
        let summary = summarize(attempts, &failures);
        Err(match last_transport {
            true => ClientError::Transport(summary),
            false => ClientError::Unavailable(summary),
        })
    }
}

/// Parses a `GET /v1/export/audit` answer (`{"source":…,"records":[…]}`,
/// `source` first, as the server writes it) from `reader` one record at a
/// time, calling `on_record(source, record)` for each in order; memory is
/// one record. Returns the records read. An answer that does not parse,
/// is cut short, repeats or lacks a member, or lists records before its
/// source, is an error; so is an error of `on_record`, returned as it was.
pub fn read_audit_export(
    reader: impl Read,
    mut on_record: impl FnMut(&str, AuditRecord) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
    let mut seed = ExportSeed {
        on_record: &mut on_record,
        source: None,
        records: None,
        failed: None,
    };
    let parsed = (&mut seed).deserialize(&mut de).and_then(|()| de.end());
    if let Some(error) = seed.failed {
        return Err(error);
    }
    if let Err(error) = parsed {
        // A network failure reaches the parser as an I/O error: keep its text.
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the access-trail export is not a complete answer: {error}"),
        ));
    }
    seed.records.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the access-trail export has no records member",
        )
    })
}

type OnRecord<'a> = &'a mut dyn FnMut(&str, AuditRecord) -> std::io::Result<()>;

/// The top-level object of the answer.
struct ExportSeed<'a> {
    on_record: OnRecord<'a>,
    source: Option<String>,
    records: Option<u64>,
    failed: Option<std::io::Error>,
}

impl<'de> DeserializeSeed<'de> for &mut ExportSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut ExportSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an access-trail export object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "source" if self.source.is_none() => self.source = Some(map.next_value()?),
                "records" if self.records.is_none() => {
                    let Some(source) = self.source.as_deref() else {
                        return Err(A::Error::custom("records come before source"));
                    };
                    let mut records = RecordsSeed {
                        on_record: &mut *self.on_record,
                        source,
                        count: 0,
                        failed: &mut self.failed,
                    };
                    map.next_value_seed(&mut records)?;
                    self.records = Some(records.count);
                }
                "source" | "records" => return Err(A::Error::duplicate_field("records")),
                other => return Err(A::Error::unknown_field(other, &["source", "records"])),
            }
        }
        if self.source.is_none() {
            return Err(A::Error::missing_field("source"));
        }
        Ok(())
    }
}

/// The `records` array: each element is handed on, none is kept.
struct RecordsSeed<'a, 'b> {
    on_record: &'b mut dyn FnMut(&str, AuditRecord) -> std::io::Result<()>,
    source: &'a str,
    count: u64,
    failed: &'b mut Option<std::io::Error>,
}

impl<'de> DeserializeSeed<'de> for &mut RecordsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for &mut RecordsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of access-trail records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(record) = seq.next_element::<AuditRecord>()? {
            if let Err(error) = (self.on_record)(self.source, record) {
                *self.failed = Some(error);
                return Err(A::Error::custom("writing the export failed"));
            }
            self.count += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AuditExport, AuditRecord};
    use vellum_compliance::trail::{AccessAction, AccessEvent};

    fn record(position: u64, principal: &str) -> AuditRecord {
        AuditRecord {
            position,
            event: AccessEvent {
                v: vellum_compliance::trail::ACCESS_EVENT_VERSION,
                time_ns: 1_700_000_000_000_000_000 + position,
                principal: principal.to_string(),
                role: "auditor".into(),
                action: AccessAction::ExportTrail,
                stream: Some(position % 3),
                from: None,
                to: None,
                purpose: Some("audit \"q\" ,\n é".into()),
                outcome: "success".into(),
                remote: None,
                detail: None,
                recipient: None,
                description: None,
                streams: None,
                streams_truncated: false,
                count: None,
                break_glass: None,
            },
        }
    }

    fn read_all(bytes: &[u8]) -> std::io::Result<(Vec<(String, AuditRecord)>, u64)> {
        let mut seen = Vec::new();
        let count = read_audit_export(bytes, |source, record| {
            seen.push((source.to_string(), record));
            Ok(())
        })?;
        Ok((seen, count))
    }

    /// Goal: the streaming parser hands on exactly the records a whole
    /// parse of the same answer gives, with the source, in order.
    #[test]
    fn streamed_parse_equals_whole_parse() {
        for n in [0, 1, 7] {
            let export = AuditExport {
                source: "r0-key".into(),
                records: (0..n).map(|i| record(i * 2, &format!("p{i}"))).collect(),
            };
            let bytes = serde_json::to_vec(&export).expect("json");
            let (seen, count) = read_all(&bytes).expect("parses");
            assert_eq!(count, n);
            assert!(seen.iter().all(|(source, _)| source == "r0-key"));
            let records: Vec<AuditRecord> = seen.into_iter().map(|(_, r)| r).collect();
            assert_eq!(records, export.records);
        }
    }

    /// Goal: a cut, repeated, reordered or foreign answer is an error,
    /// never a shorter export; an error of the writer is returned as is.
    #[test]
    fn bad_answers_are_errors() {
        let whole = serde_json::to_vec(&AuditExport {
            source: "r0".into(),
            records: vec![record(1, "a"), record(2, "b")],
        })
        .expect("json");
        for cut in [1, whole.len() / 2, whole.len() - 1] {
            assert!(read_all(&whole[..cut]).is_err(), "cut at {cut}");
        }
        for bad in [
            &br#"{"records":[],"source":"r0"}"#[..],
            br#"{"source":"r0","source":"r1","records":[]}"#,
            br#"{"source":"r0","records":[],"records":[]}"#,
            br#"{"source":"r0","records":[],"more":1}"#,
            br#"{"source":"r0"}"#,
            br#"{"records":[]}"#,
            br#"{"source":"r0","records":[]} x"#,
            br#"[]"#,
        ] {
            assert!(read_all(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let error = read_audit_export(&whole[..], |_, _| Err(std::io::Error::other("disk full")))
            .expect_err("the writer's error");
        assert_eq!(error.to_string(), "disk full");
    }
}
