//! Cohorts, with real connections: "clients from the staff network see the
//! canary from step 1, everyone else follows the weights, and `explain`
//! says which cohort decided"; a restart at step 1 keeps it; an abort turns
//! cohorts off (new staff connections go to stable) and open ones stay.
//!
//! Needs root. Run: `cargo test -p canary-tests --test cohorts -- --nocapture`.

use anyhow::{Context, Result};
use canary_tests::config::cohorts_yaml;
use canary_tests::rollout::{shop, splits_to_canary, topology, vip};
use canary_tests::{client_v4, Conn, LbConfig, Topology};
use canary_userspace::control::api::Explain;
use canary_userspace::dataplane::maps::Maps;
use std::net::IpAddr;
use std::time::Duration;

/// The staff network: `client_v4(1024..1280)`, inside the client
/// namespace's 198.18.16.0/20.
const STAFF_NET: &str = "198.18.20.0/24";
const STAFF_FIRST: u32 = 1025;
const STAFF_N: u32 = 20;
/// Everyone else: `client_v4(0..400)` (198.18.16.0 - 198.18.17.143).
const OTHERS_N: u32 = 400;
const CONNECT: Duration = Duration::from_secs(3);

fn yaml() -> String {
    // Step 1 lasts far longer than the test: the rollout stays there.
    let plan = format!(
        "      steps: [5, 100]\n      interval: 10m\n{}",
        cohorts_yaml(&[("staff", &[STAFF_NET], &[100.0, 100.0])])
    );
    LbConfig::lab().service(shop(&plan)).yaml()
}

fn explain(topo: &Topology, client: &str) -> Result<Explain> {
    let out = topo.ctl(&["--json", "explain", "shop", client])?;
    serde_json::from_str(&out).with_context(|| format!("explain output: {out}"))
}

/// Opens connections from `client_v4(i)` for each `i`, returns them.
fn open(topo: &Topology, ids: impl Iterator<Item = u32>) -> Result<Vec<Conn>> {
    let ids: Vec<u32> = ids.collect();
    topo.client.run(|| {
        ids.iter()
            .map(|&i| canary_tests::tcp_connect(client_v4(i), vip(), CONNECT))
            .collect()
    })
}

