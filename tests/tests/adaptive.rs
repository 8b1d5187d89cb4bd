//! An adaptive rollout (`strategy: adaptive`) on real traffic through the
//! netns topology: the engine measures the rate at weight 0, picks each
//! step's weight, says why in status and in the `step` events, and a
//! healthy canary is promoted within its budget.

use anyhow::Result;
use canary_tests::rollout::{config, topology, vip, weight_bp};
use canary_tests::{Load, LoadBounds};
use canary_userspace::dataplane::maps::Maps;
use std::time::{Duration, Instant};

#[test]
fn adaptive_rollout_of_a_healthy_canary_is_promoted_and_says_why() -> Result<()> {
    let topo = topology(0.0)?;
    let _d = topo.spawn_canaryd(Some(&config(
        "      strategy: adaptive
      interval: 2s
      adaptive:
        budget: [5000, 200000]
        min_step: 1
        max_step: 50
        max_duration: 2m
      analysis:
        max_error_ratio: 0.2
        min_canary_connections: 50
",
    )))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let mut load = Load::start(&topo.client, vip(), LoadBounds::default());
    topo.ctl(&["rollout", "start", "shop"])?;
    let end = Instant::now() + Duration::from_secs(50);
    let mut whys: Vec<String> = Vec::new();
    let mut weights = Vec::new();
    let s = loop {
        let s = topo.service_status("shop")?;
        let r = s.rollout.as_ref().expect("a rollout in status");
        if let Some(w) = &r.why {
            if whys.last() != Some(w) {
                whys.push(w.clone());
            }
        }
        let bp = weight_bp(&maps)?;
        if weights.last() != Some(&bp) {
            weights.push(bp);
        }
        if r.phase == "promoted" || r.phase == "aborted" {
            break s;
        }
        anyhow::ensure!(Instant::now() < end, "not over after 50 s: {r:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (ok, failed) = load.stop();
    let r = s.rollout.as_ref().unwrap();
    println!("weights in the map: {weights:?}; {ok} connections ok, {failed} failed");
    for w in &whys {
        println!("  why: {w}");
    }
    for h in &r.history {
        println!("  {h}");
    }
    assert_eq!(r.phase, "promoted", "{r:#?}");
    assert_eq!(r.planned_steps, Some(3), "2 levels + the 100 % step");
    // Warm-up at 0, then step 1 (a small weight the engine chose), the
    // forced 50 % (the rise to 100 is at most 50 points), 100 %.
    assert_eq!(weights.first(), Some(&0), "{weights:?}");
    assert_eq!(weights.last(), Some(&10_000), "{weights:?}");
    let first = r.steps[0];
    assert!(first > 0.0 && first < 50.0, "step 1 at {first}%");
    assert_eq!(r.steps[1], 50.0, "{:?}", r.steps);
    let step1 = whys
        .iter()
        .find(|w| w.starts_with("step 1/3: "))
        .expect("status showed step 1's reason");
    assert!(
        step1.contains("canary connections within 2.0 s at ")
            && step1.contains("5,000 of 5,000 connections of the budget left (level 1)"),
        "{step1}"
    );
    assert!(
        whys.iter()
            .any(|w| w.starts_with("step 3/3: 100% — level 2 reached")),
        "{whys:?}"
    );
    let b = r.budget.as_ref().expect("the budget in status");
    assert_eq!((b.level, b.levels), (2, 2));
    assert!(b.exposed > 0, "{b:?}");
    // Level 1 was reached within its budget.
    let reached = r
        .history
        .iter()
        .find(|h| h.contains("level 1 reached"))
        .expect("history names level 1");
    println!("{reached}");
    let text = topo.ctl(&["status", "shop"])?;
    assert!(
        text.contains("    why: step 3/3: 100% — level 2 reached")
            && text.contains("    budget: level 2/2 reached, "),
        "canaryctl status shows the reason and the budget: {text}"
    );
    let events = topo.ctl(&["events"])?;
    assert!(
        events.contains("step 1/3: ") && events.contains("canary connections within 2.0 s"),
        "the step event carries the reason: {events}"
    );
    assert!(events.contains("promoted"), "{events}");
    assert_eq!(failed, 0, "no client connection failed");
    Ok(())
}
