//! Reloading the config file: read and checked whole, then applied through
//! the data plane (`Daemon::commit`); a bad file changes nothing.

use super::*;

impl Daemon {
    /// Re-reads the config file. The whole file is validated first; a bad
    /// file changes nothing.
    pub fn reload(&mut self, who: &str) -> OpResult<Vec<String>> {
        let file = read_config(self.config_path.as_deref())
            .map_err(|e| OpError::new(Refusal::Conflict, format!("{e:#}")))?;
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
        let mut state = self.state.clone();
        let effective = state.effective(&file);
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
