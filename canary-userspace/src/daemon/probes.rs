//! The health-probe driver: (re)spawns the probe tasks and the external
//! metric pollers for the running config, and turns a probe verdict into a
//! data-plane change (the backend leaves or rejoins its pool) and, when no
//! canary backend is left, a rollback.

use super::*;

impl Daemon {
    /// Starts the health probes; their verdict changes come back through
    /// `tx` to `health_changed`. Restarted on every reload.
    pub fn start_probes(&mut self, tx: UnboundedSender<Transition>) {
        self.probe_tx = Some(tx);
        self.respawn_probes();
    }

    pub(super) fn respawn_probes(&mut self) {
        let Some(tx) = self.probe_tx.clone() else {
            return;
        };
        // Forget backends (or whole services) that are gone or unprobed.
        let probed: std::collections::HashSet<(String, IpAddr)> = self
            .running
            .services
            .iter()
            .filter(|s| s.health.is_some())
            .flat_map(|s| {
                s.stable
                    .iter()
                    .chain(&s.canary)
                    .map(move |b| (s.name.clone(), *b))
            })
            .collect();
        self.health.retain(|k, _| probed.contains(k));
        let forgot = self
            .dp
            .retain_health(|s, a| probed.contains(&(s.to_string(), a)));
        if forgot {
            // A backend no longer probed (or no longer configured) must not
            // stay out of its pool.
            let running = self.running.clone();
            match self.dp.apply(&running) {
                Ok(report) => report.lines.iter().for_each(|l| info!("{l}")),
                Err(e) => error!("returning unprobed backends to their pools: {e:#}"),
            }
        }
        let known = self
            .health
            .iter()
            .map(|(k, h)| (k.clone(), h.healthy))
            .collect();
        self.probes = None;
        self.probe_epoch += 1;
        self.probes = Some(crate::rollout::health::spawn(
            &self.running,
            &known,
            tx,
            self.probe_epoch,
        ));
        // A rollout under way is judged by the analysis it started with
        // (a reload changes only the next one): its metrics are polled
        // from that, or a renamed metric would hold its step for ever.
        let mut polled = self.running.clone();
        for svc in &mut polled.services {
            let frozen = self
                .state
                .rollouts
                .get(&svc.name)
                .filter(|r| r.active())
                .and_then(|r| r.analysis.clone());
            if let (Some(a), Some(plan)) = (frozen, svc.rollout.as_mut()) {
                plan.analysis = a;
            }
        }
        self.pollers = None;
        self.pollers = Some(crate::rollout::external::spawn(
            &polled,
            self.readings.clone(),
        ));
    }

    /// A probe verdict changed: the backend leaves or rejoins its pool's
    /// Maglev table, and a canary pool with no healthy backend left rolls
    /// the canary back.
    pub fn health_changed(&mut self, t: Transition) {
        if t.epoch != self.probe_epoch {
            return; // from a probe set a reload replaced
        }
        let key = (t.service.clone(), t.addr);
        let Some(svc) = self
            .running
            .services
            .iter()
            .find(|s| s.name == t.service)
            .cloned()
        else {
            return;
        };
        if !svc.pool(t.version).contains(&t.addr) {
            return; // a verdict from before a reload removed the backend
        }
        self.health.insert(
            key,
            BackendHealth {
                healthy: t.healthy,
                detail: t.detail.clone(),
            },
        );
        if self.fleet.is_none() {
            // In a fleet the data plane takes the fleet's verdict instead
            // (`fleet_apply_health`).
            self.dp.set_backend_health(&t.service, t.addr, t.healthy);
        }
        let line = format!(
            "service {}: {} backend {} is {} ({}){}",
            t.service,
            t.version.name(),
            t.addr,
            if t.healthy {
                "healthy again"
            } else {
                "unhealthy"
            },
            t.detail,
            if self.fleet.is_some() {
                " in this host's probes"
            } else {
                ""
            }
        );
        if t.healthy {
            info!("{line}");
        } else {
            warn!("{line}");
        }
        self.events.push(&t.service, EventKind::Health, line);
        if self.fleet.is_some() {
            // In a fleet this is one host's view: it goes into this host's
            // report, and the leader's majority verdict (from etcd) is what
            // changes the pools, alike on every host.
            return;
        }
        let running = self.running.clone();
        match self.dp.apply(&running) {
            Ok(report) => report.lines.iter().for_each(|l| info!("{l}")),
            Err(e) => error!("applying the health change: {e:#}"),
        }
        if !t.healthy && self.canary_down_while_exposed(&svc) {
            let why = format!(
                "no healthy canary backend: {} failed its probes ({})",
                t.addr, t.detail
            );
            self.roll_back_by_policy(&svc.name, why);
        }
    }

    /// Whether `svc`'s whole canary pool is unhealthy while the canary
    /// takes traffic or a rollout is active: what rolls the canary back.
    pub(super) fn canary_down_while_exposed(&self, svc: &crate::config::ServiceConfig) -> bool {
        !svc.canary.is_empty()
            && svc
                .canary
                .iter()
                .all(|b| self.dp.is_unhealthy(&svc.name, *b))
            && (svc.weight_bp() > 0
                || self
                    .state
                    .rollouts
                    .get(&svc.name)
                    .is_some_and(|r| r.active()))
    }

    /// A rollback, resetting open canary connections when the plan's
    /// `on_rollback` says `reset`.
    pub(super) fn roll_back_by_policy(&mut self, service: &str, why: String) {
        let reset = self.on_rollback(service) == Some(OnRollback::Reset);
        self.rollback_now(service, why, reset);
    }
}
