//! The core operations behind the control API: set a weight, add or
//! remove a backend, explain a client (reload: `reload.rs`). Each builds the next
//! running config, applies it whole through the data plane and records the
//! run-time change in the state file (`Daemon::commit`).

use super::*;

impl Daemon {
    /// The weight the config file gives a service, in basis points (a
    /// run-time weight override records it, to lapse when the file changes).
    pub(super) fn file_weight_bp(&self, service: &str) -> u32 {
        self.file
            .services
            .iter()
            .find(|s| s.name == service)
            .map(|s| s.weight_bp())
            .unwrap_or(0)
    }

    /// A weight an operator sets (set-weight, rollback, promote). It stops a
    /// rollout under way: the engine would otherwise overwrite it at its next
    /// step (a manual rollback in the middle of a rollout must stick).
    pub fn operator_weight(
        &mut self,
        service: &str,
        weight: WeightBp,
        who: &str,
    ) -> OpResult<Vec<String>> {
        let from = self
            .service_index(service)
            .map(|i| self.running.services[i].weight())?;
        if weight > WeightBp::ZERO {
            self.fleet_guard(&format!("setting a canary weight of {weight}"))?;
        }
        let mut lines = self.set_weight(service, weight, who)?;
        self.events.push_weight(
            service,
            who,
            from.percent(),
            weight.percent(),
            format!("service {service}: canary weight {from} -> {weight} ({who})"),
        );
        if let Some(r) = self.state.rollouts.get_mut(service).filter(|r| r.active()) {
            let why = format!(
                "stopped at step {}/{}: {who} set the weight to {weight}",
                r.step + 1,
                r.steps.len(),
            );
            r.abort(why.clone());
            if weight == WeightBp::ZERO {
                *self.state.rollbacks.entry(service.to_string()).or_default() += 1;
            }
            // The weight is live; a failed save is said once (set_weight
            // already said it if its own save failed).
            let noted = self.unsaved.is_some();
            if self.save_state().is_some() && !noted {
                lines.extend(self.unsaved_note());
            }
            let line = format!("service {service}: rollout {why}");
            warn!("{line}");
            self.events.push(service, EventKind::Rollout, line.clone());
            lines.push(line);
        }
        Ok(lines)
    }

