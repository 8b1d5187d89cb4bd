//! `cargo xtask demo`: the splitter doing its job in a network-namespace
//! topology, with canaryd's built-in config. Everything it creates is gone
//! when it exits, whether it succeeds or fails.
//!
//! `cargo xtask demo --fleet` (`canary-demo --fleet`) runs the fleet act
//! instead (`fleet.rs`): three canaryd hosts behind an ECMP router acting
//! as one through etcd.

mod fleet;

use anyhow::{Context, Result};
use canary_tests::{burst, client_v4, Load, LoadBounds, ServerOptions, Topology, VIP_V4};
use canary_userspace::control::api::{RolloutStatus, ServiceStatus};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

fn heading(text: &str) {
    println!("\n== {text}");
}

fn tally(got: &[(IpAddr, String)]) -> BTreeMap<String, usize> {
    let mut by_backend = BTreeMap::new();
    for (_, b) in got {
        *by_backend.entry(b.clone()).or_insert(0) += 1;
    }
    by_backend
}

fn show(got: &[(IpAddr, String)], weight: f64) {
    let by_backend = tally(got);
    for (b, n) in &by_backend {
        let role = if b == "b3" { "canary" } else { "stable" };
        println!("  {b} ({role:6}) {n:5} connections");
    }
    let canary = *by_backend.get("b3").unwrap_or(&0) as f64;
    println!(
        "  canary share {:.1}% of {} connections (weight {weight}%)",
        100.0 * canary / got.len() as f64,
        got.len()
    );
}

/// A rollout's figures on one line: phase, step, weight, both versions'
/// failures in the step's window, the verdict (both acts print it).
fn rollout_figures(s: &ServiceStatus, r: &RolloutStatus) -> String {
    format!(
        "{} step {}/{} weight {:>5.1}% | canary {}/{} failed, stable {}/{} | {}",
        r.phase,
        r.step,
        r.steps.len(),
        s.weight_percent,
        r.canary_failures,
        r.canary_connections,
        r.stable_failures,
        r.stable_connections,
        r.verdict
    )
}

