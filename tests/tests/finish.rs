//! `canaryctl rollout finish`: the end of a release with real traffic.
//! The canary pool becomes the stable pool, the canary pool is emptied, the
//! weight goes to 0; open connections on both pools keep working (the
//! former stable backends drain); a restart keeps all of it; the next
//! canary can be added.
//!
//! Needs root (netns, BPF). Run: `cargo test -p canary-tests --test finish`.

use anyhow::{Context, Result};
use canary_tests::client::PushConn;
use canary_tests::{client_v4, FlowTable, LbConfig, Service, Topology, VIP_V4};
use canary_userspace::control::api::ServiceStatus;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const B3: &str = "198.18.3.2";
/// The next release's canary (no server: only the config is checked).
const NEXT: &str = "198.18.3.9";
const CONNS: u32 = 40;

fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), 80)
}

fn config() -> String {
    LbConfig::lab()
        .flow_table(FlowTable::new().sweep_interval("1s"))
        .service(
            Service::tcp("shop", VIP_V4, 80)
                .weight(50.0)
                .lab_pools()
                .raw("    rollout:\n      steps: [10, 50, 100]\n      interval: 2s\n"),
        )
        .yaml()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every connection sends a line; the indexes of those whose echo did not
/// come back within 3 s or that saw no push in that time, with why.
fn broken(conns: &mut [PushConn], what: &str) -> Vec<(usize, String)> {
    for (i, c) in conns.iter_mut().enumerate() {
        // A failed send shows in the connection's health.
        let _ = c.send(&format!("{what} {i}"));
    }
    conns
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            !(c.wait_echoes(Duration::from_secs(3)) && c.wait_pushes(2, Duration::from_secs(3)))
        })
        .map(|(i, c)| (i, format!("{:?}", c.health())))
        .collect()
}

/// The finished release as status shows it: b3 the only stable backend,
/// no canary, weight 0, b1 and b2 draining.
fn assert_finished(s: &ServiceStatus, what: &str) {
    assert_eq!(s.weight_percent, 0.0, "{what}: weight");
    let pool = |draining: bool| -> Vec<(IpAddr, String)> {
        s.backends
            .iter()
            .filter(|b| b.draining.is_some() == draining)
            .map(|b| (b.addr, b.version.name().to_string()))
            .collect()
    };
    assert_eq!(
        pool(false),
        vec![(ip(B3), "stable".to_string())],
        "{what}: serving backends {:#?}",
        s.backends
    );
    assert_eq!(
        pool(true),
        vec![
            (ip("198.18.1.2"), "stable".to_string()),
            (ip("198.18.2.2"), "stable".to_string())
        ],
        "{what}: draining backends"
    );
}

