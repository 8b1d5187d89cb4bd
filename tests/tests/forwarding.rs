//! End to end in network namespaces: real TCP/UDP clients and servers, the
//! real XDP program attached by a real canaryd, counters read from the
//! pinned BPF maps and compared with independent nft counters.

use anyhow::Result;
use canary_common::{VERSION_CANARY, VERSION_STABLE};
use canary_tests::{
    burst, client_v4, client_v6, udp_request, LbConfig, NftCounters, Service, Topology, VIP_V4,
    VIP_V6,
};
use canary_userspace::config::Config;
use canary_userspace::dataplane::maps::Maps;
use canary_userspace::dataplane::vip_key;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

fn config(weight: f64) -> String {
    LbConfig::lab()
        .service(
            Service::tcp("shop", VIP_V4, 80)
                .affinity("source-ip")
                .weight(weight)
                .lab_pools()
                .force("198.18.30.0/24", "canary")
                .force("198.18.31.0/24", "stable"),
        )
        .service(Service::tcp("shop6", VIP_V6, 80).weight(weight).lab_pools())
        .service(
            Service::udp("dns", "198.18.100.2", 53)
                .weight(weight)
                .lab_pools(),
        )
        .yaml()
}

fn is_canary(backend: &str) -> bool {
    backend == "b3"
}

fn service_id(maps: &Maps, yaml: &str, name: &str) -> u32 {
    let c = Config::parse(yaml).unwrap();
    let s = c.services.iter().find(|s| s.name == name).unwrap();
    maps.service_of_vip(&vip_key(s)).unwrap()
}

/// Reads `f` until two reads 200 ms apart agree (the last ACKs of closing
/// connections may still be in flight), at most 5 s.
fn settled<T: PartialEq + Copy>(mut f: impl FnMut() -> T) -> T {
    let end = Instant::now() + Duration::from_secs(5);
    let mut last = f();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = f();
        if now == last || Instant::now() > end {
            return now;
        }
        last = now;
    }
}

/// The foundation's must-show: real TCP connections through the LB with
/// the XDP program attached; the per-VIP packet counter in the BPF map
/// equals what the client sent to the VIP (an nft counter in the client
/// namespace), handshake and teardown included, and what the backends
/// received.
#[test]
fn vip_packet_counter_equals_what_clients_sent() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let yaml = config(10.0);
    let _d = topo.spawn_canaryd(Some(&yaml))?;
    let client_nft = NftCounters::install(
        &topo.client,
        &[("output", "ip daddr 198.18.100.1 tcp dport 80", "to_vip")],
    )?;
    let backend_nft: Vec<_> = topo
        .backends
        .iter()
        .map(|b| NftCounters::install(&b.ns, &[("input", "tcp dport 80", "in")]))
        .collect::<Result<_>>()?;

    let sources: Vec<IpAddr> = (0..200).map(|i| client_v4(i % 100)).collect();
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let got = topo
        .client
        .run(|| burst(&sources, vip, Duration::from_secs(60)))?;
    assert_eq!(got.len(), 200);

    let maps = Maps::from_pins(&topo.pin_dir())?;
    let sid = service_id(&maps, &yaml, "shop");
    let (sent, _) = settled(|| client_nft.read("to_vip").unwrap());
    let read_map = || {
        let s = maps.version_stats(sid, VERSION_STABLE).unwrap();
        let c = maps.version_stats(sid, VERSION_CANARY).unwrap();
        (s.packets + c.packets, s.new_flows + c.new_flows)
    };
    let (counted, new_flows) = settled(read_map);
    let received: u64 = backend_nft.iter().map(|n| n.read("in").unwrap().0).sum();
    println!("client sent {sent} packets to the VIP, map counted {counted}, backends received {received}");
    assert!(
        sent >= 200 * 5,
        "at least SYN, ACK, data, ACK, FIN per connection: {sent}"
    );
    assert_eq!(counted, sent, "BPF map vs client nft counter");
    assert_eq!(received, sent, "backends' nft counters vs client's");
    assert_eq!(new_flows, 200, "one new flow per connection");
    Ok(())
}

