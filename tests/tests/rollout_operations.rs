//! The life of a rollout around the analysis: a restart resumes the same
//! step, pause/resume and a manual rollback, unhealthy backends leaving and
//! returning, open connections on rollback, and reloads under way (a
//! rollout keeps its plan; a service removed and re-added starts afresh).

use anyhow::{Context, Result};
use canary_tests::rollout::{
    blackhole_canary_port, config, shop, topology, vip, wait_rollout_end, weight_bp,
};
use canary_tests::{Conn, LbConfig, Load, LoadBounds, Service, Topology, VIP_V4};
use canary_userspace::dataplane::maps::Maps;
use std::time::{Duration, Instant};

/// A rollout interrupted by a canaryd restart resumes at the same step with
/// its progress, then finishes.
#[test]
fn restart_resumes_the_rollout_at_the_same_step() -> Result<()> {
    let topo = topology(0.0)?;
    let yaml = config(
        "      steps: [20, 40, 60, 100]
      interval: 2s
      analysis:
        max_error_ratio: 0.2
        min_canary_connections: 50
",
    );
    let mut d = topo.spawn_canaryd(Some(&yaml))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let mut load = Load::start(&topo.client, vip(), LoadBounds::default());
    topo.ctl(&["rollout", "start", "shop"])?;
    let end = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let s = topo.service_status("shop")?;
        let r = s.rollout.clone().unwrap();
        if r.step == 2 && r.step_elapsed_s >= 0.5 {
            break r;
        }
        anyhow::ensure!(Instant::now() < end, "step 2 not reached: {r:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    d.stop();
    let weight_while_down = weight_bp(&maps)?;
    std::thread::sleep(Duration::from_secs(1));
    let mut d = canary_tests::Daemon::spawn(&topo, Some(&yaml), &[])?;
    let after = topo.service_status("shop")?.rollout.unwrap();
    println!(
        "before the restart: step {} after {:.2} s ({} canary connections); after: step {} at {:.2} s ({})",
        before.step,
        before.step_elapsed_s,
        before.canary_connections,
        after.step,
        after.step_elapsed_s,
        after.canary_connections
    );
    assert_eq!(
        weight_while_down, 4000,
        "the data plane kept step 2's weight"
    );
    assert_eq!(after.step, 2, "resumed at the same step");
    assert_eq!(after.phase, "running");
    assert!(
        after.step_elapsed_s >= before.step_elapsed_s - 0.3,
        "progress kept"
    );
    assert!(
        after.canary_connections >= before.canary_connections,
        "window kept"
    );
    let (s, _) = wait_rollout_end(&topo, Duration::from_secs(60))?;
    load.stop();
    assert_eq!(s.rollout.unwrap().phase, "promoted");
    assert_eq!(weight_bp(&maps)?, 10_000);
    assert!(d.log().contains("took over the XDP link"), "{}", d.log());
    d.stop();
    Ok(())
}

/// The operator's hands on a rollout: pause holds the step however long,
/// resume continues it, and a manual rollback in the middle stops the
/// rollout for good (the engine must not raise the weight again).
#[test]
fn pause_resume_and_a_manual_rollback_stick() -> Result<()> {
    let topo = topology(0.0)?;
    let yaml = config(
        "      steps: [20, 50, 100]
      interval: 500ms
      analysis:
        max_error_ratio: 0.2
        min_canary_connections: 50
",
    );
    let mut d = topo.spawn_canaryd(Some(&yaml))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let mut load = Load::start(&topo.client, vip(), LoadBounds::default());
    topo.ctl(&["rollout", "start", "shop"])?;
    topo.ctl(&["rollout", "pause", "shop"])?;
    std::thread::sleep(Duration::from_millis(1500));
    let s = topo.service_status("shop")?;
    let r = s.rollout.as_ref().unwrap();
    assert_eq!((r.phase.as_str(), r.step), ("paused", 1), "{r:#?}");
    assert_eq!(weight_bp(&maps)?, 2000);
    let refused = topo.canaryctl(&["rollout", "start", "shop"], None)?;
    assert!(
        !refused.status.success(),
        "a second rollout started over a paused one"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already paused"));

    topo.ctl(&["rollout", "resume", "shop"])?;
    let end = Instant::now() + Duration::from_secs(20);
    while topo.service_status("shop")?.rollout.unwrap().step < 2 {
        anyhow::ensure!(Instant::now() < end, "resume did not continue");
        std::thread::sleep(Duration::from_millis(50));
    }
    topo.ctl(&["rollback", "shop"])?;
    // Longer than the rest of the plan would take: the weight stays 0.
    std::thread::sleep(Duration::from_millis(2000));
    load.stop();
    let s = topo.service_status("shop")?;
    let r = s.rollout.as_ref().unwrap();
    assert_eq!(r.phase, "aborted", "{r:#?}");
    assert!(
        r.reason
            .as_deref()
            .unwrap_or("")
            .contains("set the weight to 0.00%"),
        "{r:#?}"
    );
    assert_eq!(
        weight_bp(&maps)?,
        0,
        "the engine raised the weight after a manual rollback"
    );
    assert_eq!(s.rollbacks, 1);

    // The abort survives a restart: still aborted, still weight 0.
    d.stop();
    let _d = canary_tests::Daemon::spawn(&topo, Some(&yaml), &[])?;
    std::thread::sleep(Duration::from_millis(1000));
    let s = topo.service_status("shop")?;
    assert_eq!(s.rollout.as_ref().unwrap().phase, "aborted");
    assert_eq!((weight_bp(&maps)?, s.rollbacks), (0, 1));
    Ok(())
}

/// An unhealthy backend leaves its pool's Maglev table (new connections go
/// to the healthy ones; its open connections go on) and returns when
/// healthy again.
#[test]
fn unhealthy_backend_leaves_its_pool_and_returns() -> Result<()> {
    let topo = topology(0.0)?;
    let _d = topo.spawn_canaryd(Some(&config(
        "      steps: [100]
      interval: 60s
",
    )))?;
    let sources = |base: u32| -> Vec<std::net::IpAddr> {
        (0..200)
            .map(|i| canary_tests::client_v4(base + i))
            .collect()
    };
    let spread = |base: u32| -> Result<std::collections::BTreeMap<String, usize>> {
        let got = topo
            .client
            .run(|| canary_tests::burst(&sources(base), vip(), Duration::from_secs(30)))?;
        let mut by = std::collections::BTreeMap::new();
        for (_, b) in got {
            *by.entry(b).or_insert(0) += 1;
        }
        Ok(by)
    };
    let before = spread(0)?;
    assert!(before.get("b1").copied().unwrap_or(0) > 50, "{before:?}");
    // An open connection to b1 made before the fault.
    let mut open = None;
    for i in 0..50 {
        let c = topo.client.run(|| {
            canary_tests::tcp_connect(
                canary_tests::client_v4(3000 + i),
                vip(),
                Duration::from_secs(2),
            )
        })?;
        if c.backend == "b1" {
            open = Some(c);
            break;
        }
    }
    let mut open = open.context("no connection landed on b1")?;
    topo.set_fault("b1", "http500")?;
    let end = Instant::now() + Duration::from_secs(5);
    while !topo
        .service_status("shop")?
        .backends
        .iter()
        .any(|b| b.healthy == Some(false))
    {
        anyhow::ensure!(Instant::now() < end, "b1 never turned unhealthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = spread(1000)?;
    println!("b1 healthy: {before:?}; b1 unhealthy: {during:?}");
    assert_eq!(during.get("b1"), None, "new connections still reach b1");
    assert_eq!(during.get("b2"), Some(&200));
    open.ping("still here")
        .context("b1's open connection broke")?;

    topo.set_fault("b1", "")?;
    let end = Instant::now() + Duration::from_secs(5);
    while topo
        .service_status("shop")?
        .backends
        .iter()
        .any(|b| b.healthy == Some(false))
    {
        anyhow::ensure!(Instant::now() < end, "b1 never recovered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = spread(0)?;
    println!("b1 healthy again: {after:?}");
    assert_eq!(after, before, "the same clients land where they did before");
    let events = topo.ctl(&["events"])?;
    assert!(
        events.contains("is unhealthy") && events.contains("healthy again"),
        "{events}"
    );
    Ok(())
}

/// `on_rollback: keep` leaves open canary connections to finish;
/// `on_rollback: reset` forgets them, so they break at once.
#[test]
fn open_canary_connections_survive_a_rollback_unless_reset() -> Result<()> {
    let topo = topology(0.0)?;
    let mut d = topo.spawn_canaryd(Some(&one_full_step("keep")))?;
    for (on, base) in [("keep", 0u32), ("reset", 100)] {
        if on == "reset" {
            d.reload(&one_full_step("reset"))?
                .map_err(anyhow::Error::msg)?;
        }
        topo.ctl(&["rollout", "start", "shop"])?;
        let mut conns = open_canary_connections(&topo, base)?;
        let alive = abort_and_count_alive(&topo, &mut conns)?;
        println!("on_rollback: {on}: {alive} of 10 open canary connections still work");
        match on {
            "keep" => assert_eq!(alive, 10),
            _ => assert_eq!(alive, 0),
        }
    }
    Ok(())
}

/// A rollout keeps the `on_rollback` (and analysis) it started with: a
/// reload to `on_rollback: reset` in the middle of a rollout started with
/// `keep` does not reset its open canary connections when it is aborted.
#[test]
fn a_reload_does_not_change_a_rollout_under_way() -> Result<()> {
    let topo = topology(0.0)?;
    let mut d = topo.spawn_canaryd(Some(&one_full_step("keep")))?;
    topo.ctl(&["rollout", "start", "shop"])?;
    let mut conns = open_canary_connections(&topo, 0)?;
    d.reload(&one_full_step("reset"))?
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        topo.service_status("shop")?.rollout.unwrap().phase,
        "running"
    );
    let alive = abort_and_count_alive(&topo, &mut conns)?;
    assert_eq!(
        alive, 10,
        "the rollout started with on_rollback: keep, but its canary connections were reset"
    );
    Ok(())
}

/// What canaryd keeps per service name (handshake timeout counts, step
/// clocks, counter baselines) goes with the service: a service removed by
/// a reload and added again by the next one starts from nothing.
#[test]
fn a_service_removed_and_added_again_starts_afresh() -> Result<()> {
    let topo = topology(0.0)?;
    let other = Service::tcp("other", VIP_V4, 81).stable(["198.18.1.2"]);
    let with_shop = LbConfig::lab()
        .service(shop(
            "      steps: [100]
      interval: 60s
      analysis:
        handshake_timeout: 500ms
",
        ))
        .service(other.clone())
        .yaml();
    let without_shop = LbConfig::lab().service(other).yaml();
    let mut d = topo.spawn_canaryd(Some(&with_shop))?;
    topo.ctl(&["set-weight", "shop", "100"])?;
    blackhole_canary_port(&topo)?;
    // Five handshakes the canary never answers.
    for i in 0..5 {
        let c = topo.client.run(|| {
            canary_tests::tcp_connect(
                canary_tests::client_v4(i),
                vip(),
                Duration::from_millis(300),
            )
        });
        assert!(c.is_err(), "the blackholed canary answered");
    }
    let end = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let n = topo
            .service_status("shop")?
            .signals
            .canary
            .handshake_timeouts;
        if n >= 5 {
            break n;
        }
        anyhow::ensure!(
            Instant::now() < end,
            "{n} handshake timeouts counted, not 5"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("shop: {counted} canary handshake timeouts before the reloads");

    d.reload(&without_shop)?.map_err(anyhow::Error::msg)?;
    let status = topo.ctl(&["--json", "status"])?;
    let s: canary_userspace::control::api::Status = serde_json::from_str(&status)?;
    assert!(s.services.iter().all(|s| s.name != "shop"), "{status}");
    d.reload(&with_shop)?.map_err(anyhow::Error::msg)?;
    let s = topo.service_status("shop")?;
    assert_eq!(
        s.signals.canary.handshake_timeouts, 0,
        "the re-added shop inherited the old service's timeouts"
    );
    Ok(())
}

/// A plan of one step at 100 % that lasts (60 s) with the given
/// `on_rollback`.
fn one_full_step(on_rollback: &str) -> String {
    config(&format!(
        "      steps: [100]
      interval: 60s
      on_rollback: {on_rollback}
"
    ))
}

/// Ten connections from `client_v4(base)`.. while the weight is 100 %: all
/// on the canary (b3), kept open.
fn open_canary_connections(topo: &Topology, base: u32) -> Result<Vec<Conn>> {
    let conns = topo.open_v4(base, 10, vip(), Duration::from_secs(2))?;
    assert!(
        conns.iter().all(|c| c.backend == "b3"),
        "weight 100 went to stable"
    );
    Ok(conns)
}

/// Aborts the rollout and counts the connections that still answer. A
/// reset runs on its own thread over the flow table: it gets a moment (the
/// table is small here).
fn abort_and_count_alive(topo: &Topology, conns: &mut [Conn]) -> Result<usize> {
    topo.ctl(&["rollout", "abort", "shop"])?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(conns
        .iter_mut()
        .filter_map(|c| c.ping("after the rollback").ok())
        .count())
}
