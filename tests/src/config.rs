//! The one builder of canaryd configs for every test, the demo and the
//! bench: the lab's interfaces by default, services added one by one, YAML
//! out (what canaryd reads) or a parsed `Config` (what `DataPlane::apply`
//! takes). The output is plain YAML in the documented layout (two-space
//! list items, four-space keys), so a test may still patch a line of it.
//!
//! ```text
//! let yaml = LbConfig::lab()
//!     .service(Service::tcp("shop", VIP_V4, 80).affinity("source-ip").weight(10.0)
//!         .lab_pools())
//!     .yaml();
//! let small = LbConfig::lab()
//!     .flow_table(FlowTable::new().size(4096).syn_flood_threshold(2000)
//!         .timeout("tcp_closing", "2s").sweep_interval("1s"))
//!     .service(...)
//!     .yaml();
//! let lb1 = LbConfig::lab()
//!     .interfaces("front", &["b1", "b2", "b3"])
//!     .fleet(FleetSection::new(etcd_endpoints, "lab", "lb1").lease_ttl("3s"))
//!     .service(...)
//!     .yaml();
//! ```

use canary_userspace::config::Config;
use std::fmt::Display;

/// The lab's stable and canary backends (`Service::lab_pools`).
pub const LAB_STABLE_V4: [&str; 2] = ["198.18.1.2", "198.18.2.2"];
pub const LAB_CANARY_V4: &str = "198.18.3.2";
pub const LAB_STABLE_V6: [&str; 2] = ["2001:db8:1::2", "2001:db8:2::2"];
pub const LAB_CANARY_V6: &str = "2001:db8:3::2";

/// A whole config file.
#[derive(Debug, Clone)]
pub struct LbConfig {
    interface: String,
    backend_interfaces: Vec<String>,
    metrics: Option<String>,
    flow_table: Option<FlowTable>,
    limit_services: Option<u32>,
    fleet: Option<FleetSection>,
    services: Vec<Service>,
}

/// The `fleet:` section: the etcd cluster this host reports to, the key
/// prefix `/canary/<cluster>/` and this host's name; an unset duration is
/// left out (canaryd's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSection {
    pub etcd: Vec<String>,
    pub cluster: String,
    pub host: String,
    pub lease_ttl: Option<String>,
    pub report_interval: Option<String>,
}

impl FleetSection {
    pub fn new<T: Display>(
        etcd: impl IntoIterator<Item = T>,
        cluster: &str,
        host: &str,
    ) -> FleetSection {
        FleetSection {
            etcd: etcd.into_iter().map(|e| e.to_string()).collect(),
            cluster: cluster.into(),
            host: host.into(),
            lease_ttl: None,
            report_interval: None,
        }
    }

    /// `lease_ttl:` as humantime (`"3s"`).
    pub fn lease_ttl(mut self, value: &str) -> FleetSection {
        self.lease_ttl = Some(value.into());
        self
    }

    /// `report_interval:` as humantime (`"1s"`).
    pub fn report_interval(mut self, value: &str) -> FleetSection {
        self.report_interval = Some(value.into());
        self
    }

    fn yaml(&self) -> String {
        let mut y = String::from("fleet:\n");
        y += &format!("  etcd: {}\n", list(&self.etcd));
        y += &format!("  cluster: {}\n", self.cluster);
        y += &format!("  host: {}\n", self.host);
        if let Some(v) = &self.lease_ttl {
            y += &format!("  lease_ttl: {v}\n");
        }
        if let Some(v) = &self.report_interval {
            y += &format!("  report_interval: {v}\n");
        }
        y
    }
}

/// The `flow_table:` section; a key left unset is left out (canaryd's
/// default).
#[derive(Debug, Clone, Default)]
pub struct FlowTable {
    size: Option<u32>,
    timeouts: Vec<(String, String)>,
    syn_flood_threshold: Option<u32>,
    sweep_interval: Option<String>,
}

impl FlowTable {
    pub fn new() -> FlowTable {
        FlowTable::default()
    }

