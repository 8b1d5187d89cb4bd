//! Rollouts with real traffic through the netns topology: a healthy canary
//! is promoted step by step; a failing one is rolled back fast; an A/A
//! canary is (almost) never rolled back; a restart resumes the same step.

use anyhow::{Context, Result};
use canary_tests::rollout::{time_to_weight_zero, wait_rollout_end, weight_bp};
use canary_tests::{LbConfig, Load, LoadBounds, ServerOptions, Service, Topology, VIP_V4};
use canary_userspace::dataplane::maps::Maps;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const HEALTH_PORT: u16 = 8080;

/// One service, `shop`, with an HTTP-probed pool and the given rollout
/// (its keys, indented six spaces).
fn config(rollout: &str) -> String {
    LbConfig::lab().service(shop(rollout)).yaml()
}

/// The service of `config`.
fn shop(rollout: &str) -> Service {
    Service::tcp("shop", VIP_V4, 80)
        .weight(0.0)
        .stable(["198.18.1.2", "198.18.2.2"])
        .canary(["198.18.3.2"])
        .raw(&format!(
            "    health:
      probe: http
      port: {HEALTH_PORT}
      path: /healthz
      interval: 250ms
      timeout: 200ms
      unhealthy_after: 3
      healthy_after: 2
    rollout:
{rollout}"
        ))
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), 80)
}

fn topology(rst_fraction: f64) -> Result<Topology> {
    let mut topo = Topology::new(3)?;
    topo.start_servers_with(
        80,
        &ServerOptions {
            http_port: Some(HEALTH_PORT),
            rst_fraction,
        },
    )?;
    Ok(topo)
}

/// A healthy canary under steady load walks every step of a short plan to
/// 100 %, and status shows each step.
#[test]
fn healthy_canary_is_promoted_step_by_step() -> Result<()> {
    let topo = topology(0.0)?;
    let _d = topo.spawn_canaryd(Some(&config(
        "      steps: [20, 50, 100]
      interval: 1s
      analysis:
        max_error_ratio: 0.2
        max_p99_handshake_ms: 50
        min_canary_connections: 50
",
    )))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let mut load = Load::start(&topo.client, vip(), LoadBounds::default());
    topo.ctl(&["rollout", "start", "shop"])?;
    let (s, seen) = wait_rollout_end(&topo, Duration::from_secs(60))?;
    let (ok, failed) = load.stop();
    let r = s.rollout.as_ref().unwrap();
    println!("steps seen in status: {seen:?}; {ok} connections ok, {failed} failed");
    for h in &r.history {
        println!("  {h}");
    }
    assert_eq!(r.phase, "promoted", "{r:#?}");
    assert_eq!(seen, vec![1, 2, 3], "status showed every step in turn");
    assert_eq!(r.history.iter().filter(|h| h.contains("passed")).count(), 3);
    assert_eq!(weight_bp(&maps)?, 10_000, "the map carries 100 %");
    assert_eq!(failed, 0, "no client connection failed");
    assert!(s.signals.canary.syn_acks > 0, "SYN-ACKs were measured");
    let c = &s.signals.canary;
    println!(
        "canary over the last {:.0} s: {:.0} conn/s, error ratio {:?}, handshake p50 {:?} ms p99 {:?} ms",
        c.recent_window_s, c.recent_connections_per_sec, c.recent_error_ratio, c.recent_handshake_p50_ms, c.recent_handshake_p99_ms
    );
    assert!(c.recent_connections_per_sec > 0.0 && c.recent_handshake_p99_ms.is_some());
    assert_eq!(c.recent_error_ratio, Some(0.0));
    let events = topo.ctl(&["events"])?;
    assert!(events.contains("promoted"), "{events}");
    Ok(())
}

