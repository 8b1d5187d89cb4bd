//! Resolution of defaults and derived values: the serde defaults of the
//! model, the default seed, a service's weight and pools, the plan's
//! statistical limits, the interfaces to attach to.

use super::model::*;
use super::Version;
use canary_common::weight::WeightBp;
use canary_common::{FlowTimeouts, DEFAULT_FLOW_TABLE_SIZE, DEFAULT_SERVICE_LIMIT};
use std::net::IpAddr;
use std::time::Duration;

pub(super) fn default_probe_path() -> String {
    "/".into()
}
pub(super) fn default_expect_status() -> u16 {
    200
}
pub(super) fn default_probe_interval() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_probe_timeout() -> Duration {
    Duration::from_millis(500)
}
pub(super) fn default_unhealthy_after() -> u32 {
    3
}
pub(super) fn default_healthy_after() -> u32 {
    2
}

pub(super) fn default_alpha() -> f64 {
    0.01
}
pub(super) fn default_power() -> f64 {
    0.9
}
pub(super) fn default_min_failing_clients() -> u64 {
    3
}
pub(super) fn default_min_canary_connections() -> u64 {
    100
}
pub(super) fn default_handshake_timeout() -> Duration {
    Duration::from_secs(3)
}

pub(super) fn default_prometheus_interval() -> Duration {
    Duration::from_secs(5)
}

pub(super) fn default_judged_per_client_per_s() -> u32 {
    canary_common::DEFAULT_JUDGED_PER_CLIENT_PER_S
}
pub(super) fn default_syn_flood_threshold() -> u32 {
    50_000
}
pub(super) fn default_sweep_interval() -> Duration {
    Duration::from_secs(5)
}
const DEFAULT_TIMEOUTS: FlowTimeouts = canary_common::flow::DEFAULT_TIMEOUTS;
pub(super) fn default_tcp_established() -> Duration {
    Duration::from_secs(DEFAULT_TIMEOUTS.tcp_established as u64)
}
pub(super) fn default_tcp_handshake() -> Duration {
    Duration::from_secs(DEFAULT_TIMEOUTS.tcp_handshake as u64)
}
pub(super) fn default_tcp_closing() -> Duration {
    Duration::from_secs(DEFAULT_TIMEOUTS.tcp_closing as u64)
}
pub(super) fn default_udp() -> Duration {
    Duration::from_secs(DEFAULT_TIMEOUTS.udp as u64)
}
pub(super) fn default_udp_replied() -> Duration {
    Duration::from_secs(DEFAULT_TIMEOUTS.udp_replied as u64)
}
pub(super) fn default_service_limit() -> u32 {
    DEFAULT_SERVICE_LIMIT
}

impl Default for FlowTableConfig {
    fn default() -> Self {
        FlowTableConfig {
            size: None,
            timeouts: FlowTimeoutsConfig::default(),
            syn_flood_threshold: default_syn_flood_threshold(),
            sweep_interval: default_sweep_interval(),
        }
    }
}

impl Default for FlowTimeoutsConfig {
    fn default() -> Self {
        FlowTimeoutsConfig {
            tcp_established: default_tcp_established(),
            tcp_handshake: default_tcp_handshake(),
            tcp_closing: default_tcp_closing(),
            udp: default_udp(),
            udp_replied: default_udp_replied(),
        }
    }
}

impl FlowTimeoutsConfig {
    /// The timeouts as the data plane takes them (seconds; validation keeps
    /// them whole and within 1 s ..= 30 d).
    pub fn to_map(&self) -> FlowTimeouts {
        let s = |d: Duration| d.as_secs().min(u32::MAX as u64) as u32;
        FlowTimeouts {
            tcp_established: s(self.tcp_established),
            tcp_handshake: s(self.tcp_handshake),
            tcp_closing: s(self.tcp_closing),
            udp: s(self.udp),
            udp_replied: s(self.udp_replied),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            services: default_service_limit(),
        }
    }
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            max_error_ratio: None,
            max_p99_handshake_ms: None,
            max_canary_vs_stable_ratio: None,
            false_alarm_rate: default_alpha(),
            power: default_power(),
            min_canary_connections: default_min_canary_connections(),
            min_failing_clients: default_min_failing_clients(),
            handshake_timeout: default_handshake_timeout(),
            prometheus: None,
            metrics: Vec::new(),
            latency: None,
        }
    }
}

