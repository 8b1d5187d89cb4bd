//! Upgrade in place: canaryd of the previous map layout (layout 1, built
//! from git by `cargo xtask build-previous`) serves 50 open connections and
//! exits, leaving its data plane pinned and attached; this canaryd starts on
//! its pins, migrates the flow table and swaps its program in. The 50
//! connections (and 10 over IPv6) keep working in both directions, and so
//! do those a client opens while the upgrade runs.
//!
//! The test could fail: before the upgrade the old canaryd's weight goes
//! from 0 to 100, so a connection whose flow entry is not carried over is
//! decided again onto the canary backend, which knows nothing of it and
//! resets it.

use anyhow::{ensure, Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapInfo};
use canary_common::{addr, FlowKey, FlowState, PROTO_TCP};
use canary_tests::{
    client_v4, client_v6, ping_all, tcp_connect, Daemon, LbConfig, Service, Topology, VIP_V4,
    VIP_V6,
};
use canary_userspace::dataplane::migrate;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CONNS: u32 = 50;
/// IPv6 connections besides (the same path, the other address family).
const CONNS6: u32 = 10;

/// The previous layout's canaryd: CANARY_PREVIOUS_CANARYD (set by
/// `cargo xtask test`), else where `cargo xtask build-previous` puts it.
fn previous_canaryd() -> Result<PathBuf> {
    let path = match std::env::var_os("CANARY_PREVIOUS_CANARYD") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/previous-layout/target/debug/canaryd"),
    };
    ensure!(
        path.is_file(),
        "the previous layout's canaryd ({}) is missing: run `cargo xtask build-previous` \
         (or `cargo xtask test`, which does)",
        path.display()
    );
    Ok(path)
}

fn config(weight: f64) -> String {
    LbConfig::lab()
        .service(Service::tcp("shop", VIP_V4, 80).weight(weight).lab_pools())
        .service(Service::tcp("shop6", VIP_V6, 80).weight(weight).lab_pools())
        .yaml()
}

/// Removes what an unfinished upgrade leaves (`layout1/`) before the
/// topology removes the rest of the pins.
struct AsideCleanup(PathBuf);

impl Drop for AsideCleanup {
    fn drop(&mut self) {
        let _ = migrate::remove_aside(&self.0);
    }
}

fn value_size(pin: &Path) -> Result<u32> {
    Ok(MapInfo::from_pin(pin)
        .with_context(|| format!("reading {}", pin.display()))?
        .value_size())
}