/// A canary whose server starts failing is rolled back: the time from the
/// fault to weight 0 in the map, with 250 ms probes and 3 failures.
#[test]
fn failing_canary_is_rolled_back_within_two_seconds() -> Result<()> {
    let topo = topology(0.0)?;
    let _d = topo.spawn_canaryd(Some(&config(
        "      steps: [20, 50, 100]
      interval: 60s
      analysis:
        max_error_ratio: 0.1
",
    )))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let mut load = Load::start(&topo.client, vip(), LoadBounds::default());
    for fault in ["rst", "http500", "silent"] {
        // Healthy again (after the previous fault) before the next rollout.
        topo.set_fault("b3", "")?;
        let end = Instant::now() + Duration::from_secs(10);
        while topo
            .service_status("shop")?
            .backends
            .iter()
            .any(|b| b.healthy == Some(false))
        {
            anyhow::ensure!(Instant::now() < end, "b3 did not recover");
            std::thread::sleep(Duration::from_millis(100));
        }
        topo.ctl(&["rollout", "start", "shop"])?;
        anyhow::ensure!(weight_bp(&maps)? == 2000, "step 1 not applied");
        std::thread::sleep(Duration::from_millis(1000));
        topo.set_fault("b3", fault)?;
        let took = time_to_weight_zero(&topo, &maps, Duration::from_secs(10), fault)?;
        let s = topo.service_status("shop")?;
        let r = s.rollout.as_ref().unwrap();
        println!(
            "fault {fault}: weight 0 in the map {:.0} ms after the fault; reason: {}",
            took.as_secs_f64() * 1e3,
            r.reason.as_deref().unwrap_or("?")
        );
        assert_eq!(r.phase, "aborted");
        assert!(
            took < Duration::from_secs(2),
            "{fault}: rollback took {took:?}"
        );
        if fault == "rst" {
            let c = &s.signals.canary;
            assert!(
                c.resets > 0 && c.recent_failures_per_sec > 0.0,
                "resets not seen: {c:?}"
            );
        }
    }
    load.stop();
    let events = topo.ctl(&["events"])?;
    assert_eq!(events.matches(" rollback ").count(), 3, "{events}");
    let metrics = topo.service_status("shop")?;
    assert_eq!(metrics.rollbacks, 3);
    Ok(())
}

/// A/A: canary identical to stable, both resetting 5 % of connections.
/// Over 30 rollouts of a short plan at most 1 may roll back: the analysis
/// promises a false-alarm probability of at most false_alarm_rate = 0.01
/// per rollout, so P(2 or more of 30) <= 1 - 0.99^30 - 30 * 0.01 * 0.99^29
/// = 0.036 (and its tests are conservative, so less in practice).
#[test]
fn a_a_rollouts_rarely_roll_back() -> Result<()> {
    let topo = topology(0.05)?;
    let _d = topo.spawn_canaryd(Some(&config(
        "      steps: [50, 100]
      interval: 300ms
      analysis:
        max_error_ratio: 0.25
        max_canary_vs_stable_ratio: 3
        min_canary_connections: 50
        false_alarm_rate: 0.01
",
    )))?;
    let mut load = Load::start(
        &topo.client,
        vip(),
        LoadBounds {
            max_time: Duration::from_secs(600),
            ..LoadBounds::default()
        },
    );
    let mut rolled_back = Vec::new();
    let started = Instant::now();
    for run in 0..30 {
        topo.ctl(&["set-weight", "shop", "0"])?;
        topo.ctl(&["rollout", "start", "shop"])?;
        let (s, _) = wait_rollout_end(&topo, Duration::from_secs(60))?;
        let r = s.rollout.as_ref().unwrap();
        if r.phase == "aborted" {
            println!(
                "run {run}: rolled back: {}",
                r.reason.as_deref().unwrap_or("?")
            );
            rolled_back.push(run);
        }
    }
    let (ok, failed) = load.stop();
    println!(
        "30 A/A rollouts in {:.1} s: {} rolled back; {ok} client connections ok, {failed} reset ({:.1}%)",
        started.elapsed().as_secs_f64(),
        rolled_back.len(),
        100.0 * failed as f64 / (ok + failed).max(1) as f64
    );
    assert!(failed > 0, "the baseline error rate was not there");
    assert!(
        rolled_back.len() <= 1,
        "A/A rolled back in runs {rolled_back:?}"
    );
    Ok(())
}

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

