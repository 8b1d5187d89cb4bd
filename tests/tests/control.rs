//! canaryd and canaryctl driven as an operator would, in the netns
//! topology with real connections: live weight changes, restart without
//! loss, refused reloads that change nothing, metrics, socket permissions.

use anyhow::{Context, Result};
use canary_common::{VERSION_CANARY, VERSION_STABLE};
use canary_tests::daemon::curl;
use canary_tests::snapshot::MapsSnapshot;
use canary_tests::{
    burst, client_v4, daemon::Daemon, tcp_connect, LbConfig, Service, Topology, VIP_V4,
};
use canary_userspace::dataplane::maps::Maps;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The unprivileged user and group id (`nobody`/`nogroup` on Debian).
const NOBODY: u32 = 65534;

fn config(weight: f64) -> String {
    LbConfig::lab()
        .metrics("127.0.0.1:9464")
        .service(
            Service::tcp("shop", VIP_V4, 80)
                .affinity("source-ip")
                .weight(weight)
                .lab_pools()
                .force("198.18.30.0/24", "canary"),
        )
        .yaml()
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), 80)
}

fn is_canary(backend: &str) -> bool {
    backend == "b3"
}

/// `canaryctl set-weight` changes the split of new connections within one
/// second of returning; `rollback` sends every new connection to stable.
#[test]
fn set_weight_and_rollback_take_effect_within_a_second() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let _d = topo.spawn_canaryd(Some(&config(0.0)))?;
    let sources = |base: u32| -> Vec<IpAddr> { (0..50).map(|i| client_v4(base + i)).collect() };
    let got = topo
        .client
        .run(|| burst(&sources(0), vip(), Duration::from_secs(30)))?;
    assert!(
        got.iter().all(|(_, b)| !is_canary(b)),
        "weight 0 reached canary"
    );

    topo.ctl(&["set-weight", "shop", "100"])?;
    let returned = Instant::now();
    // The first new connection after the command returned already goes to
    // canary, and so do all 50 (weight 100): the change is visible within
    // a second of the command returning.
    let got = topo
        .client
        .run(|| burst(&sources(100), vip(), Duration::from_secs(30)))?;
    let first = returned.elapsed();
    assert!(
        got.iter().all(|(_, b)| is_canary(b)),
        "weight 100 reached stable: {got:?}"
    );
    println!("50 connections at the new weight, all canary, {first:?} after set-weight returned");

    topo.ctl(&["rollback", "shop"])?;
    let returned = Instant::now();
    let c = topo
        .client
        .run(|| tcp_connect(client_v4(300), vip(), Duration::from_secs(2)))?;
    let first = returned.elapsed();
    assert!(!is_canary(&c.backend));
    assert!(
        first < Duration::from_secs(1),
        "first connection after rollback took {first:?}"
    );
    let got = topo
        .client
        .run(|| burst(&sources(400), vip(), Duration::from_secs(30)))?;
    assert!(
        got.iter().all(|(_, b)| !is_canary(b)),
        "rollback left a new connection on canary"
    );
    println!("rollback: first new connection on stable {first:?} after the command returned");

    // Bad input changes nothing and says why.
    for (args, needle) in [
        (vec!["set-weight", "shop", "150"], "out of range"),
        (vec!["set-weight", "nosuch", "5"], "unknown service"),
        (
            vec!["backends", "add", "shop", "canary", "198.18.3.x"],
            "malformed",
        ),
    ] {
        let out = topo.canaryctl(&args, None)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    Ok(())
}

/// 50 long-lived connections and a steady stream of new ones; canaryd is
/// stopped (SIGTERM), 2 s pass, it starts again: nothing breaks, nothing is
/// refused or misrouted, and the weight set with canaryctl is still the
/// weight.
#[test]
fn restart_without_loss() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let yaml = config(10.0);
    let mut d = topo.spawn_canaryd(Some(&yaml))?;
    // A run-time weight the daemon must not forget: 100 % (so a misrouted
    // new connection is visible: it would reach stable).
    topo.ctl(&["set-weight", "shop", "100"])?;
    let client = &topo.client;
    let mut conns = topo.open_v4(3000, 50, vip(), Duration::from_secs(3))?;

    let stop = AtomicBool::new(false);
    let made = AtomicU32::new(0);
    let outcome: Result<()> = std::thread::scope(|s| {
        // New connections, one every 2 ms, for as long as the restart takes
        // (bounded: at most 5000, i.e. about 12 s).
        let stream = s.spawn(|| -> Result<()> {
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) && i < 5000 {
                std::thread::sleep(Duration::from_millis(2));
                let src = client_v4(i % 2000);
                let c = client.run(|| tcp_connect(src, vip(), Duration::from_secs(2)))?;
                anyhow::ensure!(
                    is_canary(&c.backend),
                    "connection {i} from {src} misrouted to {}",
                    c.backend
                );
                made.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            Ok(())
        });
        std::thread::sleep(Duration::from_millis(500));
        let status = d.stop();
        assert!(
            status.map(|s| s.success()).unwrap_or(false),
            "canaryd exit: {status:?}"
        );
        let before = made.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(2));
        let during = made.load(Ordering::SeqCst) - before;
        d = Daemon::spawn(&topo, Some(&yaml), &[])?;
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        stream.join().unwrap()?;
        println!(
            "{} new connections in all, {during} while canaryd was down; none refused or misrouted",
            made.load(Ordering::SeqCst)
        );
        anyhow::ensure!(
            during > 0,
            "no new connection succeeded while canaryd was down"
        );
        Ok(())
    });
    outcome?;
    for (i, c) in conns.iter_mut().enumerate() {
        c.ping(&format!("after restart {i}"))
            .with_context(|| format!("long-lived connection {i}"))?;
    }
    let log = d.log();
    assert!(log.contains("took over the XDP link on lb-client"), "{log}");
    let status = topo.ctl(&["--json", "status", "shop"])?;
    let v: serde_json::Value = serde_json::from_str(&status)?;
    let svc = &v["services"][0];
    assert_eq!(svc["weight_percent"].as_f64(), Some(100.0), "{status}");
    Ok(())
}

