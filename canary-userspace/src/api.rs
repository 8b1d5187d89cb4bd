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
//! Errors are a non-2xx status with an `ApiError` body: 400 bad input, 403
//! not root, 404 unknown service, 409 refused (e.g. a reload that fails
//! validation), 500 internal.

use crate::config::Version;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const DEFAULT_SOCKET: &str = "/run/canary/canaryd.sock";

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
}

/// Passive health signals of one version, since canaryd started (the
/// counters live in the data plane; timeouts are counted by canaryd).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VersionSignals {
    pub syn_acks: u64,
    pub resets: u64,
    pub handshake_timeouts: u64,
    pub handshake_p50_ms: Option<f64>,
    pub handshake_p99_ms: Option<f64>,
    /// The same over the last `recent_window_s` seconds (up to 10).
    #[serde(default)]
    pub recent_window_s: f64,
    #[serde(default)]
    pub recent_connections_per_sec: f64,
    #[serde(default)]
    pub recent_failures_per_sec: f64,
    /// (resets + handshake timeouts) / new connections.
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
    pub analysis: Option<crate::analysis::Analysis>,
    pub reason: Option<String>,
    pub history: Vec<String>,
    /// The external metric's last judgement (Prometheus), if configured.
    #[serde(default)]
    pub external: Option<String>,
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub instance: String,
    pub services: Vec<ServiceStatus>,
    /// Data-path outcome counters by reason name (`canary_common::reason`).
    pub datapath: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetWeight {
    /// 0 to 100, at most two decimals.
    pub percent: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// "flow-table", "override", or "hash".
    pub decided_by: String,
    /// A human sentence with the figures.
    pub reason: String,
    /// The client's hash bucket (0..10000) and the weight it is compared
    /// with, in basis points.
    pub bucket: u32,
    pub weight_bp: u32,
    pub override_cidr: Option<String>,
}
