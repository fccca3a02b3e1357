//! The client API server (HTTP/JSON over TLS). (in progress)

pub mod node;