    /// `size:` entries (64 ..= 16777216).
    pub fn size(mut self, entries: u32) -> FlowTable {
        self.size = Some(entries);
        self
    }

    /// One of `timeouts:` (`tcp_established`, `tcp_handshake`,
    /// `tcp_closing`, `udp`, `udp_replied`) as humantime (`"2s"`, `"2h 4m"`).
    pub fn timeout(mut self, key: &str, value: &str) -> FlowTable {
        self.timeouts.retain(|(k, _)| k != key);
        self.timeouts.push((key.into(), value.into()));
        self
    }

    /// `syn_flood_threshold:` stateful new flows per second (0: off).
    pub fn syn_flood_threshold(mut self, per_s: u32) -> FlowTable {
        self.syn_flood_threshold = Some(per_s);
        self
    }

    /// `sweep_interval:` as humantime (1s ..= 5m).
    pub fn sweep_interval(mut self, value: &str) -> FlowTable {
        self.sweep_interval = Some(value.into());
        self
    }

    fn yaml(&self) -> String {
        let mut y = String::from("flow_table:\n");
        if let Some(n) = self.size {
            y += &format!("  size: {n}\n");
        }
        if !self.timeouts.is_empty() {
            y += "  timeouts:\n";
            for (k, v) in &self.timeouts {
                y += &format!("    {k}: {v}\n");
            }
        }
        if let Some(n) = self.syn_flood_threshold {
            y += &format!("  syn_flood_threshold: {n}\n");
        }
        if let Some(v) = &self.sweep_interval {
            y += &format!("  sweep_interval: {v}\n");
        }
        y
    }
}

/// One entry of `services:`.
#[derive(Debug, Clone)]
pub struct Service {
    name: String,
    vip: String,
    port: u16,
    protocol: &'static str,
    affinity: Option<String>,
    weight: Option<f64>,
    stable: Vec<String>,
    canary: Vec<String>,
    overrides: Vec<(String, String)>,
    raw: String,
}

/// `cohorts:` of a service's `rollout:` (keys indented six spaces): each
/// cohort as (name, source networks, weight in percent per step).
pub fn cohorts_yaml(cohorts: &[(&str, &[&str], &[f64])]) -> String {
    let mut y = String::from("      cohorts:\n");
    for (name, sources, steps) in cohorts {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        y += &format!("        - name: {name}\n");
        y += &format!("          sources: {}\n", list(&sources));
        y += &format!("          steps: {steps:?}\n");
    }
    y
}

/// An address or CIDR as YAML: IPv6 (it has colons) quoted.
fn scalar(s: &str) -> String {
    if s.contains(':') {
        format!("\"{s}\"")
    } else {
        s.to_string()
    }
}

fn list(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|s| scalar(s)).collect();
    format!("[{}]", v.join(", "))
}

impl LbConfig {
    /// The netns topology's LB: `lb-client` in front, `lb-b1..3` behind.
    pub fn lab() -> LbConfig {
        LbConfig {
            interface: "lb-client".into(),
            backend_interfaces: vec!["lb-b1".into(), "lb-b2".into(), "lb-b3".into()],
            metrics: None,
            flow_table: None,
            limit_services: None,
            fleet: None,
            services: Vec::new(),
        }
    }

    /// `interface:` and `backend_interfaces:` (a fleet host's, say).
    pub fn interfaces(mut self, front: &str, backends: &[impl AsRef<str>]) -> LbConfig {
        self.interface = front.into();
        self.backend_interfaces = backends.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }

