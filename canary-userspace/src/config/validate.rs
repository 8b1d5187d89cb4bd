//! Validation of a whole config before anything touches a map: every
//! rule, and an error that names the field it is about.

use super::addresses::BackendRule;
use super::model::*;
use super::Version;
use anyhow::{bail, Context, Result};
use canary_common::weight::WeightBp;
use canary_common::{MAX_BACKENDS, MAX_OVERRIDES, MAX_SERVICES, WEIGHT_SCALE_BP};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

impl Config {
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
        validate_flow_table(self)?;
        let judged = self.judging.per_client_per_second;
        if judged > 1_000_000 {
            bail!(
                "judging.per_client_per_second: {judged} is out of range (0 for no limit, \
                 or 1 to 1000000)"
            );
        }
        if let Some(f) = &self.fleet {
            validate_fleet(f)?;
        }
        let limit = self.limits.services;
        if !(1..=MAX_SERVICES).contains(&limit) {
            bail!("limits.services: {limit} is out of range (1 to {MAX_SERVICES})");
        }
        if self.services.is_empty() {
            bail!("services: at least one service is needed");
        }
        if self.services.len() > limit as usize {
            bail!(
                "services: {} services, but limits.services is {limit} \
                 (raise it, up to {MAX_SERVICES}; that needs a restart of canaryd)",
                self.services.len()
            );
        }
        let mut names = HashSet::new();
        let mut vips: HashMap<(IpAddr, u16, Protocol), &str> = HashMap::new();
        // Every VIP address and the first service that has it: no backend
        // may be one (whatever port or protocol).
        let mut vip_addrs: HashMap<IpAddr, &str> = HashMap::new();
        for s in &self.services {
            vip_addrs.entry(s.vip).or_insert(&s.name);
        }
        // NAT mode recognises replies by their source (backend, port, proto),
        // so one backend port can serve only one service.
        let mut backend_owner: HashMap<(IpAddr, u16, Protocol), &str> = HashMap::new();
        let mut total_backends = 0usize;
        let mut total_overrides = 0usize;
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if !plain_name(&s.name, 64, &[]) {
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
            // A VIP is a destination clients route to: the address rules
            // of a backend (but "another host": a VIP may be this host's).
            if let Some(rule) = BackendRule::of(s.vip) {
                bail!(
                    "{at}.vip: {} is {}; a VIP must be a unicast address clients can route to",
                    s.vip,
                    rule.fact()
                );
            }
            if let Some(other) = vips.insert((s.vip, s.port, s.protocol), &s.name) {
                bail!(
                    "{at}.vip: {}:{} {:?} overlaps service {other} (same address, port and protocol)",
                    s.vip,
                    s.port,
                    s.protocol
                );
            }
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
                    let owner = |a: IpAddr| vip_addrs.get(&a).map(|o| o.to_string());
                    if let Some(rule) = BackendRule::of_backend(*b, s.vip, owner) {
                        bail!("{}", rule.error(&field, *b));
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
                // A canary override with an empty canary pool is valid (a
                // finished release): it is written as stable until a canary
                // backend is added.
            }
            let mut prefixes = HashSet::new();
            for (j, o) in s.overrides.iter().enumerate() {
                if !prefixes.insert(o.cidr) {
                    bail!("{at}.overrides[{j}].cidr: {} is listed twice", o.cidr);
                }
            }
            // Cohort sources are entries of the same prefix map.
            total_overrides +=
                s.overrides.len() + s.cohorts().iter().map(|c| c.sources.len()).sum::<usize>();
            if let Some(h) = &s.health {
                validate_health(h, s).with_context(|| format!("{at}.health"))?;
            }
            if let Some(r) = &s.rollout {
                validate_rollout(r, s).with_context(|| format!("{at}.rollout"))?;
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
            bail!("services: {total_overrides} overrides and cohort sources in all, at most {MAX_OVERRIDES}");
        }
        let _ = WEIGHT_SCALE_BP;
        Ok(())
    }
}

/// Flow table sizes the config accepts.
pub const FLOW_TABLE_MIN: u32 = 64;
pub const FLOW_TABLE_MAX: u32 = 16_777_216;

