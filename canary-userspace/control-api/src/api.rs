//! The control API's JSON bodies, shared by `canaryd` (server) and
//! `canaryctl` (client). Routes (HTTP/1.1 over the Unix socket):
//!
//! | method | path | body | answer |
//! | --- | --- | --- | --- |
//! | GET | /v1/status | | `Status` |
//! | POST | /v1/services/{name}/weight | `SetWeight` | `Change` |
//! | POST | /v1/services/{name}/rollback | | `Change` |
//! | POST | /v1/services/{name}/promote | | `Change` |
//! | POST | /v1/services/{name}/backends/add | `BackendChange` | `Change` |
//! | POST | /v1/services/{name}/backends/remove | `BackendChange` | `Change` |
//! | GET | /v1/services/{name}/explain?client=IP[:PORT] | | `Explain` |
//! | POST | /v1/services/{name}/rollout/{start,pause,resume,abort} | | `Change` |
//! | GET | /v1/events?after=SEQ&wait_ms=MS | | `[Event]` (long poll) |
//! | POST | /v1/reload | | `Change` |
//! | POST | /v1/teardown | | `Change` |
//!
//! Every failure is a non-2xx status with an `ApiError` body
//! (`{"error": "one line"}`), whatever went wrong:
//!
//! | status | when |
//! | --- | --- |
//! | 400 | a body or query string that does not parse, has a wrong type, a missing or unknown field (request bodies and query strings refuse unknown fields), a body without `Content-Type: application/json`, a bad path parameter, a weight out of range (0 to 100) or with more than two decimals |
//! | 403 | not root (checked before anything else of the request is read) |
//! | 404 | unknown service, unknown route |
//! | 405 | a route called with the wrong method |
//! | 409 | refused (a reload that fails validation, a weight for an empty canary pool, a rollout already running) |
//! | 413 | a body over axum's limit (2 MB) |
//! | 500 | internal |

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

pub const DEFAULT_SOCKET: &str = "/run/canary/canaryd.sock";

/// The two versions of a service: its pools, its counters, a client's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    Stable,
    Canary,
}

impl Version {
    /// The index the data plane uses (`canary_common::VERSION_*`).
    pub fn index(self) -> u32 {
        match self {
            Version::Stable => canary_common::VERSION_STABLE,
            Version::Canary => canary_common::VERSION_CANARY,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Version::Stable => "stable",
            Version::Canary => "canary",
        }
    }
    pub fn from_index(i: u32) -> Version {
        if i == canary_common::VERSION_CANARY {
            Version::Canary
        } else {
            Version::Stable
        }
    }
}

/// `POST /v1/services/{name}/rollout/{verb}`: what an operator can do to a
/// rollout. The path segment is the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutVerb {
    Start,
    Pause,
    Resume,
    Abort,
    /// Ends a release: the canary pool becomes the stable pool, the canary
    /// pool is emptied, the weight goes to 0 (`promote --finalize` too).
    Finish,
}

impl RolloutVerb {
    pub const ALL: [RolloutVerb; 5] = [
        RolloutVerb::Start,
        RolloutVerb::Pause,
        RolloutVerb::Resume,
        RolloutVerb::Abort,
        RolloutVerb::Finish,
    ];

    /// The path segment, also the word in log lines ("rollout {verb}d by").
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutVerb::Start => "start",
            RolloutVerb::Pause => "pause",
            RolloutVerb::Resume => "resume",
            RolloutVerb::Abort => "abort",
            RolloutVerb::Finish => "finish",
        }
    }
}

impl fmt::Display for RolloutVerb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for RolloutVerb {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<RolloutVerb> {
        match RolloutVerb::ALL.into_iter().find(|v| v.as_str() == s) {
            Some(v) => Ok(v),
            None => bail!("unknown rollout action {s:?} (start, pause, resume, abort, finish)"),
        }
    }
}

/// Parses `canaryctl explain`'s client: `IP`, `IPv4:PORT` or `[IPv6]:PORT`.
pub fn parse_client(text: &str) -> Result<(IpAddr, Option<u16>)> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Ok(sa) = text.parse::<std::net::SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    bail!("malformed client address {text:?} (expected IP, IPv4:PORT or [IPv6]:PORT)")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    pub error: String,
}

