//! `canaryctl rollout finish SERVICE` (and `promote --finalize`): the end
//! of a release. The canary pool becomes the stable pool, the canary pool is
//! emptied and the weight goes to 0, in one apply. Open connections keep
//! their backends: a former canary keeps its id (ids are per address), so
//! its flow entries still resolve; a former stable backend is *draining*: it
//! keeps its id, its BACKENDS and REVERSE_NAT entries (replies are still
//! NATed) but no Maglev slot. A drain lasts the longest idle timeout and is
//! extended while the flow table still names the backend.
//!
//! Persisted as ordinary run-time overrides (weight, both pools, the drain
//! list): the state file and, in a fleet, the service's etcd document.

use super::*;
use crate::config::ServiceConfig;
use state::{Drain, ServiceOverrides};
use std::collections::BTreeMap;

/// How long a drain of a `protocol` service lasts, and each extension: the
/// longest idle timeout of its connections, after which the data path
/// itself forgets an idle one.
pub(super) fn drain_period(c: &Config, protocol: Protocol) -> Duration {
    let t = &c.flow_table.timeouts;
    match protocol {
        Protocol::Tcp => t.tcp_established,
        Protocol::Udp => t.udp_replied.max(t.udp),
    }
}

/// The overrides a finish of `running` leaves (`file`: the config file's
/// service, which the overrides remember so they lapse when it changes).
/// Earlier drains stay, unless their address is back in a pool; the old
/// stable backends that are not in the new stable pool start draining.
pub(super) fn finished_overrides(
    before: Option<&ServiceOverrides>,
    running: &ServiceConfig,
    file: &ServiceConfig,
    who: &str,
    now_ms: u64,
    period: Duration,
) -> ServiceOverrides {
    let mut o = before.cloned().unwrap_or_default();
    let stable = running.canary.clone();
    o.weight = Some(WeightOverride {
        weight_bp: 0,
        source: format!("rollout finish ({who})"),
        file_weight_bp: file.weight_bp(),
        ..Default::default()
    });
    o.stable = Some(PoolOverride {
        pool: stable.clone(),
        file_pool: file.stable.clone(),
    });
    o.canary = Some(PoolOverride {
        pool: Vec::new(),
        file_pool: file.canary.clone(),
    });
    let until_ms = now_ms + period.as_millis() as u64;
    let mut drains: Vec<Drain> = o
        .draining
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| !stable.contains(&d.addr))
        .collect();
    for a in running.stable.iter().filter(|a| !stable.contains(a)) {
        match drains.iter_mut().find(|d| d.addr == *a) {
            Some(d) => d.until_ms = d.until_ms.max(until_ms),
            None => drains.push(Drain { addr: *a, until_ms }),
        }
    }
    o.draining = (!drains.is_empty()).then_some(drains);
    o
}

/// Fits the run-time drain lists to `config` (called by
/// `RuntimeState::effective`, so at start, reload and fleet apply) and
/// copies them into each service's `draining`. A drain whose address is
/// back in its service's pools ends quietly; one whose address and port
/// another service now uses as a backend is dropped (one reverse NAT entry
/// per backend address and port), with a line for the log.
pub(super) fn settle_drains(
    overrides: &mut BTreeMap<String, ServiceOverrides>,
    config: &mut Config,
) -> Vec<String> {
    let mut owners: HashMap<(IpAddr, u16, Protocol), String> = HashMap::new();
    for s in &config.services {
        for b in s.stable.iter().chain(&s.canary) {
            owners.insert((*b, s.port, s.protocol), s.name.clone());
        }
    }
    let mut lines = Vec::new();
    for s in config.services.iter_mut() {
        s.draining.clear();
        let Some(list) = overrides.get_mut(&s.name).and_then(|o| o.draining.as_mut()) else {
            continue;
        };
        list.retain(|d| {
            if s.stable.contains(&d.addr) || s.canary.contains(&d.addr) {
                return false;
            }
            match owners.get(&(d.addr, s.port, s.protocol)) {
                Some(other) if *other != s.name => {
                    lines.push(format!(
                        "service {}: drain of {} dropped: {}:{} is now a backend of service \
                         {other} (its open connections here lose their reply NAT)",
                        s.name, d.addr, d.addr, s.port
                    ));
                    false
                }
                _ => true,
            }
        });
        s.draining = list.iter().map(|d| d.addr).collect();
        if list.is_empty() {
            if let Some(o) = overrides.get_mut(&s.name) {
                o.draining = None;
            }
        }
    }
    lines
}

