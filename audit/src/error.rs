//! The one decode error type of this crate: every decoder says what format it
//! was reading, where in the input it stopped, and why.

use std::fmt;

/// Where in an input a decoder found a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A byte offset from the start of the decoded input (or file).
    Byte(u64),
    /// A 1-based line number of a text format.
    Line(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Byte(offset) => write!(f, "byte {offset}"),
            Location::Line(line) => write!(f, "line {line}"),
        }
    }
}

/// A typed decode failure with its location. Never used for I/O errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format}: {reason} at {location}")]
pub struct DecodeError {
    /// The format being decoded, e.g. `"op header"`, `"checkpoint"`.
    pub format: &'static str,
    /// Where the decoder stopped.
    pub location: Location,
    /// What was wrong, lowercase, e.g. `"bad magic"`.
    pub reason: String,
}

impl DecodeError {
    /// A failure at a byte offset.
    pub fn at_byte(format: &'static str, offset: u64, reason: impl Into<String>) -> Self {
        Self {
            format,
            location: Location::Byte(offset),
            reason: reason.into(),
        }
    }

    /// A failure at a 1-based line of a text format.
    pub fn at_line(format: &'static str, line: usize, reason: impl Into<String>) -> Self {
        Self {
            format,
            location: Location::Line(line),
            reason: reason.into(),
        }
    }
}
