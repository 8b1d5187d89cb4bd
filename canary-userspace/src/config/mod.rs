//! The YAML configuration: parsed whole and validated whole before anything
//! touches a map. Every error names the field it is about.

use anyhow::{bail, Context, Result};
use canary_common::weight::WeightBp;
use canary_common::{MAX_BACKENDS, MAX_OVERRIDES, MAX_SERVICES, WEIGHT_SCALE_BP};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration compiled into canaryd, used when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.yaml");

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The client-facing interface (where packets to the VIPs arrive).
    pub interface: String,
    /// Interfaces where backend replies arrive. Empty: the client-facing one
    /// (a one-armed load balancer).
    #[serde(default)]
    pub backend_interfaces: Vec<String>,
    /// Entries of the flow table (connection affinity). Fixed at load time.
    #[serde(default)]
    pub flow_table_size: Option<u32>,
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
    pub services: Vec<ServiceConfig>,
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

/// Stable or canary; defined with the API types (canaryctl needs it too).
pub use crate::control::api::Version;

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

fn default_probe_path() -> String {
    "/".into()
}
fn default_expect_status() -> u16 {
    200
}
fn default_probe_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_probe_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_unhealthy_after() -> u32 {
    3
}
fn default_healthy_after() -> u32 {
    2
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

fn default_alpha() -> f64 {
    0.01
}
fn default_power() -> f64 {
    0.9
}
fn default_min_canary_connections() -> u64 {
    100
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(3)
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
    /// A SYN with no SYN-ACK after this long is a failed connection.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// An application metric from Prometheus, per version.
    #[serde(default)]
    pub prometheus: Option<PrometheusCheck>,
}

fn default_prometheus_interval() -> Duration {
    Duration::from_secs(5)
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

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            max_error_ratio: None,
            max_p99_handshake_ms: None,
            max_canary_vs_stable_ratio: None,
            false_alarm_rate: default_alpha(),
            power: default_power(),
            min_canary_connections: default_min_canary_connections(),
            handshake_timeout: default_handshake_timeout(),
            prometheus: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Canary weights in percent, rising, e.g. [5, 10, 15, 20, 50, 100].
    pub steps: Vec<f64>,
    /// Least observation time per step (a step also waits for the canary
    /// connections its analysis needs).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default)]
    pub analysis: AnalysisConfig,
    #[serde(default)]
    pub on_rollback: OnRollback,
}

impl RolloutConfig {
    /// The statistics' limits for this plan.
    pub fn limits(&self) -> crate::rollout::analysis::Limits {
        let a = &self.analysis;
        crate::rollout::analysis::Limits {
            max_error_ratio: a.max_error_ratio,
            max_canary_vs_stable_ratio: a.max_canary_vs_stable_ratio,
            max_p99_handshake_ms: a.max_p99_handshake_ms,
            alpha: a.false_alarm_rate,
            steps: self.steps.len() as u32,
            power: a.power,
            min_canary_connections: a.min_canary_connections,
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
    /// Sets the canary weight (the file's unit is percent).
    pub fn set_weight(&mut self, w: WeightBp) {
        self.canary_weight = w.percent();
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
    /// Parse and validate YAML text.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("config {}", path.display()))
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

    pub fn validate(&self) -> Result<()> {
        if self.interface.trim().is_empty() {
            bail!("interface: must name the client-facing interface");
        }
        for (i, name) in self.backend_interfaces.iter().enumerate() {
            if name.trim().is_empty() {
                bail!("backend_interfaces[{i}]: empty interface name");
            }
        }
        if let Some(p) = &self.control_socket {
            if !p.is_absolute() {
                bail!("control_socket: {} must be an absolute path", p.display());
            }
        }
        if let Some(p) = &self.state_dir {
            if !p.is_absolute() {
                bail!("state_dir: {} must be an absolute path", p.display());
            }
        }
        if let Some(size) = self.flow_table_size {
            if !(1024..=16_777_216).contains(&size) {
                bail!("flow_table_size: {size} is out of range (1024 to 16777216)");
            }
        }
        if self.services.is_empty() {
            bail!("services: at least one service is needed");
        }
        if self.services.len() > MAX_SERVICES as usize {
            bail!(
                "services: {} services, at most {MAX_SERVICES} are supported",
                self.services.len()
            );
        }
        let mut names = HashSet::new();
        let mut vips: HashMap<(IpAddr, u16, Protocol), &str> = HashMap::new();
        let mut vip_addrs = HashSet::new();
        // NAT mode recognises replies by their source (backend, port, proto),
        // so one backend port can serve only one service.
        let mut backend_owner: HashMap<(IpAddr, u16, Protocol), &str> = HashMap::new();
        let mut total_backends = 0usize;
        let mut total_overrides = 0usize;
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            let valid_name = !s.name.is_empty()
                && s.name.len() <= 64
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                bail!(
                    "{at}.name: {:?} must be 1 to 64 letters, digits, '-' or '_'",
                    s.name
                );
            }
            let at = format!("services[{i}] ({})", s.name);
            if !names.insert(s.name.as_str()) {
                bail!("{at}.name: duplicate service name");
            }
            if s.port == 0 {
                bail!("{at}.port: must be 1 to 65535");
            }
            if s.vip.is_unspecified() || s.vip.is_multicast() {
                bail!("{at}.vip: {} is not a usable unicast address", s.vip);
            }
            if let Some(other) = vips.insert((s.vip, s.port, s.protocol), &s.name) {
                bail!(
                    "{at}.vip: {}:{} {:?} overlaps service {other} (same address, port and protocol)",
                    s.vip,
                    s.port,
                    s.protocol
                );
            }
            vip_addrs.insert(s.vip);
            WeightBp::from_percent(s.canary_weight)
                .with_context(|| format!("{at}.canary_weight"))?;
            if s.stable.is_empty() {
                bail!("{at}.stable: the stable pool needs at least one backend");
            }
            if s.weight_bp() > 0 && s.canary.is_empty() {
                bail!(
                    "{at}.canary_weight: {} percent but the canary pool is empty",
                    s.canary_weight
                );
            }
            let mut seen = HashSet::new();
            for v in [Version::Stable, Version::Canary] {
                for (j, b) in s.pool(v).iter().enumerate() {
                    let field = format!("{at}.{}[{j}]", v.name());
                    if b.is_ipv4() != s.vip.is_ipv4() {
                        bail!(
                            "{field}: {b} is not the same address family as the VIP {}",
                            s.vip
                        );
                    }
                    if b.is_unspecified() || b.is_multicast() {
                        bail!("{field}: {b} is not a usable unicast address");
                    }
                    if !seen.insert(*b) {
                        bail!("{field}: {b} appears twice in this service's pools");
                    }
                    if let Some(other) = backend_owner.insert((*b, s.port, s.protocol), &s.name) {
                        bail!(
                            "{field}: {b}:{} {:?} is already a backend of service {other}; \
                             in NAT mode a backend port belongs to one service",
                            s.port,
                            s.protocol
                        );
                    }
                    total_backends += 1;
                }
            }
            for (j, o) in s.overrides.iter().enumerate() {
                let field = format!("{at}.overrides[{j}]");
                if o.cidr.addr().is_ipv4() != s.vip.is_ipv4() {
                    bail!(
                        "{field}.cidr: {} is not the same address family as the VIP {}",
                        o.cidr,
                        s.vip
                    );
                }
                if o.cidr.trunc() != o.cidr {
                    bail!(
                        "{field}.cidr: {} has host bits set (did you mean {}?)",
                        o.cidr,
                        o.cidr.trunc()
                    );
                }
                if o.version == Version::Canary && s.canary.is_empty() {
                    bail!("{field}.version: canary, but the canary pool is empty");
                }
            }
            let mut prefixes = HashSet::new();
            for (j, o) in s.overrides.iter().enumerate() {
                if !prefixes.insert(o.cidr) {
                    bail!("{at}.overrides[{j}].cidr: {} is listed twice", o.cidr);
                }
            }
            total_overrides += s.overrides.len();
            if let Some(h) = &s.health {
                validate_health(h, s).with_context(|| format!("{at}.health"))?;
            }
            if let Some(r) = &s.rollout {
                validate_rollout(r, s).with_context(|| format!("{at}.rollout"))?;
            }
        }
        for s in &self.services {
            for b in s.stable.iter().chain(&s.canary) {
                if vip_addrs.contains(b) {
                    bail!("services ({}): backend {b} is also a VIP address", s.name);
                }
            }
        }
        if total_backends > MAX_BACKENDS as usize / 2 {
            // Half the id space, so a reload can add a whole new set before
            // the old ids are released.
            bail!(
                "services: {total_backends} backends in all, at most {} are supported",
                MAX_BACKENDS / 2
            );
        }
        if total_overrides > MAX_OVERRIDES as usize {
            bail!("services: {total_overrides} overrides in all, at most {MAX_OVERRIDES}");
        }
        let _ = WEIGHT_SCALE_BP;
        Ok(())
    }
}

fn validate_health(h: &HealthConfig, s: &ServiceConfig) -> Result<()> {
    if h.interval < Duration::from_millis(50) {
        bail!("interval: {:?} is below 50ms", h.interval);
    }
    if h.timeout.is_zero() || h.timeout > h.interval {
        bail!(
            "timeout: {:?} must be above 0 and at most the interval {:?}",
            h.timeout,
            h.interval
        );
    }
    if h.unhealthy_after == 0 || h.healthy_after == 0 {
        bail!("unhealthy_after and healthy_after: must be at least 1");
    }
    if h.port == Some(0) {
        bail!("port: must be 1 to 65535");
    }
    if s.protocol == Protocol::Udp && h.port.is_none() {
        bail!("port: a UDP service's backends are probed over TCP; name the port");
    }
    if h.probe == ProbeKind::Http {
        if !h.path.starts_with('/') || h.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!(
                "path: {:?} must start with '/' and contain no spaces",
                h.path
            );
        }
        if !(100..=599).contains(&h.expect_status) {
            bail!("expect_status: {} is not an HTTP status", h.expect_status);
        }
    }
    Ok(())
}

fn validate_rollout(r: &RolloutConfig, s: &ServiceConfig) -> Result<()> {
    if r.steps.is_empty() {
        bail!("steps: at least one step is needed");
    }
    let mut last = 0.0;
    for (i, step) in r.steps.iter().enumerate() {
        WeightBp::from_percent(*step).with_context(|| format!("steps[{i}]"))?;
        if *step <= last {
            bail!("steps[{i}]: {step} must be above the step before ({last})");
        }
        last = *step;
    }
    if r.interval < Duration::from_millis(100) {
        bail!("interval: {:?} is below 100ms", r.interval);
    }
    if s.canary.is_empty() {
        bail!("the canary pool is empty: nothing to roll out");
    }
    let a = &r.analysis;
    if let Some(p) = a.max_error_ratio {
        if !(p > 0.0 && p < 1.0) {
            bail!("analysis.max_error_ratio: {p} must be between 0 and 1");
        }
    }
    if let Some(r) = a.max_canary_vs_stable_ratio {
        if r.is_nan() || r <= 1.0 {
            bail!("analysis.max_canary_vs_stable_ratio: {r} must be above 1");
        }
    }
    if let Some(ms) = a.max_p99_handshake_ms {
        if ms.is_nan() || ms <= 0.0 {
            bail!("analysis.max_p99_handshake_ms: {ms} must be above 0");
        }
    }
    if !(a.false_alarm_rate > 0.0 && a.false_alarm_rate < 0.5) {
        bail!(
            "analysis.false_alarm_rate: {} must be between 0 and 0.5",
            a.false_alarm_rate
        );
    }
    if !(a.power > 0.5 && a.power < 1.0) {
        bail!("analysis.power: {} must be between 0.5 and 1", a.power);
    }
    if a.handshake_timeout < Duration::from_millis(100) {
        bail!(
            "analysis.handshake_timeout: {:?} is below 100ms",
            a.handshake_timeout
        );
    }
    if let Some(p) = &a.prometheus {
        let uri: hyper::Uri = p
            .url
            .parse()
            .map_err(|e| anyhow::anyhow!("analysis.prometheus.url: {:?}: {e}", p.url))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            bail!(
                "analysis.prometheus.url: {:?} must be an http:// URL with a host",
                p.url
            );
        }
        if !p.query.contains("$version") {
            bail!(
                "analysis.prometheus.query: must contain $version (replaced by stable or canary)"
            );
        }
        if p.max_value.is_none() {
            // The ratio alone cannot judge a canary while stable's value is 0
            // (the healthy case for an error ratio).
            bail!(
                "analysis.prometheus.max_value: required (max_canary_vs_stable_ratio may be added)"
            );
        }
        if let Some(r) = p.max_canary_vs_stable_ratio {
            if r.is_nan() || r <= 1.0 {
                bail!("analysis.prometheus.max_canary_vs_stable_ratio: {r} must be above 1");
            }
        }
        if p.interval < Duration::from_millis(100) {
            bail!(
                "analysis.prometheus.interval: {:?} is below 100ms",
                p.interval
            );
        }
    }
    let limits = a.max_error_ratio.is_some()
        || a.max_canary_vs_stable_ratio.is_some()
        || a.max_p99_handshake_ms.is_some();
    if limits && s.protocol != Protocol::Tcp {
        bail!("analysis: connection errors and handshake times are measured for TCP services only");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interface: lb-client
services:
  - name: shop
    vip: 198.18.100.1
    port: 80
    protocol: tcp
    affinity: source-ip
    canary_weight: 10
    stable: [198.18.1.2, 198.18.2.2]
    canary: [198.18.3.2]
    overrides:
      - cidr: 198.18.24.0/24
        version: canary
"#;

    fn err_of(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn accepts_the_documented_example() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.services[0].weight_bp(), 1000);
        assert_eq!(c.services[0].affinity, Affinity::SourceIp);
        assert_eq!(c.interfaces(), vec!["lb-client".to_string()]);
    }

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.services.len(), 2);
    }

    #[test]
    fn weights_in_percent_with_two_decimals() {
        let bp = |p| WeightBp::from_percent(p).map(WeightBp::bp);
        assert_eq!(bp(0.0).unwrap(), 0);
        assert_eq!(bp(12.34).unwrap(), 1234);
        assert_eq!(bp(100.0).unwrap(), 10_000);
        assert!(bp(150.0).is_err());
        assert!(bp(-1.0).is_err());
        assert!(bp(1.234).is_err());
        assert!(bp(f64::NAN).is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("canary_weight: 10", "canary_weight: 150"),
                "services[0] (shop).canary_weight",
            ),
            (GOOD.replace("protocol: tcp", "protocol: sctp"), "protocol"),
            (
                GOOD.replace("affinity: source-ip", "affinity: sticky"),
                "affinity",
            ),
            (GOOD.replace("198.18.2.2", "198.18.2.x"), "stable"),
            (
                GOOD.replace("    port: 80\n", "    port: 80\n    colour: blue\n"),
                "colour",
            ),
            (
                GOOD.replace("198.18.24.0/24", "198.18.24.1/24"),
                "overrides[0].cidr",
            ),
            (
                GOOD.replace("198.18.24.0/24", "2001:db8::/64"),
                "overrides[0].cidr",
            ),
            (
                GOOD.replace("canary: [198.18.3.2]", "canary: []"),
                "canary_weight",
            ),
            (GOOD.replace("198.18.2.2", "198.18.1.2"), "appears twice"),
            (GOOD.replace("198.18.2.2", "2001:db8::2"), "address family"),
            (
                GOOD.replace("interface: lb-client", "interface: ''"),
                "interface",
            ),
            (GOOD.replace("port: 80", "port: 0"), "port"),
            (GOOD.replace("port: 80", "port: 70000"), "port"),
            ("services: [\n".to_string(), ""),
        ];
        for (text, needle) in cases {
            let e = err_of(&text);
            assert!(e.contains(needle), "error {e:?} should mention {needle:?}");
        }
    }

    #[test]
    fn overlapping_vips_and_shared_backends_are_refused() {
        let two = format!(
            "{GOOD}{}",
            r#"  - name: shop2
    vip: 198.18.100.1
    port: 80
    protocol: tcp
    stable: [198.18.5.2]
"#
        );
        assert!(err_of(&two).contains("overlaps service shop"));
        let shared = two.replace(
            "vip: 198.18.100.1\n    port: 80\n    protocol: tcp\n    stable: [198.18.5.2]",
            "vip: 198.18.100.2\n    port: 80\n    protocol: tcp\n    stable: [198.18.1.2]",
        );
        assert!(
            err_of(&shared).contains("already a backend of service shop"),
            "{}",
            err_of(&shared)
        );
        let dup = two.replace("name: shop2", "name: shop").replace(
            "vip: 198.18.100.1\n    port: 80\n    protocol: tcp\n    stable: [198.18.5.2]",
            "vip: 198.18.100.9\n    port: 80\n    protocol: tcp\n    stable: [198.18.5.2]",
        );
        assert!(err_of(&dup).contains("duplicate service name"));
    }

    const PLAN: &str = r#"    health:
      probe: http
      path: /healthz
      interval: 250ms
      timeout: 200ms
      unhealthy_after: 3
    rollout:
      steps: [5, 10, 20, 50, 100]
      interval: 30s
      analysis:
        max_error_ratio: 0.02
        max_canary_vs_stable_ratio: 2
        max_p99_handshake_ms: 50
      on_rollback: reset