/// A one-line live view of the rollout, printed when it changes, until it
/// is promoted or aborted (or `limit`). Runs `during` once, after `at_step`
/// is reached.
fn watch_rollout(
    topo: &Topology,
    limit: Duration,
    at_step: usize,
    during: &mut dyn FnMut() -> Result<()>,
) -> Result<ServiceStatus> {
    let end = Instant::now() + limit;
    let started = Instant::now();
    let mut last = String::new();
    let mut fired = false;
    loop {
        let s = topo.service_status("shop")?;
        let r = s.rollout.clone().context("no rollout")?;
        let line = format!(
            "  [{:5.1}s] {}",
            started.elapsed().as_secs_f64(),
            rollout_figures(&s, &r)
        );
        let key = format!(
            "{} {} {}",
            r.phase,
            r.step,
            r.verdict.split(':').next().unwrap_or("")
        );
        if key != last {
            println!("{line}");
            last = key;
        }
        if r.phase == "promoted" || r.phase == "aborted" {
            return Ok(s);
        }
        if !fired && r.step >= at_step {
            fired = true;
            during()?;
        }
        anyhow::ensure!(
            Instant::now() < end,
            "the rollout did not end within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run() -> Result<()> {
    heading(
        "building the topology: client, load balancer, backends b1 b2 (stable) and b3 (canary)",
    );
    let mut topo = Topology::new(3)?;
    println!("  namespaces {}-{{client,lb,b1,b2,b3}}", topo.id);
    topo.start_servers_with(
        80,
        &ServerOptions {
            http_port: Some(8080),
            rst_fraction: 0.0,
        },
    )?;

    heading("starting canaryd with its built-in config (shop: 198.18.100.1:80, canary weight 10%)");
    let mut daemon = topo.spawn_canaryd(None)?;
    println!(
        "  canaryd pid {} attached to lb-client and lb-b1..3",
        daemon.pid()
    );

    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let sources: Vec<IpAddr> = (0..300).map(|i| client_v4(i % 150)).collect();
    heading("300 real TCP connections from 150 client addresses to the VIP");
    let got = topo
        .client
        .run(|| burst(&sources, vip, Duration::from_secs(60)))
        .context("client burst")?;
    show(&got, 10.0);

    heading("moving the weight to 50% with canaryctl while traffic flows");
    print!("{}", topo.ctl(&["set-weight", "shop", "50"])?);
    let sources: Vec<IpAddr> = (0..300).map(|i| client_v4(1000 + i % 150)).collect();
    let got = topo
        .client
        .run(|| burst(&sources, vip, Duration::from_secs(60)))
        .context("client burst")?;
    show(&got, 50.0);

    heading("canaryctl status");
    print!("{}", topo.ctl(&["status", "shop"])?);

    heading("canaryctl explain shop 198.18.16.7");
    print!("{}", topo.ctl(&["explain", "shop", "198.18.16.7"])?);

    heading("rollback: canaryctl rollback shop");
    print!("{}", topo.ctl(&["rollback", "shop"])?);
    let sources: Vec<IpAddr> = (0..100).map(|i| client_v4(2000 + i)).collect();
    let got = topo
        .client
        .run(|| burst(&sources, vip, Duration::from_secs(60)))
        .context("client burst")?;
    show(&got, 0.0);
    anyhow::ensure!(
        got.iter().all(|(_, b)| b != "b3"),
        "a new connection reached canary after the rollback"
    );

    heading("a progressive rollout under steady load: canaryctl rollout start shop");
    println!("  plan 5% -> 10% -> 15% -> 20% -> 50% -> 100%, 2 s per step at least, analysis: error ratio <= 5%, p99 handshake <= 100 ms");
    let mut load = Load::start(&topo.client, vip, LoadBounds::default());
    print!("{}", topo.ctl(&["rollout", "start", "shop"])?);
    let s = watch_rollout(&topo, Duration::from_secs(90), usize::MAX, &mut || Ok(()))?;
    let r = s.rollout.as_ref().unwrap();
    for h in &r.history {
        println!("  {h}");
    }
    anyhow::ensure!(r.phase == "promoted", "the healthy canary was not promoted");

    heading(
        "a second rollout, and the canary starts failing at step 2 (its server resets connections)",
    );
    print!("{}", topo.ctl(&["set-weight", "shop", "0"])?);
    print!("{}", topo.ctl(&["rollout", "start", "shop"])?);
    let fault_at = std::cell::Cell::new(None);
    let s = watch_rollout(&topo, Duration::from_secs(90), 2, &mut || {
        println!("  >>> fault injected: b3 now resets every connection");
        fault_at.set(Some(Instant::now()));
        topo.set_fault("b3", "rst")
    })?;
    let r = s.rollout.as_ref().unwrap();
    if let Some(t) = fault_at.get() {
        println!(
            "  rolled back {:.0} ms after the fault (as seen by status polling)",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    println!("  reason: {}", r.reason.as_deref().unwrap_or("?"));
    anyhow::ensure!(
        r.phase == "aborted" && s.weight_percent == 0.0,
        "the faulty canary was not rolled back"
    );
    let (ok, failed) = load.stop();
    println!("  load: {ok} connections answered, {failed} failed (the faulty canary's resets)");
    topo.set_fault("b3", "")?;

    heading("canaryctl status after the rollback");
    print!("{}", topo.ctl(&["status", "shop"])?);

    heading("canaryctl events");
    print!("{}", topo.ctl(&["events"])?);

    heading("stopping canaryd and tearing the topology down");
    daemon.stop();
    let log = daemon.log();
    for line in log
        .lines()
        .filter(|l| l.contains("canary weight") || l.contains("final"))
    {
        println!("  log: {line}");
    }
    drop(daemon);
    drop(topo);
    println!("  done: no namespace, link, pin or process left behind");
    Ok(())
}

const USAGE: &str = "usage: canary-demo [--fleet]

  (none)   the single-host demo: one load balancer, weights, status,
           explain, rollback, a promoted and a rolled-back rollout
  --fleet  the fleet act: three canaryd hosts behind an ECMP router and a
           3-member etcd cluster: one weight everywhere, ECMP spread, a
           rollout that survives its leader's SIGKILL, an LB host lost";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let act: fn() -> Result<()> = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => run,
        ["--fleet"] => fleet::run,
        ["-h"] | ["--help"] => {
            println!("{USAGE}");
            return;
        }
        _ => {
            eprintln!("canary-demo: unexpected arguments {args:?}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = act() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}
