//! The read-only metrics endpoint: `GET /metrics` in the OpenMetrics text
//! format (prometheus-client encodes it), built on each scrape from the same
//! `Status` the control API serves, so the two never disagree. It listens
//! only where the config's `metrics:` says; any other method gets 405, any
//! other path 404, and nothing here can change the data plane.

use crate::control::api::Status;
use anyhow::{Context, Result};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Where a scrape's figures come from (the daemon's `status()`).
pub type Source = Arc<dyn Fn() -> Result<Status> + Send + Sync>;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type Counters = Family<Labels, Counter<u64>>;
type Gauges = Family<Labels, Gauge<f64, AtomicU64>>;

fn counters(registry: &mut Registry, name: &str, help: &str) -> Counters {
    let family = Counters::default();
    registry.register(name, help, family.clone());
    family
}

fn gauges(registry: &mut Registry, name: &str, help: &str) -> Gauges {
    let family = Gauges::default();
    registry.register(name, help, family.clone());
    family
}

/// The exposition of one status snapshot. Counter names get `_total`
/// appended by the encoder: `canary_version_packets_total{service,version}`.
pub fn encode_status(status: &Status) -> Result<String> {
    let mut r = Registry::with_prefix("canary");
    let weight = gauges(
        &mut r,
        "weight_percent",
        "Canary weight the data plane applies to new connections, in percent",
    );
    let observed = gauges(
        &mut r,
        "observed_canary_share",
        "Canary share of the new connections of the last sampling interval (absent when there were none)",
    );
    let v_packets = counters(
        &mut r,
        "version_packets",
        "Client packets forwarded to a version",
    );
    let v_bytes = counters(
        &mut r,
        "version_bytes",
        "Client bytes forwarded to a version",
    );
    let v_flows = counters(
        &mut r,
        "version_new_flows",
        "New connections sent to a version",
    );
    let v_reply_packets = counters(
        &mut r,
        "version_reply_packets",
        "Reply packets from a version's backends",
    );
    let v_reply_bytes = counters(
        &mut r,
        "version_reply_bytes",
        "Reply bytes from a version's backends",
    );
    let b_packets = counters(
        &mut r,
        "backend_packets",
        "Client packets forwarded to a backend",
    );
    let b_bytes = counters(
        &mut r,
        "backend_bytes",
        "Client bytes forwarded to a backend",
    );
    let b_flows = counters(
        &mut r,
        "backend_new_flows",
        "New connections sent to a backend",
    );
    let b_reply = counters(
        &mut r,
        "backend_reply_packets",
        "Reply packets from a backend",
    );
    let syn_acks = counters(
        &mut r,
        "version_syn_acks",
        "First SYN-ACKs from a version's backends",
    );
    let resets = counters(&mut r, "version_resets", "RSTs from a version's backends");
    let timeouts = counters(
        &mut r,
        "version_handshake_timeouts",
        "SYNs a version's backends never answered within the handshake timeout",
    );
    let judged = counters(
        &mut r,
        "version_judged_connections",
        "New connections a rollout judges (checked opening, client within its budget)",
    );
    let judged_resets = counters(
        &mut r,
        "version_judged_resets",
        "RSTs from a version's backends on judged connections",
    );
    let unreachables = counters(
        &mut r,
        "version_unreachables",
        "ICMP port unreachables from a version's backends for judged UDP flows",
    );
    let not_judged = counters(
        &mut r,
        "version_not_judged_connections",
        "New connections not judged: their client address was over its budget",
    );
    let p99 = gauges(
        &mut r,
        "version_handshake_p99_ms",
        "99th percentile of SYN -> SYN-ACK time since canaryd started, milliseconds",
    );
    let healthy = gauges(
        &mut r,
        "backend_healthy",
        "1 when the backend passes its probes (probed backends only)",
    );
    let step = gauges(
        &mut r,
        "rollout_step",
        "Current step of the service's rollout (1-based; 0 without one)",
    );
    let phase = gauges(
        &mut r,
        "rollout_phase",
        "1 for the rollout's phase (running, paused, promoted, aborted; none without a rollout), 0 for the others",
    );
    let rollbacks = counters(
        &mut r,
        "rollbacks",
        "Rollbacks of the service (automatic or requested)",
    );
    let datapath = counters(
        &mut r,
        "datapath_packets",
        "Packets the XDP programs handled, by outcome (see README: data plane)",
    );

    for s in &status.services {
        let svc = || vec![("service", s.name.clone())];
        weight.get_or_create(&svc()).set(s.weight_percent);
        if let Some(share) = s.observed_canary_share {
            observed.get_or_create(&svc()).set(share);
        }
        for (version, v) in [("stable", &s.stable), ("canary", &s.canary)] {
            let l = vec![
                ("service", s.name.clone()),
                ("version", version.to_string()),
            ];
            v_packets.get_or_create(&l).inc_by(v.packets);
            v_bytes.get_or_create(&l).inc_by(v.bytes);
            v_flows.get_or_create(&l).inc_by(v.new_flows);
            v_reply_packets.get_or_create(&l).inc_by(v.reply_packets);
            v_reply_bytes.get_or_create(&l).inc_by(v.reply_bytes);
        }
        for (version, v) in [("stable", &s.signals.stable), ("canary", &s.signals.canary)] {
            let l = vec![
                ("service", s.name.clone()),
                ("version", version.to_string()),
            ];
            syn_acks.get_or_create(&l).inc_by(v.syn_acks);
            resets.get_or_create(&l).inc_by(v.resets);
            timeouts.get_or_create(&l).inc_by(v.handshake_timeouts);
            judged.get_or_create(&l).inc_by(v.judged);
            judged_resets.get_or_create(&l).inc_by(v.judged_resets);
            unreachables.get_or_create(&l).inc_by(v.unreachables);
            not_judged.get_or_create(&l).inc_by(v.not_judged);
            if let Some(ms) = v.handshake_p99_ms {
                p99.get_or_create(&l).set(ms);
            }
        }
        step.get_or_create(&svc())
            .set(s.rollout.as_ref().map(|r| r.step as f64).unwrap_or(0.0));
        // Every phase, "none" too, so a panel shows "no rollout" as well.
        let current = s.rollout.as_ref().map_or("none", |r| r.phase.as_str());
        for ph in PHASES {
            let l = vec![("service", s.name.clone()), ("phase", ph.to_string())];
            phase
                .get_or_create(&l)
                .set(if current == ph { 1.0 } else { 0.0 });
        }
        rollbacks.get_or_create(&svc()).inc_by(s.rollbacks);
        for b in &s.backends {
            if let Some(h) = b.healthy {
                let l = vec![
                    ("service", s.name.clone()),
                    ("version", b.version.name().to_string()),
                    ("backend", b.addr.to_string()),
                ];
                healthy.get_or_create(&l).set(if h { 1.0 } else { 0.0 });
            }
            let l = vec![
                ("service", s.name.clone()),
                ("version", b.version.name().to_string()),
                ("backend", b.addr.to_string()),
            ];
            b_packets.get_or_create(&l).inc_by(b.packets);
            b_bytes.get_or_create(&l).inc_by(b.bytes);
            b_flows.get_or_create(&l).inc_by(b.new_flows);
            b_reply.get_or_create(&l).inc_by(b.reply_packets);
        }
    }
    flow_table(&mut r, status);
    if let Some(f) = &status.fleet {
        fleet(&mut r, f);
    }
    interfaces(&mut r, status);
    pins(&mut r, status);
    for (reason, n) in &status.datapath {
        datapath
            .get_or_create(&vec![("reason", reason.clone())])
            .inc_by(*n);
    }
    let mut out = String::new();
    encode(&mut out, &r).context("encoding metrics")?;
    // The histogram goes before the encoder's closing `# EOF`.
    let body = out
        .strip_suffix("# EOF\n")
        .context("the encoder's exposition ends with # EOF")?;
    Ok(format!("{body}{}# EOF\n", handshake_histogram(status)))
}