"#;

    #[test]
    fn health_and_rollout_parse_with_durations() {
        let c = Config::parse(&format!("{GOOD}{PLAN}")).unwrap();
        let s = &c.services[0];
        let h = s.health.as_ref().unwrap();
        assert_eq!(h.interval, Duration::from_millis(250));
        assert_eq!(h.probe, ProbeKind::Http);
        assert_eq!(h.healthy_after, 2);
        let r = s.rollout.as_ref().unwrap();
        assert_eq!(r.interval, Duration::from_secs(30));
        assert_eq!(r.on_rollback, OnRollback::Reset);
        assert_eq!(r.limits().steps, 5);
        assert_eq!(r.analysis.handshake_timeout, Duration::from_secs(3));
    }

    #[test]
    fn bad_plans_name_the_field() {
        let good = format!("{GOOD}{PLAN}");
        let cases = [
            (
                good.replace("[5, 10, 20, 50, 100]", "[5, 50, 20]"),
                "rollout: steps[2]",
            ),
            (good.replace("[5, 10, 20, 50, 100]", "[5, 150]"), "steps[1]"),
            (good.replace("[5, 10, 20, 50, 100]", "[]"), "steps"),
            (good.replace("interval: 30s", "interval: soon"), "interval"),
            (
                good.replace(
                    "max_canary_vs_stable_ratio: 2",
                    "max_canary_vs_stable_ratio: 1",
                ),
                "above 1",
            ),
            (
                good.replace("max_error_ratio: 0.02", "max_error_ratio: 2"),
                "max_error_ratio",
            ),
            (
                good.replace("timeout: 200ms", "timeout: 2s"),
                "health: timeout",
            ),
            (good.replace("path: /healthz", "path: healthz"), "path"),
            (
                good.replace("unhealthy_after: 3", "unhealthy_after: 0"),
                "unhealthy_after",
            ),
            (
                good.replace("on_rollback: reset", "on_rollback: maybe"),
                "on_rollback",
            ),
        ];
        for (text, needle) in cases {
            let e = err_of(&text);
            assert!(e.contains(needle), "error {e:?} should mention {needle:?}");
        }
    }

    #[test]
    fn default_seed_is_stable_across_hosts() {
        // FNV-1a reference value for "shop".
        assert_eq!(default_seed(""), 0x811c_9dc5);
        assert_eq!(default_seed("a"), 0xe40c_292c);
    }
}
