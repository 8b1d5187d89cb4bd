//! Reloading the config file: read, parsed and checked whole off the
//! daemon's lock and off its runtime thread, then applied through the data
//! plane (`Daemon::commit`) under the lock; a bad file changes nothing.

use super::*;
use std::sync::Mutex;

/// The longest a reload waits for its file to be read and parsed.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reloads run one at a time: the file read last is the one applied last.
static ONE_RELOAD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A reload as SIGHUP and the API run it. Reading and parsing a file
/// (bounded by `config::MAX_CONFIG_BYTES` and `MAX_NESTING`, but still up
/// to seconds for a large one) happens on a blocking thread without the
/// lock, so status, the rollout engine, the probes and the metrics keep
/// their cadence; only the apply takes the lock.
pub async fn reload(daemon: &Arc<Mutex<Daemon>>, who: &str) -> OpResult<Vec<String>> {
    let _turn = ONE_RELOAD_AT_A_TIME.lock().await;
    let path = lock(daemon).config_path.clone();
    let source = config_source(path.as_deref());
    let read = tokio::task::spawn_blocking(move || read_config(path.as_deref()));
    // A file system that does not answer (a stuck mount) must not hold
    // every later reload: give up on it (its thread finishes on its own).
    let file = tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| {
            OpError::new(
                Refusal::Conflict,
                format!(
                    "{source}: not read within {}s (is its file system stuck?)",
                    READ_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|e| OpError::new(Refusal::Internal, format!("reading {source}: {e}")))?
        .map_err(|e| OpError::new(Refusal::Conflict, format!("{e:#}")))?;
    let mut daemon = lock(daemon);
    daemon.reload_file(file, who)
}

impl Daemon {
    /// Applies a config file read again (`reload`). The whole file has been
    /// validated; what cannot change at run time is refused here, and a
    /// refused file changes nothing.
    pub fn reload_file(&mut self, file: Config, who: &str) -> OpResult<Vec<String>> {
        for (field, same) in [
            (
                "control_socket",
                file.control_socket == self.file.control_socket,
            ),
            ("metrics", file.metrics == self.file.metrics),
            ("state_dir", file.state_dir == self.file.state_dir),
            (
                "flow_table.size",
                file.flow_table_entries() == self.file.flow_table_entries(),
            ),
            (
                "limits.services",
                file.limits.services == self.file.limits.services,
            ),
            ("fleet", file.fleet == self.file.fleet),
        ] {
            if !same {
                return Err(OpError::new(
                    Refusal::Conflict,
                    format!("{field}: changing it needs a restart of canaryd"),
                ));
            }
        }
        let host = crate::dataplane::host_addresses()
            .map_err(|e| OpError::new(Refusal::Internal, format!("{e:#}")))?;
        file.check_backends_not_on_host(&host).map_err(|e| {
            OpError::new(
                Refusal::Conflict,
                format!("{}: {e:#}", config_source(self.config_path.as_deref())),
            )
        })?;
        let mut state = self.state.clone();
        let effective = super::effective_here(&mut state, &self.state_path, &file, &host);
        let before = self.weights();
        let mut lines = effective.dropped;
        lines.extend(self.commit(effective.config, state)?);
        self.file = file;
        for l in &lines {
            info!("reload ({who}): {l}");
        }
        self.forget_gone_services();
        self.respawn_probes();
        for s in &self.running.services {
            let Some((_, from)) = before.iter().find(|(n, _)| *n == s.name) else {
                continue;
            };
            let to = s.weight();
            if *from != to {
                let line = format!(
                    "service {}: canary weight {from} -> {to} (reload by {who})",
                    s.name
                );
                info!("{line}");
                self.events
                    .push_weight(&s.name, who, from.percent(), to.percent(), line);
            }
        }
        let names: Vec<&str> = self
            .running
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let added: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !before.iter().any(|(b, _)| b == n))
            .collect();
        let removed: Vec<&str> = before
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !names.contains(n))
            .collect();
        let mut msg = format!("config reloaded by {who}: services {names:?}");
        if !added.is_empty() {
            msg += &format!(", added {added:?}");
        }
        if !removed.is_empty() {
            msg += &format!(", removed {removed:?}");
        }
        self.events.push_by("*", EventKind::Reload, who, msg);
        Ok(lines)
    }
}
