//! The fleet harness itself (no `fleet:` section yet): a real etcd cluster,
//! three LBs behind the router's ECMP, each running canaryd alone with the
//! same config, the backends' replies spread over the LBs too.

use anyhow::Result;
use canary_tests::fleet::next_id;
use canary_tests::{
    burst, client_v4, client_v6, EtcdCluster, FleetTopology, Service, VIP_V4, VIP_V6,
};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const CONNS: u32 = 300;

fn config(fleet: &FleetTopology, k: usize) -> String {
    fleet
        .lb_config(k)
        .service(
            Service::tcp("shop", VIP_V4, 80)
                .affinity("source-ip")
                .weight(30.0)
                .lab_pools(),
        )
        .service(
            Service::tcp("shop6", VIP_V6, 80)
                .affinity("source-ip")
                .weight(30.0)
                .lab_pools(),
        )
        .yaml()
}

/// Per LB: new connections decided, and replies given their VIP back
/// without an entry (their request went through another LB).
fn per_lb(fleet: &FleetTopology) -> Result<Vec<(u64, u64)>> {
    (0..fleet.lbs.len())
        .map(|k| {
            let s = fleet.status(k)?;
            let flows = s
                .services
                .iter()
                .map(|v| v.stable.new_flows + v.canary.new_flows)
                .sum();
            let foreign = s.datapath.get("reply_no_flow_nat").copied().unwrap_or(0);
            Ok((flows, foreign))
        })
        .collect()
}

/// etcd answers, the router spreads connections over every LB, every
/// connection succeeds whichever LB its request and its replies take, and
/// a client's second connection (most likely through another LB) reaches
/// the same backend: the hosts hash alike.
#[test]
fn fleet_smoke() -> Result<()> {
    let t0 = Instant::now();
    let mut fleet = FleetTopology::new(3, 3)?;
    let built = t0.elapsed();

    fleet
        .etcd
        .etcdctl(&["put", "/canary-harness/hello", "world"])?;
    let got = fleet
        .etcd
        .etcdctl(&["get", "--print-value-only", "/canary-harness/hello"])?;
    assert_eq!(got.trim(), "world");

    fleet.start_servers(80)?;
    let daemons = (0..fleet.lbs.len())
        .map(|k| fleet.spawn_canaryd(k, &config(&fleet, k)))
        .collect::<Result<Vec<_>>>()?;
    let started = t0.elapsed();

    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let sources: Vec<IpAddr> = (0..CONNS).map(client_v4).collect();
    let first = fleet
        .client
        .run(|| burst(&sources, vip, Duration::from_secs(60)))?;
    let after_first = per_lb(&fleet)?;
    let second = fleet
        .client
        .run(|| burst(&sources, vip, Duration::from_secs(60)))?;
    let first: HashMap<IpAddr, String> = first.into_iter().collect();
    let moved: Vec<_> = second.iter().filter(|(src, b)| first[src] != *b).collect();
    assert!(
        moved.is_empty(),
        "second connections that reached another backend: {moved:?}"
    );

    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let sources6: Vec<IpAddr> = (0..30).map(client_v6).collect();
    let v6 = fleet
        .client
        .run(|| burst(&sources6, vip6, Duration::from_secs(30)))?;
    assert_eq!(v6.len(), 30);

    let counts = per_lb(&fleet)?;
    println!(
        "fleet built in {built:?}, canaryd x{} ready at {started:?}, all traffic done at {:?}",
        daemons.len(),
        t0.elapsed()
    );
    for (k, ((first, _), (all, foreign))) in after_first.iter().zip(&counts).enumerate() {
        println!(
            "{}: {first} of the first {CONNS} v4 connections, {all} connections in all, \
             {foreign} replies NATed without an entry",
            fleet.lbs[k].name
        );
    }
    let firsts: Vec<u64> = after_first.iter().map(|c| c.0).collect();
    assert_eq!(firsts.iter().sum::<u64>(), CONNS as u64, "{firsts:?}");
    assert!(
        firsts.iter().all(|&n| n > 0),
        "ECMP left an LB without connections: {firsts:?}"
    );
    let total: u64 = counts.iter().map(|c| c.0).sum();
    assert_eq!(total, 2 * CONNS as u64 + 30);
    let foreign: u64 = counts.iter().map(|c| c.1).sum();
    assert!(foreign > 0, "no reply took another LB than its request");
    let t = Instant::now();
    drop(daemons);
    let stopped = t.elapsed();
    drop(fleet);
    println!(
        "canaryd x3 stopped in {stopped:?}, fleet torn down in {:?}",
        t.elapsed() - stopped
    );
    Ok(())
}