#[test]
fn staff_see_the_canary_from_step_1_and_explain_names_the_cohort() -> Result<()> {
    let topo = topology(0.0)?;
    let yaml = yaml();
    let cfg = canary_userspace::config::Config::parse(&yaml)?;
    let seed = cfg.services[0].seed();
    let mut d = topo.spawn_canaryd(Some(&yaml))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    topo.ctl(&["rollout", "start", "shop"])?;

    let s = topo.service_status("shop")?;
    assert_eq!(s.rollout.as_ref().unwrap().step, 1);
    assert_eq!(s.weight_percent, 5.0);
    assert_eq!(
        s.cohorts.as_deref(),
        Some("staff 100.00%, everyone 5.00%"),
        "status shows the live cohort weights"
    );
    let entry = maps.services.get(&0, 0)?;
    assert_eq!(
        (entry.weight_bp, entry.has_overrides),
        (
            500,
            canary_common::SVC_PREFIXES | canary_common::SVC_COHORTS_LIVE
        )
    );

    // Every staff connection reaches the canary (b3).
    let staff = open(&topo, STAFF_FIRST..STAFF_FIRST + STAFF_N)?;
    let on_canary = staff.iter().filter(|c| c.backend == "b3").count();
    println!("staff: {on_canary} of {STAFF_N} connections on the canary at step 1 (5 %)");
    assert_eq!(on_canary as u32, STAFF_N, "every staff connection on b3");

    // Everyone else follows 5 %: each client exactly as the shared decision
    // says, and the count within the binomial bound. Canary count ~
    // Binomial(400, 0.05): mean 20, sd = sqrt(400 * 0.05 * 0.95) = 4.36;
    // 4 sd (3 ..= 37) fails by chance with probability < 1e-4 for a uniform
    // hash.
    let others = open(&topo, 0..OTHERS_N)?;
    let mut n_canary = 0u32;
    for (i, c) in others.iter().enumerate() {
        let IpAddr::V4(client) = client_v4(i as u32) else {
            unreachable!()
        };
        let want = splits_to_canary(client, canary_common::AFFINITY_SOURCE_IP, seed, 500);
        let got = c.backend == "b3";
        assert_eq!(got, want, "{} went to {}", client_v4(i as u32), c.backend);
        n_canary += u32::from(got);
    }
    let (n, p) = (OTHERS_N as f64, 0.05);
    let (mean, sd) = (n * p, (n * p * (1.0 - p)).sqrt());
    println!(
        "everyone: {n_canary} of {OTHERS_N} on the canary (expected {mean:.0}, sd {sd:.2}, {:+.2} sd)",
        (n_canary as f64 - mean) / sd
    );
    assert!(
        (n_canary as f64 - mean).abs() <= 4.0 * sd,
        "{n_canary} canary connections of {OTHERS_N}, expected {mean} +- {:.1}",
        4.0 * sd
    );
    drop(others);

    // explain names the cohort that decided.
    let e = explain(&topo, "198.18.20.7")?;
    println!(
        "explain 198.18.20.7: {} ({}): {}",
        e.decided_by,
        e.version.name(),
        e.reason
    );
    assert_eq!(e.decided_by, "cohort staff");
    assert_eq!(e.cohort.as_deref(), Some("staff"));
    assert_eq!(e.version.name(), "canary");
    assert!(
        e.reason.contains("client in cohort staff (198.18.20.0/24)"),
        "{}",
        e.reason
    );
    let e = explain(&topo, "198.18.17.1")?;
    println!(
        "explain 198.18.17.1: {} ({}): {}",
        e.decided_by,
        e.version.name(),
        e.reason
    );
    assert_eq!(e.decided_by, "cohort everyone");
    assert_eq!(e.cohort.as_deref(), Some("everyone"));
    let text = topo.ctl(&["explain", "shop", "198.18.20.7"])?;
    assert!(text.contains("cohort: staff"), "{text}");
    let events = topo.ctl(&["events"])?;
    assert!(
        events.contains("canary weight 5.00%, cohorts staff 100.00%"),
        "the step's event names the cohorts' weights: {events}"
    );
    let text = topo.ctl(&["status", "shop"])?;
    assert!(
        text.contains("cohorts: staff 100.00%, everyone 5.00%"),
        "{text}"
    );

    // A restart at step 1 keeps it: the map untouched while down, then the
    // same step and cohorts after.
    d.stop();
    let entry = maps.services.get(&0, 0)?;
    assert_eq!(entry.has_overrides & canary_common::SVC_COHORTS_LIVE, 2);
    let mut d = canary_tests::Daemon::spawn(&topo, Some(&yaml), &[])?;
    let s = topo.service_status("shop")?;
    assert_eq!(s.rollout.as_ref().unwrap().step, 1);
    assert_eq!(s.cohorts.as_deref(), Some("staff 100.00%, everyone 5.00%"));
    let again = open(&topo, STAFF_FIRST..STAFF_FIRST + STAFF_N)?;
    assert!(
        again.iter().all(|c| c.backend == "b3"),
        "after the restart: {:?}",
        again.iter().map(|c| c.backend.clone()).collect::<Vec<_>>()
    );
    drop(again);
    assert_eq!(explain(&topo, "198.18.20.7")?.decided_by, "cohort staff");

    // Abort: weight 0 and cohorts off; new staff connections go to stable,
    // open ones keep their canary backend.
    topo.ctl(&["rollout", "abort", "shop"])?;
    let entry = maps.services.get(&0, 0)?;
    assert_eq!(
        (entry.weight_bp, entry.has_overrides),
        (0, canary_common::SVC_PREFIXES),
        "one write: weight 0, live bit clear"
    );
    let after = open(&topo, STAFF_FIRST..STAFF_FIRST + STAFF_N)?;
    let on_canary = after.iter().filter(|c| c.backend == "b3").count();
    println!("after the abort: {on_canary} of {STAFF_N} new staff connections on the canary");
    assert_eq!(on_canary, 0, "cohorts off: staff follow weight 0");
    let e = explain(&topo, "198.18.20.7")?;
    println!(
        "explain 198.18.20.7: {} ({}): {}",
        e.decided_by,
        e.version.name(),
        e.reason
    );
    assert_eq!(e.version.name(), "stable");
    assert_eq!(e.decided_by, "hash");
    assert!(e.reason.contains("cohorts are off"), "{}", e.reason);
    let s = topo.service_status("shop")?;
    assert!(
        s.cohorts.as_deref().unwrap_or("").starts_with("off"),
        "{:?}",
        s.cohorts
    );
    let mut staff = staff;
    let failed = canary_tests::ping_all(&mut staff, "after abort");
    assert!(
        failed.is_empty(),
        "open staff connections broke: {failed:?}"
    );
    drop(after);
    d.stop();
    Ok(())
}