fn validate_flow_table(c: &Config) -> Result<()> {
    let ft = &c.flow_table;
    if let (Some(_), Some(_)) = (ft.size, c.flow_table_size) {
        bail!("flow_table_size: set flow_table.size or the older flow_table_size, not both");
    }
    for (key, size) in [
        ("flow_table.size", ft.size),
        ("flow_table_size", c.flow_table_size),
    ] {
        if let Some(size) = size {
            if !(FLOW_TABLE_MIN..=FLOW_TABLE_MAX).contains(&size) {
                bail!("{key}: {size} is out of range ({FLOW_TABLE_MIN} to {FLOW_TABLE_MAX})");
            }
        }
    }
    let t = &ft.timeouts;
    const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
    for (key, d) in [
        ("tcp_established", t.tcp_established),
        ("tcp_handshake", t.tcp_handshake),
        ("tcp_closing", t.tcp_closing),
        ("udp", t.udp),
        ("udp_replied", t.udp_replied),
    ] {
        if d.subsec_nanos() != 0 {
            bail!("flow_table.timeouts.{key}: {d:?} must be whole seconds");
        }
        if d < Duration::from_secs(1) || d > MAX_TIMEOUT {
            bail!("flow_table.timeouts.{key}: {d:?} is out of range (1s to 30d)");
        }
    }
    let sweep = ft.sweep_interval;
    if sweep < Duration::from_secs(1) || sweep > Duration::from_secs(300) {
        bail!("flow_table.sweep_interval: {sweep:?} is out of range (1s to 5m)");
    }
    Ok(())
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

/// A name that goes into keys and messages as it is: 1 to `max` ASCII
/// letters, digits, '-' or '_', or one of `also`.
pub(super) fn plain_name(name: &str, max: usize, also: &[char]) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || also.contains(&c))
}

fn validate_fixed_steps(r: &RolloutConfig) -> Result<()> {
    if r.adaptive.is_some() {
        bail!("adaptive: only with strategy: adaptive");
    }
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
    Ok(())
}

fn validate_rollout(r: &RolloutConfig, s: &ServiceConfig) -> Result<()> {
    match r.strategy {
        super::Strategy::Fixed => validate_fixed_steps(r)?,
        super::Strategy::Adaptive => super::plan_adaptive::validate(r)?,
    }
    super::plan_cohorts::validate(r, s)?;
    super::plan_signals::validate(r)?;
    if s.protocol == Protocol::Udp && r.analysis.latency.as_ref().is_some_and(|l| l.handshake) {
        bail!("analysis.latency.handshake: a UDP service has no handshake to time; use analysis.latency.prometheus");
    }
    if r.interval < Duration::from_millis(100) {
        bail!("interval: {:?} is below 100ms", r.interval);
    }
    // An empty canary pool is valid (a finished release keeps its plan);
    // `rollout start` refuses it.
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
    // UDP flows fail by their backends' ICMP port unreachables; only TCP
    // has a handshake to time.
    if a.max_p99_handshake_ms.is_some() && s.protocol != Protocol::Tcp {
        bail!("analysis.max_p99_handshake_ms: handshake times are measured for TCP services only");
    }
    Ok(())
}