/// What an expiry check does with one drain past its end.
#[derive(Debug, PartialEq)]
pub(super) enum DrainFate {
    /// Flow entries still name it (or nobody has counted yet): extended.
    Extend,
    /// Ended.
    End,
}

/// A draining backend's key in the hosts' reports.
pub(super) fn drain_key(service: &str, addr: IpAddr) -> String {
    format!("{service}/{addr}")
}

/// The rule: a drain past its end is extended while the last sweep found
/// live entries naming the backend, or when no sweep has counted yet.
pub(super) fn drain_fate(open: Option<u64>) -> DrainFate {
    match open {
        Some(0) => DrainFate::End,
        _ => DrainFate::Extend,
    }
}

fn addr_list(list: &[IpAddr]) -> String {
    let v: Vec<String> = list.iter().map(|a| a.to_string()).collect();
    format!("[{}]", v.join(", "))
}

impl Daemon {
    /// This host's open connections to each draining backend, for its
    /// fleet report (None before the first sweep).
    pub(super) fn draining_open_here(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        let mut out = std::collections::BTreeMap::new();
        for (name, o) in &self.state.services {
            for d in o.draining.iter().flatten() {
                let n = self.open_here(name, d.addr)?;
                if n > 0 {
                    out.insert(drain_key(name, d.addr), n);
                }
            }
        }
        Some(out)
    }

    /// Flow entries naming `addr` of `service` after this host's last
    /// sweep (a backend without an id has none); None before the first.
    fn open_here(&self, service: &str, addr: IpAddr) -> Option<u64> {
        let sweeper = self.sweeper.as_ref()?;
        let id = self
            .dp
            .service_id(service)
            .and_then(|sid| self.dp.ids().backends.get(&(sid, addr)).copied());
        match id {
            Some(id) => sweeper.live_on(id),
            None => sweeper.has_swept().then_some(0),
        }
    }

    /// `rollout finish` / `promote --finalize`.
    pub(super) fn finish(&mut self, service: &str, who: &str) -> OpResult<Vec<String>> {
        let i = self.service_index(service)?;
        let svc = self.running.services[i].clone();
        if svc.canary.is_empty() {
            return Err(OpError::new(
                Refusal::Conflict,
                format!(
                    "service {service}: the canary pool is empty: there is no release to finish"
                ),
            ));
        }
        if let Some(r) = self.state.rollouts.get(service).filter(|r| r.active()) {
            return Err(OpError::new(
                Refusal::Conflict,
                format!(
                    "service {service}: a rollout is {} at step {}/{}: abort it or let it \
                     promote before finishing the release",
                    r.phase.name(),
                    r.step + 1,
                    r.planned_steps()
                ),
            ));
        }
        self.fleet_guard("finishing a release")?;
        self.fleet_features_guard(&["finish"], "finishing a release")?;
        let file = self
            .file
            .services
            .iter()
            .find(|s| s.name == service)
            .cloned()
            .unwrap_or_else(|| svc.clone());
        let o = finished_overrides(
            self.state.services.get(service),
            &svc,
            &file,
            who,
            crate::fleet::unix_ms(),
            drain_period(&self.running, svc.protocol),
        );
        let drains: Vec<IpAddr> = o.draining.iter().flatten().map(|d| d.addr).collect();
        let mut next = self.running.clone();
        let s = &mut next.services[i];
        s.stable = svc.canary.clone();
        s.canary.clear();
        s.set_weight(WeightBp::ZERO);
        s.draining = drains.clone();
        next.validate().map_err(|e| {
            OpError::new(
                Refusal::Conflict,
                format!("rollout finish {service}: the config it would make is invalid: {e:#}"),
            )
        })?;
        let mut state = self.state.clone();
        state.services.insert(service.to_string(), o);
        // The line names the backends this finish retires (earlier drains
        // go on, shown in status).
        let retired: Vec<IpAddr> = svc
            .stable
            .iter()
            .filter(|a| !svc.canary.contains(a))
            .copied()
            .collect();
        let line = format!(
            "service {service}: release finished by {who}: stable pool now {} (was {}), canary \
             pool emptied, canary weight {} -> {}{}",
            addr_list(&svc.canary),
            addr_list(&svc.stable),
            svc.weight(),
            WeightBp::ZERO,
            if retired.is_empty() {
                String::new()
            } else {
                format!("; {} draining", addr_list(&retired))
            }
        );
        if let Some(r) = state.rollouts.get_mut(service) {
            r.history.push(format!("finished by {who}"));
            r.reason = Some("finished".into());
        }
        let mut lines = self.commit(next, state)?;
        self.respawn_probes();
        self.pending_rollbacks.remove(service);
        info!("{line}");
        self.events.push(service, EventKind::Rollout, line.clone());
        self.events.push_weight(
            service,
            who,
            svc.weight().percent(),
            0.0,
            format!(
                "service {service}: canary weight {} -> {} (rollout finish, {who})",
                svc.weight(),
                WeightBp::ZERO
            ),
        );
        lines.insert(0, line);
        Ok(lines)
    }

