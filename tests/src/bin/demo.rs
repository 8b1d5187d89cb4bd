//! `cargo xtask demo`: the splitter doing its job in a network-namespace
//! topology, with canaryd's built-in config. Everything it creates is gone
//! when it exits, whether it succeeds or fails.

use anyhow::{Context, Result};
use canary_tests::{burst, client_v4, Topology, VIP_V4};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

/// `canaryctl status` output, or why it is not there.
fn ctl(topo: &Topology, args: &[&str]) -> Result<String> {
    let out = topo.canaryctl(args, None)?;
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "canaryctl {args:?} failed: {text}");
    Ok(text)
}

fn run() -> Result<()> {
    heading(
        "building the topology: client, load balancer, backends b1 b2 (stable) and b3 (canary)",
    );
    let mut topo = Topology::new(3)?;
    println!("  namespaces {}-{{client,lb,b1,b2,b3}}", topo.id);
    topo.start_servers(80)?;

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
    print!("{}", ctl(&topo, &["set-weight", "shop", "50"])?);
    let sources: Vec<IpAddr> = (0..300).map(|i| client_v4(1000 + i % 150)).collect();
    let got = topo
        .client
        .run(|| burst(&sources, vip, Duration::from_secs(60)))
        .context("client burst")?;
    show(&got, 50.0);

    heading("canaryctl status");
    print!("{}", ctl(&topo, &["status", "shop"])?);

    heading("canaryctl explain shop 198.18.16.7");
    print!("{}", ctl(&topo, &["explain", "shop", "198.18.16.7"])?);

    heading("rollback: canaryctl rollback shop");
    print!("{}", ctl(&topo, &["rollback", "shop"])?);
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

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}
