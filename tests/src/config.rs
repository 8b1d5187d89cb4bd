//! The one builder of canaryd configs for every test, the demo and the
//! bench: the lab's interfaces by default, services added one by one, YAML
//! out (what canaryd reads) or a parsed `Config` (what `DataPlane::apply`
//! takes). The output is plain YAML in the documented layout (two-space
//! list items, four-space keys), so a test may still patch a line of it.
//!
//! ```text
//! let yaml = LbConfig::lab()
//!     .service(Service::tcp("shop", VIP_V4, 80).affinity("source-ip").weight(10.0)
//!         .stable(["198.18.1.2", "198.18.2.2"]).canary(["198.18.3.2"]))
//!     .yaml();
//! ```

use canary_userspace::config::Config;
use std::fmt::Display;

/// A whole config file.
#[derive(Debug, Clone)]
pub struct LbConfig {
    interface: String,
    backend_interfaces: Vec<String>,
    metrics: Option<String>,
    services: Vec<Service>,
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
            services: Vec::new(),
        }
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

    /// A source-prefix override: `cidr` always gets `version`.
    pub fn force(mut self, cidr: &str, version: &str) -> Service {
        self.overrides.push((cidr.into(), version.into()));
        self
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
