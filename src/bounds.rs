//! The range and spelling rules for every number that crosses Vellum's edge
//! (API path, query and body, the CLI, the Rust client): stream ids,
//! offsets, positions, tree sizes and times.
//!
//! Why it exists: the audit index stores these numbers in signed 64-bit SQL
//! integers, and one number above `i64::MAX` that reached the access trail
//! once stopped the index on every replica. So every boundary refuses such
//! numbers with a message naming the field, before anything is recorded,
//! and a number has exactly one spelling (`5001`; never `+5001`, `05001`,
//! ` 5001` or `5_001`), so two spellings cannot name one stream.

/// Largest id, offset, position, size or time (ns) accepted at the edge:
/// `i64::MAX`, so that every such number fits a signed 64-bit SQL integer.
pub const EDGE_INTEGER_MAX: u64 = i64::MAX as u64;

/// Why a number from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Not a canonical unsigned decimal.
    #[error(
        "{field}: `{text}` is not a canonical decimal number (digits only, no sign, no leading zero)"
    )]
    NotCanonical {
        /// The field, parameter or flag.
        field: String,
        /// What was given (clipped).
        text: String,
    },
    /// Above [`EDGE_INTEGER_MAX`].
    #[error("{field}: {value} is above the largest accepted value {EDGE_INTEGER_MAX} (2^63-1)")]
    TooLarge {
        /// The field, parameter or flag.
        field: String,
        /// What was given.
        value: String,
    },
}

/// Longest text echoed back in a [`NumberError`].
const ECHO_BYTES_MAX: usize = 40;

fn clip(text: &str) -> String {
    let mut end = text.len().min(ECHO_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Parses `text` as a number in its one canonical spelling: ASCII digits
/// only, no sign, no leading zero (except `0` itself), at most
/// [`EDGE_INTEGER_MAX`]. `field` names the input in the error.
pub fn parse_canonical(field: &str, text: &str) -> Result<u64, NumberError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(NumberError::NotCanonical {
            field: field.to_string(),
            text: clip(text),
        });
    }
    // Digits only: a parse failure can only be overflow of u64.
    match text.parse::<u64>() {
        Ok(value) => check(field, value),
        Err(_) => Err(NumberError::TooLarge {
            field: field.to_string(),
            value: clip(text),
        }),
    }
}

/// Refuses `value` above [`EDGE_INTEGER_MAX`]; `field` names the input.
pub fn check(field: &str, value: u64) -> Result<u64, NumberError> {
    if value > EDGE_INTEGER_MAX {
        return Err(NumberError::TooLarge {
            field: field.to_string(),
            value: value.to_string(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: exactly one spelling per number, and nothing above i64::MAX.
    #[test]
    fn canonical_spelling_and_range() {
        let good = [
            ("0", 0),
            ("5001", 5001),
            ("9223372036854775807", EDGE_INTEGER_MAX),
        ];
        for (text, value) in good {
            assert_eq!(parse_canonical("stream", text), Ok(value), "{text}");
        }
        let not_canonical = [
            "", "+5001", "05001", "00", " 5001", "5001 ", "5_001", "-1", "0x10", "1e3", "５",
        ];
        for text in not_canonical {
            let error = parse_canonical("stream", text).expect_err(text);
            assert!(
                matches!(error, NumberError::NotCanonical { .. }),
                "{text}: {error}"
            );
            assert!(error.to_string().starts_with("stream: "), "{error}");
        }
        let too_large = [
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
        ];
        for text in too_large {
            let error = parse_canonical("offset", text).expect_err(text);
            assert!(
                matches!(error, NumberError::TooLarge { .. }),
                "{text}: {error}"
            );
            assert!(error.to_string().contains("offset"), "{error}");
        }
        assert_eq!(check("from", EDGE_INTEGER_MAX), Ok(EDGE_INTEGER_MAX));
        assert!(check("from", EDGE_INTEGER_MAX + 1).is_err());
    }
}