/// A host taken down gets no new connections and the others take them all
/// (the router and the backends skip its dead links); back up, it gets its
/// share again.
#[test]
fn host_down_and_up() -> Result<()> {
    let mut fleet = FleetTopology::new(3, 3)?;
    fleet.start_servers(80)?;
    let _daemons = (0..fleet.lbs.len())
        .map(|k| fleet.spawn_canaryd(k, &config(&fleet, k)))
        .collect::<Result<Vec<_>>>()?;
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let sources = |from: u32| -> Vec<IpAddr> { (from..from + 150).map(client_v4).collect() };

    let routes = |k: usize| -> Result<Vec<String>> {
        let ns = &fleet.lbs[k].ns;
        let mut all = Vec::new();
        for family in ["-4", "-6"] {
            let out = ns.ip(&[family, "route", "show", "table", "all"])?;
            all.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(String::from),
            );
        }
        all.sort();
        Ok(all)
    };
    let routes_before = routes(0)?;
    let addrs_before = fleet.lbs[0].ns.ip(&["-br", "addr"])?.stdout;

    fleet.host_down(0)?;
    let before = per_lb(&fleet)?;
    let t = Instant::now();
    fleet
        .client
        .run(|| burst(&sources(0), vip, Duration::from_secs(30)))?;
    let down = per_lb(&fleet)?;
    println!("150 connections with lb1 down in {:?}", t.elapsed());
    assert_eq!(down[0].0, before[0].0, "lb1 is down but got connections");
    assert_eq!(down[1].0 + down[2].0 - before[1].0 - before[2].0, 150);

    fleet.host_up(0)?;
    assert_eq!(routes(0)?, routes_before, "lb1's routes after host_up");
    let addrs_after = fleet.lbs[0].ns.ip(&["-br", "addr"])?.stdout;
    assert_eq!(
        String::from_utf8_lossy(&addrs_after),
        String::from_utf8_lossy(&addrs_before),
        "lb1's addresses after host_up"
    );
    let t = Instant::now();
    fleet
        .client
        .run(|| burst(&sources(150), vip, Duration::from_secs(30)))?;
    let up = per_lb(&fleet)?;
    println!(
        "150 connections after lb1 came back in {:?}: {:?}",
        t.elapsed(),
        up.iter()
            .zip(&down)
            .map(|(u, d)| u.0 - d.0)
            .collect::<Vec<_>>()
    );
    assert!(up[0].0 > down[0].0, "lb1 is back but gets no connections");

    // IPv6 through lb1 again too.
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let sources6: Vec<IpAddr> = (0..60).map(client_v6).collect();
    fleet
        .client
        .run(|| burst(&sources6, vip6, Duration::from_secs(30)))?;
    let v6 = per_lb(&fleet)?;
    assert!(
        v6[0].0 > up[0].0,
        "lb1 is back but gets no IPv6 connections"
    );
    Ok(())
}

/// The killed leader leaves a quorum that elects another and still
/// answers; restarted on its data the member rejoins and has what was
/// written meanwhile.
#[test]
fn etcd_leader_kill_and_restart() -> Result<()> {
    let t = Instant::now();
    let mut etcd = EtcdCluster::start(&next_id(), 3)?;
    println!("etcd healthy after {:?}", t.elapsed());
    let leader = etcd.leader()?;
    let pid = etcd.pid(leader).expect("the leader runs");
    etcd.kill(leader)?;
    assert!(etcd.pid(leader).is_none());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let t = Instant::now();
    etcd.wait_healthy(Duration::from_secs(10))?;
    let next = etcd.leader()?;
    println!(
        "member {next} leads {:?} after member {leader} was killed",
        t.elapsed()
    );
    assert_ne!(next, leader);
    etcd.etcdctl(&["put", "/canary-harness/k", "while-down"])?;
    let t = Instant::now();
    etcd.restart(leader)?;
    println!("member {leader} healthy again after {:?}", t.elapsed());
    let got = etcd.etcdctl(&[
        &format!("--endpoints={}", etcd.endpoints()[leader]),
        "get",
        "--print-value-only",
        "/canary-harness/k",
    ])?;
    assert_eq!(got.trim(), "while-down");
    Ok(())
}