/// 2,000 connections from 500 clients at 10 %: the canary share is
/// binomial, every client sticks to one version, the counters match.
#[test]
fn split_of_real_connections_is_binomial_and_sticky() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let yaml = config(10.0);
    let _d = topo.spawn_canaryd(Some(&yaml))?;
    let clients = 500u32;
    let per_client = 4;
    let sources: Vec<IpAddr> = (0..clients * per_client)
        .map(|i| client_v4(i % clients))
        .collect();
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let got = topo
        .client
        .run(|| burst(&sources, vip, Duration::from_secs(240)))?;

    let mut by_client: HashMap<IpAddr, HashSet<bool>> = HashMap::new();
    for (src, backend) in &got {
        by_client
            .entry(*src)
            .or_default()
            .insert(is_canary(backend));
    }
    assert!(
        by_client.values().all(|v| v.len() == 1),
        "a client changed version"
    );
    let canary_clients = by_client.values().filter(|v| v.contains(&true)).count() as f64;
    // With source-ip affinity the unit of the split is the client: the
    // canary clients are Binomial(500, 0.1), sd = sqrt(500 * 0.1 * 0.9) = 6.7;
    // 4 sd = 26.8 around 50 (a false failure has probability < 1e-4).
    let (n, p) = (clients as f64, 0.10);
    let sd = (n * p * (1.0 - p)).sqrt();
    println!(
        "canary clients: {canary_clients} of {clients} (expect {} ± {:.1})",
        n * p,
        4.0 * sd
    );
    assert!((canary_clients - n * p).abs() <= 4.0 * sd);

    let canary_conns = got.iter().filter(|(_, b)| is_canary(b)).count() as u64;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let sid = service_id(&maps, &yaml, "shop");
    let c = maps.version_stats(sid, VERSION_CANARY)?;
    let s = maps.version_stats(sid, VERSION_STABLE)?;
    assert_eq!(c.new_flows, canary_conns);
    assert_eq!(s.new_flows, got.len() as u64 - canary_conns);
    // Stable connections spread over both stable backends.
    let b1 = got.iter().filter(|(_, b)| b == "b1").count();
    let b2 = got.iter().filter(|(_, b)| b == "b2").count();
    assert!(b1 > 0 && b2 > 0, "b1 {b1} b2 {b2}");
    Ok(())
}

/// 50 long-lived connections keep exchanging data while the weight goes
/// 10 -> 50 -> 0 -> 100; none breaks, none moves backend. New connections
/// follow each weight.
#[test]
fn open_connections_survive_weight_changes() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let mut d = topo.spawn_canaryd(Some(&config(10.0)))?;
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let client = &topo.client;
    let mut conns = topo.open_v4(1000, 50, vip, Duration::from_secs(3))?;
    let started: Vec<String> = conns.iter().map(|c| c.backend.clone()).collect();
    for (step, weight) in [50.0, 0.0, 100.0].into_iter().enumerate() {
        d.reload(&config(weight)).unwrap().expect("reload");
        for (i, c) in conns.iter_mut().enumerate() {
            c.ping(&format!("step {step} conn {i}"))?;
        }
        // New clients follow the new weight at the extremes.
        let fresh: Vec<IpAddr> = (0..20)
            .map(|i| client_v4(2000 + 20 * step as u32 + i))
            .collect();
        let got = client.run(|| burst(&fresh, vip, Duration::from_secs(30)))?;
        if weight == 0.0 {
            assert!(
                got.iter().all(|(_, b)| !is_canary(b)),
                "weight 0 sent a new connection to canary"
            );
        }
        if weight == 100.0 {
            assert!(
                got.iter().all(|(_, b)| is_canary(b)),
                "weight 100 sent a new connection to stable"
            );
        }
    }
    // Each connection is still served by the backend that took it.
    for (c, first) in conns.iter_mut().zip(&started) {
        c.ping("last")?;
        assert_eq!(&c.backend, first);
    }
    Ok(())
}

/// Override prefixes beat the weight; IPv6 and UDP split the same way.
#[test]
fn overrides_ipv6_and_udp() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    topo.start_servers(53)?;
    let mut d = topo.spawn_canaryd(Some(&config(0.0)))?;
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let forced_canary: Vec<IpAddr> = (0..30).map(|i| client_v4(14 * 256 + i)).collect(); // 198.18.30.x
    let forced_stable: Vec<IpAddr> = (0..30).map(|i| client_v4(15 * 256 + i)).collect(); // 198.18.31.x
    let got = topo
        .client
        .run(|| burst(&forced_canary, vip, Duration::from_secs(30)))?;
    assert!(
        got.iter().all(|(_, b)| is_canary(b)),
        "override to canary at weight 0: {got:?}"
    );
    d.reload(&config(100.0)).unwrap().expect("reload");
    let got = topo
        .client
        .run(|| burst(&forced_stable, vip, Duration::from_secs(30)))?;
    assert!(
        got.iter().all(|(_, b)| !is_canary(b)),
        "override to stable at weight 100: {got:?}"
    );

    // IPv6 at 100 %: all canary; at 0 %: all stable.
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let v6: Vec<IpAddr> = (0..40).map(client_v6).collect();
    let got = topo
        .client
        .run(|| burst(&v6, vip6, Duration::from_secs(30)))?;
    assert!(got.iter().all(|(_, b)| is_canary(b)));
    d.reload(&config(0.0)).unwrap().expect("reload");
    let v6: Vec<IpAddr> = (100..140).map(client_v6).collect();
    let got = topo
        .client
        .run(|| burst(&v6, vip6, Duration::from_secs(30)))?;
    assert!(got.iter().all(|(_, b)| !is_canary(b)));

    // UDP through its VIP, both ways rewritten (the reply comes from the VIP).
    let dns = SocketAddr::new("198.18.100.2".parse()?, 53);
    let names = topo.client.run(|| {
        (0..20)
            .map(|i| {
                udp_request(
                    client_v4(3000 + i),
                    dns,
                    &format!("q{i}"),
                    Duration::from_secs(2),
                )
            })
            .collect::<Result<Vec<_>>>()
    })?;
    assert!(names.iter().all(|n| !is_canary(n)));
    Ok(())
}