/// Counters of one version of a service, with per-second rates over the
/// daemon's last sampling interval (1 s).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VersionStatus {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    pub packets_per_sec: f64,
    pub new_flows_per_sec: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub addr: IpAddr,
    pub version: Version,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub packets_per_sec: f64,
    pub new_flows_per_sec: f64,
    /// Probe verdict; None when the service has no `health:`.
    #[serde(default)]
    pub healthy: Option<bool>,
    /// The last probe outcome that changed the verdict.
    #[serde(default)]
    pub health_detail: Option<String>,
    /// A former stable backend after `rollout finish`: no new connections,
    /// its open ones still forwarded and NATed until the drain ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<DrainStatus>,
}

/// A draining backend's state, in status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrainStatus {
    /// Flow-table entries naming the backend at the last sweep, on this host
    /// (None before the first sweep).
    pub open_connections: Option<u64>,
    /// Seconds until the drain ends (extended while connections are open).
    pub ends_in_s: f64,
}

/// Passive health signals of one version, since canaryd started (the
/// counters live in the data plane; timeouts are counted by canaryd).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VersionSignals {
    pub syn_acks: u64,
    /// Every RST from the version's backends (judged connections or not).
    pub resets: u64,
    pub handshake_timeouts: u64,
    /// New connections judged (checked opening, client within its budget):
    /// what rollouts count.
    #[serde(default)]
    pub judged: u64,
    /// RSTs from the version's backends on judged connections.
    #[serde(default)]
    pub judged_resets: u64,
    /// ICMP port unreachables from the version's backends for judged UDP
    /// flows.
    #[serde(default)]
    pub unreachables: u64,
    /// New connections not judged: their client was over its budget.
    #[serde(default)]
    pub not_judged: u64,
    pub handshake_p50_ms: Option<f64>,
    pub handshake_p99_ms: Option<f64>,
    /// The data plane's SYN -> SYN-ACK histogram since canaryd started
    /// (judged SYNs): bucket `i` counts `[2^i, 2^(i+1))` µs, the last one
    /// everything from `2^(len-1)` µs up. Empty from a peer without it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handshake_us_log2: Vec<u64>,
    /// The same over the last `recent_window_s` seconds (up to 10).
    #[serde(default)]
    pub recent_window_s: f64,
    #[serde(default)]
    pub recent_connections_per_sec: f64,
    #[serde(default)]
    pub recent_failures_per_sec: f64,
    /// (judged resets + unreachables + handshake timeouts) / judged
    /// connections.
    #[serde(default)]
    pub recent_error_ratio: Option<f64>,
    #[serde(default)]
    pub recent_handshake_p50_ms: Option<f64>,
    #[serde(default)]
    pub recent_handshake_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Signals {
    pub stable: VersionSignals,
    pub canary: VersionSignals,
}

/// Where a rollout is, for status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutStatus {
    /// "running", "paused", "promoted" or "aborted".
    pub phase: String,
    /// 1-based step number and the plan.
    pub step: usize,
    pub steps: Vec<f64>,
    pub step_elapsed_s: f64,
    pub step_interval_s: f64,
    /// Until the step's interval ends (it also waits for its sample).
    pub time_left_s: f64,
    pub canary_connections: u64,
    pub canary_failures: u64,
    pub stable_connections: u64,
    pub stable_failures: u64,
    /// Canary connections the step needs before it can pass.
    pub required_canary_connections: Option<u64>,
    /// The last analysis' verdict in words.
    pub verdict: String,
    pub analysis: Option<Analysis>,
    pub reason: Option<String>,
    pub history: Vec<String>,
    /// The external metric's last judgement (Prometheus), if configured.
    #[serde(default)]
    pub external: Option<String>,
    /// Steps of the plan (an adaptive plan's `steps` are the weights
    /// chosen so far).
    #[serde(default)]
    pub planned_steps: Option<usize>,
    /// Adaptive plans: why the current step has its weight.
    #[serde(default)]
    pub why: Option<String>,
    /// Adaptive plans: the risk budget.
    #[serde(default)]
    pub budget: Option<BudgetStatus>,
    /// The plan's failure policy: "rollback" or "pause".
    #[serde(default)]
    pub on_failure: Option<String>,
    /// `analysis.metrics` (and `analysis.prometheus`), judged at the last tick.
    #[serde(default)]
    pub metrics: Vec<MetricStatus>,
    /// `analysis.latency`, one entry per source, in the current step.
    #[serde(default)]
    pub latency: Vec<LatencyStatus>,
}

/// One external metric of a rollout, as last judged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricStatus {
    pub name: String,
    /// "lower is better" or "higher is better".
    pub direction: String,
    /// Can fail a step (false: shown only).
    pub gate: bool,
    pub canary: Option<f64>,
    pub stable: Option<f64>,
    /// The limits in words, e.g. "canary >= 0.9 x stable".
    pub limit: String,
    /// "ok", "failing", "waiting" (no fresh value) or "informs" (not a
    /// gate, and out of its limit).
    pub state: String,
    pub detail: String,
}

