//! The daemon in a fleet: etcd's desired state applied here, this host's
//! changes published there, the leader's duties (rollouts, health
//! verdicts), and what a host cut off from etcd may still do.
//!
//! The rules:
//! - etcd holds each service's run-time state (`fleet::ServiceDoc`); every
//!   host applies it as it arrives. A change made here (an operator, the
//!   leader's engine) is applied here at once and published as a
//!   compare-and-swap on the document this host last saw; a change that
//!   does not land is undone here (the newer document arrives by the watch).
//! - Only the leader runs rollouts and decides health verdicts, on the
//!   fleet's counters and the hosts' probe views.
//! - Cut off from etcd: the data plane keeps its state; nothing raises a
//!   weight; a rollback applies here at once and is published when etcd
//!   returns.

use super::*;
use crate::fleet::link::{Change, Publish, PublishError};
use crate::fleet::{self, HealthDoc, HostReport, Key, ServiceDoc};
use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

/// Why the leader rolls back a canary pool the fleet sees all down.
const FLEET_CANARY_DOWN: &str = "no healthy canary backend (the fleet's verdict)";

/// The leader's count of a step's failing clients, per version: the step
/// (when it began here: a resumed or restarted step is a new one), the
/// clients counted so far, and the figure handed to the engine so far.
struct FailingCount {
    step: Instant,
    counted: [HashSet<fleet::Client>; 2],
    reported: [u64; 2],
    /// Taken over mid-step (this host just became leader): the hosts'
    /// lists hold clients the previous leader already counted, so the
    /// first look only sets what is counted. A step that began here counts
    /// from its first look (its first failures can come before it).
    taken_over: bool,
}

/// The most clients the leader remembers per version and step: beyond it
/// the hosts' lists are cut off anyway and their counts are summed.
const MAX_COUNTED: usize = 10_000;

impl FailingCount {
    fn new(step: Instant) -> FailingCount {
        FailingCount {
            step,
            counted: Default::default(),
            reported: [0, 0],
            taken_over: false,
        }
    }

    /// A step under way when this host became leader.
    fn taken_over(step: Instant) -> FailingCount {
        FailingCount {
            taken_over: true,
            ..FailingCount::new(step)
        }
    }

    /// Counts version `v` of the hosts' lists of the step: returns how many
    /// failing clients are new since the last call (a client once, however
    /// many hosts list it and for how long; when a host's list is cut off,
    /// at least the hosts' counts summed, `fleet::failing_clients`).
    fn add(&mut self, v: usize, lists: &[fleet::StepFailures]) -> u64 {
        let counted = &mut self.counted[v];
        for c in lists.iter().flat_map(|l| &l.versions[v].clients) {
            if counted.len() < MAX_COUNTED {
                counted.insert(*c);
            }
        }
        let listed = fleet::failing_clients(lists.iter().map(|l| &l.versions[v]));
        let total = (counted.len() as u64).max(listed);
        let new = total.saturating_sub(self.reported[v]);
        self.reported[v] = self.reported[v].max(total);
        new
    }
}

/// What this host last handed to the writer for a service.
#[derive(Debug, Clone, Copy, Default)]
struct Issued {
    generation: u64,
    seq: u64,
}

/// What the daemon keeps of the fleet.
pub struct FleetState {
    pub host: String,
    pub cluster: String,
    session: u64,
    report_every: Duration,
    /// This host leads (its campaign won and its lease is renewed).
    leading: bool,
    /// etcd's election candidates: key -> (create revision, host).
    candidates: BTreeMap<String, (i64, String)>,
    /// The fleet's documents as last seen, with their revisions.
    docs: BTreeMap<String, (ServiceDoc, i64)>,
    health: BTreeMap<String, HealthDoc>,
    /// Other hosts' latest reports and when they arrived.
    reports: BTreeMap<String, (HostReport, Instant)>,
    /// Every host that joined (`members/`), and when each one's report
    /// went, as this host saw it.
    members: std::collections::BTreeSet<String>,
    report_gone: BTreeMap<String, Instant>,
    /// What this host derived from each document: changes are found
    /// against it.
    mirrored: BTreeMap<String, ServiceDoc>,
    /// Per service, the generation applied here.
    applied: BTreeMap<String, u64>,
    /// The leader's per-host counter baselines: (service, host) -> (its
    /// session, cumulative counters).
    baselines: HashMap<(String, String), (u64, WindowCounts)>,
    /// The failing clients the leader has counted per service in its
    /// current step (`FailingCount`).
    failing_base: HashMap<String, FailingCount>,
    /// When the leader last published a rollout's progress.
    progress_at: HashMap<String, Instant>,
    /// Per service, the generation and `seq` of the last document handed
    /// to the writer.
    issued: BTreeMap<String, Issued>,
    cut_off: Option<(SystemTime, String)>,
    connected: bool,
    /// This session's lease (its election key fences the leader's writes).
    lease: Option<i64>,
}

impl FleetState {
    pub fn new(cfg: &crate::config::FleetConfig, session: u64) -> FleetState {
        FleetState {
            host: cfg.host_name(),
            cluster: cfg.cluster.clone(),
            session,
            report_every: cfg.report_interval,
            leading: false,
            candidates: BTreeMap::new(),
            docs: BTreeMap::new(),
            health: BTreeMap::new(),
            reports: BTreeMap::new(),
            members: Default::default(),
            report_gone: BTreeMap::new(),
            mirrored: BTreeMap::new(),
            applied: BTreeMap::new(),
            baselines: HashMap::new(),
            failing_base: HashMap::new(),
            progress_at: HashMap::new(),
            issued: BTreeMap::new(),
            // Until the first session: not yet connected, not cut off.
            cut_off: None,
            connected: false,
            lease: None,
        }
    }

