//! The offline subcommands: `meshserver info` and `meshserver user add`.

use std::sync::Arc;

use crate::config::Config;
use crate::node::open_services;

pub fn info(config: Config, json: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let identity = crate::identity::Identity::load_or_create(&config.data_dir)?;
    let client_url = format!("http://{}", config.client_listen);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "server_name": identity.server_name(),
                "data_dir": config.data_dir,
                "client_url": client_url,
                "key_id": identity.key_id(),
            })
        );
    } else {
        println!("server_name: {}", identity.server_name());
        println!("data_dir:    {}", config.data_dir.display());
        println!("client_url:  {client_url}");
    }
    Ok(())
}

pub async fn user_add(config: Config, name: &str, password: String) -> anyhow::Result<()> {
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    let services = Arc::new(open_services(config)?.0);
    let user_id = crate::api::account::user_id_for(&services, name).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::api::account::create_user(&services, &user_id, Some(password))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{user_id}");
    Ok(())
}