/// The latency test of one source in the current step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencyStatus {
    /// "handshake" (in-kernel SYN -> SYN-ACK) or "prometheus".
    pub source: String,
    pub quantile: f64,
    /// The quantile per version, ms (Prometheus: `histogram_quantile`).
    pub canary_ms: Option<f64>,
    pub stable_ms: Option<f64>,
    /// The threshold T of this step (None while calibrating).
    pub threshold_ms: Option<f64>,
    pub canary_above: u64,
    pub canary_responses: u64,
    pub stable_above: u64,
    pub stable_responses: u64,
    pub required_canary_responses: Option<u64>,
    pub log_lr: Option<f64>,
    pub log_lr_threshold: f64,
    /// Alpha of each of the source's two checks in this step.
    pub alpha: f64,
    /// "waiting", "passed" or "failing".
    pub state: String,
    pub detail: String,
}

/// An adaptive rollout's risk budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BudgetStatus {
    /// "judged canary connections".
    pub unit: String,
    /// Levels reached (judged steps passed) and planned.
    pub level: u32,
    pub levels: u32,
    /// The next level's budget (None once every level is reached).
    pub cap: Option<u64>,
    /// Canary connections exposed since the start.
    pub exposed: u64,
    /// Left before the next level.
    pub left: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
    /// "source-ip" or "flow".
    pub affinity: String,
    /// The weight the data plane applies now, in percent.
    pub weight_percent: f64,
    /// What set it: "config", "canaryctl (uid N)", "rollout".
    pub weight_source: String,
    pub stable: VersionStatus,
    pub canary: VersionStatus,
    /// Canary share of new connections over the last sampling interval, as
    /// measured by the data plane (None when there were none).
    pub observed_canary_share: Option<f64>,
    /// The same since the service was configured.
    pub observed_canary_share_total: Option<f64>,
    pub backends: Vec<BackendStatus>,
    #[serde(default)]
    pub signals: Signals,
    #[serde(default)]
    pub rollout: Option<RolloutStatus>,
    /// Rollbacks of this service so far (kept across restarts).
    #[serde(default)]
    pub rollbacks: u64,
    /// The live cohort weights ("staff 100.00%, everyone 5.00%", or
    /// "off (...)"); None when the plan has no cohorts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohorts: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub instance: String,
    pub services: Vec<ServiceStatus>,
    /// Data-path outcome counters by reason name (`canary_common::reason`).
    pub datapath: BTreeMap<String, u64>,
    /// The flow table: occupancy, churn, flood mode (absent from an older
    /// canaryd: all zero).
    #[serde(default)]
    pub flow_table: FlowTableStatus,
    /// The fleet this host belongs to (`fleet:` in the config); absent for
    /// a host alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
    /// The veths canaryd attaches to and what its offload check found on
    /// their peers (other interfaces are not listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
    /// canaryd's watch over its pins (absent from an older canaryd).
    #[serde(default)]
    pub pins: PinsStatus,
}

/// The pins a restarted canaryd adopts the data plane from (maps and XDP
/// links under /sys/fs/bpf/canary/<instance>/), as canaryd's last check
/// (every second) found them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PinsStatus {
    /// Map and link pins watched.
    pub watched: u64,
    /// Pins found removed and pinned again since canaryd started.
    pub restored_total: u64,
    /// Pins a restart would not find as they are: removed and not
    /// restorable, or holding another object ("FLOWS", "links/eth0").
    pub at_risk: Vec<String>,
}

/// An attached veth as canaryd's last check of its peer found it (at attach,
/// then every 10 s): what XDP forwarding through it lacks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct InterfaceStatus {
    pub name: String,
    /// Its veth peer and the peer's namespace, as far as canaryd sees them.
    pub peer: Option<String>,
    /// One line per problem, with the command that fixes it; empty when
    /// the peer is ready.
    pub problems: Vec<String>,
    /// Age of the check.
    pub checked_age_ms: u64,
}