    /// Drains past their end: extended while flow entries still name the
    /// backend, else ended (the backend then loses its id and reverse NAT).
    /// From the tick; in a fleet only the leader while it reaches etcd
    /// decides (its decision is published like any override).
    pub(super) fn expire_drains(&mut self) {
        let now = crate::fleet::unix_ms();
        let due = self
            .state
            .services
            .values()
            .any(|o| o.draining.iter().flatten().any(|d| d.until_ms <= now));
        if !due || !self.runs_rollouts() || self.fleet_guard("ending a drain").is_err() {
            return;
        }
        let mut state = self.state.clone();
        let mut ended = false;
        for (name, o) in state.services.iter_mut() {
            let Some(list) = o.draining.as_mut() else {
                continue;
            };
            let svc = self.running.services.iter().find(|s| &s.name == name);
            let protocol = svc.map_or(Protocol::Tcp, |s| s.protocol);
            // Back in a pool (`backends add`): no longer draining.
            let pooled =
                |a: &IpAddr| svc.is_some_and(|s| s.stable.contains(a) || s.canary.contains(a));
            let period = drain_period(&self.running, protocol).as_millis() as u64;
            list.retain_mut(|d| {
                if d.until_ms > now {
                    return true;
                }
                if pooled(&d.addr) {
                    ended = true;
                    return false;
                }
                let here = self.open_here(name, d.addr);
                // In a fleet, ECMP spread the connections: every live
                // host's count, none known (an older host, no sweep yet)
                // keeps the drain.
                let open = here
                    .zip(self.fleet_draining_open(&drain_key(name, d.addr)))
                    .map(|(a, b)| a + b);
                match drain_fate(open) {
                    DrainFate::Extend => {
                        d.until_ms = now + period;
                        info!(
                            "service {name}: drain of {} extended by {}: {} open connection(s)",
                            d.addr,
                            humantime::format_duration(Duration::from_millis(period)),
                            open.map(|n| n.to_string())
                                .unwrap_or_else(|| "not counted yet".into())
                        );
                        true
                    }
                    DrainFate::End => {
                        info!(
                            "service {name}: drain of {} ended: no open connections",
                            d.addr
                        );
                        ended = true;
                        false
                    }
                }
            });
            if list.is_empty() {
                o.draining = None;
            }
        }
        if !ended {
            self.state = state;
            self.save_state();
            return;
        }
        let mut next = self.running.clone();
        for s in next.services.iter_mut() {
            s.draining = state
                .services
                .get(&s.name)
                .and_then(|o| o.draining.as_ref())
                .map(|l| l.iter().map(|d| d.addr).collect())
                .unwrap_or_default();
        }
        if let Err(e) = self.commit(next, state) {
            warn!("ending drains: {}", e.message);
        }
    }

