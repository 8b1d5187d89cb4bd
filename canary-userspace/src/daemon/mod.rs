//! The daemon's core: the running config (file plus run-time changes), the
//! data plane, and the operations the control API, signals and (later) the
//! rollout engine perform. Every change goes through here, is applied to the
//! maps as a whole config, logged with who asked, and saved so a restart
//! keeps it.

pub mod events;
pub mod state;

use crate::config::{Config, OnRollback, Protocol, Version, DEFAULT_CONFIG};
use crate::control::api::{
    BackendStatus, Explain, RolloutStatus, RolloutVerb, ServiceStatus, Signals, Status,
    VersionSignals, VersionStatus,
};
use crate::dataplane::report::{self, Snapshot};
use crate::dataplane::DataPlane;
use crate::rollout::analysis::{histogram_quantile, VersionCounts, WindowCounts};
use crate::rollout::engine::{Action, Phase, Rollout};
use crate::rollout::external::{judge, Pollers, Readings};
use crate::rollout::health::{Probes, Transition};
use anyhow::{Context, Result};
use canary_common::weight::WeightBp;
use canary_common::{reason, VERSION_CANARY};
use events::{EventKind, Events};
use log::{error, info, warn};
use state::{PoolOverride, RuntimeState, WeightOverride, DEFAULT_STATE_DIR};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Who set the weight after a rollback, in logs and status.
fn rolled_back() -> String {
    format!("{ROLLOUT} (rolled back)")
}

/// Handshake timeout of services without a rollout plan.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Who the rollout engine is in logs and weight sources.
pub const ROLLOUT: &str = "rollout";

/// The probe verdict of one backend.
#[derive(Debug, Clone)]
struct BackendHealth {
    healthy: bool,
    detail: String,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Why an operation was refused, mapped to an HTTP status by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    NotFound,
    Conflict,
    Internal,
}

#[derive(Debug)]
pub struct OpError {
    pub kind: Refusal,
    pub message: String,
}

