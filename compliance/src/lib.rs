//! Vellum compliance exports (in progress: grows with the compliance issue).
#![forbid(unsafe_code)]