/// Five bad config files, each refused on reload with the reason, each
/// leaving the maps exactly as they were.
#[test]
fn bad_reloads_change_nothing() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let good = config(10.0);
    let mut d = topo.spawn_canaryd(Some(&good))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let snapshot = |m: &Maps| MapsSnapshot::take(m, 1);
    let before = snapshot(&maps);
    let bad = [
        ("YAML syntax", "services: [\n  - name: shop\n    vip: [\n".to_string()),
        ("unknown key", good.replace("    port: 80\n", "    port: 80\n    colour: blue\n")),
        ("weight 150", good.replace("canary_weight: 10", "canary_weight: 150")),
        (
            "overlapping VIPs",
            format!(
                "{good}  - name: shop2\n    vip: 198.18.100.1\n    port: 80\n    protocol: tcp\n    stable: [198.18.2.2]\n"
            )
            .replace("    stable: [198.18.2.2]\n", "    stable: [198.18.5.2]\n"),
        ),
        ("backend not an address", good.replace("198.18.2.2", "stable-two")),
    ];
    for (what, text) in &bad {
        let refused = d.reload(text)?;
        let reason = refused.expect_err(what);
        println!("{what}: refused: {reason}");
        assert_eq!(snapshot(&maps), before, "{what} changed the maps");
    }
    // canaryctl reload says the same, with a non-zero exit.
    std::fs::write(d.config_path.as_ref().unwrap(), &bad[2].1)?;
    let out = topo.canaryctl(&["reload"], None)?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
    assert_eq!(snapshot(&maps), before);
    // And a good one still applies.
    d.reload(&config(20.0))?.expect("good reload");
    assert_eq!(maps.services.get(&0, 0)?.weight_bp, 2000);
    Ok(())
}

/// The metrics endpoint, scraped with a real HTTP client (curl in the LB
/// namespace), parses as the Prometheus text format and agrees with the
/// maps; the socket refuses a non-root user.
#[test]
fn metrics_match_the_maps_and_the_socket_is_root_only() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let _d = topo.spawn_canaryd(Some(&config(30.0)))?;
    let sources: Vec<IpAddr> = (0..120).map(|i| client_v4(i % 60)).collect();
    topo.client
        .run(|| burst(&sources, vip(), Duration::from_secs(30)))?;
    std::thread::sleep(Duration::from_millis(300));
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let stable = maps.version_stats(0, VERSION_STABLE)?;
    let canary = maps.version_stats(0, VERSION_CANARY)?;

    let out = topo
        .lb
        .exec(&["curl", "-sS", "-D", "-", "http://127.0.0.1:9464/metrics"])?;
    let text = String::from_utf8(out.stdout)?;
    let (head, body) = text.split_once("\r\n\r\n").context("http response")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    // Parse every sample line: `name{labels} value`, comments start with #.
    let mut samples = Vec::new();
    for line in body.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("bad sample line {line:?}"))?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("bad value in {line:?}"))?;
        samples.push((series.to_string(), value));
    }
    assert!(body.trim_end().ends_with("# EOF"), "no # EOF terminator");
    let get = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .with_context(|| format!("missing {series}"))
    };
    let lbl = |v: &str| format!("{{service=\"shop\",version=\"{v}\"}}");
    assert_eq!(
        get(&format!("canary_version_packets_total{}", lbl("stable")))? as u64,
        stable.packets
    );
    assert_eq!(
        get(&format!("canary_version_packets_total{}", lbl("canary")))? as u64,
        canary.packets
    );
    assert_eq!(
        get(&format!("canary_version_new_flows_total{}", lbl("stable")))? as u64,
        stable.new_flows
    );
    assert_eq!(
        get(&format!("canary_version_new_flows_total{}", lbl("canary")))? as u64,
        canary.new_flows
    );
    assert_eq!(get("canary_weight_percent{service=\"shop\"}")?, 30.0);
    // Read-only: a POST changes nothing and is refused.
    let out = topo.lb.exec(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "http://127.0.0.1:9464/metrics",
    ])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "405");

    // The control socket: root only.
    let meta = std::fs::metadata(topo.socket())?;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    let out = topo.canaryctl(&["status"], Some(NOBODY))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody could read the status");
    assert!(err.contains("permission denied"), "{err}");
    let out = topo.canaryctl(&["set-weight", "shop", "100"], Some(NOBODY))?;
    assert!(!out.status.success());
    assert_eq!(
        maps.services.get(&0, 0)?.weight_bp,
        3000,
        "nobody changed the weight"
    );
    Ok(())
}

