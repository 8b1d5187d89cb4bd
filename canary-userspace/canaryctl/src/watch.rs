//! `canaryctl status --watch`: the status again every second until
//! interrupted. (A terminal UI replaces the reprinted text when stdout is
//! a terminal; plain text otherwise.)

use anyhow::Result;
use canary_control::client::Client;
use std::time::Duration;

use crate::render;
use crate::{out, outln};

pub async fn run(
    client: &Client,
    service: Option<&str>,
    host: Option<&str>,
    json: bool,
) -> Result<()> {
    loop {
        let status = client.status().await?;
        if let Some(name) = host {
            let h = render::fleet_host(&status, name)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                out!("{}", render::render_fleet_host(&h));
            }
        } else {
            let shown = render::select(status, service)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                // Clear the screen, as `watch` does.
                out!("\x1b[H\x1b[2J");
                out!("{}", render::render_status(&shown, service.is_none()));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