/// The fleet as this host sees it through etcd.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FleetStatus {
    pub cluster: String,
    /// This host's name in the fleet.
    pub host: String,
    /// The host that runs rollouts and decides health verdicts (none known
    /// while cut off or before the first election).
    pub leader: Option<String>,
    /// Whether this host is the leader.
    pub leading: bool,
    /// Connected to an etcd member with quorum.
    pub connected: bool,
    /// When this host lost etcd (Unix ms), and why; none while connected.
    pub cut_off_since_ms: Option<u64>,
    pub cut_off_for_ms: Option<u64>,
    pub cut_off_reason: Option<String>,
    /// Rollbacks applied here while cut off, to be written to etcd when it
    /// returns.
    pub pending_rollbacks: Vec<String>,
    /// Every host with a live report (its lease not expired), this one too.
    pub hosts: Vec<FleetHost>,
    /// Hosts that joined the fleet but have no live report: their canaryd
    /// is down or cut off from etcd, and their data plane may still
    /// forward with its last weight.
    pub silent: Vec<FleetSilent>,
    /// Per service: how many hosts apply the desired weight.
    pub agreement: Vec<FleetAgreement>,
}

/// One host of the fleet, from its latest report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FleetHost {
    pub name: String,
    /// Age of its latest report as this host received it.
    pub report_age_ms: u64,
    pub leader: bool,
    /// Per service: the generation and weight it applies.
    pub applied: BTreeMap<String, FleetApplied>,
    /// Its own probe view: backends it sees unhealthy, "service/address".
    pub unhealthy: Vec<String>,
    /// Per service: its new connections to stable and canary (cumulative).
    pub new_connections: BTreeMap<String, [u64; 2]>,
}

/// A host of the fleet without a live report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FleetSilent {
    pub name: String,
    /// How long since its report went, as this host saw it (none: gone
    /// before this canaryd started).
    pub silent_for_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct FleetApplied {
    pub generation: u64,
    pub weight_bp: u32,
    pub percent: f64,
}

/// "3/3 hosts apply 10.00%, generation 42".
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FleetAgreement {
    pub service: String,
    pub hosts: usize,
    pub agreeing: usize,
    pub percent: f64,
    pub generation: u64,
    pub line: String,
}

/// The flow table host-wide. Counters are the data path's (since the data
/// plane was loaded) unless said otherwise.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FlowTableStatus {
    /// Entries the table holds at most (`flow_table.size`).
    pub size: u64,
    /// Entries as of the last sweep.
    pub entries: u64,
    /// How long ago the last sweep ended (none yet: `None`).
    pub swept_at_age_ms: Option<u64>,
    /// New entries (`flow_insert`).
    pub inserts: u64,
    /// Inserts that failed (`flow_insert_failed`).
    pub insert_failures: u64,
    /// Entries gone by their idle timeout: replaced by the data path
    /// (`flow_expired`) plus removed by canaryd's sweeps.
    pub expired: u64,
    /// Entries the sweeps removed (since this canaryd started).
    pub swept_removed: u64,
    /// LRU evictions, estimated since this canaryd's first sweep:
    /// inserts - swept - growth of the table, at least 0.
    pub evictions_estimate: u64,
    /// TCP connections closed (FIN both ways or a RST; `flow_closed`).
    pub closed: u64,
    /// Bare SYNs are being decided without state (a SYN flood).
    pub flood_mode: bool,
    /// Bare SYNs decided without state (`syn_stateless`).
    pub syn_stateless: u64,
    /// Backend replies reverse-NATed without a flow entry
    /// (`reply_no_flow_nat`).
    pub reply_no_flow_nat: u64,
}

/// Request bodies refuse unknown fields (`{"percent": 10, "evil": 1}` is
/// 400): a misspelt field is an error, not a silent default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetWeight {
    /// 0 to 100, at most two decimals.
    pub percent: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendChange {
    pub pool: Version,
    pub addr: IpAddr,
}

/// What a change request did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Change {
    /// One line per effect, as logged by the daemon.
    pub changes: Vec<String>,
}

/// Which version and backend a client gets now, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Explain {
    pub service: String,
    pub client: IpAddr,
    pub client_port: Option<u16>,
    pub version: Version,
    pub backend: IpAddr,
    /// "flow-table", "override", "cohort NAME" (a live cohort's weight,
    /// "cohort everyone" for clients in none), or "hash".
    pub decided_by: String,
    /// A human sentence with the figures.
    pub reason: String,
    /// The client's hash bucket (0..10000) and the weight it is compared
    /// with, in basis points.
    pub bucket: u32,
    pub weight_bp: u32,
    pub override_cidr: Option<String>,
    /// The client's cohort ("everyone" for none) when the service's plan
    /// has cohorts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<String>,
}

