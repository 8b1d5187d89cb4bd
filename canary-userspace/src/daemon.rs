//! The daemon's core: the running config (file plus run-time changes), the
//! data plane, and the operations the control API, signals and (later) the
//! rollout engine perform. Every change goes through here, is applied to the
//! maps as a whole config, logged with who asked, and saved so a restart
//! keeps it.

use crate::api::{BackendStatus, Explain, ServiceStatus, Status, VersionStatus};
use crate::config::{percent_to_bp, Config, Protocol, Version, DEFAULT_CONFIG};
use crate::dataplane::DataPlane;
use crate::report::{self, Snapshot};
use crate::state::{PoolOverride, RuntimeState, WeightOverride, DEFAULT_STATE_DIR};
use anyhow::{Context, Result};
use canary_common::reason;
use log::info;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    pub dp: DataPlane,
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
                    "service {}: canary weight {:.2}% kept from {src}",
                    s.name,
                    s.weight_bp() as f64 / 100.0
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
        })
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
        Ok(lines)
    }

    /// Sets a service's canary weight (basis points) on behalf of `who`.
    pub fn set_weight(
        &mut self,
        service: &str,
        weight_bp: u32,
        who: &str,
    ) -> OpResult<Vec<String>> {
        let i = self.service_index(service)?;
        if weight_bp > canary_common::WEIGHT_SCALE_BP {
            return Err(OpError::new(
                Refusal::BadRequest,
                format!("weight {weight_bp} bp is out of range (0 to 10000)"),
            ));
        }
        let old_bp = self.running.services[i].weight_bp();
        if weight_bp > 0 && self.running.services[i].canary.is_empty() {
            return Err(OpError::new(
                Refusal::Conflict,
                format!("service {service}: the canary pool is empty, the weight can only be 0"),
            ));
        }
        let mut next = self.running.clone();
        next.services[i].canary_weight = weight_bp as f64 / 100.0;
        let mut state = self.state.clone();
        let file_bp = self
            .file
            .services
            .iter()
            .find(|s| s.name == service)
            .map(|s| s.weight_bp())
            .unwrap_or(0);
        state
            .services
            .entry(service.to_string())
            .or_default()
            .weight = Some(WeightOverride {
            weight_bp,
            source: who.to_string(),
            file_weight_bp: file_bp,
        });
        self.commit(next, state)?;
        let line = format!(
            "service {service}: canary weight {:.2}% -> {:.2}% ({who})",
            old_bp as f64 / 100.0,
            weight_bp as f64 / 100.0
        );
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
        let (ip, port) = crate::explain::parse_client(client)
            .map_err(|e| OpError::new(Refusal::BadRequest, format!("{e:#}")))?;
        let sid = *self
            .dp
            .ids()
            .services
            .get(service)
            .ok_or_else(|| OpError::new(Refusal::Internal, "service has no id"))?;
        crate::explain::explain(&self.dp.maps, sid, s, ip, port)
            .map_err(|e| OpError::new(Refusal::BadRequest, format!("{e:#}")))
    }

    /// Takes a counter snapshot (every second, from the daemon's loop).
    pub fn sample(&mut self) -> Result<()> {
        let snap = report::snapshot(&self.dp)?;
        self.prev = self.last.take();
        self.last = Some((Instant::now(), snap));
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
                weight_percent: s.weight_bp as f64 / 100.0,
                weight_source: self.state.weight_source(&s.name),
                stable: version(&s.stable, rate(&|x| x.stable.packets), stable_nps),
                canary: version(&s.canary, rate(&|x| x.canary.packets), canary_nps),
                observed_canary_share: observed,
                observed_canary_share_total: s.observed_canary_share(),
                backends,
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

    /// Removes the data plane and the saved run-time state.
    pub fn teardown(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.state_path);
        self.dp.teardown()
    }
}

/// Counter difference that tolerates a counter reset (a fresh id).
fn l_minus(a: u64, b: u64) -> u64 {
    a.saturating_sub(b)
}

/// Percent text to basis points for the API, with the API's error kind.
pub fn weight_from_percent(percent: f64) -> OpResult<u32> {
    percent_to_bp(percent).map_err(|e| OpError::new(Refusal::BadRequest, format!("weight {e:#}")))
}
