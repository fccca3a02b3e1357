//! Replica-to-replica networking: framed binary messages over mutual TLS. (in progress)
