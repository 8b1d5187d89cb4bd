//! Rollouts judged on real traffic through the netns topology: a healthy
//! canary is promoted step by step; a failing one (server errors, resets,
//! unanswered handshakes, an application error ratio from Prometheus) is
//! rolled back fast; an A/A canary is (almost) never rolled back.

use anyhow::Result;
use canary_tests::rollout::{
    blackhole_canary_port, config, rollouts_rolled_back, time_to_weight_zero, topology, vip,
    wait_rollout_end, weight_bp,
};
use canary_tests::{Load, LoadBounds};
use canary_userspace::dataplane::maps::Maps;
use std::time::{Duration, Instant};

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
    let started = Instant::now();
    let rolled_back = rollouts_rolled_back(&topo, 30, |_| Ok(()))?;
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

/// The external metric: a real Prometheus scrapes the backends' own
/// counters; the canary starts counting application errors that no TCP
/// signal shows (its connections are served normally), and the rollout is
/// rolled back on the Prometheus query alone.
#[test]
fn an_application_error_ratio_from_prometheus_rolls_back() -> Result<()> {
    let topo = topology(0.0)?;
    let prom = canary_tests::prometheus::Prometheus::lab(&topo)?;
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