/// What an event is about; on the wire the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A rollout started, paused, resumed.
    Rollout,
    /// A rollout step set a new weight.
    Step,
    /// A rollout reached 100 %.
    Promoted,
    /// The canary weight went to 0 (analysis, health, operator).
    Rollback,
    /// A backend's probe verdict changed.
    Health,
    /// A canary weight changed by anything but the rollout engine: an
    /// operator (set-weight, rollback, promote) or a reload that changed
    /// the file's weight. `who`, `from_percent` and `to_percent` are set.
    Weight,
    /// A backend was added to or removed from a pool at run time.
    Backend,
    /// The config file was re-read and applied (service `*`: all of them).
    Reload,
    /// SYN-flood mode started or ended (service `*`: host-wide).
    #[serde(rename = "syn_flood")]
    SynFlood,
    /// The fleet: a host leads, this host lost or regained etcd (service
    /// `*`).
    Fleet,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Rollout => "rollout",
            EventKind::Step => "step",
            EventKind::Promoted => "promoted",
            EventKind::Rollback => "rollback",
            EventKind::Health => "health",
            EventKind::Weight => "weight",
            EventKind::Backend => "backend",
            EventKind::Reload => "reload",
            EventKind::SynFlood => "syn_flood",
            EventKind::Fleet => "fleet",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One entry of the daemon's event log (`GET /v1/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub service: String,
    pub kind: EventKind,
    pub message: String,
    /// Who asked (operator changes, reloads): "canaryctl (uid 0)", "SIGHUP".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// A weight event's canary weight before and after, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_percent: Option<f64>,
}

/// What a step should do now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The canary has the sample the step needs and no check failed.
    Pass,
    /// Roll back.
    Fail { reason: String },
    /// Keep observing: `have` of `need` canary connections.
    NeedMore { have: u64, need: u64 },
}

/// A verdict with the figures behind it, for status and the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub verdict: Verdict,
    pub canary_attempts: u64,
    pub canary_failures: u64,
    pub stable_attempts: u64,
    pub stable_failures: u64,
    pub canary_error_rate: Option<f64>,
    pub stable_error_rate: Option<f64>,
    /// Canary connections the step needs before it can pass.
    pub required_canary_connections: u64,
    /// Statistical checks enabled in this step, and the alpha of each.
    pub checks: u32,
    pub alpha_per_check: f64,
    /// Log likelihood ratio of the canary-vs-stable SPRT, and its threshold
    /// `ln(1/alpha_per_check)`.
    pub ratio_sprt_llr: Option<f64>,
    pub ceiling_sprt_llr: Option<f64>,
    pub sprt_threshold: f64,
    /// p-values of the final tests (only once the sample is reached).
    pub ratio_p_value: Option<f64>,
    pub ceiling_p_value: Option<f64>,
    pub canary_p99_handshake_ms: Option<f64>,
    pub stable_p99_handshake_ms: Option<f64>,
    /// Checks skipped and why.
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_refuse_unknown_fields() {
        let w: SetWeight = serde_json::from_str(r#"{"percent": 12.5}"#).unwrap();
        assert_eq!(w.percent, 12.5);
        let e = serde_json::from_str::<SetWeight>(r#"{"percent": 10, "evil": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `evil`"), "{e}");
        let e = serde_json::from_str::<BackendChange>(
            r#"{"pool": "canary", "addr": "198.18.4.2", "weight": 3}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `weight`"), "{e}");
    }

    #[test]
    fn verbs_and_kinds_keep_their_wire_names() {
        for v in RolloutVerb::ALL {
            assert_eq!(v.as_str().parse::<RolloutVerb>().unwrap(), v);
        }
        assert!("stop".parse::<RolloutVerb>().is_err());
        assert_eq!(
            serde_json::to_string(&EventKind::Promoted).unwrap(),
            "\"promoted\""
        );
        assert_eq!(format!("{:<8}|", EventKind::Step), "step    |");
        for k in [
            EventKind::Weight,
            EventKind::Backend,
            EventKind::Reload,
            EventKind::SynFlood,
            EventKind::Fleet,
        ] {
            let wire = serde_json::to_string(&k).unwrap();
            assert_eq!(wire, format!("\"{}\"", k.as_str()));
        }
        // An event without the optional fields (an older canaryd's) parses.
        let e: Event = serde_json::from_str(
            r#"{"seq":1,"time":"t","service":"shop","kind":"health","message":"m"}"#,
        )
        .unwrap();
        assert_eq!((e.who, e.from_percent, e.to_percent), (None, None, None));
        assert_eq!(EventKind::SynFlood.as_str(), "syn_flood");
        // A status without `flow_table` (an older canaryd's) parses.
        let s: Status =
            serde_json::from_str(r#"{"instance":"t","services":[],"datapath":{}}"#).unwrap();
        assert_eq!(s.flow_table, FlowTableStatus::default());
    }
}