impl OpError {
    pub fn new(kind: Refusal, message: impl Into<String>) -> OpError {
        OpError {
            kind,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for OpError {
    fn from(e: anyhow::Error) -> OpError {
        OpError::new(Refusal::Internal, format!("{e:#}"))
    }
}

pub type OpResult<T> = std::result::Result<T, OpError>;

pub struct Daemon {
    dp: DataPlane,
    pub instance: String,
    config_path: Option<PathBuf>,
    /// The last config file accepted.
    file: Config,
    /// What runs: the file plus the run-time changes still in force.
    running: Config,
    state: RuntimeState,
    state_path: PathBuf,
    /// The two latest counter snapshots, for per-second rates.
    prev: Option<(Instant, Snapshot)>,
    last: Option<(Instant, Snapshot)>,
    /// Rollout steps, rollbacks, health changes: followed by canaryctl.
    pub events: Arc<Events>,
    /// Probe verdicts of the backends of services with `health:`.
    health: HashMap<(String, IpAddr), BackendHealth>,
    probes: Option<Probes>,
    probe_tx: Option<UnboundedSender<Transition>>,
    /// Which probe set is current (bumped on every respawn).
    probe_epoch: u64,
    /// External-metric readings (Prometheus) and their pollers.
    readings: Readings,
    pollers: Option<Pollers>,
    /// Handshakes that got no SYN-ACK in time, per (service, version),
    /// since this canaryd started.
    timeouts: HashMap<(String, u32), u64>,
    /// Cumulative rollout counters per service at the previous tick.
    tick_prev: HashMap<String, WindowCounts>,
    /// Rollbacks whose map write failed: retried every tick.
    pending_rollbacks: std::collections::BTreeSet<String>,
    /// When each rollout's current step weight was set (or this canaryd
    /// started): external readings older than that do not count.
    step_began: HashMap<String, Instant>,
    /// The same counters at each of the last 11 samples (1 s apart): the
    /// recent rates and quantiles in status.
    recent: VecDeque<(Instant, HashMap<String, WindowCounts>)>,
    last_tick: Option<Instant>,
    last_expiry: Option<Instant>,
}

/// Reads the config file, or the built-in one.
pub fn read_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Config::load(p),
        None => Config::parse(DEFAULT_CONFIG).context("built-in config"),
    }
}

impl Daemon {
    /// Loads (or adopts) the data plane and applies the file plus the saved
    /// run-time changes.
    pub fn start(
        instance: &str,
        config_path: Option<PathBuf>,
        file: Config,
        state_dir: Option<PathBuf>,
    ) -> Result<Daemon> {
        let dir = state_dir
            .or_else(|| file.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let state_path = RuntimeState::path(&dir, instance);
        let mut state = RuntimeState::load(&state_path)?;
        let running = state.effective(&file);
        let mut dp = DataPlane::load(instance, running.flow_table_size)?;
        match dp.apply(&running) {
            Ok(report) => {
                for line in report.lines {
                    info!("{line}");
                }
            }
            Err(e) => {
                // A data plane this process created is removed again; one
                // taken over from an earlier canaryd keeps forwarding.
                if dp.adopted() {
                    log::error!("the pinned data plane is left running as it was");
                } else {
                    let _ = dp.teardown();
                }
                return Err(e.context("applying the config"));
            }
        }
        for s in &running.services {
            let src = state.weight_source(&s.name);
            if src != "config" {
                info!(
                    "service {}: canary weight {} kept from {src}",
                    s.name,
                    s.weight()
                );
            }
        }
        state.save(&state_path)?;
        Ok(Daemon {
            dp,
            instance: instance.to_string(),
            config_path,
            file,
            running,
            state,
            state_path,
            prev: None,
            last: None,
            events: Arc::new(Events::default()),
            health: HashMap::new(),
            probes: None,
            probe_tx: None,
            probe_epoch: 0,
            readings: Readings::default(),
            pollers: None,
            timeouts: HashMap::new(),
            tick_prev: HashMap::new(),
            pending_rollbacks: Default::default(),
            step_began: HashMap::new(),
            recent: VecDeque::new(),
            last_tick: None,
            last_expiry: None,
        })
    }

    /// Starts the health probes; their verdict changes come back through
    /// `tx` to `health_changed`. Restarted on every reload.
    pub fn start_probes(&mut self, tx: UnboundedSender<Transition>) {
        self.probe_tx = Some(tx);
        self.respawn_probes();
    }

    fn respawn_probes(&mut self) {
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
        self.pollers = None;
        self.pollers = Some(crate::rollout::external::spawn(
            &self.running,
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
        self.dp.set_backend_health(&t.service, t.addr, t.healthy);
        let line = format!(
            "service {}: {} backend {} is {} ({})",
            t.service,
            t.version.name(),
            t.addr,
            if t.healthy {
                "healthy again"
            } else {
                "unhealthy"
            },
            t.detail
        );
        if t.healthy {
            info!("{line}");
        } else {
            warn!("{line}");
        }
        self.events.push(&t.service, EventKind::Health, line);
        let running = self.running.clone();
        match self.dp.apply(&running) {
            Ok(report) => report.lines.iter().for_each(|l| info!("{l}")),
            Err(e) => error!("applying the health change: {e:#}"),
        }
        let canary_down = !svc.canary.is_empty()
            && svc
                .canary
                .iter()
                .all(|b| self.dp.is_unhealthy(&svc.name, *b));
        let rollout_active = self
            .state
            .rollouts
            .get(&svc.name)
            .is_some_and(|r| r.active());
        if canary_down && !t.healthy && (svc.weight_bp() > 0 || rollout_active) {
            let why = format!(
                "no healthy canary backend: {} failed its probes ({})",
                t.addr, t.detail
            );
            let reset = svc.rollout.as_ref().map(|r| r.on_rollback) == Some(OnRollback::Reset);
            self.rollback_now(&svc.name, why, reset);
        }
    }

    /// Weight 0 in one map write, the rollout (if any) marked aborted, the
    /// reason logged and emitted as an event.
    fn rollback_now(&mut self, service: &str, why: String, reset: bool) {
        // The decision first, durably: the rollout aborted and a run-time
        // weight of 0, so a crash before the map write still restarts with
        // the canary at 0.
        if let Some(r) = self.state.rollouts.get_mut(service) {
            if r.active() {
                r.abort(why.clone());
            }
        }
        *self.state.rollbacks.entry(service.to_string()).or_default() += 1;
        let source = rolled_back();
        let file_weight_bp = self.file_weight_bp(service);
        self.state
            .services
            .entry(service.to_string())
            .or_default()
            .weight = Some(WeightOverride {
            weight_bp: 0,
            source: source.clone(),
            file_weight_bp,
        });
        if let Err(e) = self.state.save(&self.state_path) {
            error!("saving the rollback of {service}: {e:#}");
        }
        // Then the map. Should the whole-config apply fail (an interface
        // gone, say), weight 0 is written straight into the service entry,
        // and the full apply is retried every tick.
        if let Err(e) = self.set_weight(service, WeightBp::ZERO, &source) {
            error!(
                "rolling back {service}: {} (writing weight 0 directly, retrying)",
                e.message
            );
            if let Err(e) = self.dp.force_weight(service, WeightBp::ZERO) {
                error!("rolling back {service}: direct write failed too: {e:#}");
            }
            self.pending_rollbacks.insert(service.to_string());
        }
        error!("service {service}: ROLLED BACK: {why}");
        let mut message = format!("rolled back to canary weight 0: {why}");
        if reset {
            self.dp.reset_flows(service, VERSION_CANARY);
            message.push_str("; open canary connections are being reset (on_rollback: reset)");
        }
        self.events.push(service, EventKind::Rollback, message);
    }

    /// Cumulative counters of a service as the analysis reads them:
    /// attempts = new connections, failures = backend RSTs + handshake
    /// timeouts, and the handshake histogram.
    fn cumulative(&self, service: &str) -> Option<WindowCounts> {
        let version = |v: u32| -> Option<VersionCounts> {
            let (vs, hs) = self.dp.counters(service, v)?;
            let timeouts = self
                .timeouts
                .get(&(service.to_string(), v))
                .copied()
                .unwrap_or(0);
            Some(VersionCounts {
                attempts: vs.new_flows,
                failures: hs.rsts + timeouts,
                handshake_us_log2: hs.handshake_us_log2,
            })
        };
        Some(WindowCounts {
            stable: version(0)?,
            canary: version(1)?,
        })
    }

    /// The engine's heartbeat (every `rollout::TICK` from the daemon's loop): expire
    /// unanswered handshakes, feed each running rollout its window, carry
    /// out what it decides, save the progress.
    pub fn tick(&mut self) {
        let now = Instant::now();
        for service in std::mem::take(&mut self.pending_rollbacks) {
            let source = rolled_back();
            if let Err(e) = self.set_weight(&service, WeightBp::ZERO, &source) {
                error!("rolling back {service} still fails: {}", e.message);
                self.pending_rollbacks.insert(service);
            }
        }
        let dt = self.last_tick.map(|t| now - t);
        self.last_tick = Some(now);

        // The scan reads the in-flight table entry by entry: once a second is
        // plenty (a timeout is seconds long) and bounds its cost under a
        // SYN flood (a full table is 64k entries).
        let scan_due = self
            .last_expiry
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        let expired = if scan_due {
            self.last_expiry = Some(now);
            self.expire_handshakes()
        } else {
            Vec::new()
        };
        for (sid, v) in expired {
            if let Some(name) = self.dp.service_name(sid) {
                *self.timeouts.entry((name.to_string(), v)).or_default() += 1;
            }
        }

        let running: Vec<String> = self
            .state
            .rollouts
            .iter()
            .filter(|(_, r)| r.phase == Phase::Running)
            .map(|(n, _)| n.clone())
            .collect();
        let mut changed = false;
        for name in running {
            let Some(cur) = self.cumulative(&name) else {
                continue;
            };
            let prev = self.tick_prev.insert(name.clone(), cur);
            let (Some(prev), Some(dt)) = (prev, dt) else {
                continue;
            };
            let delta = window_delta(&cur, &prev);
            let plan = self
                .running
                .services
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.rollout.clone());
            let Some(plan) = plan else {
                self.rollback_now(
                    &name,
                    "the rollout plan was removed from the config".into(),
                    false,
                );
                continue;
            };
            let Some(mut r) = self.state.rollouts.get(&name).cloned() else {
                continue;
            };
            let not_before = *self.step_began.entry(name.clone()).or_insert(now);
            let external = plan.analysis.prometheus.as_ref().map(|check| {
                let readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
                judge(check, readings.get(&name), now, not_before)
            });
            let action = r.tick(&plan, &delta, dt, external.as_ref());
            self.state.rollouts.insert(name.clone(), r);
            changed = true;
            self.act(&name, action, plan.on_rollback == OnRollback::Reset);
        }
        if changed {
            if let Err(e) = self.state.save(&self.state_path) {
                error!("saving the rollout state: {e:#}");
            }
        }
    }

    /// Removes the handshakes older than their service's timeout (default
    /// 3 s) and returns them as (service id, version).
    fn expire_handshakes(&mut self) -> Vec<(u32, u32)> {
        let timeouts: HashMap<u32, u64> = self
            .running
            .services
            .iter()
            .filter_map(|s| {
                let sid = self.dp.service_id(&s.name)?;
                let t = s
                    .rollout
                    .as_ref()
                    .map(|r| r.analysis.handshake_timeout)
                    .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
                Some((sid, t.as_nanos() as u64))
            })
            .collect();
        let default = DEFAULT_HANDSHAKE_TIMEOUT.as_nanos() as u64;
        self.dp.expire_handshakes(monotonic_ns(), |sid| {
            timeouts.get(&sid).copied().unwrap_or(default)
        })
    }

    /// The weight the config file gives a service, in basis points (a
    /// run-time weight override records it, to lapse when the file changes).
    fn file_weight_bp(&self, service: &str) -> u32 {
        self.file
            .services
            .iter()
            .find(|s| s.name == service)
            .map(|s| s.weight_bp())
            .unwrap_or(0)
    }

    fn act(&mut self, service: &str, action: Action, reset: bool) {
        match action {
            Action::None => {}
            Action::SetWeight(bp, what) => {
                if let Err(e) = self.set_weight(service, bp, ROLLOUT) {
                    // The engine moved on but the data plane did not: a
                    // rollout that cannot apply its steps stops, safely.
                    let why = format!("{what}: the weight could not be applied: {}", e.message);
                    if let Some(r) = self.state.rollouts.get_mut(service) {
                        r.abort(why.clone());
                    }
                    self.rollback_now(service, why, reset);
                    return;
                }
                self.step_began.insert(service.to_string(), Instant::now());
                let msg = format!("{what}: canary weight {bp}");
                info!("service {service}: {msg}");
                self.events.push(service, EventKind::Step, msg);
            }
            Action::Promoted(why) => {
                info!("service {service}: rollout promoted: {why}");
                self.events.push(service, EventKind::Promoted, why);
            }
            Action::Rollback(why) => self.rollback_now(service, why, reset),
        }
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
        let mut lines = self.set_weight(service, weight, who)?;
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
            self.state.save(&self.state_path)?;
            let line = format!("service {service}: rollout {why}");
            warn!("{line}");
            self.events.push(service, EventKind::Rollout, line.clone());
            lines.push(line);
        }
        Ok(lines)
    }

    /// `canaryctl rollout start|pause|resume|abort`.
    /// `verb` is the API's path segment: an unknown service is answered
    /// before an unknown verb.
    pub fn rollout(&mut self, service: &str, verb: &str, who: &str) -> OpResult<Vec<String>> {
        let i = self.service_index(service)?;
        let verb: RolloutVerb = verb
            .parse()
            .map_err(|e| OpError::new(Refusal::BadRequest, format!("{e:#}")))?;
        let svc = self.running.services[i].clone();
        let current = self.state.rollouts.get(service).cloned();
        let line = match verb {
            RolloutVerb::Start => {
                let plan = svc.rollout.clone().ok_or_else(|| {
                    OpError::new(
                        Refusal::Conflict,
                        format!("service {service} has no rollout: plan in the config"),
                    )
                })?;
                if let Some(r) = current.as_ref().filter(|r| r.active()) {
                    return Err(OpError::new(
                        Refusal::Conflict,
                        format!(
                            "a rollout of {service} is already {} at step {}/{}",
                            r.phase.name(),
                            r.step + 1,
                            r.steps.len()
                        ),
                    ));
                }
                let canary_down = svc.canary.iter().all(|b| self.dp.is_unhealthy(service, *b));
                if canary_down {
                    return Err(OpError::new(
                        Refusal::Conflict,
                        format!("service {service}: no healthy canary backend to roll out to"),
                    ));
                }
                let (r, action) = Rollout::start(&plan);
                self.state.rollouts.insert(service.to_string(), r);
                if let Some(cur) = self.cumulative(service) {
                    self.tick_prev.insert(service.to_string(), cur);
                }
                let line = format!(
                    "service {service}: rollout started by {who}: steps {:?} %, {:?} per step",
                    plan.steps, plan.interval
                );
                info!("{line}");
                self.events.push(service, EventKind::Rollout, line.clone());
                self.act(service, action, false);
                line
            }
            RolloutVerb::Pause | RolloutVerb::Resume => {
                let mut r = current.ok_or_else(|| {
                    OpError::new(Refusal::Conflict, format!("no rollout of {service}"))
                })?;
                let done = if verb == RolloutVerb::Pause {
                    r.pause()
                } else {
                    r.resume()
                };
                if !done {
                    return Err(OpError::new(
                        Refusal::Conflict,
                        format!("the rollout of {service} is {}", r.phase.name()),
                    ));
                }
                self.state.rollouts.insert(service.to_string(), r);
                if verb == RolloutVerb::Resume {
                    // The window resumes from now: paused traffic does not
                    // count, and external readings must be newer than this.
                    if let Some(cur) = self.cumulative(service) {
                        self.tick_prev.insert(service.to_string(), cur);
                    }
                    self.step_began.insert(service.to_string(), Instant::now());
                }
                self.state.save(&self.state_path)?;
                let line = format!("service {service}: rollout {verb}d by {who}");
                info!("{line}");
                self.events.push(service, EventKind::Rollout, line.clone());
                line
            }
            RolloutVerb::Abort => {
                let r = current.filter(|r| r.active()).ok_or_else(|| {
                    OpError::new(
                        Refusal::Conflict,
                        format!("no rollout of {service} is running"),
                    )
                })?;
                let why = format!("aborted by {who} at step {}/{}", r.step + 1, r.steps.len());
                let reset = svc.rollout.as_ref().map(|p| p.on_rollback) == Some(OnRollback::Reset);
                self.rollback_now(service, why.clone(), reset);
                format!("service {service}: rollout {why}; canary weight 0")
            }
        };
        Ok(vec![line])
    }

    fn rollout_status(&self, service: &str) -> Option<RolloutStatus> {
        let r = self.state.rollouts.get(service)?;
        let elapsed = r.step_elapsed_ms as f64 / 1000.0;
        let interval = r.interval_ms as f64 / 1000.0;
        let a = r.last.clone();
        let verdict = match (&r.phase, &a) {
            (Phase::Promoted, _) => "promoted".to_string(),
            (Phase::Aborted, _) => "rolled back".to_string(),
            (_, _) if r.final_passed => "passed; waiting for the external metric".to_string(),
            (_, None) => "no data yet".to_string(),
            (_, Some(a)) => match &a.verdict {
                crate::rollout::analysis::Verdict::Pass => "pass (waiting for the interval)".into(),
                crate::rollout::analysis::Verdict::NeedMore { have, need } => {
                    format!("need more canary connections: {have} of {need}")
                }
                crate::rollout::analysis::Verdict::Fail { reason } => format!("failing: {reason}"),
            },
        };
        Some(RolloutStatus {
            phase: r.phase.name().to_string(),
            step: r.step + 1,
            steps: r.steps.clone(),
            step_elapsed_s: elapsed,
            step_interval_s: interval,
            time_left_s: (interval - elapsed).max(0.0),
            canary_connections: r.window.canary.attempts,
            canary_failures: r.window.canary.failures,
            stable_connections: r.window.stable.attempts,
            stable_failures: r.window.stable.failures,
            required_canary_connections: a.as_ref().map(|a| a.required_canary_connections),
            verdict,
            analysis: a,
            reason: r.reason.clone(),
            history: r.history.clone(),
            external: r.external.clone(),
        })
    }

    fn signals(&self, service: &str) -> Signals {
        if self.dp.service_id(service).is_none() {
            return Signals::default();
        }
        let one = |v: u32| {
            let hs = self.dp.health_counters(service, v).unwrap_or_default();
            VersionSignals {
                syn_acks: hs.syn_acks,
                resets: hs.rsts,
                handshake_timeouts: self
                    .timeouts
                    .get(&(service.to_string(), v))
                    .copied()
                    .unwrap_or(0),
                handshake_p50_ms: histogram_quantile(&hs.handshake_us_log2, 0.5)
                    .map(|us| us / 1000.0),
                handshake_p99_ms: histogram_quantile(&hs.handshake_us_log2, 0.99)
                    .map(|us| us / 1000.0),
                ..Default::default()
            }
        };
        let mut out = Signals {
            stable: one(0),
            canary: one(1),
        };
        // Rates and quantiles from the oldest recent sample (up to 10 s ago)
        // to now.
        if let (Some((t0, first)), Some(b)) = (self.recent.front(), self.cumulative(service)) {
            if let Some(a) = first.get(service) {
                let b = &b;
                let dt = t0.elapsed().as_secs_f64();
                if dt > 0.0 {
                    let d = window_delta(b, a);
                    for (sig, v) in [(&mut out.stable, &d.stable), (&mut out.canary, &d.canary)] {
                        sig.recent_window_s = dt;
                        sig.recent_connections_per_sec = v.attempts as f64 / dt;
                        sig.recent_failures_per_sec = v.failures as f64 / dt;
                        sig.recent_error_ratio = v.error_rate().map(|r| r.min(1.0));
                        sig.recent_handshake_p50_ms =
                            histogram_quantile(&v.handshake_us_log2, 0.5).map(|us| us / 1000.0);
                        sig.recent_handshake_p99_ms =
                            histogram_quantile(&v.handshake_us_log2, 0.99).map(|us| us / 1000.0);
                    }
                }
            }
        }
        out
    }

    pub fn running(&self) -> &Config {
        &self.running
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// Applies `next` as the running config and, if that worked, records
    /// `state` as the new run-time state.
    fn commit(&mut self, next: Config, state: RuntimeState) -> OpResult<Vec<String>> {
        let report = self
            .dp
            .apply(&next)
            .map_err(|e| OpError::new(Refusal::Conflict, format!("{e:#}")))?;
        self.running = next;
        self.state = state;
        self.state.save(&self.state_path)?;
        Ok(report.lines)
    }

    fn service_index(&self, name: &str) -> OpResult<usize> {
        self.running
            .services
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| OpError::new(Refusal::NotFound, format!("unknown service: {name}")))
    }

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
                "flow_table_size",
                file.flow_table_size == self.file.flow_table_size,
            ),
        ] {
            if !same {
                return Err(OpError::new(
                    Refusal::Conflict,
                    format!("{field}: changing it needs a restart of canaryd"),
                ));
            }
        }
        let mut state = self.state.clone();
        let next = state.effective(&file);
        let lines = self.commit(next, state)?;
        self.file = file;
        for l in &lines {
            info!("reload ({who}): {l}");
        }
        self.respawn_probes();
        Ok(lines)
    }

    /// Sets a service's canary weight on behalf of `who`.
    pub fn set_weight(
        &mut self,
        service: &str,
        weight: WeightBp,
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
        });
        self.commit(next, state)?;
        // Whatever set the weight last is in force now.
        self.pending_rollbacks.remove(service);
        let line = format!("service {service}: canary weight {old} -> {weight} ({who})");
        info!("{line}");
        Ok(vec![line])
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
        next.validate()
            .map_err(|e| OpError::new(Refusal::Conflict, format!("{e:#}")))?;
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

    /// Takes a counter snapshot (every second, from the daemon's loop).
    pub fn sample(&mut self) -> Result<()> {
        let snap = report::snapshot(&self.dp)?;
        self.prev = self.last.take();
        self.last = Some((Instant::now(), snap));
        let counts = self
            .running
            .services
            .iter()
            .filter_map(|s| Some((s.name.clone(), self.cumulative(&s.name)?)))
            .collect();
        self.recent.push_back((Instant::now(), counts));
        while self.recent.len() > 11 {
            self.recent.pop_front();
        }
        Ok(())
    }

    pub fn status(&self) -> Result<Status> {
        let now = report::snapshot(&self.dp)?;
        // Rates over the last full sampling interval.
        let (dt, before, after) = match (&self.prev, &self.last) {
            (Some((t0, a)), Some((t1, b))) => {
                ((*t1 - *t0).as_secs_f64().max(1e-3), Some(a), Some(b))
            }
            _ => (1.0, None, None),
        };
        let mut services = Vec::new();
        for s in &now.services {
            let Some(cfg) = self.running.services.iter().find(|c| c.name == s.name) else {
                continue;
            };
            let prev_s = before.and_then(|b| b.services.iter().find(|x| x.name == s.name));
            let last_s = after.and_then(|b| b.services.iter().find(|x| x.name == s.name));
            let rate = |f: &dyn Fn(&report::ServiceReport) -> u64| match (prev_s, last_s) {
                (Some(p), Some(l)) => l_minus(f(l), f(p)) as f64 / dt,
                _ => 0.0,
            };
            let version = |v: &canary_common::VersionStats, pps: f64, nps: f64| VersionStatus {
                packets: v.packets,
                bytes: v.bytes,
                new_flows: v.new_flows,
                reply_packets: v.reply_packets,
                reply_bytes: v.reply_bytes,
                packets_per_sec: pps,
                new_flows_per_sec: nps,
            };
            let stable_nps = rate(&|x| x.stable.new_flows);
            let canary_nps = rate(&|x| x.canary.new_flows);
            let observed = match (prev_s, last_s) {
                (Some(p), Some(l)) => {
                    let c = l_minus(l.canary.new_flows, p.canary.new_flows);
                    let t = c + l_minus(l.stable.new_flows, p.stable.new_flows);
                    (t > 0).then(|| c as f64 / t as f64)
                }
                _ => None,
            };
            let backends = s
                .backends
                .iter()
                .map(|b| {
                    let find = |snap: Option<&report::ServiceReport>| {
                        snap.and_then(|x| x.backends.iter().find(|y| y.addr == b.addr))
                            .map(|y| y.stats)
                    };
                    let (pps, nps) = match (find(prev_s), find(last_s)) {
                        (Some(p), Some(l)) => (
                            l_minus(l.packets, p.packets) as f64 / dt,
                            l_minus(l.new_flows, p.new_flows) as f64 / dt,
                        ),
                        _ => (0.0, 0.0),
                    };
                    BackendStatus {
                        addr: b.addr,
                        version: b.version,
                        packets: b.stats.packets,
                        bytes: b.stats.bytes,
                        new_flows: b.stats.new_flows,
                        reply_packets: b.stats.reply_packets,
                        packets_per_sec: pps,
                        new_flows_per_sec: nps,
                        healthy: cfg.health.as_ref().map(|_| {
                            self.health
                                .get(&(s.name.clone(), b.addr))
                                .map(|h| h.healthy)
                                .unwrap_or(true)
                        }),
                        health_detail: self
                            .health
                            .get(&(s.name.clone(), b.addr))
                            .map(|h| h.detail.clone()),
                    }
                })
                .collect();
            services.push(ServiceStatus {
                name: s.name.clone(),
                vip: cfg.vip,
                port: cfg.port,
                protocol: match cfg.protocol {
                    Protocol::Tcp => "tcp".into(),
                    Protocol::Udp => "udp".into(),
                },
                affinity: match cfg.affinity {
                    crate::config::Affinity::SourceIp => "source-ip".into(),
                    crate::config::Affinity::Flow => "flow".into(),
                },
                weight_percent: WeightBp::from_bp(s.weight_bp).percent(),
                weight_source: self.state.weight_source(&s.name),
                stable: version(&s.stable, rate(&|x| x.stable.packets), stable_nps),
                canary: version(&s.canary, rate(&|x| x.canary.packets), canary_nps),
                observed_canary_share: observed,
                observed_canary_share_total: s.observed_canary_share(),
                backends,
                signals: self.signals(&s.name),
                rollout: self.rollout_status(&s.name),
                rollbacks: self.state.rollbacks.get(&s.name).copied().unwrap_or(0),
            });
        }
        let datapath = reason::NAMES
            .iter()
            .zip(now.datapath.iter())
            .map(|(n, v)| (n.to_string(), *v))
            .collect();
        Ok(Status {
            instance: self.instance.clone(),
            services,
            datapath,
        })
    }

    /// The eBPF log reader, polled by canaryd's event loop.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.dp.take_logger()
    }

    /// The counters as they are now (canaryd's periodic stats line).
    pub fn snapshot(&self) -> Result<Snapshot> {
        report::snapshot(&self.dp)
    }

    /// Removes the data plane and the saved run-time state.
    pub fn teardown(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.state_path);
        self.dp.teardown()
    }
}

/// This tick's counters: `cur - prev` per field (a reset counter gives 0).
fn window_delta(cur: &WindowCounts, prev: &WindowCounts) -> WindowCounts {
    let one = |c: &VersionCounts, p: &VersionCounts| {
        let mut h = c.handshake_us_log2;
        for (x, y) in h.iter_mut().zip(p.handshake_us_log2.iter()) {
            *x = x.saturating_sub(*y);
        }
        VersionCounts {
            attempts: c.attempts.saturating_sub(p.attempts),
            failures: c.failures.saturating_sub(p.failures),
            handshake_us_log2: h,
        }
    };
    WindowCounts {
        stable: one(&cur.stable, &prev.stable),
        canary: one(&cur.canary, &prev.canary),
    }
}

/// Counter difference that tolerates a counter reset (a fresh id).
fn l_minus(a: u64, b: u64) -> u64 {
    a.saturating_sub(b)
}

/// An API percent as a weight, with the API's error kind.
pub fn weight_from_percent(percent: f64) -> OpResult<WeightBp> {
    WeightBp::from_percent(percent)
        .map_err(|e| OpError::new(Refusal::BadRequest, format!("weight {e}")))
}