    fn leader_name(&self) -> Option<&str> {
        self.candidates
            .values()
            .min_by_key(|(rev, _)| *rev)
            .map(|(_, h)| h.as_str())
    }

    /// Other hosts' reports recent enough to count (a host whose lease
    /// expired has no key; this also drops one that stopped renewing but
    /// whose lease has not expired yet).
    fn live_reports(&self) -> impl Iterator<Item = &HostReport> {
        let stale = self.report_every * 4 + Duration::from_secs(1);
        self.reports
            .iter()
            .filter(move |(h, (_, at))| **h != self.host && at.elapsed() < stale)
            .map(|(_, (r, _))| r)
    }
}

impl Daemon {
    fn fleet_mut(&mut self) -> Option<&mut FleetState> {
        self.fleet.as_deref_mut()
    }

    /// Whether this host runs the fleet's rollouts: alone, always; in a
    /// fleet, only as its leader.
    pub(super) fn runs_rollouts(&self) -> bool {
        self.fleet.as_ref().is_none_or(|f| f.leading)
    }

    /// Refuses a change that needs etcd while this host is cut off from it.
    pub(super) fn fleet_guard(&self, what: &str) -> OpResult<()> {
        let Some(f) = &self.fleet else {
            return Ok(());
        };
        if let Some((since, why)) = &f.cut_off {
            return Err(OpError::new(
                Refusal::Conflict,
                format!(
                    "refused: this host is cut off from etcd since {} ({why}); {what} needs the \
                     fleet's agreement (only a rollback applies while cut off)",
                    humantime::format_rfc3339_seconds(*since)
                ),
            ));
        }
        if !f.connected {
            return Err(OpError::new(
                Refusal::Conflict,
                format!("refused: this host has not reached etcd yet; {what} needs the fleet"),
            ));
        }
        Ok(())
    }

