//! meshserver: a Matrix homeserver small enough to run on every device.
//!
//! Data flows one way: client (or, later, peer) → validation → room state machine
//! ([`room`]) → storage ([`storage`]) → notifier ([`notifier`]) → `/sync`.
//! ARCHITECTURE.md draws the map.

pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod identity;
pub mod netem;
pub mod node;
pub mod notifier;
pub mod p2p;
pub mod password;
pub mod pdu;
pub mod room;
pub mod services;
pub mod storage;
#[cfg(test)]
pub(crate) mod testkit;
pub mod typing;

pub use error::{Error, Result};
