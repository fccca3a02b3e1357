//! Cluster configuration and local dev clusters. (in progress)
