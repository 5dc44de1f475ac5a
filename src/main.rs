//! The `meshserver` command line: run a node, print its identity, manage users offline.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshserver::config::{Config, Settings};
use meshserver::node::Node;

#[derive(Parser)]
#[command(name = "meshserver", version, about = "A Matrix homeserver for every device")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Run {
        #[command(flatten)]
        settings: Settings,
        /// TOML config file.
        #[arg(long, env = "MESHSERVER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the node's server name and data dir.
    Info {
        #[command(flatten)]
        settings: Settings,
        #[arg(long, env = "MESHSERVER_CONFIG")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Manage users offline (the node need not run).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user.
    Add {
        /// Localpart of the new user.
        name: String,
        /// Read the password from this file (first line); otherwise from stdin.
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
        #[arg(long, env = "MESHSERVER_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,ruma_state_res=warn,libp2p_kad=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Run { settings, config } => run(Config::resolve(settings, config.as_deref())?).await,
            Command::Info {
                settings,
                config,
                json,
            } => meshserver::cli::info(Config::resolve(settings, config.as_deref())?, json),
            Command::User {
                command:
                    UserCommand::Add {
                        name,
                        password_file,
                        settings,
                        config,
                    },
            } => {
                let password = match password_file {
                    Some(f) => {
                        std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
                    }
                    None => {
                        let mut line = String::new();
                        std::io::stdin().read_line(&mut line)?;
                        line
                    }
                };
                let password = password.lines().next().unwrap_or("").to_owned();
                meshserver::cli::user_add(Config::resolve(settings, config.as_deref())?, &name, password)
                    .await
            }
        }
    })
}

async fn run(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Install the handlers before announcing the node: a supervisor that reads the banner
    // and signals at once must get a clean shutdown, not the default kill.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let node = Node::start(config).await?;
    println!(
        "meshserver {} listening on {}",
        node.services.server_name(),
        node.client_url()
    );
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    node.stop().await;
    Ok(())
}
