//! Backends that cannot be backends and interfaces that cannot carry the
//! service, refused wherever they enter (issue 13, findings 1 and 4):
//! `canaryctl backends add` and a reload refuse loopback, broadcast,
//! link-local, this host's own addresses and VIPs, naming the field and the
//! rule, and change no map; a reload to the loopback interface, to one that
//! is down or to one without an address is refused and the XDP program stays
//! on the old interface (connections through the VIP still work); a reload
//! that does move the data plane says what becomes of the old interface.

use anyhow::{Context, Result};
use canary_tests::snapshot::MapsSnapshot;
use canary_tests::{
    burst, client_v4, client_v6, daemon::Daemon, tcp_connect, LbConfig, Service, Topology, VIP_V4,
    VIP_V6,
};
use canary_userspace::dataplane::maps::Maps;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// shop (IPv4) and api (IPv6), with `shop_canary` and `api_canary` as
/// their canary pools; `front`/`backs` the interfaces.
fn config_on(front: &str, backs: &[&str], shop_canary: &[&str], api_canary: &[&str]) -> String {
    LbConfig::lab()
        .interfaces(front, backs)
        .service(
            Service::tcp("shop", VIP_V4, 80)
                .weight(50.0)
                .stable(["198.18.1.2", "198.18.2.2"])
                .canary(shop_canary.to_vec()),
        )
        .service(
            Service::tcp("api", VIP_V6, 80)
                .weight(50.0)
                .stable(["2001:db8:1::2", "2001:db8:2::2"])
                .canary(api_canary.to_vec()),
        )
        .yaml()
}

const BACKS: [&str; 3] = ["lb-b1", "lb-b2", "lb-b3"];

fn good() -> String {
    config_on("lb-client", &BACKS, &["198.18.3.2"], &["2001:db8:3::2"])
}

/// Everything a refused change must leave as it was (both services).
fn snapshot(m: &Maps) -> MapsSnapshot {
    MapsSnapshot::take(m, 2)
}

/// 20 connections through each VIP, from fresh sources: the data plane
/// still splits.
fn still_forwards(topo: &Topology, from: u32) -> Result<()> {
    let v4: Vec<IpAddr> = (from..from + 20).map(client_v4).collect();
    let v6: Vec<IpAddr> = (from..from + 20).map(client_v6).collect();
    let d = Duration::from_secs(30);
    let got4 = topo
        .client
        .run(|| burst(&v4, SocketAddr::new(VIP_V4.into(), 80), d))?;
    let got6 = topo
        .client
        .run(|| burst(&v6, SocketAddr::new(VIP_V6.into(), 80), d))?;
    anyhow::ensure!(got4.len() == 20 && got6.len() == 20);
    Ok(())
}

/// Is an XDP program attached to `ifname` in the LB namespace? (`ip link`,
/// a witness independent of canaryd.)
fn xdp_on(topo: &Topology, ifname: &str) -> Result<bool> {
    let out = topo.lb.ip(&["-j", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(!v[0]["xdp"].is_null())
}

/// A veth pair inside the LB namespace, `name` and `name`p; `up` sets both
/// ends up, `bare` keeps `name` without any address (no IPv6 link-local
/// either). Removed with the namespace.
fn extra_link(topo: &Topology, name: &str, up: bool, bare: bool) -> Result<()> {
    let peer = format!("{name}p");
    topo.lb
        .ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])?;
    if bare {
        topo.lb
            .ip(&["link", "set", "dev", name, "addrgenmode", "none"])?;
    }
    if up {
        topo.lb.ip(&["link", "set", &peer, "up"])?;
        topo.lb.ip(&["link", "set", name, "up"])?;
    }
    Ok(())
}