/// Waits until a sweep has counted the draining backends' connections and
/// returns them per address.
fn draining_counts(topo: &Topology) -> Result<BTreeMap<IpAddr, u64>> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let s = topo.service_status("shop")?;
        let counts: Option<BTreeMap<IpAddr, u64>> = s
            .backends
            .iter()
            .filter_map(|b| b.draining.as_ref().map(|d| (b.addr, d)))
            .map(|(a, d)| d.open_connections.map(|n| (a, n)))
            .collect();
        if let Some(c) = counts.filter(|c| !c.is_empty()) {
            return Ok(c);
        }
        anyhow::ensure!(Instant::now() < end, "no sweep counted: {s:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn finish_makes_the_canary_stable_keeps_connections_and_survives_a_restart() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_push_servers(80, 100)?;
    let yaml = config();
    let mut d = topo.spawn_canaryd(Some(&yaml))?;
    let name_of: BTreeMap<String, IpAddr> = topo
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.v4))
        .collect();

    // 40 connections at weight 50: each pool gets some (all 40 on one pool:
    // probability 2 * 0.5^40, about 2e-12).
    let mut conns: Vec<PushConn> = topo.client.run(|| {
        (0..CONNS)
            .map(|i| PushConn::open(client_v4(i), vip(), Duration::from_secs(3)))
            .collect::<Result<_>>()
    })?;
    let mut per_backend: BTreeMap<IpAddr, u64> = BTreeMap::new();
    for c in &conns {
        *per_backend.entry(name_of[&c.backend]).or_default() += 1;
    }
    println!("connections per backend before the finish: {per_backend:?}");
    let on_b3 = per_backend.get(&ip(B3)).copied().unwrap_or(0);
    assert!(
        on_b3 > 0 && on_b3 < CONNS as u64,
        "both pools used: {per_backend:?}"
    );
    assert!(broken(&mut conns, "before").is_empty());

    // A rollout under way is refused first.
    topo.ctl(&["rollout", "start", "shop"])?;
    let refused = topo.canaryctl(&["rollout", "finish", "shop"], None)?;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "finish during a rollout");
    assert!(err.contains("abort it or let it promote"), "{err}");
    topo.ctl(&["rollout", "abort", "shop"])?;
    topo.ctl(&["set-weight", "shop", "50"])?;

    let out = topo.ctl(&["rollout", "finish", "shop"])?;
    println!("{out}");
    assert!(
        out.starts_with(
            "service shop: release finished by canaryctl (uid 0): stable pool now \
             [198.18.3.2] (was [198.18.1.2, 198.18.2.2]), canary pool emptied, canary weight \
             50.00% -> 0.00%; [198.18.1.2, 198.18.2.2] draining"
        ),
        "{out}"
    );
    assert!(d.log().contains("release finished by"), "one log line");
    let events = topo.ctl(&["events"])?;
    assert!(events.contains("release finished"), "{events}");
    assert_finished(&topo.service_status("shop")?, "after the finish");

    // Every open connection still echoes, on whichever pool it was.
    let bad = broken(&mut conns, "after");
    assert!(bad.is_empty(), "broken after the finish: {bad:?}");
    // The sweep counts each draining backend's open connections: one flow
    // entry per connection.
    let counts = draining_counts(&topo)?;
    for (addr, n) in &counts {
        assert_eq!(
            *n,
            per_backend.get(addr).copied().unwrap_or(0),
            "open connections of {addr}"
        );
    }
    // New connections all go to the new stable pool (b3).
    let fresh = topo.open_v4(200, 20, vip(), Duration::from_secs(3))?;
    let elsewhere: Vec<&str> = fresh
        .iter()
        .map(|c| c.backend.as_str())
        .filter(|b| name_of[*b] != ip(B3))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "new connections elsewhere: {elsewhere:?}"
    );
    drop(fresh);

    // A restart keeps all of it: the state file holds the overrides.
    d.stop();
    let state_file = topo
        .state_dir()
        .join(format!("{}.state.json", topo.instance()));
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&state_file).with_context(|| format!("{}", state_file.display()))?,
    )?;
    let shop = &state["services"]["shop"];
    assert_eq!(shop["stable"]["pool"], serde_json::json!([B3]), "{state:#}");
    assert_eq!(shop["canary"]["pool"], serde_json::json!([]), "{state:#}");
    assert_eq!(shop["weight"]["weight_bp"], 0, "{state:#}");
    assert_eq!(shop["draining"].as_array().map(|a| a.len()), Some(2));
    let mut d = canary_tests::Daemon::spawn(&topo, Some(&yaml), &[])?;
    assert_finished(&topo.service_status("shop")?, "after the restart");
    let bad = broken(&mut conns, "restarted");
    assert!(bad.is_empty(), "broken after the restart: {bad:?}");
    assert_eq!(
        draining_counts(&topo)?,
        counts,
        "the same connections drain"
    );

    // With the canary pool empty, rollout start and a second finish are
    // refused, each in one line.
    for (args, want) in [
        (
            ["rollout", "start", "shop"],
            "the canary pool is empty: add one first",
        ),
        (
            ["rollout", "finish", "shop"],
            "there is no release to finish",
        ),
    ] {
        let r = topo.canaryctl(&args, None)?;
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?} accepted");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }

    // The next canary.
    topo.ctl(&["backends", "add", "shop", "canary", NEXT])?;
    topo.ctl(&["set-weight", "shop", "10"])?;
    let s = topo.service_status("shop")?;
    assert_eq!(s.weight_percent, 10.0);
    let canary: Vec<IpAddr> = s
        .backends
        .iter()
        .filter(|b| b.version.name() == "canary")
        .map(|b| b.addr)
        .collect();
    assert_eq!(canary, vec![ip(NEXT)]);
    let bad = broken(&mut conns, "next canary");
    assert!(bad.is_empty(), "broken after the next canary: {bad:?}");

    // The next canary rolled back with `on_rollback: reset` forgets its own
    // connections only: the former canary's (on b3, stable now, their
    // entries still saying canary) go on.
    let reset_yaml = yaml.replace(
        "      interval: 2s\n",
        "      interval: 2s\n      on_rollback: reset\n",
    );
    assert_ne!(reset_yaml, yaml);
    d.reload(&reset_yaml)?.map_err(anyhow::Error::msg)?;
    topo.ctl(&["rollout", "start", "shop"])?;
    topo.ctl(&["rollout", "abort", "shop"])?;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !d
        .log()
        .contains("open canary connections reset (on_rollback: reset)")
    {
        anyhow::ensure!(std::time::Instant::now() < until, "no reset: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // None of the 40 is the next canary's: the reset found nothing to
    // forget. (They would all echo even if forgotten: b3 is the only stable
    // backend, so a re-split lands them on it again; the count tells.)
    assert!(
        d.log()
            .contains("service shop: 0 open canary connections reset (on_rollback: reset)"),
        "the former canary's connections were reset: {}",
        d.log()
    );
    let bad = broken(&mut conns, "a reset rollback of the next canary");
    assert!(bad.is_empty(), "broken by the next canary's reset: {bad:?}");
    topo.ctl(&["set-weight", "shop", "10"])?;

    // `promote --finalize` is the same call: that release finished too, b3
    // joins the drains (the earlier ones stay).
    let out = topo.ctl(&["promote", "--finalize", "shop"])?;
    assert!(
        out.starts_with(&format!(
            "service shop: release finished by canaryctl (uid 0): stable pool now [{NEXT}] \
             (was [{B3}]), canary pool emptied, canary weight 10.00% -> 0.00%; [{B3}] draining"
        )),
        "{out}"
    );
    let s = topo.service_status("shop")?;
    let mut draining: Vec<IpAddr> = s
        .backends
        .iter()
        .filter(|b| b.draining.is_some())
        .map(|b| b.addr)
        .collect();
    draining.sort();
    assert_eq!(
        draining,
        vec![ip("198.18.1.2"), ip("198.18.2.2"), ip(B3)],
        "{s:#?}"
    );
    let bad = broken(&mut conns, "second finish");
    assert!(bad.is_empty(), "broken after the second finish: {bad:?}");
    d.stop();
    Ok(())
}

/// A drain outlives its first period while connections are open (it is
/// extended, checked against the flow table's sweep), and ends once they
/// are closed: the backend then leaves status. Short timeouts (established
/// 3 s, closing 1 s, sweep 1 s) make that seconds instead of hours.
#[test]
fn a_drain_is_extended_while_connections_live_and_ends_after_them() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_push_servers(80, 100)?;
    let yaml = LbConfig::lab()
        .flow_table(
            FlowTable::new()
                .sweep_interval("1s")
                .timeout("tcp_established", "3s")
                .timeout("tcp_closing", "1s"),
        )
        .service(Service::tcp("shop", VIP_V4, 80).weight(50.0).lab_pools())
        .yaml();
    let d = topo.spawn_canaryd(Some(&yaml))?;
    let name_of: BTreeMap<String, IpAddr> = topo
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.v4))
        .collect();
    // 20 at weight 50: both pools get some (all on one: 2 * 0.5^20, 2e-6).
    let conns: Vec<PushConn> = topo.client.run(|| {
        (0..20)
            .map(|i| PushConn::open(client_v4(i), vip(), Duration::from_secs(3)))
            .collect::<Result<_>>()
    })?;
    let (mut on_b3, draining): (Vec<PushConn>, Vec<PushConn>) = conns
        .into_iter()
        .partition(|c| name_of[&c.backend] == ip(B3));
    assert!(!on_b3.is_empty() && !draining.is_empty());
    topo.ctl(&["rollout", "finish", "shop"])?;
    let ends = |topo: &Topology| -> Result<Vec<f64>> {
        Ok(topo
            .service_status("shop")?
            .backends
            .iter()
            .filter_map(|b| b.draining.as_ref().map(|d| d.ends_in_s))
            .collect())
    };
    let first = ends(&topo)?;
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|s| *s <= 3.0), "{first:?}");

    // Two periods later the drains are still there (extended), and their
    // connections still work.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(ends(&topo)?.len(), 2, "drains ended with connections open");
    assert!(
        d.log().contains("drain of 198.18.1.2 extended"),
        "{}",
        d.log()
    );
    let mut draining = draining;
    assert!(broken(&mut draining, "draining").is_empty());

    // Closed: the entries go (closing timeout 1 s, then a sweep), then the
    // drains end (within one more 3 s period).
    let closed = Instant::now();
    drop(draining);
    let end = closed + Duration::from_secs(15);
    while !ends(&topo)?.is_empty() {
        anyhow::ensure!(Instant::now() < end, "drains still on: {}", d.log());
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "drains ended {:.1} s after their connections closed",
        closed.elapsed().as_secs_f64()
    );
    assert!(d.log().contains("drain of 198.18.1.2 ended"), "{}", d.log());
    let s = topo.service_status("shop")?;
    let addrs: Vec<IpAddr> = s.backends.iter().map(|b| b.addr).collect();
    assert_eq!(addrs, vec![ip(B3)], "the drained backends left status");
    assert!(broken(&mut on_b3, "after the drains").is_empty());
    Ok(())
}