    pub fn backend_interfaces(mut self, names: &[&str]) -> LbConfig {
        self.backend_interfaces = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `metrics: ADDR` (the Prometheus listener).
    pub fn metrics(mut self, addr: &str) -> LbConfig {
        self.metrics = Some(addr.into());
        self
    }

    /// The `flow_table:` section.
    pub fn flow_table(mut self, ft: FlowTable) -> LbConfig {
        self.flow_table = Some(ft);
        self
    }

    /// `limits: services: N` (sizes the Maglev tables; restart to change).
    pub fn limit_services(mut self, n: u32) -> LbConfig {
        self.limit_services = Some(n);
        self
    }

    /// The `fleet:` section.
    pub fn fleet(mut self, f: FleetSection) -> LbConfig {
        self.fleet = Some(f);
        self
    }

    pub fn service(mut self, s: Service) -> LbConfig {
        self.services.push(s);
        self
    }

    /// The config file.
    pub fn yaml(&self) -> String {
        let mut y = String::from("\n");
        y += &format!("interface: {}\n", self.interface);
        y += &format!(
            "backend_interfaces: [{}]\n",
            self.backend_interfaces.join(", ")
        );
        if let Some(m) = &self.metrics {
            y += &format!("metrics: {m}\n");
        }
        if let Some(ft) = &self.flow_table {
            y += &ft.yaml();
        }
        if let Some(n) = self.limit_services {
            y += &format!("limits:\n  services: {n}\n");
        }
        if let Some(f) = &self.fleet {
            y += &f.yaml();
        }
        y += "services:\n";
        for s in &self.services {
            y += &s.yaml();
        }
        y
    }

    /// The config as canaryd parses it (panics if it does not parse: a
    /// builder bug, not a test outcome).
    pub fn config(&self) -> Config {
        Config::parse(&self.yaml()).expect("the built config parses")
    }
}

impl Service {
    fn new(name: &str, vip: impl Display, port: u16, protocol: &'static str) -> Service {
        Service {
            name: name.into(),
            vip: vip.to_string(),
            port,
            protocol,
            affinity: None,
            weight: None,
            stable: Vec::new(),
            canary: Vec::new(),
            overrides: Vec::new(),
            raw: String::new(),
        }
    }

    pub fn tcp(name: &str, vip: impl Display, port: u16) -> Service {
        Service::new(name, vip, port, "tcp")
    }

    pub fn udp(name: &str, vip: impl Display, port: u16) -> Service {
        Service::new(name, vip, port, "udp")
    }

    /// `affinity: source-ip` or `flow` (unset: canaryd's default).
    pub fn affinity(mut self, mode: &str) -> Service {
        self.affinity = Some(mode.into());
        self
    }

    /// `canary_weight:` in percent (unset: canaryd's default).
    pub fn weight(mut self, percent: f64) -> Service {
        self.weight = Some(percent);
        self
    }

