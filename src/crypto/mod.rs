//! crypto (in progress).
