//! canaryd as a system service: what it tells its service manager
//! (systemd's `Type=notify`: READY=1 once the data plane is attached,
//! RELOADING=1 ... READY=1 around a reload, STOPPING=1) and the config
//! check an operator runs before a start (`canaryd --check`).

use crate::daemon::read_config;
use anyhow::{Context, Result};
use std::path::Path;

pub use sd_notify::NotifyState;

/// Tells the service manager about a state change. Nothing happens when
/// NOTIFY_SOCKET is unset (not under systemd); a failed send is logged,
/// never fatal.
pub fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("sd_notify: {e}");
    }
}

/// RELOADING=1 with the time it began (systemd wants both).
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// `canaryd --check`: the config (`path`, or the built-in one) read and
/// validated as a start would, against this host: its interfaces exist
/// and are not loopback ones, no backend is one of its addresses. Touches
/// nothing. The summary, with a line per interface a start would warn of.
pub fn check_config(path: Option<&Path>) -> Result<String> {
    let file = read_config(path)?;
    let source = match path {
        Some(p) => p.display().to_string(),
        None => "the built-in config".to_string(),
    };
    let warnings = crate::dataplane::check_config_on_host(&file)
        .with_context(|| format!("config {source}"))?;
    let mut out = format!(
        "canaryd: {source} is valid: {} service(s) on {}",
        file.services.len(),
        file.interfaces().join(", ")
    );
    for w in warnings {
        out.push_str(&format!("\ncanaryd: warning: {w}"));
    }
    Ok(out)
}
