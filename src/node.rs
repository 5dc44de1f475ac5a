//! Starting and stopping a node: open the data dir, wire the services, serve the
//! Client-Server API. Tests start nodes in-process through the same path as `meshserver run`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::api;
use crate::config::Config;
use crate::identity::Identity;
use crate::notifier::Notifier;
use crate::password::Passwords;
use crate::services::{AppState, Services};
use crate::storage::Db;

pub struct Node {
    pub services: AppState,
    pub client_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

/// Opens the data dir (creating key and database on first start) without serving. The
/// receiver is the swarm task's end of the peer network's command channel.
pub fn open_services(config: Config) -> anyhow::Result<(Services, mpsc::Receiver<crate::p2p::Command>)> {
    open_services_with(config, Passwords::start()?)
}

/// [`open_services`] with a password-hashing thread shared with other nodes of the process:
/// a simulation of a thousand nodes needs one such thread, not a thousand.
pub fn open_services_with(
    config: Config,
    passwords: Passwords,
) -> anyhow::Result<(Services, mpsc::Receiver<crate::p2p::Command>)> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let identity = Identity::load_or_create(&config.data_dir)?;
    // Half-written uploads from a crash are never referenced: clear them.
    let _ = std::fs::remove_dir_all(config.data_dir.join("media").join("tmp"));
    let db = Db::open(&config.data_dir, config.sqlite_full_sync, Notifier::default())?;
    let peer_id = crate::p2p::peer_id::keypair(&identity).public().to_peer_id();
    let (p2p, commands) = crate::p2p::P2p::channel(peer_id);
    let services = Services {
        typing: Arc::new(crate::typing::Typing::new(db.notifier().clone())),
        rate_limiter: api::ratelimit::RateLimiter::default(),
        passwords,
        config,
        identity,
        db,
        p2p,
        started: Instant::now(),
    };
    Ok((services, commands))
}

impl Node {
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        Self::start_with(config, Passwords::start()?).await
    }

    /// [`Node::start`] with a password-hashing thread shared with the process's other nodes.
    pub async fn start_with(config: Config, passwords: Passwords) -> anyhow::Result<Node> {
        let mut config = config;
        let listen = config.client_listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding client API on {listen}"))?;
        let client_addr = listener.local_addr()?;
        // Advertise the address actually bound (port 0 means "any free port").
        config.client_listen = client_addr;
        let (services, commands) = open_services_with(config, passwords)?;
        let services = Arc::new(services);
        let swarm = crate::p2p::swarm::spawn(services.clone(), commands).await?;
        let app = api::router(services.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "client API server failed");
            }
        });
        let background = vec![
            swarm,
            tokio::spawn(crate::typing::run_expiry(services.typing.clone())),
            tokio::spawn(services.db.clone().run_checkpoints()),
            tokio::spawn(crate::p2p::replicate::run_publisher(services.clone())),
            tokio::spawn(crate::p2p::outbox::run(services.clone())),
            tokio::spawn(crate::p2p::mailbox::run(services.clone())),
            tokio::spawn(crate::p2p::reconcile::run(services.clone())),
            tokio::spawn(crate::p2p::replicate::neighbours::run(services.clone())),
        ];
        tracing::info!(server_name = %services.server_name(), %client_addr, "node started");
        Ok(Node {
            services,
            client_addr,
            shutdown: Some(tx),
            task,
            background,
        })
    }

    pub fn client_url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    /// Stops serving: in-flight requests get a second to finish.
    pub async fn stop(mut self) {
        for t in &self.background {
            t.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Long-polls may hold the graceful shutdown for their whole timeout; cut them off.
        if tokio::time::timeout(std::time::Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }

    /// Runs until the task ends (Ctrl-C handling is the caller's).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}