    /// Refuses `what` while a live host of the fleet runs a canaryd without
    /// one of the rollout features `needed` (a rolling upgrade half done).
    pub(super) fn fleet_features_guard(&self, needed: &[&str], what: &str) -> OpResult<()> {
        let Some(f) = &self.fleet else {
            return Ok(());
        };
        for r in f.live_reports() {
            if let Some(missing) = needed
                .iter()
                .find(|n| !r.plan_features.iter().any(|have| have == *n))
            {
                return Err(OpError::new(
                    Refusal::Conflict,
                    format!(
                        "refused: host {} runs a canaryd without {missing} (an older version); \
                         {what} needs every host upgraded first",
                        r.host
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The other live hosts' open connections to a draining backend
    /// (`finish::drain_key`): Some(0) outside a fleet, None while a live
    /// host has not counted (an older canaryd, or no sweep yet).
    pub(super) fn fleet_draining_open(&self, key: &str) -> Option<u64> {
        let Some(f) = &self.fleet else {
            return Some(0);
        };
        let mut sum = 0;
        for r in f.live_reports() {
            sum += r.draining_open.as_ref()?.get(key).copied().unwrap_or(0);
        }
        Some(sum)
    }

    /// This service's slice of the local run-time state, as a document.
    fn local_slice(&self, service: &str) -> ServiceDoc {
        ServiceDoc {
            overrides: self
                .state
                .services
                .get(service)
                .cloned()
                .unwrap_or_default(),
            rollout: self.state.rollouts.get(service).cloned(),
            rollbacks: self.state.rollbacks.get(service).copied().unwrap_or(0),
            canary_resets: self.state.canary_resets.get(service).copied().unwrap_or(0),
            ..Default::default()
        }
    }

    /// Applies the fleet's documents of `services` here (a document absent:
    /// no run-time change). The leader keeps its own rollout progress when
    /// the document is the echo of its own write.
    fn fleet_apply(&mut self, services: &[String], echo_ok: bool) {
        self.fleet_apply_from(services, echo_ok, false)
    }

    /// Puts `services` back to what this host last derived from etcd (a
    /// change that may not go out while cut off).
    fn fleet_restore(&mut self, services: &[String]) {
        self.fleet_apply_from(services, false, true)
    }

    /// This host's state as it starts: what it saved last is what it last
    /// derived from etcd (or its own, before it ever reached a fleet). No
    /// change is found against it until etcd says otherwise.
    pub(super) fn fleet_seed(&mut self) {
        let names = self.service_names();
        let slices: Vec<(String, ServiceDoc)> = names
            .into_iter()
            .map(|s| (s.clone(), self.local_slice(&s)))
            .collect();
        if let Some(f) = self.fleet_mut() {
            f.mirrored.extend(slices);
        }
    }

    fn fleet_apply_from(&mut self, services: &[String], echo_ok: bool, from_mirror: bool) {
        let Some(f) = self.fleet.as_deref() else {
            return;
        };
        let mut state = self.state.clone();
        let mut gens = Vec::new();
        let mut resets = Vec::new();
        for s in services {
            let doc = if from_mirror {
                f.mirrored.get(s).map(|m| ServiceDoc {
                    generation: f.applied.get(s).copied().unwrap_or(0),
                    ..m.clone()
                })
            } else {
                f.docs.get(s).map(|(d, _)| d.clone())
            };
            if echo_ok {
                // The echo of this canaryd's own write, which it applied
                // already (the leader may be ahead in a rollout's progress).
                if let Some(d) = &doc {
                    let local = self.local_slice(s);
                    let older = d.seq < f.issued.get(s).map_or(0, |i| i.seq);
                    if d.session == f.session
                        && (older || local.same_state(d) || local.progress_only(d))
                    {
                        gens.push((s.clone(), d.generation, None));
                        continue;
                    }
                }
            }
            let doc = doc.unwrap_or_default();
            adopt(&mut state, s, &doc);
            let resets_here = state.canary_resets.get(s).copied().unwrap_or(0);
            if doc.canary_resets > resets_here && !from_mirror {
                // Another host rolled back with `on_rollback: reset`.
                resets.push(s.clone());
            }
            state.canary_resets.insert(s.clone(), doc.canary_resets);
            gens.push((s.clone(), doc.generation, Some(doc)));
        }
        let before = self.weights();
        let effective = state.effective(&self.file, &[]);
        for line in &effective.dropped {
            warn!("fleet: {line}");
        }
        let rollout_steps: Vec<(String, Option<(usize, Phase)>)> = services
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    self.state.rollouts.get(s).map(|r| (r.step, r.phase)),
                )
            })
            .collect();
        let pools = |c: &Config| -> Vec<(Vec<IpAddr>, Vec<IpAddr>)> {
            c.services
                .iter()
                .map(|s| (s.stable.clone(), s.canary.clone()))
                .collect()
        };
        let pools_before = pools(&self.running);
        if effective.config == self.running {
            // Only the run-time state moved (a rollout's progress, say):
            // nothing for the data plane.
            if self.state != state {
                self.state = state;
                self.save_state();
            }
        } else if let Err(e) = self.commit(effective.config, state) {
            error!("fleet: applying etcd's state: {}", e.message);
            return;
        }
        if pools(&self.running) != pools_before {
            // Another host added or removed a backend: probe the new pools.
            self.respawn_probes();
        }
        for s in resets {
            self.dp.reset_flows(&s, VERSION_CANARY);
            let line = format!(
                "service {s}: open canary connections are being reset (the fleet's rollback, on_rollback: reset)"
            );
            warn!("{line}");
            self.events.push(&s, EventKind::Rollback, line);
        }
        // A rollout another host changed: its window starts afresh here.
        for (s, was) in rollout_steps {
            let now = self.state.rollouts.get(&s).map(|r| (r.step, r.phase));
            if now != was {
                self.tick_prev.remove(&s);
                self.step_began.insert(s.clone(), Instant::now());
                if let Some(f) = self.fleet_mut() {
                    f.baselines.retain(|(svc, _), _| svc != &s);
                }
            }
        }
        for s in &self.running.services {
            let Some((_, from)) = before.iter().find(|(n, _)| *n == s.name) else {
                continue;
            };
            let to = s.weight();
            let Some((_, gen, Some(doc))) = gens.iter().find(|(n, _, _)| *n == s.name) else {
                continue;
            };
            if *from != to {
                let who = doc
                    .overrides
                    .weight
                    .as_ref()
                    .map(|w| w.source.clone())
                    .unwrap_or_else(|| "the config file".into());
                let line = format!(
                    "service {}: canary weight {from} -> {to} (fleet generation {gen}: {who} on {})",
                    s.name,
                    if doc.by.is_empty() { "?" } else { &doc.by }
                );
                info!("{line}");
                self.events
                    .push_weight(&s.name, "fleet", from.percent(), to.percent(), line);
            }
        }
        for (s, gen, _) in gens {
            let slice = self.local_slice(&s);
            if let Some(f) = self.fleet_mut() {
                f.applied.insert(s.clone(), gen);
                f.mirrored.insert(s, slice);
            }
        }
    }

    /// A fresh session's full read of the prefix: everything cached is
    /// replaced, every document applied; rollbacks made while cut off are
    /// made again on top and published.
    pub fn fleet_loaded(&mut self, changes: &[Change], lease: i64) {
        let Some(f) = self.fleet_mut() else {
            return;
        };
        f.docs.clear();
        f.health.clear();
        f.reports.clear();
        f.members.clear();
        f.candidates.clear();
        f.baselines.clear();
        f.failing_base.clear();
        f.lease = Some(lease);
        for c in changes {
            Self::cache(f, c);
        }
        let was_cut = f.cut_off.take();
        f.connected = true;
        let health: Vec<(String, HealthDoc)> = f
            .health
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // etcd's state everywhere but where this host rolled back without
        // etcd: there the rollback goes on top of it, in the same apply.
        let pending = self.state.fleet_pending_rollbacks.clone();
        let names: Vec<String> = self
            .service_names()
            .into_iter()
            .filter(|s| !pending.contains(s))
            .collect();
        self.fleet_apply(&names, false);
        self.fleet_redo_rollbacks();
        for (svc, doc) in health {
            self.fleet_apply_health(&svc, &doc);
        }
        if let Some((since, _)) = was_cut {
            let secs = since.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
            let line = format!("fleet: etcd reachable again after {secs:.1} s cut off");
            info!("{line}");
            self.events.push("*", EventKind::Fleet, line);
        } else {
            info!("fleet: connected to etcd; fleet state applied");
        }
    }

    /// The rollbacks etcd does not have yet, made again on top of etcd's
    /// document of each service (its weight 0, its rollout aborted): the
    /// outbox then publishes them. Only while connected.
    fn fleet_redo_rollbacks(&mut self) {
        let Some(f) = self.fleet.as_deref() else {
            return;
        };
        if !f.connected {
            return;
        }
        let pending: Vec<String> = self
            .state
            .fleet_pending_rollbacks
            .iter()
            .filter(|s| self.running.services.iter().any(|x| &x.name == *s))
            .cloned()
            .collect();
        if pending.is_empty() {
            return;
        }
        let mut state = self.state.clone();
        let mut bases = Vec::new();
        for s in &pending {
            // etcd's document, then the rollback on top of it.
            let base = f.docs.get(s).map(|(d, _)| d.state()).unwrap_or_default();
            adopt(&mut state, s, &base);
            state.record_rollback(
                s,
                "rolled back while this host could not reach etcd",
                &rolled_back(),
                self.file_weight_bp(s),
            );
            bases.push((s.clone(), base));
        }
        let effective = state.effective(&self.file, &[]);
        if let Err(e) = self.commit(effective.config, state) {
            error!("fleet: making the pending rollbacks again: {}", e.message);
            return;
        }
        let f = self.fleet_mut().expect("fleet");
        for (s, base) in bases {
            info!("fleet: service {s}: writing the rollback made without etcd");
            // Found against etcd's document: the outbox publishes it.
            f.mirrored.insert(s, base);
        }
    }

    fn cache(f: &mut FleetState, c: &Change) {
        match c.key {
            Key::Service(name) => match c.value.map(serde_json::from_slice::<ServiceDoc>) {
                Some(Ok(doc)) => {
                    if let Some(Err(e)) = doc.rollout.as_ref().map(|r| r.check()) {
                        warn!("fleet: services/{name} in etcd has a broken rollout ({e}); ignored");
                        return;
                    }
                    // A write's own confirmation may come after the watch
                    // brought a newer one.
                    if f.docs.get(name).is_none_or(|(_, rev)| *rev <= c.mod_rev) {
                        f.docs.insert(name.to_string(), (doc, c.mod_rev));
                    }
                }
                Some(Err(e)) => warn!("fleet: services/{name} in etcd does not parse: {e}"),
                None => {
                    f.docs.remove(name);
                }
            },
            Key::Health(name) => match c.value.map(serde_json::from_slice::<HealthDoc>) {
                Some(Ok(doc)) => {
                    f.health.insert(name.to_string(), doc);
                }
                Some(Err(e)) => warn!("fleet: health/{name} in etcd does not parse: {e}"),
                None => {
                    f.health.remove(name);
                }
            },
            Key::Host(name) => match c.value.map(serde_json::from_slice::<HostReport>) {
                Some(Ok(r)) => {
                    f.reports.insert(name.to_string(), (r, Instant::now()));
                    f.report_gone.remove(name);
                }
                Some(Err(e)) => warn!("fleet: hosts/{name} in etcd does not parse: {e}"),
                None => {
                    f.reports.remove(name);
                    f.report_gone.insert(name.to_string(), Instant::now());
                }
            },
            Key::Member(name) => match c.value {
                Some(_) => {
                    f.members.insert(name.to_string());
                }
                None => {
                    f.members.remove(name);
                }
            },
            Key::Candidate => match c.value {
                Some(host) => {
                    let host = String::from_utf8_lossy(host).into_owned();
                    f.candidates
                        .insert(c.raw_key.to_string(), (c.create_rev, host));
                }
                None => {
                    f.candidates.remove(c.raw_key);
                }
            },
        }
    }

    /// One watched change.
    pub fn fleet_changed(&mut self, c: &Change) {
        let Some(f) = self.fleet_mut() else {
            return;
        };
        match c.key {
            Key::Service(name) => {
                Self::cache(f, c);
                let name = name.to_string();
                if self.state.fleet_pending_rollbacks.contains(&name) {
                    // A rollback of ours lost a race: again, on this one.
                    self.fleet_redo_rollbacks();
                } else {
                    self.fleet_apply(std::slice::from_ref(&name), true);
                }
            }
            Key::Health(name) => {
                Self::cache(f, c);
                let doc = f.health.get(name).cloned().unwrap_or_default();
                let name = name.to_string();
                self.fleet_apply_health(&name, &doc);
            }
            Key::Host(name) => {
                let gone = c.value.is_none() && f.members.contains(name);
                Self::cache(f, c);
                if gone && name != f.host {
                    let line = format!(
                        "fleet: {name} is silent: its report expired (canaryd down or cut off \
                         from etcd; its data plane may still forward with its last weight)"
                    );
                    warn!("{line}");
                    self.events.push("*", EventKind::Fleet, line);
                }
            }
            Key::Member(_) => Self::cache(f, c),
            Key::Candidate => {
                let before = f.leader_name().map(str::to_string);
                Self::cache(f, c);
                let after = f.leader_name().map(str::to_string);
                if before != after {
                    // This host's own election is said by `fleet_elected`.
                    if let Some(h) = after.filter(|h| *h != f.host) {
                        let line = format!("fleet: {h} leads the fleet");
                        info!("{line}");
                        self.events.push("*", EventKind::Fleet, line);
                    }
                }
            }
        }
    }

    /// The fleet's health verdicts of one service, applied to the data
    /// plane here; the leader rolls back a canary pool with none healthy.
    fn fleet_apply_health(&mut self, service: &str, doc: &HealthDoc) {
        let Some(svc) = self
            .running
            .services
            .iter()
            .find(|s| s.name == service)
            .cloned()
        else {
            return;
        };
        // A verdict left from when the service was probed does not count.
        let none = HealthDoc::default();
        let doc = if svc.health.is_some() { doc } else { &none };
        let mut changed = false;
        for addr in svc.stable.iter().chain(&svc.canary) {
            let healthy = doc.backends.get(addr).is_none_or(|v| v.healthy);
            if self.dp.is_unhealthy(service, *addr) == healthy {
                changed = true;
                self.dp.set_backend_health(service, *addr, healthy);
                let v = doc.backends.get(addr);
                let line = format!(
                    "service {service}: backend {addr} is {} for the fleet ({} of {} hosts see it unhealthy)",
                    if healthy { "healthy again" } else { "unhealthy" },
                    v.map(|v| v.unhealthy_votes).unwrap_or(0),
                    v.map(|v| v.voters).unwrap_or(0),
                );
                warn!("{line}");
                self.events.push(service, EventKind::Health, line);
            }
        }
        if !changed {
            return;
        }
        let running = self.running.clone();
        if let Err(e) = self.dp.apply(&running) {
            error!("applying the fleet's health verdicts: {e:#}");
        }
        if self.runs_rollouts() && self.canary_down_while_exposed(&svc) {
            self.roll_back_by_policy(service, FLEET_CANARY_DOWN.into());
        }
    }

    /// Whether `local` is a rollback against etcd's document `etcd`: weight
    /// 0 where etcd (or the file, without a document) says more.
    /// Live cohorts count: everyone at 0 with staff at 100 still exposes
    /// the canary, so a rollback made while cut off is not undone.
    fn is_rollback(&self, service: &str, local: &ServiceDoc, etcd: Option<&ServiceDoc>) -> bool {
        let file = WeightBp::from_bp(self.file_weight_bp(service));
        // Without a document, the file's weight (`exposes` of no overrides).
        let etcd_exposes = super::cohorts::exposes(etcd.map(|d| &d.overrides), file);
        !super::cohorts::exposes(Some(&local.overrides), file) && etcd_exposes
    }

    /// This host's changes to publish: every service whose local run-time
    /// state differs from what it derived from etcd. The leader's rollout
    /// progress alone goes at most once per report interval; the leader's
    /// writes are fenced by its election key. Without etcd, a rollback is
    /// kept (and saved) for later and anything else is undone.
    pub fn fleet_outbox(&mut self) -> Vec<Publish> {
        let Some(f) = self.fleet.as_deref() else {
            return Vec::new();
        };
        let names = self.service_names();
        let mut out = Vec::new();
        let mut undo = Vec::new();
        let mut keep = Vec::new();
        let mut progress = Vec::new();
        let fence = f
            .lease
            .filter(|_| f.leading)
            .map(|l| fleet::Keys::new(&f.cluster).candidate(l));
        for s in names {
            let local = self.local_slice(&s);
            let mirrored = f.mirrored.get(&s).cloned().unwrap_or_default();
            if local.same_state(&mirrored) {
                continue;
            }
            if local.progress_only(&mirrored)
                && f.progress_at
                    .get(&s)
                    .is_some_and(|t| t.elapsed() < f.report_every)
            {
                continue;
            }
            if !f.connected || f.cut_off.is_some() {
                let etcd = f.docs.get(&s).map(|(d, _)| d);
                if self.is_rollback(&s, &local, etcd)
                    || self.state.fleet_pending_rollbacks.contains(&s)
                {
                    keep.push(s);
                } else if !local.progress_only(&mirrored) {
                    undo.push(s);
                }
                continue;
            }
            let (cached, rev) = f.docs.get(&s).cloned().unwrap_or_default();
            let bump = serde_json::to_value(&local.overrides).ok()
                != serde_json::to_value(&mirrored.overrides).ok();
            // A write still in flight counts: its generation is the base.
            let issued = f.issued.get(&s).copied().unwrap_or_default();
            let base_gen = cached.generation.max(issued.generation);
            let doc = ServiceDoc {
                generation: base_gen + u64::from(bump),
                by: f.host.clone(),
                session: f.session,
                seq: issued.seq + 1,
                at_ms: fleet::unix_ms(),
                ..local
            };
            progress.push(s.clone());
            out.push(Publish::Doc {
                service: s,
                doc: Box::new(doc),
                base_rev: rev,
                fence: fence.clone(),
            });
        }
        let f = self.fleet_mut().expect("fleet");
        for s in progress {
            f.progress_at.insert(s, Instant::now());
        }
        // Handed to the writer: the next changes are found against these
        // (a failed write undoes them, `fleet_publish_failed`).
        for item in &out {
            if let Publish::Doc { service, doc, .. } = item {
                f.issued.insert(
                    service.clone(),
                    Issued {
                        generation: doc.generation,
                        seq: doc.seq,
                    },
                );
                f.mirrored.insert(service.clone(), doc.state());
            }
        }
        let mut saved = false;
        for s in keep {
            if self.state.fleet_pending_rollbacks.insert(s.clone()) {
                warn!("fleet: service {s}: rolled back here without etcd; written to etcd when it returns");
                saved = true;
            }
        }
        if saved {
            self.save_state();
        }
        if !undo.is_empty() {
            self.fleet_restore(&undo);
        }
        out
    }

    /// A publish landed: the cache has it now (the watch's echo is then a
    /// no-op); a rollback etcd lacked is there now.
    pub fn fleet_published(&mut self, item: &Publish, rev: i64) {
        let Some(f) = self.fleet_mut() else {
            return;
        };
        match item {
            Publish::Doc { service, doc, .. } => {
                if f.docs.get(service).is_none_or(|(_, r)| *r <= rev) {
                    f.docs.insert(service.clone(), ((**doc).clone(), rev));
                }
                f.applied.insert(service.clone(), doc.generation);
                if doc.weight() == Some(WeightBp::ZERO)
                    && self.state.fleet_pending_rollbacks.remove(service)
                {
                    info!(
                        "fleet: service {service}: the rollback made without etcd is in etcd now"
                    );
                    self.save_state();
                }
            }
            Publish::Health { service, doc } => {
                f.health.insert(service.clone(), doc.clone());
            }
        }
    }

    /// A publish did not land. A rollback is kept (and saved) and made again
    /// on top of etcd's newer state (the watch brings it, or the next
    /// session's read); anything else is undone here.
    pub fn fleet_publish_failed(&mut self, item: &Publish, e: &PublishError) {
        let Publish::Doc { service, .. } = item else {
            return; // the leader decides health again at its next report
        };
        let Some(f) = self.fleet.as_deref() else {
            return;
        };
        let local = self.local_slice(service);
        let etcd = f.docs.get(service).map(|(d, _)| d.clone());
        if self.is_rollback(service, &local, etcd.as_ref()) {
            self.state
                .fleet_pending_rollbacks
                .insert(service.to_string());
            self.save_state();
            warn!("fleet: service {service}: rollback not written yet ({e:?}); kept here and written again");
            if matches!(e, PublishError::Conflict(_)) {
                // The newer document may be here already.
                self.fleet_redo_rollbacks();
            }
        } else {
            warn!("fleet: service {service}: change not published ({e:?}); undone here");
            self.fleet_apply(std::slice::from_ref(service), false);
        }
    }

    /// etcd cannot be used: the host is cut off (said once, with since when).
    pub fn fleet_cut_off(&mut self, why: &str) {
        let Some(f) = self.fleet_mut() else {
            return;
        };
        f.leading = false;
        f.connected = false;
        if f.cut_off.is_none() {
            f.cut_off = Some((SystemTime::now(), why.to_string()));
            let line = format!(
                "fleet: CUT OFF from etcd ({why}); the data plane keeps its last state, \
                 weights cannot be raised, a rollback still applies here"
            );
            error!("{line}");
            self.events.push("*", EventKind::Fleet, line);
        }
    }

    pub fn fleet_lost_leadership(&mut self) {
        let Some(f) = self.fleet_mut() else {
            return;
        };
        if f.leading {
            f.leading = false;
            let line = format!("fleet: {} no longer leads", f.host);
            warn!("{line}");
            self.events.push("*", EventKind::Fleet, line);
        }
    }

    pub fn fleet_elected(&mut self) {
        let Some(f) = self.fleet_mut() else {
            return;
        };
        f.leading = true;
        f.baselines.clear();
        let line = format!(
            "fleet: {} leads the fleet (rollouts and health verdicts)",
            f.host
        );
        info!("{line}");
        self.events.push("*", EventKind::Fleet, line);
        // Rollouts under way continue from the step and window in etcd.
        let running: Vec<String> = self.state.rollouts.keys().cloned().collect();
        let now = Instant::now();
        let mut taken = HashMap::new();
        for s in running {
            self.tick_prev.remove(&s);
            self.step_began.insert(s.clone(), now);
            taken.insert(s, FailingCount::taken_over(now));
        }
        if let Some(f) = self.fleet_mut() {
            f.failing_base = taken;
        }
    }

    /// A paused rollout resumes in a fleet: the counters every host added
    /// since the leader's last look (the paused time), and the baselines
    /// dropped, so the resumed step's window starts afresh at the next look.
    pub(super) fn fleet_resume_window(&mut self, service: &str) -> Option<WindowCounts> {
        let own = self.cumulative(service);
        let f = self.fleet.as_deref_mut()?;
        let mut current: Vec<(String, u64, WindowCounts)> = Vec::new();
        if let Some(own) = own {
            current.push((f.host.clone(), f.session, own));
        }
        for r in f.live_reports() {
            if let Some(c) = r.counters.get(service) {
                current.push((r.host.clone(), r.session, *c));
            }
        }
        let mut sum = WindowCounts::default();
        for (host, session, cur) in current {
            if let Some((s, base)) = f.baselines.get(&(service.to_string(), host)) {
                if *s == session {
                    sum.add(&cur.since(base));
                }
            }
        }
        f.baselines.retain(|(svc, _), _| svc != service);
        Some(sum)
    }

    /// This host's report.
    pub fn fleet_report(&self) -> HostReport {
        let Some(f) = self.fleet.as_deref() else {
            return HostReport::default();
        };
        let mut report = HostReport {
            host: f.host.clone(),
            session: f.session,
            at_ms: fleet::unix_ms(),
            leader: f.leading,
            lists_failing: true,
            plan_features: fleet::PLAN_FEATURES.iter().map(|f| f.to_string()).collect(),
            draining_open: self.draining_open_here(),
            ..Default::default()
        };
        for s in &self.running.services {
            report.applied.insert(
                s.name.clone(),
                fleet::Applied {
                    generation: f.applied.get(&s.name).copied().unwrap_or(0),
                    weight_bp: s.weight_bp(),
                },
            );
            if let Some(c) = self.cumulative(&s.name) {
                report.counters.insert(s.name.clone(), c);
            }
            if let Some(failing) = self.step_failures(&s.name) {
                report.failing.insert(s.name.clone(), failing);
            }
            if s.health.is_some() {
                let view = s
                    .stable
                    .iter()
                    .chain(&s.canary)
                    .map(|a| {
                        let h = self
                            .health
                            .get(&(s.name.clone(), *a))
                            .is_none_or(|h| h.healthy);
                        (*a, h)
                    })
                    .collect();
                report.health.insert(s.name.clone(), view);
            }
        }
        report
    }

    /// The leader's duties each report interval: the fleet's health
    /// verdicts, and any progress still to publish.
    pub fn fleet_leader_duties(&mut self) -> Vec<Publish> {
        let Some(f) = self.fleet.as_deref() else {
            return Vec::new();
        };
        if !f.leading {
            return Vec::new();
        }
        let own = self.fleet_report();
        let mut reports: Vec<HostReport> = f.live_reports().cloned().collect();
        reports.push(own);
        let verdicts = fleet::verdicts(reports.iter());
        // A canary pool the fleet sees all down is rolled back, also when
        // the verdict came before this host led (its leader died first).
        let down: Vec<String> = self
            .running
            .services
            .iter()
            .filter(|s| self.canary_down_while_exposed(s))
            .map(|s| s.name.clone())
            .collect();
        for s in down {
            self.roll_back_by_policy(&s, FLEET_CANARY_DOWN.into());
        }
        let Some(f) = self.fleet.as_deref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (service, backends) in verdicts {
            let current = f.health.get(&service);
            if current.is_some_and(|c| c.backends == backends) {
                continue;
            }
            out.push(Publish::Health {
                service,
                doc: HealthDoc {
                    backends,
                    by: f.host.clone(),
                    at_ms: fleet::unix_ms(),
                },
            });
        }
        out.extend(self.fleet_outbox());
        out
    }

    /// The leader's window of one rollout this tick: the sum of every
    /// host's counters since its previous report (this host's own read
    /// live). A host's first report (or a restarted canaryd) sets its
    /// baseline; a host gone adds nothing more.
    pub(super) fn fleet_window(&mut self, service: &str) -> Option<WindowCounts> {
        let own = self.cumulative(service)?;
        let own_failing = self.step_failures(service);
        let step = self.running_step(service);
        let began = self.step_began.get(service).copied();
        let f = self.fleet.as_deref_mut()?;
        let mut current: Vec<(String, u64, WindowCounts, bool)> =
            vec![(f.host.clone(), f.session, own, true)];
        for r in f.live_reports() {
            if let Some(c) = r.counters.get(service) {
                current.push((r.host.clone(), r.session, *c, r.lists_failing));
            }
        }
        let mut sum = WindowCounts::default();
        // The distinct counts of hosts that list no failing clients.
        let mut unlisted = [0u64; 2];
        let mut any = false;
        for (host, session, cur, lists) in current {
            let key = (service.to_string(), host);
            let prev = f.baselines.insert(key, (session, cur));
            if let Some((s, p)) = prev {
                if s == session {
                    let d = cur.since(&p);
                    if !lists {
                        unlisted[0] += d.stable.failing_clients;
                        unlisted[1] += d.canary.failing_clients;
                    }
                    sum.add(&d);
                    any = true;
                }
            }
        }
        // The failing clients are not summed (a client whose connections
        // ECMP spreads over three hosts would count three times): the
        // hosts' lists of this step, each client counted once however many
        // hosts list it and for how long (a host restarting or leaving
        // takes none back). Like a host's first report, the leader's first
        // look at a step it took over (just elected) only sets what is
        // counted; a step that began here counts from its first look. A
        // look whose window is dropped (no baselines yet) counts nothing.
        if let (true, Some(step), Some(began)) = (any, step, began) {
            let lists: Vec<fleet::StepFailures> = own_failing
                .into_iter()
                .chain(
                    f.live_reports()
                        .filter_map(|r| r.failing.get(service).cloned()),
                )
                .filter(|l| l.step == step)
                .collect();
            let count = f
                .failing_base
                .entry(service.to_string())
                .or_insert_with(|| FailingCount::new(began));
            if count.step != began {
                *count = FailingCount::new(began);
            }
            let first_look = std::mem::take(&mut count.taken_over);
            for (v, window) in [&mut sum.stable, &mut sum.canary].into_iter().enumerate() {
                let new = count.add(v, &lists);
                window.failing_clients = unlisted[v] + if first_look { 0 } else { new };
            }
        }
        any.then_some(sum)
    }

    /// The step of `service`'s rollout, when one is running.
    fn running_step(&self, service: &str) -> Option<usize> {
        self.state
            .rollouts
            .get(service)
            .filter(|r| r.phase == Phase::Running)
            .map(|r| r.step)
    }

    /// This host's failing clients of `service`'s running rollout step,
    /// for its report (none without a failure in the step).
    fn step_failures(&self, service: &str) -> Option<fleet::StepFailures> {
        let step = self.running_step(service)?;
        // The key `note` was given (see the driver's tick).
        let began = self.step_began.get(service).copied();
        let versions = [0, 1].map(|v| {
            self.failing
                .of_step(service, v, began, fleet::LISTED_FAILING_CLIENTS)
        });
        versions
            .iter()
            .any(|v| v.count > 0)
            .then_some(fleet::StepFailures { step, versions })
    }

    /// The fleet's part of `status`.
    pub(super) fn fleet_status(&self) -> Option<crate::control::api::FleetStatus> {
        use crate::control::api::{FleetApplied, FleetHost, FleetStatus};
        let f = self.fleet.as_deref()?;
        let own = self.fleet_report();
        let mut hosts: Vec<FleetHost> = Vec::new();
        let mut all: Vec<(HostReport, u64)> = vec![(own, 0)];
        for (h, (r, at)) in &f.reports {
            if *h != f.host {
                all.push((r.clone(), at.elapsed().as_millis() as u64));
            }
        }
        all.sort_by(|a, b| a.0.host.cmp(&b.0.host));
        let leader = f.leader_name().map(str::to_string);
        for (r, age) in &all {
            hosts.push(FleetHost {
                name: r.host.clone(),
                report_age_ms: *age,
                // The election says who leads now; a report may predate it.
                leader: match &leader {
                    Some(l) => *l == r.host,
                    None => r.leader,
                },
                applied: r
                    .applied
                    .iter()
                    .map(|(s, a)| {
                        (
                            s.clone(),
                            FleetApplied {
                                generation: a.generation,
                                weight_bp: a.weight_bp,
                                percent: WeightBp::from_bp(a.weight_bp).percent(),
                            },
                        )
                    })
                    .collect(),
                unhealthy: r
                    .health
                    .iter()
                    .flat_map(|(s, v)| {
                        v.iter()
                            .filter(|(_, h)| !**h)
                            .map(move |(a, _)| format!("{s}/{a}"))
                    })
                    .collect(),
                new_connections: r
                    .counters
                    .iter()
                    .map(|(s, c)| (s.clone(), [c.stable.attempts, c.canary.attempts]))
                    .collect(),
            });
        }
        let live: std::collections::BTreeSet<&str> =
            all.iter().map(|(r, _)| r.host.as_str()).collect();
        let silent: Vec<crate::control::api::FleetSilent> = f
            .members
            .iter()
            .filter(|m| !live.contains(m.as_str()))
            .map(|m| crate::control::api::FleetSilent {
                name: m.clone(),
                silent_for_ms: f.report_gone.get(m).map(|t| t.elapsed().as_millis() as u64),
            })
            .collect();
        let agreement = self
            .running
            .services
            .iter()
            .map(|s| {
                // etcd's weight, else (no document, no run-time change) the
                // running one, which is the file's.
                let doc = f.docs.get(&s.name).map(|(d, _)| d);
                let gen = doc.map_or(0, |d| d.generation);
                let desired = doc.and_then(|d| d.weight()).unwrap_or(s.weight());
                fleet::agreement(&s.name, gen, desired, &hosts, silent.len())
            })
            .collect();
        let (since, reason) = match &f.cut_off {
            Some((t, why)) => (Some(*t), Some(why.clone())),
            None => (None, None),
        };
        let ms = |t: SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        };
        Some(FleetStatus {
            cluster: f.cluster.clone(),
            host: f.host.clone(),
            leader: f.leader_name().map(str::to_string).or_else(|| {
                all.iter()
                    .find(|(r, _)| r.leader)
                    .map(|(r, _)| r.host.clone())
            }),
            leading: f.leading,
            connected: f.connected,
            cut_off_since_ms: since.map(ms),
            cut_off_for_ms: since
                .and_then(|t| t.elapsed().ok())
                .map(|d| d.as_millis() as u64),
            cut_off_reason: reason,
            pending_rollbacks: self.state.fleet_pending_rollbacks.iter().cloned().collect(),
            hosts,
            silent,
            agreement,
        })
    }

    /// A backend's health in words: this host's probe verdict, and in a
    /// fleet the fleet's verdict and its votes first.
    pub(super) fn backend_health_detail(&self, service: &str, addr: IpAddr) -> Option<String> {
        let here = self
            .health
            .get(&(service.to_string(), addr))
            .map(|h| h.detail.clone());
        let Some(f) = self.fleet.as_deref() else {
            return here;
        };
        let v = f.health.get(service).and_then(|d| d.backends.get(&addr));
        let fleet = match v {
            Some(v) => format!(
                "fleet: {} ({} of {} hosts see it unhealthy)",
                if v.healthy { "healthy" } else { "unhealthy" },
                v.unhealthy_votes,
                v.voters
            ),
            None => "fleet: no verdict yet".to_string(),
        };
        Some(match here {
            Some(h) => format!("{fleet}; this host: {h}"),
            None => fleet,
        })
    }

    /// Whether a rollback of one of `services` waits for etcd.
    pub fn fleet_pending_among(&self, services: &[String]) -> bool {
        services
            .iter()
            .any(|s| self.state.fleet_pending_rollbacks.contains(s))
    }

    /// A line for an operator's answer while cut off.
    pub fn fleet_cut_off_note(&self) -> Option<String> {
        let f = self.fleet.as_deref()?;
        let (since, why) = f.cut_off.as_ref()?;
        Some(format!(
            "applied on this host only: it is cut off from etcd since {} ({why}); \
             the rollback is written to etcd when it returns",
            humantime::format_rfc3339_seconds(*since)
        ))
    }
}

/// etcd's document for `service` as this host's run-time state: its
/// overrides (none kept when they change nothing), its rollout, its
/// rollback count. The reset count is each caller's: applying a document
/// compares it first.
fn adopt(state: &mut RuntimeState, service: &str, doc: &ServiceDoc) {
    if doc.overrides == Default::default() {
        state.services.remove(service);
    } else {
        state
            .services
            .insert(service.to_string(), doc.overrides.clone());
    }
    match &doc.rollout {
        Some(r) => state.rollouts.insert(service.to_string(), r.clone()),
        None => state.rollouts.remove(service),
    };
    state.rollbacks.insert(service.to_string(), doc.rollbacks);
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet::{StepClients, StepFailures};

    /// A host's list of canary clients `ids`, of `count` in all.
    fn host(ids: &[u32], count: u64) -> StepFailures {
        let mut l = StepFailures::default();
        l.versions[1] = StepClients {
            count,
            clients: ids.iter().map(|&i| (4, [i, 0, 0, 0])).collect(),
        };
        l
    }

    #[test]
    fn the_leader_counts_each_failing_client_once_a_step() {
        let mut c = FailingCount::new(Instant::now());
        // One client on three hosts, seen over three looks: one.
        let one = [host(&[7], 1), host(&[7], 1), host(&[7], 1)];
        assert_eq!(c.add(1, &one), 1);
        assert_eq!(c.add(1, &one), 0);
        assert_eq!(c.add(0, &one), 0, "stable had none");
        // A host restarts (its list is empty again) and a new client fails
        // elsewhere: counted, the first not taken back.
        let after = [host(&[], 0), host(&[7, 8], 2), host(&[7], 1)];
        assert_eq!(c.add(1, &after), 1);
        // A host with more clients than it lists: the counts summed.
        let many = [host(&[1, 2], 100), host(&[7], 1)];
        assert_eq!(c.add(1, &many), 99, "101 in all, 2 counted before");
    }
}