impl RolloutConfig {
    /// The rollout features (`fleet::PLAN_FEATURES`) this plan needs every
    /// host of a fleet to run.
    pub fn features(&self) -> Vec<&'static str> {
        let a = &self.analysis;
        [
            ("adaptive", self.strategy == super::Strategy::Adaptive),
            ("cohorts", !self.cohorts.is_empty()),
            ("latency", a.latency.is_some()),
            ("metrics", !a.metrics.is_empty()),
            ("on_failure", self.on_failure == super::OnFailure::Pause),
        ]
        .into_iter()
        .filter_map(|(f, used)| used.then_some(f))
        .collect()
    }

    /// The statistics' limits for this plan.
    pub fn limits(&self) -> crate::rollout::analysis::Limits {
        let a = &self.analysis;
        crate::rollout::analysis::Limits {
            max_error_ratio: a.max_error_ratio,
            max_canary_vs_stable_ratio: a.max_canary_vs_stable_ratio,
            max_p99_handshake_ms: a.max_p99_handshake_ms,
            alpha: a.false_alarm_rate,
            steps: self.steps.len() as u32,
            // An adaptive rollout's engine sets its step's share.
            alpha_step: None,
            power: a.power,
            min_canary_connections: a.min_canary_connections,
            min_failing_clients: a.min_failing_clients,
        }
    }
}

/// Plans for unit tests and simulations: the rest of the fields at their
/// defaults (no cohorts, rollback on failure, keep open connections).
#[cfg(test)]
impl RolloutConfig {
    pub fn fixed_for_test(
        steps: Vec<f64>,
        interval: std::time::Duration,
        analysis: AnalysisConfig,
    ) -> RolloutConfig {
        RolloutConfig {
            steps,
            interval,
            analysis,
            on_rollback: Default::default(),
            on_failure: Default::default(),
            strategy: super::Strategy::Fixed,
            adaptive: None,
            cohorts: Vec::new(),
        }
    }

    /// Adaptive, with `AdaptiveConfig::for_test(budget)`.
    pub fn adaptive_for_test(
        budget: Vec<u64>,
        interval: std::time::Duration,
        analysis: AnalysisConfig,
    ) -> RolloutConfig {
        RolloutConfig {
            strategy: super::Strategy::Adaptive,
            adaptive: Some(super::AdaptiveConfig::for_test(budget)),
            ..RolloutConfig::fixed_for_test(Vec::new(), interval, analysis)
        }
    }
}

/// Default seed: FNV-1a of the service name, so every host derives the same.
pub fn default_seed(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

impl ServiceConfig {
    /// The canary weight (0 when `canary_weight` is invalid; validation
    /// refuses such a file before it is used).
    pub fn weight(&self) -> WeightBp {
        WeightBp::from_percent(self.canary_weight).unwrap_or(WeightBp::ZERO)
    }
    /// The weight in basis points.
    pub fn weight_bp(&self) -> u32 {
        self.weight().bp()
    }
    /// Sets the canary weight (the file's unit is percent). Cohorts go
    /// off: whatever sets the weight alone (an operator, a rollback, a
    /// finish) sends every client by it; a rollout step sets the cohorts'
    /// weights after (`set_cohort_weights`).
    pub fn set_weight(&mut self, w: WeightBp) {
        self.canary_weight = w.percent();
        self.set_cohort_weights(None);
    }
    pub fn seed(&self) -> u32 {
        self.seed.unwrap_or_else(|| default_seed(&self.name))
    }
    pub fn pool(&self, v: Version) -> &[IpAddr] {
        match v {
            Version::Stable => &self.stable,
            Version::Canary => &self.canary,
        }
    }
}

impl Config {
    /// Entries of the flow table: `flow_table.size`, or the older top-level
    /// `flow_table_size`, or the default.
    pub fn flow_table_entries(&self) -> u32 {
        self.flow_table
            .size
            .or(self.flow_table_size)
            .unwrap_or(DEFAULT_FLOW_TABLE_SIZE)
    }

    /// All interfaces the program attaches to, the client-facing one first.
    pub fn interfaces(&self) -> Vec<String> {
        let mut all = vec![self.interface.clone()];
        for i in &self.backend_interfaces {
            if !all.contains(i) {
                all.push(i.clone());
            }
        }
        all
    }

    /// The field that names `iface`, one of `interfaces()`: `interface`,
    /// else the first `backend_interfaces[i]` that names it.
    pub fn interface_field(&self, iface: &str) -> String {
        match self.backend_interfaces.iter().position(|i| i == iface) {
            Some(i) if self.interface != iface => format!("backend_interfaces[{i}]"),
            _ => "interface".to_string(),
        }
    }
}

pub fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
}

pub fn default_report_interval() -> Duration {
    Duration::from_secs(1)
}

impl FleetConfig {
    /// This host's name in the fleet: `host:`, else the system's host name.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".to_string())
        })
    }
}
