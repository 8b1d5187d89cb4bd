//! How fast can the lab flood? Builds a topology (client, LB with canaryd,
//! three backends serving port 80), sends a spoofed-SYN flood to the VIP
//! from the client namespace (see `canary_tests::flood`) and reports what
//! was sent and what arrived where, with optional legitimate load alongside.
//!
//! ```text
//! canary-synflood [--secs S] [--sources N] [--pps P] [--load] [--flow-table-size N --threshold T]
//!                 [--legacy-size N] [--conns N] [--watch S]
//! ```
//! `--legacy-size` writes the older top-level `flow_table_size:` instead
//! (a canaryd before `flow_table:`); `--conns N` opens N live connections
//! to pushing servers (every 100 ms) before the flood, has each send a line
//! about once a second during it, and counts those broken (as the
//! `flow_table` test does); `--watch S` prints the status for S seconds
//! after the flood.
//! `--flow-table-size`/`--threshold` write a `flow_table:` section (a
//! canaryd that knows it); `--load` runs short connections (connect,
//! banner, one echo; 3 s timeout, 20 ms apart) during the flood and counts
//! failures. Root only; everything is torn down at the end.

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use canary_common::reason;
use canary_tests::client::PushConn;
use canary_tests::flood::SynFlood;
use canary_tests::{client_v4, FlowTable, LbConfig, Load, LoadBounds, Service, Topology, VIP_V4};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

fn datapath(topo: &Topology) -> Result<[u64; reason::COUNT as usize]> {
    let path = topo
        .pin_dir()
        .join(canary_common::maps::names::DATAPATH_STATS);
    let map = Map::from_map_data(MapData::from_pin(&path).context("DATAPATH_STATS pin")?)?;
    let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(map)?;
    let mut out = [0u64; reason::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        // Counters the running program does not have (an older layout) read as 0.
        if let Ok(v) = arr.get(&(i as u32), 0) {
            *slot = v.iter().sum();
        }
    }
    Ok(out)
}