/// `backends add` and reloads with each kind of bad backend: refused,
/// naming the field and the rule, maps unchanged; connections go on.
#[test]
fn bad_backends_are_refused_by_backends_add_and_by_reload() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let mut d = topo.spawn_canaryd(Some(&good()))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let before = snapshot(&maps);
    still_forwards(&topo, 0)?;

    let loopback = "is a loopback address; a backend must be another host";
    let cases: [(&str, &str, &str, &str); 12] = [
        ("shop", "canary", "127.0.0.1", loopback),
        ("shop", "stable", "127.0.0.53", loopback),
        (
            "shop",
            "canary",
            "255.255.255.255",
            "is the broadcast address",
        ),
        ("shop", "canary", "169.254.1.1", "is a link-local address"),
        ("shop", "canary", "0.0.0.0", "is the unspecified address"),
        ("shop", "canary", "240.0.0.1", "is in 240.0.0.0/4, reserved"),
        // The LB's own addresses (lb-b1's, lb-client's).
        (
            "shop",
            "canary",
            "198.18.1.1",
            "is an address of this host (interface lb-b1); a backend must be another host",
        ),
        (
            "shop",
            "canary",
            "198.18.0.1",
            "is an address of this host (interface lb-client)",
        ),
        (
            "shop",
            "canary",
            "198.18.100.1",
            "is the VIP of service shop",
        ),
        ("api", "canary", "fe80::1", "is a link-local address"),
        ("api", "canary", "::1", loopback),
        (
            "api",
            "canary",
            "2001:db8:2::1",
            "is an address of this host (interface lb-b2)",
        ),
    ];
    let mut n = 0;
    for (service, pool, addr, rule) in cases {
        let index = if pool == "canary" { 1 } else { 2 };
        let sid = if service == "shop" { 0 } else { 1 };
        let want = format!("services[{sid}] ({service}).{pool}[{index}]: {addr} {rule}");

        // canaryctl backends add: refused with the message naming the
        // request (not a config field), one line.
        let out = topo.canaryctl(&["backends", "add", service, pool, addr], None)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "backends add {addr} succeeded");
        let said = format!("backends add {service} {pool}: {addr} {rule}");
        assert!(
            err.contains(&said),
            "backends add {addr}: {err:?} lacks {said:?}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert_eq!(
            snapshot(&maps),
            before,
            "backends add {addr} changed the maps"
        );

        // The same backend in a reloaded file.
        let (shop_stable_extra, shop_canary, api_canary) = match (service, pool) {
            ("shop", "canary") => (None, vec!["198.18.3.2", addr], vec!["2001:db8:3::2"]),
            ("shop", _) => (Some(addr), vec!["198.18.3.2"], vec!["2001:db8:3::2"]),
            _ => (None, vec!["198.18.3.2"], vec!["2001:db8:3::2", addr]),
        };
        let mut yaml = config_on("lb-client", &BACKS, &shop_canary, &api_canary);
        if let Some(extra) = shop_stable_extra {
            yaml = yaml.replace(
                "stable: [198.18.1.2, 198.18.2.2]",
                &format!("stable: [198.18.1.2, 198.18.2.2, {extra}]"),
            );
        }
        let reason = d.reload(&yaml)?.expect_err(addr);
        assert!(
            reason.contains(&want),
            "reload with {addr}: {reason:?} lacks {want:?}"
        );
        assert_eq!(
            snapshot(&maps),
            before,
            "reload with {addr} changed the maps"
        );
        println!("{addr}: refused: {reason}");
        n += 1;
    }
    assert_eq!(n, cases.len());
    // The data plane forwards as before, and a good file still applies.
    still_forwards(&topo, 100)?;
    d.reload(&good())?.expect("the good file reloads");
    Ok(())
}

/// Reloads to interfaces that cannot carry the service: refused with the
/// interface and the rule; the program stays on lb-client and connections
/// through the VIPs go on.
#[test]
fn reloads_to_interfaces_that_cannot_carry_the_service_are_refused() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    extra_link(&topo, "cnry-down", false, false)?;
    extra_link(&topo, "cnry-bare", true, true)?;
    let mut d = topo.spawn_canaryd(Some(&good()))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let before = snapshot(&maps);
    let link_pin = topo.pin_dir().join("links").join("lb-client");
    assert!(xdp_on(&topo, "lb-client")?);

    fn b(x: &'static str) -> Vec<&'static str> {
        BACKS.iter().copied().chain([x]).collect()
    }
    let backs_lo = b("lo");
    let backs_down = b("cnry-down");
    let cases: [(&str, &[&str], &str); 5] = [
        (
            "lo",
            &BACKS,
            "interface: lo is a loopback interface; no packet from another host arrives there",
        ),
        (
            "cnry-down",
            &BACKS,
            "interface: cnry-down is down (not IFF_UP)",
        ),
        (
            "cnry-bare",
            &BACKS,
            "interface: cnry-bare has no address, not even a link-local one",
        ),
        (
            "lb-client",
            &backs_lo,
            "backend_interfaces[3]: lo is a loopback interface",
        ),
        (
            "lb-client",
            &backs_down,
            "backend_interfaces[3]: cnry-down is down",
        ),
    ];
    for (i, (front, backs, want)) in cases.into_iter().enumerate() {
        let yaml = config_on(front, backs, &["198.18.3.2"], &["2001:db8:3::2"]);
        let reason = d.reload(&yaml)?.expect_err(front);
        assert!(
            reason.contains(want),
            "{front} {backs:?}: {reason:?} lacks {want:?}"
        );
        println!("{front} {backs:?}: refused: {reason}");
        assert_eq!(
            snapshot(&maps),
            before,
            "{front} {backs:?} changed the maps"
        );
        assert!(link_pin.exists(), "the link on lb-client is gone");
        assert!(xdp_on(&topo, "lb-client")?, "XDP left lb-client");
        for other in ["lo", "cnry-down", "cnry-bare"] {
            assert!(!xdp_on(&topo, other)?, "XDP on {other}");
        }
        still_forwards(&topo, 100 * i as u32)?;
    }
    Ok(())
}