/// The root check comes before anything else of a request is read: a
/// non-root caller gets 403 whatever its body or query, never 400. The
/// socket is opened to everyone for this test (as root, on the test's own
/// socket) so that a real non-root process (curl under setpriv, uid
/// nobody) reaches the server, which must refuse it from SO_PEERCRED.
#[test]
fn a_non_root_caller_gets_403_before_its_body_is_read() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let _d = topo.spawn_canaryd(Some(&config(30.0)))?;
    let socket = topo.socket();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
    // The status code of one request through curl, as `uid` or root.
    let call = |uid: Option<u32>, method: &str, path: &str, body: &str| -> Result<String> {
        let json = ["content-type: application/json"];
        let body = Some(body).filter(|b| !b.is_empty());
        Ok(curl(&socket, uid, method, path, &json, body)?.0.to_string())
    };
    let requests = [
        ("POST", "/v1/services/shop/weight", "{\"percent\": "),
        (
            "POST",
            "/v1/services/shop/weight",
            "{\"percent\": \"lots\"}",
        ),
        ("POST", "/v1/services/shop/weight", "{\"percent\": 150}"),
        ("POST", "/v1/services/shop/backends/add", "not json"),
        (
            "POST",
            "/v1/services/shop/backends/remove",
            "{\"pool\": \"x\"}",
        ),
        ("GET", "/v1/events?after=soon", ""),
        ("GET", "/v1/services/shop/explain", ""),
        ("POST", "/v1/reload", ""),
    ];
    for (method, path, body) in requests {
        let got = call(Some(NOBODY), method, path, body)?;
        assert_eq!(got, "403", "nobody: {method} {path} {body:?}");
    }
    // The same malformed requests from root are refused for their content.
    for (method, path, body) in &requests[..2] {
        let got = call(None, method, path, body)?;
        assert!(
            got.starts_with('4') && got != "403",
            "root: {path} {body:?}: {got}"
        );
    }
    let maps = Maps::from_pins(&topo.pin_dir())?;
    assert_eq!(maps.services.get(&0, 0)?.weight_bp, 3000, "nothing changed");
    Ok(())
}

/// Every weight change the rollout engine did not make is an event with
/// who, from and to (set-weight, rollback, promote, a reload that changes
/// the file's weight); so are backend changes and reloads.
#[test]
fn operator_changes_and_reloads_are_events() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let mut d = topo.spawn_canaryd(Some(&config(10.0)))?;
    topo.ctl(&["set-weight", "shop", "25"])?;
    topo.ctl(&["rollback", "shop"])?;
    topo.ctl(&["backends", "add", "shop", "canary", "198.18.4.2"])?;
    topo.ctl(&["backends", "remove", "shop", "canary", "198.18.4.2"])?;
    d.reload(&config(40.0))?.map_err(anyhow::Error::msg)?;
    let out = topo.ctl(&["--json", "events"])?;
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    for e in &events {
        println!("{e}");
    }
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["kind"] == kind).collect()
    };
    let weights = of("weight");
    let moves: Vec<(f64, f64, &str)> = weights
        .iter()
        .map(|e| {
            (
                e["from_percent"].as_f64().unwrap_or(-1.0),
                e["to_percent"].as_f64().unwrap_or(-1.0),
                e["who"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            (10.0, 25.0, "canaryctl (uid 0)"),
            (25.0, 0.0, "canaryctl (uid 0)"),
            (0.0, 40.0, "SIGHUP"),
        ],
        "{out}"
    );
    assert!(weights.iter().all(|e| e["service"] == "shop"), "{out}");
    let backends = of("backend");
    assert_eq!(backends.len(), 2, "{out}");
    assert!(
        backends[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("canary backend 198.18.4.2 added"),
        "{out}"
    );
    assert_eq!(backends[1]["who"], "canaryctl (uid 0)", "{out}");
    let reloads = of("reload");
    assert_eq!(reloads.len(), 1, "{out}");
    assert_eq!(reloads[0]["who"], "SIGHUP", "{out}");
    // The human listing names them too.
    let text = topo.ctl(&["events"])?;
    assert!(
        text.contains(" weight ") && text.contains(" reload "),
        "{text}"
    );
    Ok(())
}
