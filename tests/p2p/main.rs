//! Nodes federating over real libp2p/QUIC on loopback, each with its own SQLite file.

#[path = "../client_api/common.rs"]
mod common;
mod net;

mod anti_entropy;
mod convergence;
mod discovery;
mod e2ee;
mod join;
mod mailbox;
mod outbox;
mod replication;
