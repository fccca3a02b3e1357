//! The Rust client of the HTTP API. (in progress)