/// The external metric: a real Prometheus scrapes the backends' own
/// counters; the canary starts counting application errors that no TCP
/// signal shows (its connections are served normally), and the rollout is
/// rolled back on the Prometheus query alone.
#[test]
fn an_application_error_ratio_from_prometheus_rolls_back() -> Result<()> {
    let topo = topology(0.0)?;
    let targets: Vec<(String, &str)> = vec![
        (format!("198.18.1.2:{HEALTH_PORT}"), "stable"),
        (format!("198.18.2.2:{HEALTH_PORT}"), "stable"),
        (format!("198.18.3.2:{HEALTH_PORT}"), "canary"),
    ];
    let prom = canary_tests::prometheus::Prometheus::start(
        &topo.lb,
        &topo.id,
        "127.0.0.1:9090",
        &targets,
    )?;
    let _d = topo.spawn_canaryd(Some(&config(&format!(
        "      steps: [20, 50, 100]
      interval: 30s
      analysis:
        max_error_ratio: 0.2
        prometheus:
          url: {}
          query: 'sum(rate(app_errors_total{{version=\"$version\"}}[3s])) / sum(rate(app_requests_total{{version=\"$version\"}}[3s]))'
          max_value: 0.05
          interval: 500ms
",
        prom.url
    ))))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let mut load = Load::start(&topo.client, vip(), LoadBounds::default());
    topo.ctl(&["rollout", "start", "shop"])?;
    // Wait until the rollout sees a healthy canary value from Prometheus.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = topo.service_status("shop")?.rollout.unwrap();
        if r.external
            .as_deref()
            .unwrap_or("")
            .starts_with("external metric: canary")
        {
            println!("before the fault: {}", r.external.unwrap());
            break;
        }
        anyhow::ensure!(
            Instant::now() < end,
            "no Prometheus value: {r:#?}\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    topo.set_fault("b3", "errors")?;
    let took = time_to_weight_zero(&topo, &maps, Duration::from_secs(20), "application errors")?;
    let (ok, failed) = load.stop();
    let s = topo.service_status("shop")?;
    let r = s.rollout.as_ref().unwrap();
    println!(
        "rolled back {:.1} s after the canary began failing requests; {ok} connections ok, {failed} failed\n  {}",
        took.as_secs_f64(),
        r.reason.as_deref().unwrap_or("?")
    );
    assert_eq!(r.phase, "aborted");
    assert!(
        r.reason
            .as_deref()
            .unwrap_or("")
            .contains("external metric: canary"),
        "{r:#?}"
    );
    assert_eq!(s.signals.canary.resets, 0, "TCP signals stayed clean");
    assert_eq!(failed, 0, "no client connection failed at the TCP level");
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
    let plan = |on: &str| {
        config(&format!(
            "      steps: [100]
      interval: 60s
      on_rollback: {on}
"
        ))
    };
    let mut d = topo.spawn_canaryd(Some(&plan("keep")))?;
    for (on, base) in [("keep", 0u32), ("reset", 100)] {
        if on == "reset" {
            d.reload(&plan("reset"))?.map_err(anyhow::Error::msg)?;
        }
        topo.ctl(&["rollout", "start", "shop"])?;
        let mut conns = topo.client.run(|| {
            (0..10)
                .map(|i| {
                    canary_tests::tcp_connect(
                        canary_tests::client_v4(base + i),
                        vip(),
                        Duration::from_secs(2),
                    )
                })
                .collect::<Result<Vec<_>>>()
        })?;
        assert!(
            conns.iter().all(|c| c.backend == "b3"),
            "weight 100 went to stable"
        );
        topo.ctl(&["rollout", "abort", "shop"])?;
        // A reset runs on its own thread over the flow table: give it a
        // moment (the table is small here).
        std::thread::sleep(Duration::from_millis(300));
        let alive = conns
            .iter_mut()
            .map(|c| c.ping("after the rollback").is_ok())
            .filter(|ok| *ok)
            .count();
        println!("on_rollback: {on}: {alive} of 10 open canary connections still work");
        match on {
            "keep" => assert_eq!(alive, 10),
            _ => assert_eq!(alive, 0),
        }
    }
    Ok(())
}

/// A canary whose service port silently drops SYNs (its health port still
/// answers, so the probes see nothing): only the passive signal shows it.
/// canaryd counts the handshakes that got no SYN-ACK within
/// `handshake_timeout` as failures, and the analysis rolls back.
#[test]
fn unanswered_handshakes_are_counted_and_roll_back() -> Result<()> {
    let topo = topology(0.0)?;
    let _d = topo.spawn_canaryd(Some(&config(
        "      steps: [20, 50, 100]
      interval: 60s
      analysis:
        max_error_ratio: 0.1
        handshake_timeout: 500ms
",
    )))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let mut load = Load::start(&topo.client, vip(), LoadBounds::default());
    topo.ctl(&["rollout", "start", "shop"])?;
    std::thread::sleep(Duration::from_millis(1000));
    blackhole_canary_port(&topo)?;
    let took = time_to_weight_zero(&topo, &maps, Duration::from_secs(30), "blackhole")?;
    let (ok, failed) = load.stop();
    let s = topo.service_status("shop")?;
    let r = s.rollout.as_ref().unwrap();
    println!(
        "blackholed canary rolled back {:.1} s after the drop rule; canary: {} handshake timeouts, {} resets, probes healthy: {:?}; clients: {ok} ok, {failed} failed\n  {}",
        took.as_secs_f64(),
        s.signals.canary.handshake_timeouts,
        s.signals.canary.resets,
        s.backends.iter().map(|b| b.healthy).collect::<Vec<_>>(),
        r.reason.as_deref().unwrap_or("?")
    );
    assert_eq!(r.phase, "aborted");
    assert!(
        s.signals.canary.handshake_timeouts > 0,
        "no handshake timeout counted"
    );
    assert_eq!(s.signals.canary.resets, 0);
    assert!(
        s.backends.iter().all(|b| b.healthy == Some(true)),
        "the probes were not what caught it"
    );
    assert_eq!(
        s.signals.stable.handshake_timeouts, 0,
        "stable had no timeouts"
    );
    Ok(())
}

/// A rollout keeps the `on_rollback` (and analysis) it started with: a
/// reload to `on_rollback: reset` in the middle of a rollout started with
/// `keep` does not reset its open canary connections when it is aborted.
#[test]
fn a_reload_does_not_change_a_rollout_under_way() -> Result<()> {
    let topo = topology(0.0)?;
    let plan = |on: &str| {
        config(&format!(
            "      steps: [100]
      interval: 60s
      on_rollback: {on}
"
        ))
    };
    let mut d = topo.spawn_canaryd(Some(&plan("keep")))?;
    topo.ctl(&["rollout", "start", "shop"])?;
    let mut conns = topo.client.run(|| {
        (0..10)
            .map(|i| {
                canary_tests::tcp_connect(canary_tests::client_v4(i), vip(), Duration::from_secs(2))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    assert!(
        conns.iter().all(|c| c.backend == "b3"),
        "weight 100 went to stable"
    );
    d.reload(&plan("reset"))?.map_err(anyhow::Error::msg)?;
    assert_eq!(
        topo.service_status("shop")?.rollout.unwrap().phase,
        "running"
    );
    topo.ctl(&["rollout", "abort", "shop"])?;
    // A reset would run on its own thread over the (small) flow table.
    std::thread::sleep(Duration::from_millis(300));
    let alive = conns
        .iter_mut()
        .filter_map(|c| c.ping("after the rollback").ok())
        .count();
    assert_eq!(
        alive, 10,
        "the rollout started with on_rollback: keep, but its canary connections were reset"
    );
    Ok(())
}

/// The canary server (b3) drops every SYN to port 80 from now on (its
/// namespace, and the rule, go with the topology).
fn blackhole_canary_port(topo: &Topology) -> Result<()> {
    let b3 = &topo.backends[2].ns;
    b3.exec(&["nft", "add", "table", "ip", "cnry_blackhole"])?;
    b3.exec(&[
        "nft",
        "add",
        "chain",
        "ip",
        "cnry_blackhole",
        "in",
        "{ type filter hook input priority 0 ; }",
    ])?;
    b3.exec(&[
        "nft",
        "add",
        "rule",
        "ip",
        "cnry_blackhole",
        "in",
        "tcp",
        "dport",
        "80",
        "drop",
    ])?;
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
    let s: canary_userspace::api::Status = serde_json::from_str(&status)?;
    assert!(s.services.iter().all(|s| s.name != "shop"), "{status}");
    d.reload(&with_shop)?.map_err(anyhow::Error::msg)?;
    let s = topo.service_status("shop")?;
    assert_eq!(
        s.signals.canary.handshake_timeouts, 0,
        "the re-added shop inherited the old service's timeouts"
    );
    Ok(())
}
