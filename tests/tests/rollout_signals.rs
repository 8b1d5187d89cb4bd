//! The rollout's further signals on real traffic through the netns lab,
//! with a real Prometheus scraping the test servers' own `/metrics`:
//! latency (canary against stable, sequentially tested), a business
//! metric (higher is better), and `on_failure: pause` with `resume`.

use anyhow::{ensure, Result};
use canary_tests::prometheus::Prometheus;
use canary_tests::rollout::{
    config, rollouts_rolled_back, time_to_weight_zero, topology, vip, wait_rollout_end, weight_bp,
};
use canary_tests::{Load, LoadBounds, Topology};
use canary_userspace::control::api::RolloutStatus;
use canary_userspace::dataplane::maps::Maps;
use std::time::{Duration, Instant};

/// The latency section: p90, both sources, the allowance `allowed` (e.g.
/// "max_slower_ms: 10").
fn latency(prom: &Prometheus, allowed: &str) -> String {
    format!(
        "        latency:
          quantile: 0.9
          {allowed}
          handshake: true
          prometheus:
            url: {}
            histogram: 'app_request_duration_seconds_bucket{{version=\"$version\"}}'
            interval: 500ms
",
        prom.url
    )
}

/// Polls the rollout's status until `done` says so (or `limit` passes).
fn wait_for(
    topo: &Topology,
    limit: Duration,
    what: &str,
    done: impl Fn(&RolloutStatus) -> bool,
) -> Result<RolloutStatus> {
    let end = Instant::now() + limit;
    loop {
        let r = topo
            .service_status("shop")?
            .rollout
            .ok_or_else(|| anyhow::anyhow!("no rollout in status"))?;
        if done(&r) {
            return Ok(r);
        }
        ensure!(Instant::now() < end, "{what}: not within {limit:?}: {r:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The canary's server answers every connection 30 ms late (no errors,
/// its kernel's handshakes as fast as stable's): the latency signal from
/// the application's histogram in Prometheus rolls it back; the in-kernel
/// handshake signal, correctly, does not fail it.
#[test]
fn a_canary_30ms_slower_is_rolled_back_by_latency() -> Result<()> {
    let topo = topology(0.0)?;
    let prom = Prometheus::lab(&topo)?;
    let _d = topo.spawn_canaryd(Some(&config(&format!(
        "      steps: [20, 50, 100]
      interval: 60s
      analysis:
        max_error_ratio: 0.2
{}",
        latency(&prom, "max_slower_ratio: 1.5\n          max_slower_ms: 10")
    ))))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    topo.set_fault("b3", "slow")?;
    let mut load = Load::start(&topo.client, vip(), LoadBounds::default());
    topo.ctl(&["rollout", "start", "shop"])?;
    ensure!(weight_bp(&maps)? == 2000, "step 1 not applied");
    let took = time_to_weight_zero(&topo, &maps, Duration::from_secs(40), "slow canary")?;
    let (ok, failed) = load.stop();
    let s = topo.service_status("shop")?;
    let r = s.rollout.as_ref().unwrap();
    let reason = r.reason.clone().unwrap_or_default();
    println!(
        "30 ms slower canary rolled back {:.1} s after the rollout started; {ok} connections ok, {failed} failed\n  {reason}",
        took.as_secs_f64()
    );
    for l in &r.latency {
        println!("  {l:?}");
    }
    let hs = (&s.signals.canary, &s.signals.stable);
    println!(
        "  handshake p99: canary {:?} ms, stable {:?} ms",
        hs.0.handshake_p99_ms, hs.1.handshake_p99_ms
    );
    assert_eq!(r.phase, "aborted");
    assert!(
        reason.contains("step 1/3 (20%) failed: latency (prometheus): canary slower than stable"),
        "{reason}"
    );
    let p = r.latency.iter().find(|l| l.source == "prometheus").unwrap();
    // T is stable's p90 + 10 ms rounded up to a bucket bound: 25 ms (the
    // servers answer in well under 15 ms); the canary's responses all
    // take 30 ms and more.
    assert_eq!(p.threshold_ms, Some(25.0), "{p:?}");
    assert!(
        p.canary_above > 0 && p.canary_above == p.canary_responses,
        "{p:?}"
    );
    assert!(p.stable_above * 100 <= p.stable_responses.max(1), "{p:?}");
    let h = r.latency.iter().find(|l| l.source == "handshake").unwrap();
    assert_ne!(h.state, "failing", "handshakes were as fast: {h:?}");
    assert_eq!(s.signals.canary.resets, 0, "no TCP errors");
    assert_eq!(failed, 0, "no client connection failed");
    let status = topo.ctl(&["status", "shop"])?;
    assert!(status.contains("latency prometheus"), "{status}");
    Ok(())
}

/// A/A on latency: 20 short rollouts of an identical canary, judged by
/// both latency sources (and nothing else), with a tight allowance (p90
/// x 1.2, rounded up to a bucket bound) so that stable too exceeds the
/// threshold now and then: the test is live. The test promises a false
/// alarm of at most `false_alarm_rate` = 0.01 per rollout, so
/// P(2 or more of 20 roll back) <= C(20,2) × 0.01² = 0.019: at most one
/// may roll back.
#[test]
fn a_a_latency_rollouts_rarely_roll_back() -> Result<()> {
    let topo = topology(0.0)?;
    let prom = Prometheus::lab(&topo)?;
    let _d = topo.spawn_canaryd(Some(&config(&format!(
        "      steps: [50, 100]
      interval: 300ms
      analysis:
        min_canary_connections: 50
        false_alarm_rate: 0.01
{}",
        latency(&prom, "max_slower_ratio: 1.2")
    ))))?;
    let mut load = Load::start(
        &topo.client,
        vip(),
        LoadBounds {
            max_time: Duration::from_secs(300),
            ..LoadBounds::default()
        },
    );
    let started = Instant::now();
    let rolled_back = rollouts_rolled_back(&topo, 20, |run| {
        if run == 0 {
            // What the latency tests show while step 1 runs.
            let r = wait_for(&topo, Duration::from_secs(30), "latency data", |r| {
                r.phase != "running"
                    || r.step > 1
                    || (r.latency.len() == 2 && r.latency.iter().all(|l| l.canary_responses > 0))
            })?;
            for l in &r.latency {
                println!("run 0, step {}: {}", r.step, l.detail);
            }
            // The test is live: both sources had canary responses to
            // judge in step 1 (not a rollout that ended before any look).
            anyhow::ensure!(
                r.latency.len() == 2 && r.latency.iter().all(|l| l.canary_responses > 0),
                "run 0 ended before its latency tests saw canary responses: {r:#?}"
            );
        }
        Ok(())
    })?;
    let (ok, failed) = load.stop();
    // A promoted rollout passed step 1's two latency tests: a step waits
    // for them (they hold it until their final tests pass).
    println!(
        "20 A/A latency rollouts in {:.1} s: {} rolled back; {ok} connections ok, {failed} failed",
        started.elapsed().as_secs_f64(),
        rolled_back.len()
    );
    assert!(
        rolled_back.len() <= 1,
        "A/A rolled back in runs {rolled_back:?}"
    );
    Ok(())
}

/// A business metric, the shop's conversion (checkouts over visits),
/// exported by every test server and scraped per version by the real
/// Prometheus, higher is better, the canary at least 0.8 x stable. The
/// canary's conversion drops (1 visit in 20 checks out instead of 1 in 5)
/// and the step fails on it; a second metric that only informs is shown.
#[test]
fn a_business_metric_drop_fails_the_step() -> Result<()> {
    let topo = topology(0.0)?;
    let prom = Prometheus::lab(&topo)?;
    let _d = topo.spawn_canaryd(Some(&config(&format!(
        "      steps: [20, 50, 100]
      interval: 60s
      analysis:
        max_error_ratio: 0.2
        metrics:
          - name: conversion
            query: 'sum(rate(app_checkouts_total{{version=\"$version\"}}[5s])) / sum(rate(app_visits_total{{version=\"$version\"}}[5s]))'
            url: {}
            direction: higher
            relative_limit: 0.8
            interval: 500ms
          - name: p99_seconds
            query: 'histogram_quantile(0.99, sum by (le) (rate(app_request_duration_seconds_bucket{{version=\"$version\"}}[5s])))'
            absolute_limit: 0.000001
            gate: false
            interval: 500ms
",
        prom.url
    ))))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let mut load = Load::start(&topo.client, vip(), LoadBounds::default());
    topo.ctl(&["rollout", "start", "shop"])?;
    let r = wait_for(&topo, Duration::from_secs(30), "conversion known", |r| {
        r.metrics.first().is_some_and(|m| m.state == "ok")
    })?;
    let conv = &r.metrics[0];
    println!("before the fault: {conv:?}\n  {:?}", r.metrics[1]);
    assert!(
        (0.18..=0.22).contains(&conv.stable.unwrap())
            && (0.18..=0.22).contains(&conv.canary.unwrap()),
        "both convert 1 visit in 5: {conv:?}"
    );
    // The informing metric is out of its (impossible) limit: shown, and
    // the step is not failed by it.
    assert_eq!(r.metrics[1].state, "informs", "{:?}", r.metrics[1]);
    assert_eq!(r.phase, "running");
    topo.set_fault("b3", "low-conversion")?;
    let took = time_to_weight_zero(&topo, &maps, Duration::from_secs(30), "conversion drop")?;
    let (ok, failed) = load.stop();
    let s = topo.service_status("shop")?;
    let r = s.rollout.as_ref().unwrap();
    let reason = r.reason.clone().unwrap_or_default();
    println!(
        "conversion drop rolled back {:.1} s after the fault; {ok} connections ok, {failed} failed\n  {reason}\n  {:?}",
        took.as_secs_f64(),
        r.metrics[0]
    );
    assert_eq!(r.phase, "aborted");
    assert!(
        reason.contains("step 1/3 (20%) failed: metric conversion: canary")
            && reason.contains("< 0.8 x stable"),
        "{reason}"
    );
    assert_eq!(failed, 0, "no client connection failed");
    assert_eq!(s.signals.canary.resets, 0, "the TCP signals stayed clean");
    Ok(())
}

/// `on_failure: pause`: the canary's service resets connections (its
/// health endpoint still answers); the step fails, the weight stays at
/// the step's 20 %, the rollout is paused with the reason, and an event
/// says so. Fixed, `rollout resume` judges the step on a fresh window
/// (the old failures do not fail it again) and the rollout is promoted.
#[test]
fn on_failure_pause_keeps_the_weight_and_resume_continues() -> Result<()> {
    let topo = topology(0.0)?;
    let _d = topo.spawn_canaryd(Some(&config(
        "      steps: [20, 50, 100]
      interval: 1s
      on_failure: pause
      analysis:
        max_error_ratio: 0.1
        min_canary_connections: 50
",
    )))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let mut load = Load::start(&topo.client, vip(), LoadBounds::default());
    topo.set_fault("b3", "rst-service")?;
    topo.ctl(&["rollout", "start", "shop"])?;
    let r = wait_for(&topo, Duration::from_secs(20), "paused", |r| {
        r.phase != "running"
    })?;
    let reason = r.reason.clone().unwrap_or_default();
    println!("paused: {reason}");
    assert_eq!(r.phase, "paused", "{r:#?}");
    assert_eq!(r.on_failure.as_deref(), Some("pause"));
    assert!(
        reason.starts_with("step 1/3 (20%) failed: canary fails"),
        "{reason}"
    );
    // The weight stays, however long the rollout waits.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(weight_bp(&maps)?, 2000, "the step's weight stayed");
    let s = topo.service_status("shop")?;
    assert_eq!(s.rollout.as_ref().unwrap().phase, "paused");
    assert_eq!(s.rollbacks, 0, "no rollback");
    let events = topo.ctl(&["events"])?;
    assert!(events.contains("PAUSED on failure"), "{events}");
    // Fixed; resume: a fresh window, so the step passes on the new data.
    topo.set_fault("b3", "")?;
    let out = topo.ctl(&["rollout", "resume", "shop"])?;
    println!("{}", out.trim());
    let r = wait_for(&topo, Duration::from_secs(5), "running", |r| {
        r.phase == "running" || r.step > 1
    })?;
    assert!(r.canary_failures < 10, "the window started afresh: {r:#?}");
    let (s, seen) = wait_rollout_end(&topo, Duration::from_secs(60))?;
    let (ok, failed) = load.stop();
    let r = s.rollout.as_ref().unwrap();
    println!("after resume: steps {seen:?}, {ok} ok, {failed} failed (before the fix)");
    for h in &r.history {
        println!("  {h}");
    }
    assert_eq!(r.phase, "promoted", "{r:#?}");
    assert!(
        r.history
            .iter()
            .any(|h| h.contains("resumed with a fresh window")),
        "{:?}",
        r.history
    );
    assert_eq!(weight_bp(&maps)?, 10_000);
    Ok(())
}
