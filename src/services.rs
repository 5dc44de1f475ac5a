//! The services a running node passes to every handler (axum `State`): no globals.

use std::sync::Arc;
use std::time::Instant;

use crate::api::ratelimit::RateLimiter;
use crate::config::Config;
use crate::identity::Identity;
use crate::storage::Db;
use crate::typing::Typing;

pub struct Services {
    pub config: Config,
    pub identity: Identity,
    pub db: Db,
    pub typing: Arc<Typing>,
    pub rate_limiter: RateLimiter,
    pub passwords: crate::password::Passwords,
    /// The peer network (a handle to the swarm task).
    pub p2p: crate::p2p::P2p,
    pub started: Instant,
}

pub type AppState = Arc<Services>;

impl Services {
    pub fn server_name(&self) -> &ruma::ServerName {
        self.identity.server_name()
    }
}