/// At start: the loopback interface is refused (canaryd exits, saying
/// why); a backend interface that is down is a warning, and canaryd runs.
#[test]
fn at_start_loopback_is_refused_and_a_down_interface_is_a_warning() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    extra_link(&topo, "cnry-down", false, false)?;
    let lo = config_on("lo", &BACKS, &["198.18.3.2"], &["2001:db8:3::2"]);
    let (status, stderr) = Daemon::run_to_exit(&topo, &lo, Duration::from_secs(20))?;
    assert!(!status.success(), "canaryd started on lo:\n{stderr}");
    assert!(
        stderr.contains("interface: lo is a loopback interface"),
        "{stderr}"
    );
    assert!(!topo.pin_dir().join("links").join("lo").exists());

    let down = config_on(
        "lb-client",
        &["lb-b1", "lb-b2", "lb-b3", "cnry-down"],
        &["198.18.3.2"],
        &["2001:db8:3::2"],
    );
    let d = topo.spawn_canaryd(Some(&down))?;
    let log = d.log();
    assert!(
        log.lines().any(
            |l| l.contains("backend_interfaces[3]: cnry-down is down (not IFF_UP)")
                && l.contains("attached anyway at start")
        ),
        "{log}"
    );
    still_forwards(&topo, 0)?;
    // Once attached, the interface being down blocks no later change.
    topo.ctl(&["set-weight", "shop", "20"])?;
    Ok(())
}

/// A reload that does move the data plane to another (good) interface
/// says, before the old one is detached, what becomes of the traffic
/// arriving there; and it is true: new connections arriving on lb-client
/// are no longer split. Moving back restores the service.
#[test]
fn a_move_to_another_interface_says_what_happens() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    extra_link(&topo, "cnry-alt", true, false)?;
    topo.lb
        .ip(&["addr", "add", "198.18.200.1/24", "dev", "cnry-alt"])?;
    let d = topo.spawn_canaryd(Some(&good()))?;
    let path = d.config_path.clone().context("config path")?;
    std::fs::write(
        &path,
        config_on("cnry-alt", &BACKS, &["198.18.3.2"], &["2001:db8:3::2"]),
    )?;
    let out = topo.ctl(&["reload"])?;
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{out}"))
    };
    let attached = at("attached to cnry-alt");
    let moving = at("interfaces: moving the data plane from lb-client to cnry-alt");
    let what = at("interfaces: once lb-client is detached: new connections to the VIPs arriving there are no longer split");
    let detached = at("detached from lb-client");
    assert!(
        attached < moving && moving < what && what < detached,
        "{out}"
    );
    assert!(xdp_on(&topo, "cnry-alt")? && !xdp_on(&topo, "lb-client")?);
    // True: a new connection arriving on lb-client is not split any more
    // (the LB has no route to the VIP of its own).
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let c = topo
        .client
        .run(|| tcp_connect(client_v4(500), vip, Duration::from_secs(1)));
    assert!(c.is_err(), "a connection arriving on lb-client was split");
    // And back.
    std::fs::write(&path, good())?;
    let out = topo.ctl(&["reload"])?;
    assert!(
        out.contains("interfaces: moving the data plane from cnry-alt to lb-client"),
        "{out}"
    );
    still_forwards(&topo, 600)?;
    Ok(())
}

/// A backend's address that turns up on this host at run time (a floating
/// address, a mistake) blocks no later change: set-weight and a rollback
/// still apply. The file naming it is refused on reload, naming the file.
#[test]
fn a_backend_address_appearing_on_this_host_blocks_no_change() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let mut d = topo.spawn_canaryd(Some(&good()))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    topo.lb.ip(&["addr", "add", "198.18.3.2/32", "dev", "lo"])?;
    topo.ctl(&["set-weight", "shop", "20"])?;
    assert_eq!(maps.services.get(&0, 0)?.weight_bp, 2000);
    topo.ctl(&["rollback", "shop"])?;
    assert_eq!(maps.services.get(&0, 0)?.weight_bp, 0);
    let reason = d.reload(&good())?.expect_err("a backend on this host");
    let path = d.config_path.clone().unwrap();
    assert!(
        reason.contains(&format!(
            "config {}: services[0] (shop).canary[0]: 198.18.3.2 is an address of this host (interface lo)",
            path.display()
        )),
        "{reason}"
    );
    topo.lb.ip(&["addr", "del", "198.18.3.2/32", "dev", "lo"])?;
    d.reload(&good())?.expect("the address is gone");
    Ok(())
}
