//! Server-side event filters of subscriptions and global-log reads
//! (`?streams=5001,6000-6999`).
//!
//! Why it exists: a projection service follows a few streams, not the
//! whole log; filtering on the server (under the caller's scope, after
//! decryption) sends it only what it asks for, and the access trail records
//! the filter. The filter is a struct of optional criteria, each narrowing
//! the match, so criteria such as event types join it as one more field.

use crate::api::LogEvent;

use super::routes::ApiError;
use super::routes::extract::edge_number;

/// Most items (streams or ranges) one `streams` filter may list.
pub const FILTER_STREAM_ITEMS_MAX: usize = 64;

/// What events a reader asked for; every criterion given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Inclusive stream ranges `(first, last)`; an event matches when its
    /// stream is in one of them. None: every stream.
    streams: Option<Vec<(u64, u64)>>,
}

impl EventFilter {
    /// The filter of the `streams` query parameter: a comma-separated list
    /// of stream ids (`5001`) and inclusive ranges (`6000-6999`), each
    /// number in its one canonical spelling and at most i64::MAX, at most
    /// [`FILTER_STREAM_ITEMS_MAX`] items; anything else is a 400 naming
    /// the item, but a reversed range (well-formed, naming no stream) 422.
    pub fn parse(streams: Option<&str>) -> Result<EventFilter, ApiError> {
        let Some(text) = streams else {
            return Ok(EventFilter::default());
        };
        let items: Vec<&str> = text.split(',').collect();
        if items.len() > FILTER_STREAM_ITEMS_MAX {
            return Err(ApiError::bad_request(format!(
                "streams: {} items, at most {FILTER_STREAM_ITEMS_MAX}",
                items.len()
            )));
        }
        let ranges = items
            .iter()
            .enumerate()
            .map(|(index, item)| parse_item(index, item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EventFilter {
            streams: Some(ranges),
        })
    }

    /// The stream ranges asked for, inclusive (None: every stream).
    pub fn stream_ranges(&self) -> Option<&[(u64, u64)]> {
        self.streams.as_deref()
    }

    /// Whether `event` passes every criterion.
    pub fn matches(&self, event: &LogEvent) -> bool {
        self.streams.as_ref().is_none_or(|ranges| {
            ranges
                .iter()
                .any(|(first, last)| (*first..=*last).contains(&event.stream))
        })
    }

    /// The filter as the access trail records it (canonical spelling, e.g.
    /// `filter streams=5001,6000-6999`); None without a criterion.
    pub fn describe(&self) -> Option<String> {
        let ranges = self.streams.as_ref()?;
        let items: Vec<String> = ranges
            .iter()
            .map(|(first, last)| match first == last {
                true => first.to_string(),
                false => format!("{first}-{last}"),
            })
            .collect();
        Some(format!("filter streams={}", items.join(",")))
    }
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
            let filter = EventFilter::parse(Some(&text)).expect(&text);
            assert_eq!(filter.describe(), Some(format!("filter streams={text}")));
            for stream in (4995..5015).chain([0, crate::bounds::EDGE_INTEGER_MAX]) {
                let expected = list.iter().any(|(a, b)| *a <= stream && stream <= *b);
                assert_eq!(filter.matches(&event(stream)), expected, "{text} {stream}");
            }
        }
        let none = EventFilter::parse(None).expect("no filter");
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
            let error = EventFilter::parse(Some(bad)).expect_err(bad);
            assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
            assert!(
                error.message.contains("streams"),
                "{bad}: {}",
                error.message
            );
        }
        let reversed = EventFilter::parse(Some("1,5-3")).expect_err("reversed");
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
        let edge = EventFilter::parse(Some(&format!("0-{max}"))).expect("the edge");
        assert!(edge.matches(&event(max)));
    }
}
