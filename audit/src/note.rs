//! note (in progress).