/// `canary_rollout_phase`'s phases: a rollout's, or "none" without one.
pub const PHASES: [&str; 5] = ["none", "running", "paused", "promoted", "aborted"];

/// `canary_version_handshake_seconds`: the data plane's SYN -> SYN-ACK
/// histogram (judged SYNs, since canaryd started) per service and version,
/// an OpenMetrics histogram whose buckets are the kernel's: bucket `i`
/// counts `[2^i, 2^(i+1))` µs, so its `le` is `2^(i+1)` µs in seconds and
/// the last (open-ended) bucket is `+Inf`, which is the total. There is no
/// `_sum`: the kernel keeps none, and one made up from the buckets could be
/// off by up to 2x, so a mean is not offered (quantiles need only the
/// buckets). Without a sum OpenMetrics allows no `_count` either (the
/// `+Inf` bucket is the count). Written by hand because prometheus-client's
/// histogram always writes both. Empty when no service has a histogram.
fn handshake_histogram(status: &Status) -> String {
    use std::fmt::Write;
    const NAME: &str = "canary_version_handshake_seconds";
    let mut out = String::new();
    for s in &status.services {
        for (version, v) in [("stable", &s.signals.stable), ("canary", &s.signals.canary)] {
            let Some((_, finite)) = v.handshake_us_log2.split_last() else {
                continue;
            };
            let labels = format!(
                "service=\"{}\",version=\"{version}\"",
                escape_label(&s.name)
            );
            let mut cumulative = 0u64;
            for (i, n) in finite.iter().enumerate() {
                cumulative += n;
                let le = (1u64 << (i + 1)) as f64 / 1e6;
                let _ = writeln!(out, "{NAME}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let total: u64 = v.handshake_us_log2.iter().sum();
            let _ = writeln!(out, "{NAME}_bucket{{{labels},le=\"+Inf\"}} {total}");
        }
    }
    if out.is_empty() {
        return out;
    }
    format!(
        "# HELP {NAME} SYN -> SYN-ACK time of judged connections since canaryd started, the data plane's log2 buckets (the +Inf bucket is the count; no _sum: the kernel keeps none)\n# TYPE {NAME} histogram\n# UNIT {NAME} seconds\n{out}"
    )
}

/// A label value as the exposition format writes it.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The flow table's figures (host-wide, no labels).
fn flow_table(r: &mut Registry, status: &Status) {
    let ft = &status.flow_table;
    let gauge = |r: &mut Registry, name: &str, help: &str, v: f64| {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(v);
        r.register(name, help, g);
    };
    let counter = |r: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        r.register(name, help, c);
    };
    gauge(
        r,
        "flow_table_size",
        "Entries the flow table holds at most (flow_table.size)",
        ft.size as f64,
    );
    gauge(
        r,
        "flow_table_entries",
        "Entries in the flow table as of canaryd's last sweep",
        ft.entries as f64,
    );
    counter(
        r,
        "flow_table_inserts",
        "New flow-table entries made by the data path",
        ft.inserts,
    );
    counter(
        r,
        "flow_table_insert_failures",
        "Flow-table inserts that failed (the decision applied, not remembered)",
        ft.insert_failures,
    );
    counter(
        r,
        "flow_table_expired",
        "Flow-table entries gone by their idle timeout (replaced by the data path or removed by the sweep)",
        ft.expired,
    );
    counter(
        r,
        "flow_table_evictions_estimated",
        "Flow-table entries the LRU evicted, estimated: inserts - swept - table growth since canaryd's first sweep",
        ft.evictions_estimate,
    );
    gauge(
        r,
        "syn_flood_mode",
        "1 while bare SYNs are decided without flow-table state (SYN-flood mode)",
        if ft.flood_mode { 1.0 } else { 0.0 },
    );
    counter(
        r,
        "syn_stateless",
        "Bare SYNs decided without flow-table state (flood mode)",
        ft.syn_stateless,
    );
}

/// Per attached veth: the problems the check of its peer found (0: ready
/// for XDP forwarding). Other interfaces are not listed.
fn interfaces(r: &mut Registry, status: &Status) {
    if status.interfaces.is_empty() {
        return;
    }
    let problems = gauges(
        r,
        "interface_problems",
        "Problems canaryd found on an attached veth's peer (TX checksum offload on; GRO off without XDP; peer not inspectable): 0 when ready",
    );
    for i in &status.interfaces {
        problems
            .get_or_create(&vec![("interface", i.name.clone())])
            .set(i.problems.len() as f64);
    }
}

/// canaryd's watch over its pins.
fn pins(r: &mut Registry, status: &Status) {
    let restored = Counter::<u64>::default();
    restored.inc_by(status.pins.restored_total);
    r.register(
        "pins_restored",
        "Map and link pins found removed while canaryd runs and pinned again",
        restored,
    );
    let at_risk = Gauge::<f64, AtomicU64>::default();
    at_risk.set(status.pins.at_risk.len() as f64);
    r.register(
        "pins_at_risk",
        "Pins a restart of canaryd would not find as they are (removed and not restorable, or holding another object): 0 when all are in place",
        at_risk,
    );
}

/// The fleet as this host sees it (only with a `fleet:` section).
fn fleet(r: &mut Registry, f: &crate::control::api::FleetStatus) {
    let one = |r: &mut Registry, name: &str, help: &str, v: f64| {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(v);
        r.register(name, help, g);
    };
    one(
        r,
        "fleet_connected",
        "1 while this host reaches an etcd member with quorum",
        if f.connected { 1.0 } else { 0.0 },
    );
    one(
        r,
        "fleet_cut_off_seconds",
        "How long this host has been cut off from etcd (0 while connected)",
        f.cut_off_for_ms.unwrap_or(0) as f64 / 1000.0,
    );
    one(
        r,
        "fleet_leading",
        "1 while this host leads the fleet (runs rollouts, decides health verdicts)",
        if f.leading { 1.0 } else { 0.0 },
    );
    one(
        r,
        "fleet_hosts",
        "Hosts of the fleet with a live report, this one included",
        f.hosts.len() as f64,
    );
    one(
        r,
        "fleet_silent_hosts",
        "Hosts that joined the fleet but have no live report (canaryd down or cut off)",
        f.silent.len() as f64,
    );
    one(
        r,
        "fleet_pending_rollbacks",
        "Rollbacks applied here while cut off, not yet written to etcd",
        f.pending_rollbacks.len() as f64,
    );
    let agreeing = gauges(
        r,
        "fleet_hosts_agreeing",
        "Hosts that apply the fleet's desired generation and weight of the service",
    );
    let generation = gauges(
        r,
        "fleet_generation",
        "The fleet's desired generation of the service's weight and pools",
    );
    for a in &f.agreement {
        let l = vec![("service", a.service.clone())];
        agreeing.get_or_create(&l).set(a.agreeing as f64);
        generation.get_or_create(&l).set(a.generation as f64);
    }
    let age = gauges(
        r,
        "fleet_report_age_seconds",
        "Age of each host's latest report as this host received it",
    );
    for h in &f.hosts {
        age.get_or_create(&vec![("host", h.name.clone())])
            .set(h.report_age_ms as f64 / 1000.0);
    }
}

/// Binds the metrics listener (before the data plane is touched, so a busy
/// port fails the start cleanly).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // A burst of connections waits in the kernel's queue (capped by
        // net.core.somaxconn) rather than having its SYNs dropped.
        socket.listen(crate::control::transport::LISTEN_BACKLOG)
    };
    bind().with_context(|| format!("binding the metrics endpoint {addr}"))
}

