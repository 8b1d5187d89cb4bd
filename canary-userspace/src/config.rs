//! The YAML configuration: parsed whole and validated whole before anything
//! touches a map. Every error names the field it is about.

use anyhow::{bail, Context, Result};
use canary_common::{MAX_BACKENDS, MAX_OVERRIDES, MAX_SERVICES, WEIGHT_SCALE_BP};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    Stable,
    Canary,
}

impl Version {
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
}

/// Percent (0..=100, at most two decimals) to basis points.
pub fn percent_to_bp(percent: f64) -> Result<u32> {
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        bail!("{percent} is out of range (0 to 100 percent)");
    }
    let bp = (percent * 100.0).round();
    if (percent * 100.0 - bp).abs() > 1e-6 {
        bail!("{percent} has more than two decimals");
    }
    Ok(bp as u32)
}

pub fn bp_to_percent(bp: u32) -> f64 {
    bp as f64 / 100.0
}

/// Default seed: FNV-1a of the service name, so every host derives the same.
pub fn default_seed(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

impl ServiceConfig {
    pub fn weight_bp(&self) -> u32 {
        percent_to_bp(self.canary_weight).unwrap_or(0)
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
            percent_to_bp(s.canary_weight).with_context(|| format!("{at}.canary_weight"))?;
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
        assert_eq!(percent_to_bp(0.0).unwrap(), 0);
        assert_eq!(percent_to_bp(12.34).unwrap(), 1234);
        assert_eq!(percent_to_bp(100.0).unwrap(), 10_000);
        assert!(percent_to_bp(150.0).is_err());
        assert!(percent_to_bp(-1.0).is_err());
        assert!(percent_to_bp(1.234).is_err());
        assert!(percent_to_bp(f64::NAN).is_err());
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

    #[test]
    fn default_seed_is_stable_across_hosts() {
        // FNV-1a reference value for "shop".
        assert_eq!(default_seed(""), 0x811c_9dc5);
        assert_eq!(default_seed("a"), 0xe40c_292c);
    }
}
