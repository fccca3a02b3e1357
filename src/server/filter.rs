//! Server-side event filters of subscriptions, global-log reads and
//! consumer groups (`?streams=5001,6000-6999&types=Patient,Observation`).
//!
//! Why it exists: a projection service follows a few streams and a few
//! event types, not the whole log; filtering on the server (under the
//! caller's scope, after decryption) sends it only what it asks for, and
//! the access trail records the filter. The filter is a struct of optional
//! criteria, each narrowing the match: a filter never widens what the
//! caller's scope lets it read.

use std::collections::BTreeSet;

use crate::api::LogEvent;

use super::routes::ApiError;
use super::routes::extract::edge_number;

/// Most items (streams or ranges) one `streams` filter may list.
pub const FILTER_STREAM_ITEMS_MAX: usize = 64;
/// Most event types one `types` filter may list.
pub const FILTER_TYPE_ITEMS_MAX: usize = 32;
/// Longest filter text the access trail records (the longest `types`
/// list escapes to about 25 KiB, written with every subscription window):
/// a longer one is cut here and marked ` (clipped)`.
pub const FILTER_DETAIL_BYTES_MAX: usize = 4096;

/// What events a reader asked for; every criterion given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Inclusive stream ranges `(first, last)`; an event matches when its
    /// stream is in one of them. None: every stream.
    streams: Option<Vec<(u64, u64)>>,
    /// Event types (the envelope's `type`), matched byte for byte; an event
    /// without a type matches none. None: every event, typed or not.
    types: Option<BTreeSet<String>>,
}

impl EventFilter {
    /// The filter of the `streams` and `types` query parameters.
    ///
    /// `streams`: a comma-separated list of stream ids (`5001`) and
    /// inclusive ranges (`6000-6999`), each number in its one canonical
    /// spelling and at most i64::MAX, at most [`FILTER_STREAM_ITEMS_MAX`]
    /// items; anything else is a 400 naming the item, but a reversed range
    /// (well-formed, naming no stream) 422.
    ///
    /// `types`: a comma-separated list (after the query's percent-decoding)
    /// of event types, see [`EventFilter::with_types`]; an empty item is a
    /// 400. A type holding a comma cannot be named here (a group's JSON
    /// list can).
    pub fn parse(streams: Option<&str>, types: Option<&str>) -> Result<EventFilter, ApiError> {
        let streams = streams.map(parse_streams).transpose()?;
        let filter = EventFilter {
            streams,
            types: None,
        };
        let Some(text) = types else {
            return Ok(filter);
        };
        let items: Vec<&str> = text.split(',').collect();
        if let Some(index) = items.iter().position(|item| item.is_empty()) {
            return Err(ApiError::bad_request(format!(
                "types[{index}]: an empty item (the list is event types, comma separated)"
            )));
        }
        filter.with_types(&items)
    }

    /// This filter narrowed to the event types `items`: 1 to
    /// [`FILTER_TYPE_ITEMS_MAX`] items (else 400), each a type an envelope
    /// may carry (`vellum_audit::envelope::check_type`: 1 to 256 bytes of
    /// UTF-8 without control characters), else 422 naming the item: such
    /// a name could match no event. Repeats count once.
    pub fn with_types<T: AsRef<str>>(self, items: &[T]) -> Result<EventFilter, ApiError> {
        if items.is_empty() || items.len() > FILTER_TYPE_ITEMS_MAX {
            return Err(ApiError::bad_request(format!(
                "types: {} items, must be 1 to {FILTER_TYPE_ITEMS_MAX}",
                items.len()
            )));
        }
        let mut types = BTreeSet::new();
        for (index, item) in items.iter().enumerate() {
            let item = item.as_ref();
            if let Err(error) = vellum_audit::envelope::check_type(item) {
                return Err(ApiError::refused(format!(
                    "types[{index}]: {error}: no event can carry it"
                )));
            }
            types.insert(item.to_string());
        }
        Ok(EventFilter {
            types: Some(types),
            ..self
        })
    }

    /// The stream ranges asked for, inclusive (None: every stream).
    pub fn stream_ranges(&self) -> Option<&[(u64, u64)]> {
        self.streams.as_deref()
    }

    /// The event types asked for, sorted and distinct (None: every event).
    pub fn event_types(&self) -> Option<&BTreeSet<String>> {
        self.types.as_ref()
    }

    /// Whether `event` passes every criterion.
    pub fn matches(&self, event: &LogEvent) -> bool {
        let stream = self.streams.as_ref().is_none_or(|ranges| {
            ranges
                .iter()
                .any(|(first, last)| (*first..=*last).contains(&event.stream))
        });
        stream && self.matches_type(event.event_type.as_deref())
    }