/// TcpExt counters of a namespace (/proc/net/netstat read from inside it).
fn tcp_ext(ns: &canary_tests::Netns) -> Result<std::collections::BTreeMap<String, u64>> {
    let out = ns.exec(&["cat", "/proc/net/netstat"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let mut m = std::collections::BTreeMap::new();
    for pair in lines.chunks(2) {
        if let [h, v] = pair {
            if h.starts_with("TcpExt:") {
                for (k, v) in h.split_whitespace().zip(v.split_whitespace()).skip(1) {
                    m.insert(k.to_string(), v.parse().unwrap_or(0));
                }
            }
        }
    }
    Ok(m)
}

/// Drops on every link of the lab, by namespace and interface.
fn drops(topo: &Topology) -> Result<Vec<(String, u64, u64)>> {
    let mut out = Vec::new();
    let mut add = |ns: &canary_tests::Netns, ifname: &str| -> Result<()> {
        let (_, rxd, _, txd) = Topology::link_stats(ns, ifname)?;
        out.push((
            format!("{}:{ifname}", ns.name.rsplit('-').next().unwrap_or("")),
            rxd,
            txd,
        ));
        Ok(())
    };
    add(&topo.client, "eth0")?;
    add(&topo.lb, "lb-client")?;
    for (i, b) in topo.backends.iter().enumerate() {
        add(&topo.lb, &format!("lb-b{}", i + 1))?;
        add(&b.ns, "eth0")?;
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let secs: f64 = opt("--secs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10.0);
    let sources: u32 = opt("--sources")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(60_000);
    let pps: u64 = opt("--pps").map(|s| s.parse()).transpose()?.unwrap_or(0);
    let with_load = args.iter().any(|a| a == "--load");

    let conns_n: u32 = opt("--conns").map(|s| s.parse()).transpose()?.unwrap_or(0);
    let mut topo = Topology::new(3)?;
    if conns_n > 0 {
        topo.start_push_servers(80, 100)?;
    } else {
        topo.start_servers(80)?;
    }
    topo.route_flood_sources()?;
    let mut cfg = LbConfig::lab();
    if let Some(size) = opt("--flow-table-size") {
        let mut ft = FlowTable::new().size(size.parse()?);
        if let Some(t) = opt("--threshold") {
            ft = ft.syn_flood_threshold(t.parse()?);
        }
        cfg = cfg.flow_table(ft);
    }
    let legacy = opt("--legacy-size")
        .map(|n| format!("flow_table_size: {n}\n"))
        .unwrap_or_default();
    let yaml = legacy
        + &cfg
            .service(Service::tcp("shop", VIP_V4, 80).weight(10.0).lab_pools())
            .yaml();
    let _d = topo.spawn_canaryd(Some(&yaml))?;
    let vip = SocketAddrV4::new(VIP_V4, 80);
    // Warm up: neighbours resolved, routes cached.
    topo.open_v4(0, 3, SocketAddr::V4(vip), Duration::from_secs(3))?;

    let before = datapath(&topo)?;
    let drops0 = drops(&topo)?;
    let ext0: Vec<_> = topo
        .backends
        .iter()
        .map(|b| tcp_ext(&b.ns))
        .collect::<Result<_>>()?;
    let c0 = Topology::link_stats(&topo.client, "eth0")?;
    let l0 = Topology::link_stats(&topo.lb, "lb-client")?;
    let mut load = with_load.then(|| {
        Load::start(
            &topo.client,
            SocketAddr::V4(vip),
            LoadBounds {
                clients: 1000,
                first_client: 100,
                max_connections: 100_000,
                max_time: Duration::from_secs_f64(secs),
                pause: Duration::from_millis(20),
                timeout: Duration::from_secs(3),
                ping: true,
            },
        )
    });
    let mut conns: Vec<PushConn> = topo.client.run(|| {
        (0..conns_n)
            .map(|i| {
                PushConn::open(
                    client_v4(3000 + i),
                    SocketAddr::V4(vip),
                    Duration::from_secs(3),
                )
            })
            .collect::<Result<_>>()
    })?;
    for c in &conns {
        c.mark();
    }
    let spec = topo.flood_spec(
        vip,
        sources,
        u64::MAX / 2,
        Duration::from_secs_f64(secs),
        pps,
    )?;
    let t = Instant::now();
    let flood = SynFlood::start(&topo.client, spec);
    let mut tick = 0usize;
    while !flood.finished() {
        for c in conns.iter_mut().skip(tick % 10).step_by(10) {
            let _ = c.send(&format!("ping {tick}"));
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = flood.wait()?;
    let pushes_at_end: Vec<u64> = conns.iter().map(|c| c.health().pushes).collect();
    for c in conns.iter_mut() {
        let _ = c.send("after");
    }
    let (ok, failed) = load.as_mut().map(|l| l.stop()).unwrap_or((0, 0));
    std::thread::sleep(Duration::from_millis(500));
    let after = datapath(&topo)?;
    let c1 = Topology::link_stats(&topo.client, "eth0")?;
    let l1 = Topology::link_stats(&topo.lb, "lb-client")?;
    let d = |r: u32| after[r as usize] - before[r as usize];
    let xdp_total: u64 = (0..reason::COUNT)
        .filter(|&r| r != reason::OVERRIDE_HIT)
        .map(d)
        .sum();
    println!(
        "flood: {} SYNs sent in {:.2} s = {:.0} pps from {} distinct sources ({} refused by the socket); wall {:.2} s",
        report.sent,
        report.elapsed.as_secs_f64(),
        report.pps(),
        report.distinct_sources,
        report.refused,
        t.elapsed().as_secs_f64()
    );
    println!(
        "client eth0: tx {} (dropped {}); LB lb-client: rx {} (dropped {})",
        c1.2 - c0.2,
        c1.3 - c0.3,
        l1.0 - l0.0,
        l1.1 - l0.1
    );
    println!("LB XDP outcomes during the flood (both directions, {xdp_total} in all):");
    for r in 0..reason::COUNT {
        if d(r) > 0 {
            println!("  {:<20} {}", reason::NAMES[r as usize], d(r));
        }
    }
    println!("link drops (rx, tx) during the flood:");
    for ((name, rx0, tx0), (_, rx1, tx1)) in drops0.iter().zip(drops(&topo)?) {
        if rx1 > *rx0 || tx1 > *tx0 {
            println!("  {name:<12} rx {} tx {}", rx1 - rx0, tx1 - tx0);
        }
    }
    for (b, e0) in topo.backends.iter().zip(&ext0) {
        let e1 = tcp_ext(&b.ns)?;
        let keys = [
            "SyncookiesSent",
            "SyncookiesRecv",
            "SyncookiesFailed",
            "ListenOverflows",
            "ListenDrops",
            "TCPReqQFullDoCookies",
            "TCPReqQFullDrop",
        ];
        let parts: Vec<String> = keys
            .iter()
            .map(|k| {
                format!(
                    "{k} {}",
                    e1.get(*k).unwrap_or(&0) - e0.get(*k).unwrap_or(&0)
                )
            })
            .collect();
        println!("  backend {}: {}", b.name, parts.join(", "));
    }
    if conns_n > 0 {
        std::thread::sleep(Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut broken = 0;
        for (c, p0) in conns.iter().zip(&pushes_at_end) {
            let echoed = c.wait_echoes(deadline.saturating_duration_since(Instant::now()));
            let h = c.health();
            if !echoed
                || h.pushes - p0 < 5
                || h.error.is_some()
                || h.max_gap > Duration::from_secs(2)
            {
                broken += 1;
                if broken <= 3 {
                    println!("  broken: {h:?}");
                }
            }
        }
        println!("live connections: {broken} of {conns_n} broken");
    }
    if let Some(l) = &load {
        println!(
            "legitimate connections during the flood: {ok} ok, {failed} failed; first errors: {:?}",
            l.errors.lock().unwrap()
        );
    }
    if let Some(secs) = opt("--watch") {
        // The status after the flood, once a second.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs.parse()?) {
            if let Ok(out) = topo.ctl(&["--json", "status"]) {
                let v: serde_json::Value = serde_json::from_str(&out)?;
                println!(
                    "+{:5.1} s flow_table {}",
                    t.elapsed().as_secs_f64(),
                    v["flow_table"]
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        println!("{}", topo.ctl(&["events"])?);
        println!("--- canaryd log ---\n{}", _d.log());
    }
    Ok(())
}