/// Serves scrapes: at most `transport`'s metrics cap of connections (more
/// are closed at once), each closed when idle or half-sent for
/// `transport::HEADER_TIMEOUT`.
pub async fn serve_on(listener: TcpListener, source: Source) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(source);
    crate::control::transport::serve_metrics(listener, app)
        .await
        .context("metrics endpoint")
}

async fn scrape(axum::extract::State(source): axum::extract::State<Source>) -> Response {
    match source().and_then(|s| encode_status(&s)) {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Version;
    use crate::control::api::{BackendStatus, ServiceStatus, VersionStatus};

    fn status() -> Status {
        let v = |p: u64| VersionStatus {
            packets: p,
            bytes: p * 100,
            new_flows: p / 10,
            ..Default::default()
        };
        Status {
            instance: "t".into(),
            services: vec![ServiceStatus {
                name: "shop".into(),
                vip: "198.18.100.1".parse().unwrap(),
                port: 80,
                protocol: "tcp".into(),
                affinity: "source-ip".into(),
                weight_percent: 12.5,
                weight_source: "config".into(),
                stable: v(900),
                canary: v(120),
                observed_canary_share: Some(0.125),
                observed_canary_share_total: None,
                backends: vec![BackendStatus {
                    addr: "198.18.3.2".parse().unwrap(),
                    version: Version::Canary,
                    packets: 120,
                    bytes: 12000,
                    new_flows: 12,
                    reply_packets: 7,
                    packets_per_sec: 0.0,
                    new_flows_per_sec: 0.0,
                    healthy: Some(false),
                    health_detail: None,
                    draining: None,
                }],
                signals: Default::default(),
                rollout: None,
                rollbacks: 2,
                cohorts: None,
            }],
            datapath: [("forwarded".to_string(), 1020u64)].into(),
            flow_table: crate::control::api::FlowTableStatus {
                size: 4096,
                entries: 1000,
                inserts: 5000,
                insert_failures: 1,
                expired: 3000,
                evictions_estimate: 900,
                flood_mode: true,
                syn_stateless: 77,
                ..Default::default()
            },
            fleet: Some(crate::control::api::FleetStatus {
                cluster: "lab".into(),
                host: "lb1".into(),
                leading: true,
                connected: true,
                hosts: vec![crate::control::api::FleetHost {
                    name: "lb2".into(),
                    report_age_ms: 400,
                    ..Default::default()
                }],
                agreement: vec![crate::control::api::FleetAgreement {
                    service: "shop".into(),
                    hosts: 3,
                    agreeing: 2,
                    generation: 42,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            interfaces: vec![crate::control::api::InterfaceStatus {
                name: "lb-client".into(),
                peer: Some("eth0 in namespace client".into()),
                problems: vec!["TX checksum offload on; fix: `...`".into()],
                checked_age_ms: 10,
            }],
            pins: crate::control::api::PinsStatus {
                watched: 21,
                restored_total: 3,
                at_risk: vec!["FLOWS".into()],
            },
        }
    }

    /// Every sample line parses as `series value`, the figures are the
    /// status's, and the exposition ends with `# EOF`.
    #[test]
    fn exposition_carries_the_status() {
        let text = encode_status(&status()).unwrap();
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        let sample = |series: &str| -> f64 {
            value(&text, series).unwrap_or_else(|| panic!("missing {series} in\n{text}"))
        };
        assert_eq!(sample("canary_weight_percent{service=\"shop\"}"), 12.5);
        assert_eq!(
            sample("canary_version_packets_total{service=\"shop\",version=\"stable\"}"),
            900.0
        );
        assert_eq!(
            sample("canary_version_new_flows_total{service=\"shop\",version=\"canary\"}"),
            12.0
        );
        assert_eq!(
            sample("canary_backend_reply_packets_total{service=\"shop\",version=\"canary\",backend=\"198.18.3.2\"}"),
            7.0
        );
        assert_eq!(
            sample("canary_observed_canary_share{service=\"shop\"}"),
            0.125
        );
        assert_eq!(
            sample("canary_datapath_packets_total{reason=\"forwarded\"}"),
            1020.0
        );
        assert!(
            text.contains("# TYPE canary_version_packets counter"),
            "{text}"
        );
        for (series, v) in [
            ("canary_flow_table_size", 4096.0),
            ("canary_flow_table_entries", 1000.0),
            ("canary_flow_table_inserts_total", 5000.0),
            ("canary_flow_table_insert_failures_total", 1.0),
            ("canary_flow_table_expired_total", 3000.0),
            ("canary_flow_table_evictions_estimated_total", 900.0),
            ("canary_syn_flood_mode", 1.0),
            ("canary_syn_stateless_total", 77.0),
            ("canary_fleet_connected", 1.0),
            ("canary_fleet_leading", 1.0),
            ("canary_fleet_cut_off_seconds", 0.0),
            ("canary_fleet_hosts_agreeing{service=\"shop\"}", 2.0),
            ("canary_fleet_generation{service=\"shop\"}", 42.0),
            ("canary_fleet_report_age_seconds{host=\"lb2\"}", 0.4),
            ("canary_interface_problems{interface=\"lb-client\"}", 1.0),
            ("canary_pins_restored_total", 3.0),
            ("canary_pins_at_risk", 1.0),
        ] {
            assert_eq!(sample(series), v, "{series}");
        }
    }

    /// The value of `series` (its full name and labels as written) in an
    /// exposition.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (s, v) = l.rsplit_once(' ').unwrap();
            (s == series).then(|| v.parse().unwrap())
        })
    }

    /// The kernel's log2 buckets become cumulative `le` buckets in seconds
    /// (bucket i's upper bound 2^(i+1) µs), the open-ended last bucket
    /// `+Inf`; no `_sum` or `_count`; one family header; still `# EOF` last.
    #[test]
    fn handshake_histogram_has_the_kernels_buckets() {
        let mut st = status();
        let mut h = vec![0u64; 32];
        h[0] = 3; // under 2 µs
        h[9] = 5; // 512-1024 µs
        h[14] = 1; // 16.384-32.768 ms
        h[31] = 2; // 2^31 µs and more
        st.services[0].signals.canary.handshake_us_log2 = h;
        st.services[0].signals.stable.handshake_us_log2 = vec![0; 32];
        let text = encode_status(&st).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        let name = "canary_version_handshake_seconds";
        assert_eq!(text.matches(&format!("# TYPE {name} histogram")).count(), 1);
        assert!(!text.contains(&format!("{name}_sum")), "{text}");
        assert!(!text.contains(&format!("{name}_count")), "{text}");
        let bucket = |version: &str, le: &str| {
            value(
                &text,
                &format!("{name}_bucket{{service=\"shop\",version=\"{version}\",le=\"{le}\"}}"),
            )
            .unwrap_or_else(|| panic!("no {version} bucket le={le} in\n{text}"))
        };
        assert_eq!(bucket("canary", "0.000002"), 3.0);
        assert_eq!(bucket("canary", "0.000004"), 3.0);
        assert_eq!(bucket("canary", "0.000512"), 3.0);
        assert_eq!(bucket("canary", "0.001024"), 8.0);
        assert_eq!(bucket("canary", "0.016384"), 8.0);
        assert_eq!(bucket("canary", "0.032768"), 9.0);
        assert_eq!(bucket("canary", "2147.483648"), 9.0);
        assert_eq!(bucket("canary", "+Inf"), 11.0);
        assert_eq!(bucket("stable", "+Inf"), 0.0);
        // 31 finite bounds and +Inf per version.
        let lines = |v: &str| {
            text.lines()
                .filter(|l| {
                    l.starts_with(&format!("{name}_bucket{{service=\"shop\",version=\"{v}\""))
                })
                .count()
        };
        assert_eq!((lines("stable"), lines("canary")), (32, 32));
        // Cumulative: never decreasing in `le` order.
        let counts: Vec<f64> = text
            .lines()
            .filter(|l| l.contains("version=\"canary\",le="))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        // A status without histograms (an older peer's) has no family.
        let text = encode_status(&status()).unwrap();
        assert!(!text.contains(name), "{text}");
    }

    /// A label value with a quote, a backslash or a newline is escaped.
    #[test]
    fn histogram_labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// The phase series: "none" is 1 without a rollout, the rollout's
    /// phase is 1 with one, every other phase 0.
    #[test]
    fn rollout_phase_shows_no_rollout_too() {
        let phases = |st: &Status| -> Vec<(String, f64)> {
            let text = encode_status(st).unwrap();
            PHASES
                .iter()
                .map(|ph| {
                    let series = format!("canary_rollout_phase{{service=\"shop\",phase=\"{ph}\"}}");
                    (
                        ph.to_string(),
                        value(&text, &series).unwrap_or_else(|| panic!("no {series}")),
                    )
                })
                .collect()
        };
        let one = |ph: &str| -> Vec<(String, f64)> {
            PHASES
                .iter()
                .map(|p| (p.to_string(), if *p == ph { 1.0 } else { 0.0 }))
                .collect()
        };
        let mut st = status();
        assert_eq!(phases(&st), one("none"));
        assert_eq!(
            value(
                &encode_status(&st).unwrap(),
                "canary_rollout_step{service=\"shop\"}"
            ),
            Some(0.0)
        );
        st.services[0].rollout = Some(
            serde_json::from_value(serde_json::json!({
                "phase": "paused", "step": 2, "steps": [20.0, 50.0, 100.0],
                "step_elapsed_s": 1.0, "step_interval_s": 60.0, "time_left_s": 59.0,
                "canary_connections": 0, "canary_failures": 0,
                "stable_connections": 0, "stable_failures": 0,
                "verdict": "no data yet", "history": []
            }))
            .unwrap(),
        );
        assert_eq!(phases(&st), one("paused"));
        assert_eq!(
            value(
                &encode_status(&st).unwrap(),
                "canary_rollout_step{service=\"shop\"}"
            ),
            Some(2.0)
        );
    }

    /// No connections in the last interval: the share is absent, not 0.
    #[test]
    fn unknown_share_is_absent() {
        let mut s = status();
        s.services[0].observed_canary_share = None;
        let text = encode_status(&s).unwrap();
        assert!(!text.contains("canary_observed_canary_share{"), "{text}");
    }
}
