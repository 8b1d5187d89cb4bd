//! The configuration's model: the YAML file's structure, field by field,
//! with serde's names and defaults. No rules here (validate.rs) and no
//! derived values (resolve.rs).

use super::resolve::*;
use super::Version;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The client-facing interface (where packets to the VIPs arrive).
    pub interface: String,
    /// Interfaces where backend replies arrive. Empty: the client-facing one
    /// (a one-armed load balancer).
    #[serde(default)]
    pub backend_interfaces: Vec<String>,
    /// For each of these interfaces that is a veth, set what XDP forwarding
    /// needs on its peer (TX checksum offload off, GRO on; `ethtool -K PEER
    /// tx off gro on` in the peer's namespace) instead of only warning. Off
    /// by default: canaryd then changes no interface.
    #[serde(default)]
    pub fix_veth_offloads: bool,
    /// Entries of the flow table (connection affinity). Fixed at load time.
    /// The older spelling of `flow_table.size` (still accepted; not both).
    #[serde(default)]
    pub flow_table_size: Option<u32>,
    /// The flow table: size, idle timeouts, SYN-flood threshold, sweep.
    #[serde(default)]
    pub flow_table: FlowTableConfig,
    /// Sizes fixed when the data plane is loaded.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The control API's Unix socket (root only, mode 0600). Default
    /// /run/canary/canaryd.sock.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Address of the read-only Prometheus endpoint; none when absent.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Where canaryd keeps what must survive a restart (weights set with
    /// canaryctl, rollout progress). Default /var/lib/canary.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Several hosts acting as one, their shared state in etcd. Absent: this
    /// canaryd decides alone.
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
    /// Which connections rollouts judge (see `judging:`).
    #[serde(default)]
    pub judging: JudgingConfig,
    pub services: Vec<ServiceConfig>,
}

/// `judging:`: how much one client address may weigh in a rollout's
/// judgement. A connection is judged when its opening packet was checked
/// and its client is within this budget; only judged connections' failures
/// count (see the data plane's `judge.rs`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JudgingConfig {
    /// Judged new connections a second per client address and service; the
    /// rest are forwarded alike but not judged. 0: no limit.
    #[serde(default = "default_judged_per_client_per_s")]
    pub per_client_per_second: u32,
}

impl Default for JudgingConfig {
    fn default() -> Self {
        JudgingConfig {
            per_client_per_second: default_judged_per_client_per_s(),
        }
    }
}

/// `fleet:`: the etcd cluster that holds the fleet's desired state, and this
/// host's name in it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// etcd client URLs (`http://host:2379`); any one reachable member with
    /// quorum is enough.
    pub etcd: Vec<String>,
    /// The fleet's name: its keys live under `/canary/<cluster>/`.
    pub cluster: String,
    /// This host's name in the fleet (default: the system's host name).
    #[serde(default)]
    pub host: Option<String>,
    /// Lifetime of this host's etcd lease: its reports and its leadership
    /// end this long after it stops renewing them (a crash, a cut link).
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often this host reports what it applied, its counters and its
    /// health view.
    #[serde(default = "default_report_interval", with = "humantime_serde")]
    pub report_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Affinity {
    /// One client address, one version, across all its connections.
    #[default]
    SourceIp,
    /// Each connection (5-tuple) is split on its own.
    Flow,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    pub cidr: IpNet,
    pub version: Version,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub affinity: Affinity,
    /// Percent of new connections sent to canary, 0 to 100, two decimals.
    #[serde(default)]
    pub canary_weight: f64,
    pub stable: Vec<IpAddr>,
    #[serde(default)]
    pub canary: Vec<IpAddr>,
    #[serde(default)]
    pub overrides: Vec<OverrideConfig>,
    /// Hash seed; every host of a fleet must use the same. Default: derived
    /// from the service name.
    #[serde(default)]
    pub seed: Option<u32>,
    /// Active health probes of every backend; none when absent.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// The step-wise rollout plan `canaryctl rollout start` runs.
    #[serde(default)]
    pub rollout: Option<RolloutConfig>,
    /// Run time only (`rollout finish`): former stable backends that keep
    /// their id and reverse NAT for their open connections but get no new
    /// ones. Never in the file.
    #[serde(skip)]
    pub draining: Vec<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// A TCP connect within the timeout.
    #[default]
    Tcp,
    /// An HTTP/1.1 GET of `path` answered with `expect_status` within the
    /// timeout (and within `max_latency`, if set).
    Http,
}

/// Active probes: a backend that fails `unhealthy_after` probes in a row
/// leaves its pool's Maglev table (open connections stay), and returns after
/// `healthy_after` successes in a row. A pool whose every backend is unhealthy
/// keeps them all (failing open); for the canary pool that also rolls the
/// canary back (weight 0).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default)]
    pub probe: ProbeKind,
    /// Port probed; default the service port (required for UDP services).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_probe_path")]
    pub path: String,
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// An HTTP answer slower than this counts as a failure.
    #[serde(default, with = "humantime_serde")]
    pub max_latency: Option<Duration>,
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnRollback {
    /// Canary connections already open are left to finish.
    #[default]
    Keep,
    /// Canary connections are forgotten by the flow table at once, so their
    /// next packets are split again (they break: the new backend has no
    /// such connection).
    Reset,
}

