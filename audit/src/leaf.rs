//! leaf (in progress).
