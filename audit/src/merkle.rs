//! merkle (in progress).