    /// Whether an event of type `event_type` (None: untyped) passes the
    /// `types` criterion.
    pub fn matches_type(&self, event_type: Option<&str>) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| event_type.is_some_and(|t| types.contains(t)))
    }

    /// The filter as the access trail records it (canonical spelling, e.g.
    /// `filter streams=5001,6000-6999 types=Observation,Patient`, each type
    /// percent-encoded outside `A-Z a-z 0-9 - . _ ~ : /` so the text is
    /// unambiguous); None without a criterion.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(ranges) = &self.streams {
            let items: Vec<String> = ranges
                .iter()
                .map(|(first, last)| match first == last {
                    true => first.to_string(),
                    false => format!("{first}-{last}"),
                })
                .collect();
            parts.push(format!("streams={}", items.join(",")));
        }
        if let Some(types) = &self.types {
            let items: Vec<String> = types.iter().map(|t| escape_type(t)).collect();
            parts.push(format!("types={}", items.join(",")));
        }
        if parts.is_empty() {
            return None;
        }
        let mut text = format!("filter {}", parts.join(" "));
        if text.len() > FILTER_DETAIL_BYTES_MAX {
            // Stream ids, ranges and escaped types are ASCII: any cut is
            // on a character boundary.
            text.truncate(FILTER_DETAIL_BYTES_MAX);
            text.push_str(" (clipped)");
        }
        Some(text)
    }
}