    pub fn stable<T: Display>(mut self, addrs: impl IntoIterator<Item = T>) -> Service {
        self.stable = addrs.into_iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn canary<T: Display>(mut self, addrs: impl IntoIterator<Item = T>) -> Service {
        self.canary = addrs.into_iter().map(|a| a.to_string()).collect();
        self
    }

    /// The lab's usual pools, in the VIP's family: backends 1 and 2 serve
    /// stable, backend 3 the canary (`Topology` numbers them so:
    /// 198.18.I.2 and 2001:db8:I::2).
    pub fn lab_pools(self) -> Service {
        if self.vip.contains(':') {
            self.stable(LAB_STABLE_V6).canary([LAB_CANARY_V6])
        } else {
            self.stable(LAB_STABLE_V4).canary([LAB_CANARY_V4])
        }
    }

    /// A source-prefix override: `cidr` always gets `version`.
    pub fn force(mut self, cidr: &str, version: &str) -> Service {
        self.overrides.push((cidr.into(), version.into()));
        self
    }

    /// `rollout:` with fixed `steps` (percent), `interval` (humantime) and
    /// `cohorts` (see `cohorts_yaml`); `more` are further keys of the plan,
    /// indented six spaces.
    pub fn rollout_with_cohorts(
        self,
        steps: &[f64],
        interval: &str,
        cohorts: &[(&str, &[&str], &[f64])],
        more: &str,
    ) -> Service {
        self.raw(&format!(
            "    rollout:\n      steps: {steps:?}\n      interval: {interval}\n{}{more}",
            cohorts_yaml(cohorts)
        ))
    }

    /// Further keys of the service (`health:`, `rollout:` ...) as YAML,
    /// indented four spaces, appended as they are.
    pub fn raw(mut self, yaml: &str) -> Service {
        self.raw += yaml;
        self
    }

    fn yaml(&self) -> String {
        let mut y = format!("  - name: {}\n", self.name);
        y += &format!("    vip: {}\n", scalar(&self.vip));
        y += &format!("    port: {}\n", self.port);
        y += &format!("    protocol: {}\n", self.protocol);
        if let Some(a) = &self.affinity {
            y += &format!("    affinity: {a}\n");
        }
        if let Some(w) = self.weight {
            y += &format!("    canary_weight: {w}\n");
        }
        y += &format!("    stable: {}\n", list(&self.stable));
        if !self.canary.is_empty() {
            y += &format!("    canary: {}\n", list(&self.canary));
        }
        if !self.overrides.is_empty() {
            y += "    overrides:\n";
            for (cidr, version) in &self.overrides {
                y += &format!("      - cidr: {}\n", scalar(cidr));
                y += &format!("        version: {version}\n");
            }
        }
        y += &self.raw;
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_table_section_is_the_documented_layout_and_parses() {
        let c = LbConfig::lab()
            .flow_table(
                FlowTable::new()
                    .size(4096)
                    .timeout("tcp_closing", "2s")
                    .timeout("udp", "10s")
                    .timeout("tcp_closing", "3s")
                    .syn_flood_threshold(2000)
                    .sweep_interval("1s"),
            )
            .limit_services(8)
            .service(Service::tcp("web", "198.18.100.1", 80).stable(["198.18.1.2"]));
        let y = c.yaml();
        assert!(
            y.contains(
                "flow_table:\n  size: 4096\n  timeouts:\n    udp: 10s\n    tcp_closing: 3s\n  \
                 syn_flood_threshold: 2000\n  sweep_interval: 1s\nlimits:\n  services: 8\n"
            ),
            "{y}"
        );
        let parsed = c.config();
        assert_eq!(parsed.flow_table_entries(), 4096);
        assert_eq!(parsed.flow_table.syn_flood_threshold, 2000);
        assert_eq!(
            parsed.flow_table.sweep_interval,
            std::time::Duration::from_secs(1)
        );
        assert_eq!(parsed.limits.services, 8);
        // Nothing set: no section, canaryd's defaults.
        assert!(!LbConfig::lab().yaml().contains("flow_table"));
    }

    #[test]
    fn fleet_section_is_the_documented_layout_and_parses() {
        let etcd = [
            "http://198.19.255.11:2379",
            "http://198.19.255.12:2379",
            "http://198.19.255.13:2379",
        ];
        let c = LbConfig::lab()
            .interfaces("front", &["b1", "b2"])
            .fleet(
                FleetSection::new(etcd, "lab", "lb1")
                    .lease_ttl("3s")
                    .report_interval("1s"),
            )
            .service(Service::tcp("web", "198.18.100.1", 80).stable(["198.18.1.2"]));
        let y = c.yaml();
        assert!(
            y.contains(
                "interface: front\nbackend_interfaces: [b1, b2]\nfleet:\n  etcd: \
                 [\"http://198.19.255.11:2379\", \"http://198.19.255.12:2379\", \
                 \"http://198.19.255.13:2379\"]\n  cluster: lab\n  host: lb1\n  \
                 lease_ttl: 3s\n  report_interval: 1s\nservices:\n"
            ),
            "{y}"
        );
        let parsed = c.config();
        assert_eq!(parsed.interface, "front");
        assert_eq!(parsed.backend_interfaces, ["b1", "b2"]);
        let fleet = parsed.fleet.expect("the fleet section");
        assert_eq!(fleet.etcd, etcd);
        assert_eq!(fleet.cluster, "lab");
        assert_eq!(fleet.host.as_deref(), Some("lb1"));
        assert_eq!(fleet.lease_ttl, std::time::Duration::from_secs(3));
        assert_eq!(fleet.report_interval, std::time::Duration::from_secs(1));
        // Durations unset: left out.
        let bare = FleetSection::new(etcd, "lab", "lb2").yaml();
        assert_eq!(bare.lines().count(), 4, "{bare}");
    }
}
