//! The daemon's core: the running config (file plus run-time changes), the
//! data plane, and the operations the control API, signals and the rollout
//! engine perform. Every change goes through here, is applied to the maps as
//! a whole config, logged with who asked, and saved so a restart keeps it.
//!
//! Here: the `Daemon` type, its start and the one commit path. By concern:
//! `ops` (operations behind the API), `probes` (health-probe driver),
//! `driver` (rollout driver and rollback), `status` (status views),
//! `state` (the state file), `events` (the event log).

mod cohorts;
mod driver;
pub mod events;
mod failing;
mod finish;
mod fleet;
mod flows;
mod ops;
mod probes;
mod reload;
pub mod state;
mod status;

pub use ops::weight_from_percent;
pub use reload::reload;

use crate::config::{Config, OnRollback, Protocol, Version, DEFAULT_CONFIG};
use crate::control::api::{
    BackendStatus, Explain, RolloutStatus, RolloutVerb, ServiceStatus, Signals, Status,
    VersionSignals, VersionStatus,
};
use crate::dataplane::report::{self, Snapshot};
use crate::dataplane::sweep::Sweeper;
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

/// Locks the daemon canaryd's tasks share (`Arc<Mutex<Daemon>>`). A panic
/// while holding the lock poisons it; the state is still the last
/// consistent one (every change commits at its end), so go on.
pub fn lock(daemon: &std::sync::Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    daemon.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the config came from, for errors: `config PATH` or the built-in
/// one.
fn config_source(path: Option<&Path>) -> String {
    match path {
        Some(p) => format!("config {}", p.display()),
        None => "built-in config".to_string(),
    }
}

/// The config to run: the file with `state`'s run-time changes, those that
/// fit. `host` is this host's addresses, at which a run-time pool is
/// dropped like any invalid change, but in a fleet (its pools are the
/// fleet's, the same on every host). The dropped changes' lines name the
/// state file they came from.
fn effective_here(
    state: &mut RuntimeState,
    state_path: &Path,
    file: &Config,
    host: &[(IpAddr, String)],
) -> state::Effective {
    let host = if file.fleet.is_some() { &[][..] } else { host };
    let mut effective = state.effective(file, host);
    for line in &mut effective.dropped {
        *line = format!("state file {}: {line}", state_path.display());
    }
    effective
}

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
    /// A change is live in the maps but its state save failed (why): the
    /// save is retried (`retry_save`, and by the next change) until it works.
    unsaved: Option<String>,
    /// The flow-table sweep thread (started by canaryd).
    sweeper: Option<Sweeper>,
    /// SYN-flood mode as the data path's counters show it.
    flood: flows::FloodWatch,
    /// SYNs dropped for a wrong TCP checksum, watched for the veth trap.
    bad_checksums: flows::BadChecksumWatch,
    /// The distinct clients behind each version's failures in the step.
    failing: failing::FailingClients,
    /// When LOCAL_ADDRS was last compared with this host's addresses.
    local_addrs_at: Option<Instant>,
    /// The fleet (`fleet:` in the config): etcd's state as this host sees
    /// it. None: this host decides alone.
    fleet: Option<Box<fleet::FleetState>>,
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
        // No backend of the file at this host's own addresses: checked
        // first, so the error names the file, not a run-time change.
        let host = crate::dataplane::host_addresses()?;
        file.check_backends_not_on_host(&host)
            .with_context(|| config_source(config_path.as_deref()))?;
        let effective = effective_here(&mut state, &state_path, &file, &host);
        for line in &effective.dropped {
            warn!("{line}");
        }
        let running = effective.config;
        let mut dp = DataPlane::load_with(
            instance,
            crate::dataplane::LoadOptions::from_config(&running),
        )?;
        // A data plane this process created is removed again when the start
        // fails; one taken over from an earlier canaryd keeps forwarding.
        let abandon = |dp: &mut DataPlane| {
            if dp.adopted() {
                error!("the pinned data plane is left running as it was");
            } else if let Err(e) = dp.teardown() {
                error!("removing the data plane this canaryd attached: {e:#}");
            } else {
                info!("the data plane this canaryd attached is removed again");
            }
        };
        match dp.apply(&running) {
            Ok(report) => {
                for line in report.lines {
                    info!("{line}");
                }
            }
            Err(e) => {
                abandon(&mut dp);
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
        if let Err(e) = state.save(&state_path) {
            abandon(&mut dp);
            return Err(e.context("saving the run-time state"));
        }
        let file_fleet = running.fleet.clone();
        let mut daemon = Daemon {
            dp,
            instance: instance.to_string(),
            config_path,
            file,
            running,
            state,
            state_path,
            prev: None,
            last: None,
            events: Arc::new(Events::starting_now()),
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
            unsaved: None,
            sweeper: None,
            flood: flows::FloodWatch::default(),
            bad_checksums: flows::BadChecksumWatch::default(),
            failing: failing::FailingClients::default(),
            local_addrs_at: None,
            fleet: file_fleet.as_ref().map(|cfg| {
                // This run of canaryd: a host skips the echo of its own writes.
                let session = crate::fleet::unix_ms() ^ (u64::from(std::process::id()) << 40);
                Box::new(fleet::FleetState::new(cfg, session))
            }),
        };
        daemon.fleet_seed();
        Ok(daemon)
    }

    pub fn running(&self) -> &Config {
        &self.running
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// Applies `next` as the running config and, if that worked, records
    /// `state` as the new run-time state. Once the maps have it the change
    /// is live, so it is a success even if the state file cannot be written:
    /// the answer and the log say so, and the save is retried later.
    fn commit(&mut self, next: Config, state: RuntimeState) -> OpResult<Vec<String>> {
        let mut report = self
            .dp
            .apply(&next)
            .map_err(|e| OpError::new(Refusal::Conflict, format!("{e:#}")))?;
        self.running = next;
        self.state = state;
        self.flow_config_changed();
        if let Some(line) = self.save_state() {
            report.lines.push(line);
        }
        Ok(report.lines)
    }

    /// Saves the run-time state. On failure the change stays live but
    /// unsaved: the line returned (and logged) says so, and `retry_save`
    /// tries again.
    fn save_state(&mut self) -> Option<String> {
        match self.state.save(&self.state_path) {
            Ok(()) => {
                if self.unsaved.take().is_some() {
                    info!("run-time state saved to {}", self.state_path.display());
                }
                None
            }
            Err(e) => {
                self.unsaved = Some(format!("{e:#}"));
                let line = self.unsaved_note();
                if let Some(l) = &line {
                    error!("{l}");
                }
                line
            }
        }
    }

    /// The line saying the run-time state is not saved, while it is not.
    fn unsaved_note(&self) -> Option<String> {
        self.unsaved.as_ref().map(|e| {
            format!(
                "applied, but not saved to {}: {e}; it will not survive a restart \
                 (the save is retried)",
                self.state_path.display()
            )
        })
    }

    /// Retries a failed state save (canaryd calls it every second). Logs
    /// only when the save works again.
    pub fn retry_save(&mut self) {
        if self.unsaved.is_none() {
            return;
        }
        if self.state.save(&self.state_path).is_ok() {
            self.unsaved = None;
            info!(
                "run-time state saved to {} (an earlier save had failed)",
                self.state_path.display()
            );
        }
    }

    /// Checks the data plane's pins and restores those removed (canaryd
    /// calls it every second; it logs what it found).
    pub fn watch_pins(&mut self) {
        self.dp.check_pins();
    }

    /// The running services' names, in config order.
    fn service_names(&self) -> Vec<String> {
        self.running
            .services
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// The running services' weights (to say what a change moved).
    fn weights(&self) -> Vec<(String, WeightBp)> {
        self.running
            .services
            .iter()
            .map(|s| (s.name.clone(), s.weight()))
            .collect()
    }

    fn service_index(&self, name: &str) -> OpResult<usize> {
        self.running
            .services
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| OpError::new(Refusal::NotFound, format!("unknown service: {name}")))
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
        if let Some(s) = self.sweeper.take() {
            s.stop();
        }
        let _ = std::fs::remove_file(&self.state_path);
        self.dp.teardown()
    }
}