    /// A draining backend's status: its open connections here (last sweep)
    /// and when the drain ends.
    pub(super) fn drain_status(
        &self,
        service: &str,
        addr: IpAddr,
        id: u32,
    ) -> crate::control::api::DrainStatus {
        let until = self
            .state
            .services
            .get(service)
            .and_then(|o| o.draining.as_ref())
            .and_then(|l| l.iter().find(|d| d.addr == addr))
            .map(|d| d.until_ms)
            .unwrap_or(0);
        let open = self.sweeper.as_ref().and_then(|s| s.live_on(id));
        crate::control::api::DrainStatus {
            open_connections: open,
            ends_in_s: until.saturating_sub(crate::fleet::unix_ms()) as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::state::RuntimeState;

    const FILE: &str = r#"
interface: lb-client
services:
  - name: shop
    vip: 198.18.100.1
    port: 80
    protocol: tcp
    canary_weight: 50
    stable: [198.18.1.2, 198.18.2.2]
    canary: [198.18.3.2]
    overrides:
      - {cidr: 198.18.20.0/24, version: canary}
    rollout:
      steps: [10, 50, 100]
      interval: 10s
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const HOUR_MS: u64 = 3_600_000;

    fn finished(file: &Config) -> RuntimeState {
        let s = &file.services[0];
        let mut st = RuntimeState::default();
        let o = finished_overrides(
            None,
            s,
            s,
            "canaryctl (uid 0)",
            1_000,
            Duration::from_millis(HOUR_MS),
        );
        st.services.insert("shop".into(), o);
        st
    }

    #[test]
    fn finish_builds_the_overrides_of_a_finished_release() {
        let file = Config::parse(FILE).unwrap();
        let st = finished(&file);
        let o = &st.services["shop"];
        let w = o.weight.as_ref().unwrap();
        assert_eq!((w.weight_bp, w.file_weight_bp), (0, 5000));
        assert_eq!(w.source, "rollout finish (canaryctl (uid 0))");
        let stable = o.stable.as_ref().unwrap();
        assert_eq!(stable.pool, vec![ip("198.18.3.2")]);
        assert_eq!(stable.file_pool, file.services[0].stable);
        let canary = o.canary.as_ref().unwrap();
        assert!(canary.pool.is_empty());
        assert_eq!(canary.file_pool, vec![ip("198.18.3.2")]);
        assert_eq!(
            o.draining.as_ref().unwrap(),
            &vec![
                Drain {
                    addr: ip("198.18.1.2"),
                    until_ms: 1_000 + HOUR_MS
                },
                Drain {
                    addr: ip("198.18.2.2"),
                    until_ms: 1_000 + HOUR_MS
                },
            ]
        );
        // The state file round trip keeps it (the restart's input).
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<RuntimeState>(&json).unwrap(), st);
    }

    #[test]
    fn the_unchanged_file_reproduces_the_finish_after_a_restart() {
        let file = Config::parse(FILE).unwrap();
        let mut st = finished(&file);
        let before = st.clone();
        let eff = st.effective(&file, &[]);
        assert!(eff.dropped.is_empty(), "{:?}", eff.dropped);
        let s = &eff.config.services[0];
        assert_eq!(s.stable, vec![ip("198.18.3.2")]);
        assert!(s.canary.is_empty());
        assert_eq!(s.weight_bp(), 0);
        assert_eq!(s.draining, vec![ip("198.18.1.2"), ip("198.18.2.2")]);
        // A plan and a canary override stay valid with the empty pool.
        assert!(s.rollout.is_some());
        assert_eq!(s.overrides.len(), 1);
        assert_eq!(st, before, "nothing of the finish lapsed");
    }

    #[test]
    fn an_edited_canary_keeps_the_stable_override() {
        // The next release written into the file: canary [b4]. The canary
        // override lapses, the stable one ([b3]) holds.
        let file = Config::parse(FILE).unwrap();
        let mut st = finished(&file);
        let edited =
            Config::parse(&FILE.replace("canary: [198.18.3.2]", "canary: [198.18.4.2]")).unwrap();
        let eff = st.effective(&edited, &[]);
        let s = &eff.config.services[0];
        assert_eq!(s.stable, vec![ip("198.18.3.2")]);
        assert_eq!(s.canary, vec![ip("198.18.4.2")]);
        assert_eq!(s.weight_bp(), 0);
        assert_eq!(s.draining.len(), 2);
        // The file's stable pool edited to the new release: both pool
        // overrides lapse; a drained address back in the stable pool is no
        // longer draining.
        let next = Config::parse(
            &FILE
                .replace(
                    "stable: [198.18.1.2, 198.18.2.2]",
                    "stable: [198.18.3.2, 198.18.1.2]",
                )
                .replace("canary: [198.18.3.2]", "canary: [198.18.4.2]"),
        )
        .unwrap();
        let eff = st.effective(&next, &[]);
        let s = &eff.config.services[0];
        assert_eq!(s.stable, vec![ip("198.18.3.2"), ip("198.18.1.2")]);
        assert_eq!(s.draining, vec![ip("198.18.2.2")]);
        assert_eq!(st.services["shop"].draining.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn a_drain_clashing_with_another_service_is_dropped_with_a_line() {
        // The file moves on to the next release and gives b1 to cart.
        let next = FILE
            .replace("stable: [198.18.1.2, 198.18.2.2]", "stable: [198.18.3.2]")
            .replace("canary: [198.18.3.2]", "canary: [198.18.4.2]");
        let two = format!(
            "{next}  - name: cart\n    vip: 198.18.100.2\n    port: 80\n    protocol: tcp\n    \
             stable: [198.18.1.2]\n"
        );
        let file = Config::parse(FILE).unwrap();
        let mut st = finished(&file);
        let eff = st.effective(&Config::parse(&two).unwrap(), &[]);
        assert_eq!(eff.config.services[0].draining, vec![ip("198.18.2.2")]);
        assert_eq!(eff.dropped.len(), 1, "{:?}", eff.dropped);
        assert!(
            eff.dropped[0].starts_with("service shop: drain of 198.18.1.2 dropped: "),
            "{}",
            eff.dropped[0]
        );
    }

    #[test]
    fn a_second_finish_keeps_earlier_drains_and_refreshes_them() {
        let file = Config::parse(FILE).unwrap();
        let st = finished(&file);
        // Next release: canary [b4] added at run time, then finished again.
        let mut running = file.services[0].clone();
        running.stable = vec![ip("198.18.3.2")];
        running.canary = vec![ip("198.18.4.2")];
        let o = finished_overrides(
            st.services.get("shop"),
            &running,
            &file.services[0],
            "x",
            5_000,
            Duration::from_millis(HOUR_MS),
        );
        let d = o.draining.unwrap();
        let addrs: Vec<IpAddr> = d.iter().map(|d| d.addr).collect();
        assert_eq!(
            addrs,
            vec![ip("198.18.1.2"), ip("198.18.2.2"), ip("198.18.3.2")]
        );
        assert_eq!(
            d[0].until_ms,
            1_000 + HOUR_MS,
            "an older drain keeps its end"
        );
        assert_eq!(d[2].until_ms, 5_000 + HOUR_MS);
        assert_eq!(o.stable.unwrap().pool, vec![ip("198.18.4.2")]);
    }

    #[test]
    fn a_drain_ends_only_when_no_entry_names_it() {
        assert_eq!(drain_fate(Some(0)), DrainFate::End);
        assert_eq!(drain_fate(Some(3)), DrainFate::Extend);
        // Not counted yet (no sweep since start): never end blind.
        assert_eq!(drain_fate(None), DrainFate::Extend);
    }

    #[test]
    fn drains_last_the_longest_idle_timeout_of_the_protocol() {
        let mut c = Config::parse(FILE).unwrap();
        let t = c.flow_table.timeouts.clone();
        assert_eq!(drain_period(&c, Protocol::Tcp), t.tcp_established);
        assert_eq!(drain_period(&c, Protocol::Udp), t.udp.max(t.udp_replied));
        c.flow_table.timeouts.udp = Duration::from_secs(99_999);
        assert_eq!(drain_period(&c, Protocol::Udp), Duration::from_secs(99_999));
        assert_eq!(drain_period(&c, Protocol::Tcp), t.tcp_established);
    }
}
