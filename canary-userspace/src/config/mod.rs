//! The YAML configuration: parsed whole and validated whole before anything
//! touches a map. Every error names the field it is about.
//!
//! `model` is the file's structure, `validate` its rules, `resolve` the
//! defaults and derived values (weight, seed, limits, interfaces); here:
//! parsing and loading.

mod addresses;
mod limits;
mod model;
mod plan_adaptive;
mod plan_cohorts;
mod plan_signals;
mod resolve;
mod validate;

pub use addresses::BackendRule;
pub use limits::{MAX_CONFIG_BYTES, MAX_NESTING};
pub use model::*;
pub use plan_adaptive::*;
pub use plan_cohorts::*;
pub use plan_signals::*;
pub use resolve::default_seed;

use anyhow::{Context, Result};
use std::path::Path;

/// The configuration compiled into canaryd, used when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.yaml");

/// Stable or canary; defined with the API types (canaryctl needs it too).
pub use crate::control::api::Version;

impl Config {
    /// Parse and validate YAML text.
    pub fn parse(text: &str) -> Result<Config> {
        limits::check_nesting(text)?;
        let config: Config = serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = limits::read_bounded(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("config {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_common::weight::WeightBp;
    use std::time::Duration;

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
    fn fix_veth_offloads_is_an_opt_in_bool() {
        assert!(!Config::parse(GOOD).unwrap().fix_veth_offloads);
        let with =
            |v: &str| GOOD.replace("services:", &format!("fix_veth_offloads: {v}\nservices:"));
        assert!(Config::parse(&with("true")).unwrap().fix_veth_offloads);
        assert!(!Config::parse(&with("false")).unwrap().fix_veth_offloads);
        let e = err_of(&with("sometimes"));
        assert!(e.contains("fix_veth_offloads"), "{e}");
    }

    #[test]
    fn a_fleet_section_is_optional_and_checked() {
        assert!(Config::parse(GOOD).unwrap().fleet.is_none());
        let with = |fleet: &str| GOOD.replace("services:", &format!("{fleet}\nservices:"));
        let c = Config::parse(&with(
            "fleet:\n  etcd: [\"http://198.19.255.11:2379\"]\n  cluster: edge-1\n  host: lb1",
        ))
        .unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(f.host_name(), "lb1");
        assert_eq!(f.lease_ttl, Duration::from_secs(5));
        assert_eq!(f.report_interval, Duration::from_secs(1));
        for (fleet, says) in [
            ("fleet:\n  etcd: []\n  cluster: a", "fleet.etcd: at least one"),
            (
                "fleet:\n  etcd: [\"https://e:2379\"]\n  cluster: a",
                "must be an http:// URL",
            ),
            (
                "fleet:\n  etcd: [\"http://e:2379\"]\n  cluster: a/b",
                "fleet.cluster",
            ),
            (
                "fleet:\n  etcd: [\"http://e:2379\"]\n  cluster: a\n  host: \"x y\"",
                "fleet.host",
            ),
            (
                "fleet:\n  etcd: [\"http://e:2379\"]\n  cluster: a\n  lease_ttl: 1500ms",
                "fleet.lease_ttl",
            ),
            (
                "fleet:\n  etcd: [\"http://e:2379\"]\n  cluster: a\n  lease_ttl: 4s\n  report_interval: 3s",
                "fleet.report_interval",
            ),
            (
                "fleet:\n  etcd: [\"http://e:2379\"]\n  cluster: a\n  leader: lb1",
                "unknown field",
            ),
        ] {
            let e = err_of(&with(fleet));
            assert!(e.contains(says), "{fleet:?}: {e}");
        }
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
    fn a_vip_must_be_a_routable_unicast_address() {
        for (vip, why) in [
            ("127.0.0.1", "is a loopback address; a VIP must be"),
            ("169.254.9.9", "is a link-local address"),
            ("255.255.255.255", "is the broadcast address"),
            ("0.0.0.0", "is the unspecified address"),
            ("224.0.0.1", "is a multicast address"),
        ] {
            let e = err_of(&GOOD.replace("vip: 198.18.100.1", &format!("vip: {vip}")));
            assert!(
                e.contains(&format!("services[0] (shop).vip: {vip} {why}")),
                "{e}"
            );
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

    const FLOW_TABLE: &str = r#"flow_table:
  size: 4096
  timeouts:
    tcp_established: 1h
    tcp_handshake: 30s
    tcp_closing: 5s
    udp: 10s
    udp_replied: 1m
  syn_flood_threshold: 1000
  sweep_interval: 2s
limits:
  services: 8
"#;

    #[test]
    fn flow_table_and_limits_default_like_conntrack() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(
            c.flow_table_entries(),
            canary_common::DEFAULT_FLOW_TABLE_SIZE
        );
        assert_eq!(
            c.flow_table.timeouts.to_map(),
            canary_common::flow::DEFAULT_TIMEOUTS
        );
        assert_eq!(
            c.flow_table.timeouts.tcp_established,
            Duration::from_secs(7440)
        );
        assert_eq!(c.flow_table.syn_flood_threshold, 50_000);
        assert_eq!(c.flow_table.sweep_interval, Duration::from_secs(5));
        assert_eq!(c.limits.services, canary_common::DEFAULT_SERVICE_LIMIT);
    }

    #[test]
    fn flow_table_and_limits_parse() {
        let c = Config::parse(&format!("{FLOW_TABLE}{GOOD}")).unwrap();
        assert_eq!(c.flow_table_entries(), 4096);
        let t = c.flow_table.timeouts.to_map();
        assert_eq!(
            (
                t.tcp_established,
                t.tcp_handshake,
                t.tcp_closing,
                t.udp,
                t.udp_replied
            ),
            (3600, 30, 5, 10, 60)
        );
        assert_eq!(c.flow_table.syn_flood_threshold, 1000);
        assert_eq!(c.flow_table.sweep_interval, Duration::from_secs(2));
        assert_eq!(c.limits.services, 8);
        // The older spelling still works, and 64 entries are enough.
        let old = Config::parse(&format!("flow_table_size: 64\n{GOOD}")).unwrap();
        assert_eq!(old.flow_table_entries(), 64);
        let off = FLOW_TABLE.replace("syn_flood_threshold: 1000", "syn_flood_threshold: 0");
        assert_eq!(
            Config::parse(&format!("{off}{GOOD}"))
                .unwrap()
                .flow_table
                .syn_flood_threshold,
            0
        );
    }

    #[test]
    fn bad_flow_table_and_limits_name_the_key() {
        let good = format!("{FLOW_TABLE}{GOOD}");
        let cases = [
            (good.replace("size: 4096", "size: 63"), "flow_table.size"),
            (
                good.replace("size: 4096", "size: 16777217"),
                "flow_table.size",
            ),
            (format!("flow_table_size: 32\n{GOOD}"), "flow_table_size"),
            (format!("flow_table_size: 4096\n{good}"), "not both"),
            (
                good.replace("tcp_closing: 5s", "tcp_closing: 0s"),
                "flow_table.timeouts.tcp_closing",
            ),
            (
                good.replace("udp: 10s", "udp: 1500ms"),
                "flow_table.timeouts.udp: 1.5s must be whole seconds",
            ),
            (
                good.replace("tcp_established: 1h", "tcp_established: 31days"),
                "flow_table.timeouts.tcp_established",
            ),
            (
                good.replace("tcp_handshake: 30s", "tcp_handshake: soon"),
                "tcp_handshake",
            ),
            (
                good.replace("sweep_interval: 2s", "sweep_interval: 500ms"),
                "flow_table.sweep_interval",
            ),
            (
                good.replace("sweep_interval: 2s", "sweep_interval: 6m"),
                "flow_table.sweep_interval",
            ),
            (
                good.replace("syn_flood_threshold: 1000", "syn_flood_threshold: -1"),
                "syn_flood_threshold",
            ),
            (
                good.replace("  size: 4096\n", "  size: 4096\n  colour: red\n"),
                "colour",
            ),
            (
                good.replace("services: 8", "services: 0"),
                "limits.services",
            ),
            (
                good.replace("services: 8", "services: 1025"),
                "limits.services",
            ),
            (
                good.replace("services: 8", "services: 1\n  vips: 2"),
                "vips",
            ),
        ];
        for (text, needle) in cases {
            let e = err_of(&text);
            assert!(e.contains(needle), "error {e:?} should mention {needle:?}");
        }
    }

    #[test]
    fn more_services_than_the_limit_are_refused() {
        let two = format!(
            "limits:\n  services: 1\n{GOOD}{}",
            r#"  - name: shop2
    vip: 198.18.100.2
    port: 80
    protocol: tcp
    stable: [198.18.5.2]
"#
        );
        let e = err_of(&two);
        assert!(e.contains("limits.services is 1"), "{e}");
        assert!(Config::parse(&two.replace("services: 1\n", "services: 2\n")).is_ok());
    }

    #[test]
    fn default_seed_is_stable_across_hosts() {
        // FNV-1a reference value for "shop".
        assert_eq!(default_seed(""), 0x811c_9dc5);
        assert_eq!(default_seed("a"), 0xe40c_292c);
    }
}