/// A name that goes into etcd keys: letters, digits, `.`, `_`, `-`.
fn key_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn validate_fleet(f: &super::FleetConfig) -> Result<()> {
    if f.etcd.is_empty() {
        bail!("fleet.etcd: at least one etcd endpoint is needed");
    }
    for (i, e) in f.etcd.iter().enumerate() {
        let Some(rest) = e.strip_prefix("http://") else {
            bail!(
                "fleet.etcd[{i}]: {e:?} must be an http:// URL (host:port); \
                 TLS to etcd is not supported yet"
            );
        };
        if rest.is_empty() || rest.contains('/') && !rest.ends_with('/') {
            bail!("fleet.etcd[{i}]: {e:?} must be http://HOST:PORT");
        }
    }
    if !key_safe(&f.cluster) {
        bail!(
            "fleet.cluster: {:?} must be 1 to 63 letters, digits, '.', '_' or '-'",
            f.cluster
        );
    }
    if let Some(h) = &f.host {
        if !key_safe(h) {
            bail!("fleet.host: {h:?} must be 1 to 63 letters, digits, '.', '_' or '-'");
        }
    }
    let ttl = f.lease_ttl;
    if ttl < Duration::from_secs(2) || ttl > Duration::from_secs(60) || ttl.subsec_nanos() != 0 {
        bail!(
            "fleet.lease_ttl: {} must be whole seconds from 2s to 60s (etcd leases count seconds)",
            humantime::format_duration(ttl)
        );
    }
    let r = f.report_interval;
    if r < Duration::from_millis(100) || r > ttl / 2 {
        bail!(
            "fleet.report_interval: {} must be from 100ms to half of lease_ttl ({})",
            humantime::format_duration(r),
            humantime::format_duration(ttl / 2)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    /// Two services, v4 and v6; `{B4}` and `{B6}` are the second canary
    /// backend of each.
    const TWO: &str = r#"
interface: lb-client
services:
  - name: shop
    vip: 198.18.100.1
    port: 80
    protocol: tcp
    canary_weight: 10
    stable: [198.18.1.2]
    canary: [198.18.3.2, {B4}]
  - name: api
    vip: "2001:db8:100::1"
    port: 443
    protocol: tcp
    canary_weight: 10
    stable: ["2001:db8:1::2"]
    canary: ["2001:db8:3::2", "{B6}"]
  - name: cart
    vip: 198.18.100.2
    port: 8080
    protocol: udp
    stable: [198.18.2.2]
"#;

    fn with(b4: &str, b6: &str) -> Result<Config, String> {
        let text = TWO.replace("{B4}", b4).replace("{B6}", b6);
        Config::parse(&text).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn usable_backends_pass() {
        with("198.18.4.2", "2001:db8:4::2").unwrap();
    }

    #[test]
    fn every_v4_rule_names_the_field_and_the_rule() {
        for (b, rule) in [
            ("0.0.0.0", "is the unspecified address"),
            ("0.0.0.7", "is in 0.0.0.0/8"),
            (
                "127.0.0.1",
                "is a loopback address; a backend must be another host",
            ),
            ("127.1.2.3", "is a loopback address"),
            ("255.255.255.255", "is the broadcast address"),
            ("240.0.0.1", "is in 240.0.0.0/4, reserved"),
            ("169.254.1.1", "is a link-local address"),
            ("224.0.0.1", "is a multicast address"),
            ("198.18.100.1", "is the VIP of service shop"),
            // Another service's VIP, on another port and protocol.
            ("198.18.100.2", "is the VIP of service cart"),
        ] {
            let e = with(b, "2001:db8:4::2").unwrap_err();
            let want = format!("services[0] (shop).canary[1]: {b} {rule}");
            assert!(e.contains(&want), "{b}: {e:?} should contain {want:?}");
        }
    }

    #[test]
    fn every_v6_rule_names_the_field_and_the_rule() {
        for (b, rule) in [
            ("::", "is the unspecified address"),
            (
                "::1",
                "is a loopback address; a backend must be another host",
            ),
            ("fe80::1", "is a link-local address"),
            ("ff02::1", "is a multicast address"),
            ("::ffff:198.18.4.2", "is an IPv4-mapped IPv6 address"),
            ("2001:db8:100::1", "is the VIP of service api"),
        ] {
            let e = with("198.18.4.2", b).unwrap_err();
            let want = format!("services[1] (api).canary[1]: {b} {rule}");
            assert!(e.contains(&want), "{b}: {e:?} should contain {want:?}");
        }
    }

    #[test]
    fn the_hosts_own_addresses_are_refused_by_field() {
        let c = with("198.18.4.2", "2001:db8:4::2").unwrap();
        let host = vec![
            ("198.18.0.1".parse().unwrap(), "lb-client".to_string()),
            ("2001:db8:4::2".parse().unwrap(), "lb-b4".to_string()),
        ];
        let e = format!("{:#}", c.check_backends_not_on_host(&host).unwrap_err());
        assert_eq!(
            e,
            "services[1] (api).canary[1]: 2001:db8:4::2 is an address of this host \
             (interface lb-b4); a backend must be another host"
        );
        c.check_backends_not_on_host(&host[..1]).unwrap();
    }
}
