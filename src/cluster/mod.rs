//! Cluster configuration and local clusters: the file `vellum start --config`
//! reads (`config`), creating the data directories, keys, policy, TLS
//! material and tokens of a local dev cluster (`setup`), and running replica
//! processes for `vellum dev`, `vellum demo` and the integration tests
//! (`supervisor`), and a replica's kept secrets with the replacement of a
//! replica whose disk is lost (`secrets`).
//!
//! This module holds no protocol logic: it only prepares what a replica
//! process needs to start, and starts, pauses and stops those processes.

mod config;
mod secrets;
mod setup;
mod supervisor;

#[cfg(test)]
mod tests;

pub use config::{
    CONFIG_BYTES_MAX, ClusterConfig, ConfigError, ConfigFile, ReplicaFile, ReplicaPeer, TlsPaths,
};
pub use secrets::{
    REPLACED_CONFIG_FILE, ReplicaSecrets, SECRETS_FILE_BYTES_MAX, SECRETS_HEADER, SecretsError,
    SecretsSummary, decode_secrets, export_secrets, read_secrets, replace_replica,
};
pub use setup::{
    API_PORT_OFFSET, DEV_AUDITOR, DEV_WRITER, DevCluster, KekSource, ReplicaInit, SetupError,
    TOKEN_BYTES, TOKEN_PREFIX, add_dev_cosigner, create_dev_cluster, create_dev_cluster_with_kek,
    create_replica_signing_key, generate_token, init_cluster_replica, open_or_create_dev_cluster,
    random_cluster_id, replica_key_name, token_line,
};
pub use supervisor::{
    EXIT_POLL_MS, ReplicaProcess, SPAWN_RETRIES_MAX, STOP_GRACE_MS_DEFAULT, Supervisor,
    SupervisorError,
};
