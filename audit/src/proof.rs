//! proof (in progress).