#[test]
fn upgrade_from_the_previous_layout_keeps_open_connections() -> Result<()> {
    let old_bin = previous_canaryd()?;
    let mut topo = Topology::new(3)?;
    let pins = topo.pin_dir();
    let _aside = AsideCleanup(pins.clone());
    topo.start_servers(80)?;
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let timeout = Duration::from_secs(3);

    // The old canaryd at weight 0: every connection goes to a stable backend.
    let mut old = Daemon::spawn_bin(&topo, &old_bin, Some(&config(0.0)), &[])?;
    ensure!(
        pins.join("NEXTHOP_GEN").exists()
            && value_size(&pins.join("FLOWS"))? as usize
                == std::mem::size_of::<canary_common::layout_v1::FlowStateV1>(),
        "the previous canaryd did not pin layout 1's maps in {}",
        pins.display()
    );
    let mut conns = topo.open_v4(1000, CONNS, vip, timeout)?;
    for c in &conns {
        ensure!(
            STABLE_NAMES.contains(&c.backend.as_str()),
            "went to {}",
            c.backend
        );
    }
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let mut conns6 = topo.client.run(|| {
        (0..CONNS6)
            .map(|i| tcp_connect(client_v6(i), vip6, timeout))
            .collect::<Result<Vec<_>>>()
    })?;
    for c in conns.iter().chain(&conns6) {
        ensure!(
            STABLE_NAMES.contains(&c.backend.as_str()),
            "went to {}",
            c.backend
        );
    }
    let broken = ping_all(&mut conns, "before");
    ensure!(broken.is_empty(), "before the upgrade: {broken:?}");
    let broken = ping_all(&mut conns6, "before");
    ensure!(broken.is_empty(), "IPv6, before the upgrade: {broken:?}");

    // Weight 100: the open connections stay (their flow entries), a new
    // one goes to the canary backend: a decision made again would move them.
    old.reload(&config(100.0))?
        .map_err(|e| anyhow::anyhow!("the previous canaryd refused the reload: {e}"))?;
    let fresh = topo
        .client
        .run(|| tcp_connect(client_v4(1100), vip, timeout))?;
    ensure!(
        fresh.backend == "b3",
        "weight 100, new connection on {}",
        fresh.backend
    );
    drop(fresh);
    let broken = ping_all(&mut conns, "weight 100");
    ensure!(broken.is_empty(), "after the weight change: {broken:?}");

    // The old canaryd exits (--on-exit keep, its default): its data plane
    // stays pinned and attached and goes on forwarding.
    let status = old.stop();
    ensure!(
        status.is_some_and(|s| s.success()),
        "the previous canaryd exited with {status:?}"
    );
    ensure!(
        pins.join("links/lb-client").exists(),
        "the previous canaryd left no link"
    );
    let broken = ping_all(&mut conns, "no canaryd");
    ensure!(broken.is_empty(), "with no canaryd running: {broken:?}");

    // The upgrade: this canaryd with the same config, while a client keeps
    // opening connections (the old program forwards until the switch; what
    // it inserts meanwhile is copied after it).
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let (new, during) = std::thread::scope(|s| {
        let opener = s.spawn(|| {
            topo.client.run(|| {
                let mut open = Vec::new();
                let mut failed = Vec::new();
                let mut i = 0;
                while !done.load(Ordering::SeqCst) && i < 400 {
                    match tcp_connect(client_v4(1200 + i), vip, timeout) {
                        Ok(c) => open.push(c),
                        Err(e) => failed.push(format!("{e:#}")),
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                (open, failed)
            })
        });
        let new = Daemon::spawn(&topo, Some(&config(100.0)), &[]);
        std::thread::sleep(Duration::from_millis(200));
        done.store(true, Ordering::SeqCst);
        (new, opener.join().expect("opener thread"))
    });
    let new = new?;
    let took = started.elapsed();
    let (mut during, failed) = during;
    println!(
        "upgrade: {} connections opened during the upgrade, {} failed",
        during.len(),
        failed.len()
    );
    ensure!(
        failed.is_empty(),
        "connections opened during the upgrade failed: {failed:?}"
    );
    let broken = ping_all(&mut conns, "upgraded");
    let log = new.log();
    let line = log
        .lines()
        .find(|l| l.contains("upgrade from layout 1:") && l.contains("carried over"))
        .map(str::to_string);
    println!("upgrade: canaryd ready after {took:?}; {line:?}");
    ensure!(
        broken.is_empty(),
        "{} of {CONNS} connections broken by the upgrade: {broken:?}\n{log}",
        broken.len()
    );
    let broken = ping_all(&mut conns6, "upgraded");
    ensure!(broken.is_empty(), "IPv6, broken by the upgrade: {broken:?}");
    let line = line.with_context(|| format!("no migration line in the log:\n{log}"))?;
    // "N open flows carried over (B before the switch, A after), S skipped ..."
    let carried: u64 = line
        .split("upgrade from layout 1: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unparsable: {line}"))?;
    // The 50 and the 10, the one made at weight 100 (closed, but layout 1
    // kept it), and those opened during the upgrade before the switch.
    ensure!(carried > (CONNS + CONNS6) as u64, "{line}");
    ensure!(line.contains(" 0 skipped"), "{line}");
    ensure!(
        log.contains("upgrade from layout 1: old maps removed"),
        "{log}"
    );

    // The old pins are gone; the pinned maps are this layout's.
    ensure!(
        !migrate::aside_dir(&pins).exists(),
        "layout1/ is still there"
    );
    ensure!(
        !pins.join("NEXTHOP_GEN").exists(),
        "NEXTHOP_GEN is still pinned"
    );
    ensure!(
        value_size(&pins.join("FLOWS"))? as usize == std::mem::size_of::<FlowState>(),
        "FLOWS is not layout 2's"
    );

    // Each connection's entry in the new table names its stable backend.
    let flows: BpfHashMap<MapData, FlowKey, FlowState> =
        BpfHashMap::try_from(Map::from_map_data(MapData::from_pin(pins.join("FLOWS"))?)?)?;
    let backends: aya::maps::Array<MapData, canary_common::BackendInfo> =
        aya::maps::Array::try_from(Map::from_map_data(MapData::from_pin(
            pins.join("BACKENDS"),
        )?)?)?;
    for (i, c) in conns.iter().chain(&conns6).enumerate() {
        let local = c.stream.get_ref().local_addr()?;
        let vip: IpAddr = if local.is_ipv4() {
            VIP_V4.into()
        } else {
            VIP_V6.into()
        };
        let key = addr::flow_key(local.ip(), local.port(), vip, 80, PROTO_TCP);
        let state = flows
            .get(&key, 0)
            .with_context(|| format!("connection {i} ({local}) has no flow entry"))?;
        let b = backends.get(&state.backend_id, 0)?;
        let b_addr = addr::from_words(b.addr, b.family as u8);
        let n = c.backend[1..].parse::<usize>()?;
        let want: IpAddr = if local.is_ipv4() {
            format!("198.18.{n}.2").parse()?
        } else {
            format!("2001:db8:{n}::2").parse()?
        };
        ensure!(
            b_addr == want,
            "connection {i} on {} but its entry names {b_addr}",
            c.backend
        );
    }

    // Still working a little later, and a new connection follows weight 100.
    std::thread::sleep(Duration::from_millis(500));
    let broken = ping_all(&mut conns, "later");
    ensure!(broken.is_empty(), "after the upgrade: {broken:?}");
    let broken = ping_all(&mut conns6, "later");
    ensure!(broken.is_empty(), "IPv6, after the upgrade: {broken:?}");
    let broken = ping_all(&mut during, "opened during the upgrade");
    ensure!(
        broken.is_empty(),
        "opened during the upgrade, broken after: {broken:?}"
    );
    let mut fresh = topo
        .client
        .run(|| tcp_connect(client_v4(1101), vip, timeout))?;
    fresh.ping("new")?;
    ensure!(fresh.backend == "b3", "new connection on {}", fresh.backend);
    drop(new);

    // Going back is refused, and harms nothing: the previous canaryd does
    // not take this layout's pins over.
    // (An exit of its own: a code, not the signal of the 20 s deadline.)
    let (status, err) =
        Daemon::run_to_exit_bin(&topo, &old_bin, &config(100.0), Duration::from_secs(20))?;
    let status = status.code().is_some().then_some(status);
    ensure!(
        status.is_some_and(|s| !s.success()) && err.contains("remove the old data plane first"),
        "the previous canaryd on this layout's pins: {status:?}\n{err}"
    );
    let broken = ping_all(&mut conns, "after a refused downgrade");
    ensure!(broken.is_empty(), "after a refused downgrade: {broken:?}");
    Ok(())
}

const STABLE_NAMES: [&str; 2] = ["b1", "b2"];
