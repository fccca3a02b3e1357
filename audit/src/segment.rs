//! segment (in progress).
