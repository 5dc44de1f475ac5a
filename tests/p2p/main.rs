//! Nodes federating over real libp2p/QUIC on loopback, each with its own SQLite file.

#[path = "../client_api/common.rs"]
mod common;
mod net;

mod discovery;
mod e2ee;
mod replication;
mod join;
mod outbox;
mod convergence;