/// `text` with every byte outside `A-Z a-z 0-9 - . _ ~ : /` as `%XX`.
fn escape_type(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte.is_ascii_alphanumeric() || b"-._~:/".contains(&byte) {
            true => out.push(char::from(byte)),
            false => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The ranges of a `streams` list.
fn parse_streams(text: &str) -> Result<Vec<(u64, u64)>, ApiError> {
    let items: Vec<&str> = text.split(',').collect();
    if items.len() > FILTER_STREAM_ITEMS_MAX {
        return Err(ApiError::bad_request(format!(
            "streams: {} items, at most {FILTER_STREAM_ITEMS_MAX}",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_item(index, item))
        .collect()
}

/// One item of a `streams` list: `N` or `A-B` with `A <= B`.
fn parse_item(index: usize, item: &str) -> Result<(u64, u64), ApiError> {
    let field = format!("streams[{index}]");
    if item.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{field}: an empty item (the list is `N` or `A-B`, comma separated)"
        )));
    }
    match item.split_once('-') {
        None => {
            let stream = edge_number(&field, item)?;
            Ok((stream, stream))
        }
        Some((first, last)) => {
            let first = edge_number(&field, first)?;
            let last = edge_number(&field, last)?;
            if first > last {
                // Well-formed, but names no stream: refused for its meaning.
                return Err(ApiError::refused(format!(
                    "{field}: the range {first}-{last} is reversed (it names no stream)"
                )));
            }
            Ok((first, last))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: u64) -> LogEvent {
        LogEvent {
            position: 0,
            stream,
            offset: 0,
            base64: String::new(),
            salt: String::new(),
            ..Default::default()
        }
    }

    /// Goal: a parsed filter matches exactly the streams its items name,
    /// checked against a generated matrix of lists and streams.
    #[test]
    fn filter_matches_exactly_the_named_streams() {
        let lists: [&[(u64, u64)]; 5] = [
            &[(5001, 5001)],
            &[(5001, 5003)],
            &[(5001, 5001), (5005, 5007)],
            &[(5000, 5000), (5002, 5002), (5004, 5010)],
            &[(0, crate::bounds::EDGE_INTEGER_MAX)],
        ];
        for list in lists {
            let text: Vec<String> = list
                .iter()
                .map(|(a, b)| match a == b {
                    true => a.to_string(),
                    false => format!("{a}-{b}"),
                })
                .collect();
            let text = text.join(",");
            let filter = EventFilter::parse(Some(&text), None).expect(&text);
            assert_eq!(filter.describe(), Some(format!("filter streams={text}")));
            for stream in (4995..5015).chain([0, crate::bounds::EDGE_INTEGER_MAX]) {
                let expected = list.iter().any(|(a, b)| *a <= stream && stream <= *b);
                assert_eq!(filter.matches(&event(stream)), expected, "{text} {stream}");
            }
        }
        let none = EventFilter::parse(None, None).expect("no filter");
        assert!(none.matches(&event(7)) && none.describe().is_none());
    }

    /// Goal: odd spellings and huge numbers are refused with a 400 naming
    /// the item, never read as something else.
    #[test]
    fn odd_spellings_and_huge_numbers_are_refused() {
        let too_many = vec!["1"; FILTER_STREAM_ITEMS_MAX + 1].join(",");
        for bad in [
            "",
            ",",
            "1,",
            ",1",
            "1,,2",
            " 1",
            "1 ",
            "+1",
            "01",
            "0x10",
            "1e3",
            "-1",
            "1-",
            "-",
            "1-2-3",
            "1..3",
            "18446744073709551615",
            "9223372036854775808",
            "1-18446744073709551615",
            "%31",
            "a",
            too_many.as_str(),
        ] {
            let error = EventFilter::parse(Some(bad), None).expect_err(bad);
            assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
            assert!(
                error.message.contains("streams"),
                "{bad}: {}",
                error.message
            );
        }
        let reversed = EventFilter::parse(Some("1,5-3"), None).expect_err("reversed");
        assert_eq!(
            reversed.status,
            axum::http::StatusCode::UNPROCESSABLE_ENTITY
        );
        assert!(
            reversed.message.contains("streams[1]"),
            "{}",
            reversed.message
        );
        let max = crate::bounds::EDGE_INTEGER_MAX;
        let edge = EventFilter::parse(Some(&format!("0-{max}")), None).expect("the edge");
        assert!(edge.matches(&event(max)));
    }

    fn typed(stream: u64, event_type: Option<&str>) -> LogEvent {
        LogEvent {
            event_type: event_type.map(str::to_string),
            ..event(stream)
        }
    }

    /// Goal: a `types` filter matches exactly the named types, byte for
    /// byte (no case folding, no prefix), never an untyped event, and
    /// joins a `streams` filter as one more criterion (a generated matrix).
    #[test]
    fn types_match_exactly_the_named_types() {
        let kinds: [Option<&str>; 7] = [
            None,
            Some("Patient"),
            Some("patient"),
            Some("Patient "),
            Some("Observation"),
            Some("Obs"),
            Some("Médication,x"),
        ];
        let lists: [&[&str]; 5] = [
            &["Patient"],
            &["Observation", "Patient"],
            &["Patient", "Patient"],
            &["Obs"],
            &["Médication,x"],
        ];
        for (n, list) in lists.iter().enumerate() {
            for streams in [None, Some("5001")] {
                let filter = EventFilter::parse(streams, None)
                    .and_then(|f| f.with_types(list))
                    .expect("a valid list");
                for kind in kinds {
                    for stream in [5000, 5001] {
                        let expected = kind.is_some_and(|k| list.contains(&k))
                            && streams.is_none_or(|_| stream == 5001);
                        let got = filter.matches(&typed(stream, kind));
                        assert_eq!(got, expected, "list {n} {streams:?} {kind:?} {stream}");
                    }
                }
            }
        }
        let parsed =
            EventFilter::parse(Some("5001"), Some("Patient,Observation,Patient")).expect("parses");
        assert_eq!(
            parsed.describe().as_deref(),
            Some("filter streams=5001 types=Observation,Patient")
        );
        let odd = EventFilter::default()
            .with_types(&["a,b c%", "Médication"])
            .expect("valid");
        assert_eq!(
            odd.describe().as_deref(),
            Some("filter types=M%C3%A9dication,a%2Cb%20c%25")
        );
        assert!(odd.matches(&typed(1, Some("a,b c%"))));
        let widest: Vec<String> = (0..FILTER_TYPE_ITEMS_MAX)
            .map(|i| format!("{i:02}{}", "é".repeat(127)))
            .collect();
        let widest = EventFilter::default().with_types(&widest).expect("valid");
        let text = widest.describe().expect("a filter");
        assert!(text.len() <= FILTER_DETAIL_BYTES_MAX + 10 && text.ends_with(" (clipped)"));
    }

    /// Goal: odd `types` lists are refused, never read as something
    /// else: a malformed list is 400, a name no event can carry is 422.
    #[test]
    fn odd_type_lists_are_refused() {
        let too_many = vec!["T"; FILTER_TYPE_ITEMS_MAX + 1].join(",");
        for bad in ["", ",", "A,", ",A", "A,,B", too_many.as_str()] {
            let error = EventFilter::parse(None, Some(bad)).expect_err(bad);
            assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
            assert!(error.message.contains("types"), "{bad}: {}", error.message);
        }
        let long = "x".repeat(vellum_audit::envelope::TYPE_BYTES_MAX + 1);
        for bad in ["A,\u{0}", "\t", "A\nB", "\u{7f}", long.as_str()] {
            let error = EventFilter::parse(None, Some(bad)).expect_err(bad);
            assert_eq!(
                error.status,
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "{bad:?}"
            );
            assert!(
                error.message.contains("types["),
                "{bad:?}: {}",
                error.message
            );
        }
        let empty: [&str; 0] = [];
        assert!(EventFilter::default().with_types(&empty).is_err());
        let most = vec!["T"; FILTER_TYPE_ITEMS_MAX].join(",");
        let longest = "x".repeat(vellum_audit::envelope::TYPE_BYTES_MAX);
        assert!(EventFilter::parse(None, Some(&most)).is_ok());
        assert!(EventFilter::parse(None, Some(&longest)).is_ok());
    }
}