/// Limits of each step's analysis (see `analysis.rs` for the statistics).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Ceiling on the canary's connection error ratio (RSTs and handshake
    /// timeouts over connections), 0..1.
    #[serde(default)]
    pub max_error_ratio: Option<f64>,
    /// Ceiling on the canary's p99 SYN -> SYN-ACK time, milliseconds.
    #[serde(default)]
    pub max_p99_handshake_ms: Option<f64>,
    /// The canary's error ratio may be at most this multiple of stable's in
    /// the same window (> 1); each step is sized to detect this regression.
    #[serde(default)]
    pub max_canary_vs_stable_ratio: Option<f64>,
    /// Probability that a rollout of a canary as good as stable is rolled
    /// back anyway (split over steps and checks).
    #[serde(default = "default_alpha")]
    pub false_alarm_rate: f64,
    /// Probability of catching a canary exactly at the ratio limit.
    #[serde(default = "default_power")]
    pub power: f64,
    /// No step passes with fewer canary connections than this.
    #[serde(default = "default_min_canary_connections")]
    pub min_canary_connections: u64,
    /// A step fails on its error counts only when at least this many
    /// distinct clients failed in it: one client cannot fail a canary.
    #[serde(default = "default_min_failing_clients")]
    pub min_failing_clients: u64,
    /// A SYN with no SYN-ACK after this long is a failed connection.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// An application metric from Prometheus, per version.
    #[serde(default)]
    pub prometheus: Option<PrometheusCheck>,
    /// Further metrics, business ones included (see plan_signals.rs).
    #[serde(default)]
    pub metrics: Vec<super::MetricCheck>,
    /// Canary against stable on response time (see plan_signals.rs).
    #[serde(default)]
    pub latency: Option<super::LatencyCheck>,
}

/// An external metric: a PromQL query run for each version (`$version`
/// replaced by `stable` or `canary`) against the Prometheus HTTP API. The
/// canary fails the step when its value is above `max_value`, or above
/// `max_canary_vs_stable_ratio` times stable's while stable's is above 0
/// (`max_value` is required, for the stable-at-0 case). A step passes only with a
/// fresh canary value (no value, or Prometheus unreachable: the step waits).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusCheck {
    /// Base URL of the Prometheus server (http), e.g. http://127.0.0.1:9090.
    pub url: String,
    pub query: String,
    #[serde(default)]
    pub max_value: Option<f64>,
    #[serde(default)]
    pub max_canary_vs_stable_ratio: Option<f64>,
    /// How often to query.
    #[serde(default = "default_prometheus_interval", with = "humantime_serde")]
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Canary weights in percent, rising, e.g. [5, 10, 15, 20, 50, 100]
    /// (a fixed plan; an adaptive one has none).
    #[serde(default)]
    pub steps: Vec<f64>,
    /// Least observation time per step (a step also waits for the canary
    /// connections its analysis needs).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default)]
    pub analysis: AnalysisConfig,
    #[serde(default)]
    pub on_rollback: OnRollback,
    /// What a failed step does (rollback by default).
    #[serde(default)]
    pub on_failure: super::OnFailure,
    /// Fixed steps or adaptive ones (`adaptive:`).
    #[serde(default)]
    pub strategy: super::Strategy,
    #[serde(default)]
    pub adaptive: Option<super::AdaptiveConfig>,
    /// Source-network cohorts with their own weight per step.
    #[serde(default)]
    pub cohorts: Vec<super::CohortConfig>,
}

/// `flow_table:`. The size is fixed at load time (a restart changes it);
/// timeouts, threshold and sweep interval change on reload.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowTableConfig {
    /// Entries (64 ..= 16777216); default 262144.
    #[serde(default)]
    pub size: Option<u32>,
    #[serde(default)]
    pub timeouts: FlowTimeoutsConfig,
    /// Stateful new flows per second (host-wide) above which bare SYNs are
    /// decided without a flow entry (flood mode). 0: flood mode off.
    #[serde(default = "default_syn_flood_threshold")]
    pub syn_flood_threshold: u32,
    /// How often canaryd removes expired entries and counts occupancy.
    #[serde(default = "default_sweep_interval", with = "humantime_serde")]
    pub sweep_interval: Duration,
}

/// `flow_table.timeouts:`: idle timeouts of a flow entry, whole seconds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowTimeoutsConfig {
    /// TCP after the backend answered (RFC 5382: at least 2 h 4 min).
    #[serde(default = "default_tcp_established", with = "humantime_serde")]
    pub tcp_established: Duration,
    /// TCP before the backend answered (conntrack's SYN_SENT: 2 min).
    #[serde(default = "default_tcp_handshake", with = "humantime_serde")]
    pub tcp_handshake: Duration,
    /// TCP after FIN both ways or a RST (conntrack's CLOSE: 10 s).
    #[serde(default = "default_tcp_closing", with = "humantime_serde")]
    pub tcp_closing: Duration,
    /// UDP before the backend answered (conntrack's unreplied: 30 s).
    #[serde(default = "default_udp", with = "humantime_serde")]
    pub udp: Duration,
    /// UDP after the backend answered (conntrack's stream: 2 min).
    #[serde(default = "default_udp_replied", with = "humantime_serde")]
    pub udp_replied: Duration,
}

/// `limits:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Services this data plane can hold (1 ..= 1024): sizes the Maglev
    /// tables (256 KiB per service). A restart changes it.
    #[serde(default = "default_service_limit")]
    pub services: u32,
}