    /// Drops what the daemon keeps per service name for services the
    /// running config no longer has, so one removed and added again starts
    /// afresh (no old timeout counts, step clocks, counter baselines,
    /// pending rollbacks or external readings). Probe verdicts are pruned
    /// by `respawn_probes`. The destructuring names every field of `Daemon`
    /// on purpose: a new field does not compile until it is decided here
    /// whether it is kept per service.
    pub(super) fn forget_gone_services(&mut self) {
        let Daemon {
            // Not keyed by service name.
            dp: _,
            instance: _,
            config_path: _,
            file: _,
            running,
            // Pruned by `RuntimeState::effective` on every reload.
            state: _,
            state_path: _,
            // Whole snapshots of the data plane, replaced every second;
            // status matches them by name and saturates counter resets.
            prev: _,
            last: _,
            events: _,
            // Pruned by `respawn_probes` (per configured backend).
            health: _,
            probes: _,
            probe_tx: _,
            probe_epoch: _,
            readings,
            pollers: _,
            timeouts,
            tick_prev,
            pending_rollbacks,
            step_began,
            recent,
            last_tick: _,
            last_expiry: _,
            unsaved: _,
            // Host-wide, not per service.
            sweeper: _,
            flood: _,
            bad_checksums: _,
            failing,
            local_addrs_at: _,
            // Its caches are keyed by etcd's documents (removed there).
            fleet: _,
        } = self;
        let known: std::collections::HashSet<&str> =
            running.services.iter().map(|s| s.name.as_str()).collect();
        timeouts.retain(|(name, _), _| known.contains(name.as_str()));
        tick_prev.retain(|name, _| known.contains(name.as_str()));
        step_began.retain(|name, _| known.contains(name.as_str()));
        failing.retain(|name| known.contains(name));
        pending_rollbacks.retain(|name| known.contains(name.as_str()));
        for (_, counts) in recent.iter_mut() {
            counts.retain(|name, _| known.contains(name.as_str()));
        }
        readings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| known.contains(name.as_str()));
    }

    /// Sets a service's canary weight on behalf of `who`; cohorts go off
    /// (every client follows `weight`).
    pub fn set_weight(
        &mut self,
        service: &str,
        weight: WeightBp,
        who: &str,
    ) -> OpResult<Vec<String>> {
        self.set_weights(service, weight, None, who)
    }

    /// Sets the canary weight and the cohorts' weights by name (`None`:
    /// cohorts off) in one commit: a rollout step.
    pub fn set_weights(
        &mut self,
        service: &str,
        weight: WeightBp,
        cohorts: Option<std::collections::BTreeMap<String, u32>>,
        who: &str,
    ) -> OpResult<Vec<String>> {
        let i = self.service_index(service)?;
        let old = self.running.services[i].weight();
        if weight > WeightBp::ZERO && self.running.services[i].canary.is_empty() {
            return Err(OpError::new(
                Refusal::Conflict,
                format!("service {service}: the canary pool is empty, the weight can only be 0"),
            ));
        }
        let mut next = self.running.clone();
        next.services[i].set_weight(weight);
        next.services[i].set_cohort_weights(cohorts.as_ref());
        let mut state = self.state.clone();
        let file_bp = self.file_weight_bp(service);
        state
            .services
            .entry(service.to_string())
            .or_default()
            .weight = Some(WeightOverride {
            weight_bp: weight.bp(),
            source: who.to_string(),
            file_weight_bp: file_bp,
            cohorts,
        });
        self.commit(next, state)?;
        // Whatever set the weight last is in force now.
        self.pending_rollbacks.remove(service);
        let line = format!("service {service}: canary weight {old} -> {weight} ({who})");
        info!("{line}");
        Ok(std::iter::once(line).chain(self.unsaved_note()).collect())
    }

    /// Adds or removes a backend of one pool, through the Maglev
    /// two-generation swap.
    pub fn change_backend(
        &mut self,
        service: &str,
        pool: Version,
        addr: IpAddr,
        add: bool,
        who: &str,
    ) -> OpResult<Vec<String>> {
        let i = self.service_index(service)?;
        self.fleet_guard("changing a pool")?;
        let mut next = self.running.clone();
        let s = &mut next.services[i];
        let list = match pool {
            Version::Stable => &mut s.stable,
            Version::Canary => &mut s.canary,
        };
        if add {
            if list.contains(&addr) {
                return Err(OpError::new(
                    Refusal::Conflict,
                    format!("{addr} is already in the {} pool of {service}", pool.name()),
                ));
            }
            // An address that can never be a backend of this service is a
            // bad request (400), named as the request (not a config field:
            // the file has no such entry); `Config::validate` below would
            // refuse it too, as a conflict.
            let field = format!("backends add {service} {}", pool.name());
            let vip = self.running.services[i].vip;
            let host = crate::dataplane::host_addresses()?;
            if let Some(rule) = self.running.backend_rule(addr, vip, &host) {
                return Err(OpError::new(Refusal::BadRequest, rule.error(&field, addr)));
            }
            list.push(addr);
        } else {
            let before = list.len();
            list.retain(|a| *a != addr);
            if list.len() == before {
                return Err(OpError::new(
                    Refusal::NotFound,
                    format!("{addr} is not in the {} pool of {service}", pool.name()),
                ));
            }
        }
        let new_pool = list.clone();
        let request = format!(
            "backends {} {service} {} {addr}",
            if add { "add" } else { "remove" },
            pool.name()
        );
        next.validate().map_err(|e| {
            OpError::new(
                Refusal::Conflict,
                format!("{request}: the pools it would make are invalid: {e:#}"),
            )
        })?;
        let file_pool = self
            .file
            .services
            .iter()
            .find(|f| f.name == service)
            .map(|f| f.pool(pool).to_vec())
            .unwrap_or_default();
        let mut state = self.state.clone();
        let o = state.services.entry(service.to_string()).or_default();
        let slot = match pool {
            Version::Stable => &mut o.stable,
            Version::Canary => &mut o.canary,
        };
        *slot = Some(PoolOverride {
            pool: new_pool,
            file_pool,
        });
        let mut lines = self.commit(next, state)?;
        // Probe the new pool (a new backend from now on, a removed one no more).
        self.respawn_probes();
        let line = format!(
            "service {service}: {} backend {addr} {} ({who})",
            pool.name(),
            if add { "added" } else { "removed" }
        );
        info!("{line}");
        self.events
            .push_by(service, EventKind::Backend, who, line.clone());
        lines.insert(0, line);
        Ok(lines)
    }

    pub fn explain(&self, service: &str, client: &str) -> OpResult<Explain> {
        let i = self.service_index(service)?;
        let s = &self.running.services[i];
        let (ip, port) = crate::dataplane::explain::parse_client(client)
            .map_err(|e| OpError::new(Refusal::BadRequest, format!("{e:#}")))?;
        let sid = self
            .dp
            .service_id(service)
            .ok_or_else(|| OpError::new(Refusal::Internal, "service has no id"))?;
        self.dp
            .explain(sid, s, ip, port)
            .map_err(|e| OpError::new(Refusal::BadRequest, format!("{e:#}")))
    }
}

/// An API percent as a weight, with the API's error kind.
pub fn weight_from_percent(percent: f64) -> OpResult<WeightBp> {
    WeightBp::from_percent(percent)
        .map_err(|e| OpError::new(Refusal::BadRequest, format!("weight {e}")))
}
