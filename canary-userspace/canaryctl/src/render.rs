//! Status as text: what `canaryctl status` prints, a block per service,
//! the fleet's and the data path's lines. The live view (`watch.rs`) shows
//! the same figures in a terminal UI.

use anyhow::{bail, Result};
use canary_control::api::{
    FleetHost, FleetStatus, FlowTableStatus, InterfaceStatus, PinsStatus, RolloutStatus,
    ServiceStatus, Status, VersionStatus,
};
use std::net::IpAddr;
use std::time::Duration;

/// The whole status, or one service of it (an unknown name is an error).
pub fn select(mut status: Status, service: Option<&str>) -> Result<Status> {
    if let Some(name) = service {
        status.services.retain(|s| s.name == name);
        if status.services.is_empty() {
            bail!("unknown service: {name}");
        }
    }
    Ok(status)
}

/// "9.8%", or "-" without a figure (a share, 0 to 1).
pub fn share(x: Option<f64>) -> String {
    x.map(|s| format!("{:.1}%", s * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// "0.00%", or "-" without judged connections (an error ratio, 0 to 1).
pub fn error_ratio(x: Option<f64>) -> String {
    x.map(|v| format!("{:.2}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// The service's VIP and port: `198.18.100.1:80`, `[2001:db8::1]:80`.
pub fn vip_port(s: &ServiceStatus) -> String {
    match s.vip {
        IpAddr::V6(v6) => format!("[{v6}]:{}", s.port),
        IpAddr::V4(v4) => format!("{v4}:{}", s.port),
    }
}

/// The steps the rollout's plan has (an adaptive plan's may be more than
/// it has chosen so far).
pub fn step_count(r: &RolloutStatus) -> usize {
    r.planned_steps.unwrap_or(r.steps.len())
}

/// One host of the fleet, by name.
pub fn fleet_host(status: &Status, name: &str) -> Result<FleetHost> {
    let Some(fleet) = &status.fleet else {
        bail!("this canaryd is not in a fleet (no fleet: section in its config)");
    };
    fleet
        .hosts
        .iter()
        .find(|h| h.name == name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
            anyhow::anyhow!(
                "no live report from host {name} in fleet {} (hosts reporting: {})",
                fleet.cluster,
                names.join(", ")
            )
        })
}

pub fn render_fleet_host(h: &FleetHost) -> String {
    let mut out = format!(
        "host {}: report {:.1} s ago{}\n",
        h.name,
        h.report_age_ms as f64 / 1000.0,
        if h.leader { ", leader" } else { "" }
    );
    for (svc, a) in &h.applied {
        let [stable, canary] = h.new_connections.get(svc).copied().unwrap_or_default();
        out.push_str(&format!(
            "  {svc}: applies {:.2}% (generation {}); new connections stable {stable}, canary {canary}\n",
            a.percent, a.generation
        ));
    }
    if h.unhealthy.is_empty() {
        out.push_str("  probes: every probed backend healthy\n");
    } else {
        out.push_str(&format!("  probes: unhealthy {}\n", h.unhealthy.join(", ")));
    }
    out
}

/// "fleet NAME: this host H, leader L, etcd connected": the head of the
/// fleet's lines here and of the live view's fleet line.
pub fn fleet_header(f: &FleetStatus) -> String {
    format!(
        "fleet {}: this host {}, leader {}, etcd {}",
        f.cluster,
        f.host,
        f.leader.as_deref().unwrap_or("none"),
        if f.connected {
            "connected"
        } else {
            "NOT connected"
        }
    )
}

/// The fleet's lines: who leads, whether this host reaches etcd, how many
/// hosts apply each service's weight, one row per host.
pub fn render_fleet(f: &FleetStatus) -> String {
    let mut out = format!("{}\n", fleet_header(f));
    if let (Some(since), Some(for_ms)) = (f.cut_off_since_ms, f.cut_off_for_ms) {
        let since = std::time::UNIX_EPOCH + Duration::from_millis(since);
        out.push_str(&format!(
            "  CUT OFF from etcd since {} ({:.1} s): {}; the data plane keeps its last state, \
             weights cannot be raised, a rollback applies on this host only\n",
            humantime::format_rfc3339_seconds(since),
            for_ms as f64 / 1000.0,
            f.cut_off_reason.as_deref().unwrap_or("unreachable")
        ));
    }
    if !f.pending_rollbacks.is_empty() {
        out.push_str(&format!(
            "  rollbacks to publish when etcd returns: {}\n",
            f.pending_rollbacks.join(", ")
        ));
    }
    for a in &f.agreement {
        out.push_str(&format!("  {}: {}\n", a.service, a.line));
    }
    for h in &f.silent {
        let since = h
            .silent_for_ms
            .map(|ms| format!(" for {:.1} s", ms as f64 / 1000.0))
            .unwrap_or_default();
        out.push_str(&format!(
            "  host {:<12} SILENT{since}: no report (its canaryd is down or cut off from etcd; \
             its data plane may still forward with its last weight)\n",
            h.name
        ));
    }
    for h in &f.hosts {
        let applied: Vec<String> = h
            .applied
            .iter()
            .map(|(s, a)| format!("{s} {:.2}% g{}", a.percent, a.generation))
            .collect();
        out.push_str(&format!(
            "  host {:<12} report {:>5.1} s ago{:<8} {}{}\n",
            h.name,
            h.report_age_ms as f64 / 1000.0,
            if h.leader { ", leader" } else { "" },
            applied.join(", "),
            if h.unhealthy.is_empty() {
                String::new()
            } else {
                format!("; sees unhealthy {}", h.unhealthy.join(", "))
            }
        ));
    }
    out
}

pub fn render_status(status: &Status, with_datapath: bool) -> String {
    let mut out = String::new();
    if let Some(f) = &status.fleet {
        out.push_str(&render_fleet(f));
    }
    out.push_str(&render_interfaces(&status.interfaces));
    out.push_str(&render_pins(&status.pins));
    for s in &status.services {
        render_service(&mut out, s);
    }
    if with_datapath && status.flow_table.size > 0 {
        out.push_str(&render_flow_table(&status.flow_table));
    }
    if with_datapath && !status.datapath.is_empty() {
        out.push_str("data path:");
        for (reason, n) in &status.datapath {
            if *n > 0 {
                out.push_str(&format!(" {reason}={n}"));
            }
        }
        out.push('\n');
    }
    out
}

/// A line per problem canaryd's veth check found on an attached
/// interface's peer (they break forwarding for every service); nothing when
/// there is none.
pub fn render_interfaces(interfaces: &[InterfaceStatus]) -> String {
    let mut out = String::new();
    for i in interfaces {
        let peer = i.peer.as_deref().unwrap_or("its veth peer");
        for p in &i.problems {
            out.push_str(&format!("interface {} (peer {peer}): {p}\n", i.name));
        }
    }
    out
}

/// A line when canaryd's pins need attention (some at risk) or were
/// restored; nothing otherwise.
pub fn render_pins(p: &PinsStatus) -> String {
    let mut out = String::new();
    if !p.at_risk.is_empty() {
        out.push_str(&format!(
            "pins: {} of {} AT RISK ({}): a restart of canaryd would not adopt them as they \
             are; canaryd's log says why and what it would lose\n",
            p.at_risk.len(),
            p.watched,
            p.at_risk.join(", ")
        ));
    }
    if p.restored_total > 0 {
        out.push_str(&format!(
            "pins: {} restored since canaryd started (removed while it ran)\n",
            p.restored_total
        ));
    }
    out
}

/// The host-wide "flow table:" line.
pub fn render_flow_table(ft: &FlowTableStatus) -> String {
    let swept = match ft.swept_at_age_ms {
        Some(ms) => format!("as of the sweep {:.1} s ago", ms as f64 / 1000.0),
        None => "not swept yet".to_string(),
    };
    format!(
        "flow table: {} of {} entries ({:.1}%, {swept}); {} inserts, {} insert failures, \
         {} expired, ~{} evicted (estimate), {} closed; flood mode {} ({} stateless SYNs); \
         {} replies NATed without an entry\n",
        ft.entries,
        ft.size,
        ft.entries as f64 * 100.0 / ft.size.max(1) as f64,
        ft.inserts,
        ft.insert_failures,
        ft.expired,
        ft.evictions_estimate,
        ft.closed,
        if ft.flood_mode { "ON" } else { "off" },
        ft.syn_stateless,
        ft.reply_no_flow_nat,
    )
}

pub fn render_service(out: &mut String, s: &ServiceStatus) {
    let addr = vip_port(s);
    out.push_str(&format!(
        "{}  {addr}/{}  affinity {}  canary weight {:.2}% (set by {})\n",
        s.name, s.protocol, s.affinity, s.weight_percent, s.weight_source
    ));
    if let Some(c) = &s.cohorts {
        out.push_str(&format!(
            "  cohorts: {c}
"
        ));
    }
    out.push_str(&format!(
        "  {:<8} {:>12} {:>10} {:>14} {:>10} {:>14}\n",
        "version", "new flows", "flows/s", "packets", "pkts/s", "reply packets"
    ));
    let row = |out: &mut String, name: &str, v: &VersionStatus| {
        out.push_str(&format!(
            "  {:<8} {:>12} {:>10.1} {:>14} {:>10.1} {:>14}\n",
            name, v.new_flows, v.new_flows_per_sec, v.packets, v.packets_per_sec, v.reply_packets
        ));
    };
    row(out, "stable", &s.stable);
    row(out, "canary", &s.canary);
    out.push_str(&format!(
        "  canary share of new connections: last second {}, since configured {}\n",
        share(s.observed_canary_share),
        share(s.observed_canary_share_total)
    ));
    let ms = |x: Option<f64>| {
        x.map(|v| format!("{v:.2} ms"))
            .unwrap_or_else(|| "-".into())
    };
    for (name, v) in [("stable", &s.signals.stable), ("canary", &s.signals.canary)] {
        out.push_str(&format!(
            "  {name} health: last {:.0} s: {:.1} conn/s, {:.1} failed/s, error ratio {}, handshake p50 {} p99 {} | total: {} judged ({} not: client over budget), {} SYN-ACKs, {} resets ({} judged), {} timeouts, {} unreachables\n",
            v.recent_window_s,
            v.recent_connections_per_sec,
            v.recent_failures_per_sec,
            error_ratio(v.recent_error_ratio),
            ms(v.recent_handshake_p50_ms),
            ms(v.recent_handshake_p99_ms),
            v.judged,
            v.not_judged,
            v.syn_acks,
            v.resets,
            v.judged_resets,
            v.handshake_timeouts,
            v.unreachables,
        ));
    }
    for b in &s.backends {
        let health = match b.healthy {
            Some(true) => "healthy",
            Some(false) => "UNHEALTHY",
            None => "",
        };
        let drain = b
            .draining
            .as_ref()
            .map(|d| {
                let open = d
                    .open_connections
                    .map(|n| format!("{n} open connections here"))
                    .unwrap_or_else(|| "open connections not counted yet".into());
                format!(
                    "  DRAINING ({open}, ends in {})",
                    humantime::format_duration(Duration::from_secs(d.ends_in_s as u64))
                )
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "    {:<6} {:<39} new flows {:>10}  packets {:>12}  flows/s {:>8.1}  {health}{drain}\n",
            b.version.name(),
            b.addr.to_string(),
            b.new_flows,
            b.packets,
            b.new_flows_per_sec
        ));
    }
    if let Some(r) = &s.rollout {
        let plan: Vec<String> = r.steps.iter().map(|p| format!("{p}%")).collect();
        out.push_str(&format!(
            "  rollout {}: step {}/{} of [{}], {:.1} s of {:.1} s observed, {:.1} s left\n",
            r.phase.to_uppercase(),
            r.step,
            step_count(r),
            plan.join(" -> "),
            r.step_elapsed_s,
            r.step_interval_s,
            r.time_left_s
        ));
        if let Some(why) = &r.why {
            out.push_str(&format!("    why: {why}\n"));
        }
        if let Some(b) = &r.budget {
            let left = match (b.cap, b.left) {
                (Some(cap), Some(left)) => {
                    format!("{left} of {cap} left before level {}", b.level + 1)
                }
                _ => "every level reached".to_string(),
            };
            out.push_str(&format!(
                "    budget: level {}/{} reached, {} {} exposed, {left}\n",
                b.level, b.levels, b.exposed, b.unit
            ));
        }
        let need = r
            .required_canary_connections
            .map(|n| format!(" (the step needs {n})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "    window: canary {}/{} failed{need}, stable {}/{} failed\n",
            r.canary_failures, r.canary_connections, r.stable_failures, r.stable_connections
        ));
        out.push_str(&format!("    last analysis: {}\n", r.verdict));
        if let Some(x) = &r.external {
            out.push_str(&format!("    {x}\n"));
        }
        for m in &r.metrics {
            let v = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.4}"));
            out.push_str(&format!(
                "    metric {:<16} canary {:>10} stable {:>10}  {} ({}{})  {}\n",
                m.name,
                v(m.canary),
                v(m.stable),
                m.limit,
                m.direction,
                if m.gate { "" } else { ", informs only" },
                m.state.to_uppercase()
            ));
        }
        for l in &r.latency {
            let ms = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3} ms"));
            out.push_str(&format!(
                "    latency {:<10} p{} canary {} stable {}; above {}: canary {}/{}, stable {}/{}; {}\n",
                l.source,
                l.quantile * 100.0,
                ms(l.canary_ms),
                ms(l.stable_ms),
                ms(l.threshold_ms),
                l.canary_above,
                l.canary_responses,
                l.stable_above,
                l.stable_responses,
                l.state.to_uppercase()
            ));
        }
        if let Some(f) = r.on_failure.as_deref().filter(|f| *f != "rollback") {
            out.push_str(&format!("    on failure: {f}\n"));
        }
        if let Some(why) = &r.reason {
            out.push_str(&format!("    {why}\n"));
        }
        for h in &r.history {
            out.push_str(&format!("    - {h}\n"));
        }
    }
    if s.rollbacks > 0 {
        out.push_str(&format!("  rollbacks so far: {}\n", s.rollbacks));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_problems_are_listed_with_their_fix() {
        let i = |problems: Vec<&str>| InterfaceStatus {
            name: "lb-client".into(),
            peer: Some("eth0 in namespace client".into()),
            problems: problems.into_iter().map(String::from).collect(),
            checked_age_ms: 0,
        };
        assert_eq!(render_interfaces(&[i(vec![])]), "");
        assert_eq!(
            render_interfaces(&[i(vec!["TX checksum offload on; fix: `x`"])]),
            "interface lb-client (peer eth0 in namespace client): TX checksum offload on; fix: `x`\n"
        );
    }

    #[test]
    fn pins_are_said_only_when_something_happened() {
        let mut p = PinsStatus {
            watched: 21,
            ..Default::default()
        };
        assert_eq!(render_pins(&p), "");
        p.restored_total = 21;
        p.at_risk = vec!["FLOWS".into(), "links/eth0".into()];
        let text = render_pins(&p);
        assert!(
            text.starts_with("pins: 2 of 21 AT RISK (FLOWS, links/eth0)"),
            "{text}"
        );
        assert!(text.ends_with("pins: 21 restored since canaryd started (removed while it ran)\n"));
    }

    #[test]
    fn the_flow_table_line_has_its_figures() {
        let ft = FlowTableStatus {
            size: 4096,
            entries: 1024,
            swept_at_age_ms: Some(1500),
            inserts: 5000,
            evictions_estimate: 900,
            flood_mode: true,
            syn_stateless: 77,
            ..Default::default()
        };
        let line = render_flow_table(&ft);
        for needle in [
            "flow table: 1024 of 4096 entries (25.0%, as of the sweep 1.5 s ago)",
            "5000 inserts",
            "~900 evicted (estimate)",
            "flood mode ON (77 stateless SYNs)",
        ] {
            assert!(line.contains(needle), "{line:?} lacks {needle:?}");
        }
        let none = render_flow_table(&FlowTableStatus {
            size: 64,
            ..Default::default()
        });
        assert!(none.contains("not swept yet") && none.contains("flood mode off"));
    }
}
