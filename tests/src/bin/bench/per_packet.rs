//! Per-packet cost through `BPF_PROG_TEST_RUN` in the lab namespace
//! (`canary_tests::xdp_lab`, with its own addressing: 2 x 1000 backends
//! behind lb-b1): the `xdp_pass` floor against each path of the program.

use crate::report::Report;
use crate::{median, Size};
use anyhow::{Context, Result};
use aya::programs::Xdp;
use canary_common::PROTO_TCP;
use canary_tests::packet::{flow_key, mac_nbr, mac_str, tcp, Tcp as Kind};
use canary_tests::prog_run::{action_name as action, test_run};
use canary_tests::xdp_lab::{build_lb_namespace, client_side_addressing};
use canary_tests::{LbConfig, Netns, Service};
use canary_userspace::dataplane::{self, DataPlane};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

const G_REP: &str = "per packet, BPF_PROG_TEST_RUN repeat=N (kernel mean), limit = xdp_pass";
const G_ONE: &str = "per packet, many repeat=1 runs (kernel mean), limit = xdp_pass";
pub const LAB_VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
const LAB_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x250, 0, 0, 0, 0, 1);
/// lb-client, lb-b1, lb-b2 of `xdp_lab::IFACES`.
const IFACES: usize = 3;

/// Backend I of a pool of the lab: 198.18.64.0/18 on lb-b1 (stable from
/// 198.18.64.2, canary from 198.18.96.2), all with permanent neighbours.
pub fn lab_backend(canary: bool, i: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(198, 18, if canary { 96 } else { 64 }, 2));
    Ipv4Addr::from(base + i as u32)
}

fn lab_config(backends: usize) -> LbConfig {
    let pool = |canary| (0..backends).map(move |i| lab_backend(canary, i));
    LbConfig::lab()
        .backend_interfaces(&["lb-b1", "lb-b2"])
        .service(
            Service::tcp("web", LAB_VIP4, 80)
                .affinity("flow")
                .weight(10.0)
                .stable(pool(false))
                .canary(pool(true))
                .force("198.18.24.0/24", "canary"),
        )
        .service(
            Service::tcp("web6", LAB_VIP6, 80)
                .affinity("flow")
                .weight(10.0)
                .stable(["2001:db8:2::2", "2001:db8:2::3"])
                .canary(["2001:db8:2::4"]),
        )
}

/// The lab's addressing: the standard client side; lb-b1 198.18.64.1/18
/// with the 2 x 1000 backends as permanent neighbours; lb-b2 IPv6 only,
/// with 2001:db8:2::2..4.
fn lab_addressing() -> String {
    let mut s = client_side_addressing();
    s += "addr add 198.18.64.1/18 dev lb-b1\n";
    let m1 = mac_str(mac_nbr(1));
    for canary in [false, true] {
        for i in 0..1000 {
            s += &format!(
                "neigh add {} lladdr {m1} dev lb-b1 nud permanent\n",
                lab_backend(canary, i)
            );
        }
    }
    s += "addr add 2001:db8:2::1/64 dev lb-b2 nodad\n";
    let m2 = mac_str(mac_nbr(2));
    for h in 2..=4 {
        s += &format!("neigh add 2001:db8:2::{h} lladdr {m2} dev lb-b2 nud permanent\n");
    }
    s
}

/// A distinct IPv4 new-flow source for every n (< 2^24).
pub fn fresh_v4(n: usize) -> (IpAddr, u16) {
    (
        IpAddr::V4(Ipv4Addr::new(198, 19, (n >> 8) as u8, n as u8)),
        1024 + (n >> 16) as u16,
    )
}

pub struct Lab<'a> {
    pub size: Size,
    pub ifindex: [u32; IFACES],
    _ns: &'a Netns,
}

impl Lab<'_> {
    /// Kernel mean ns per packet over `single` repeat=1 runs on fresh
    /// packets from `mk`; median over rounds. Also the last action.
    pub fn single(
        &self,
        prog: &Xdp,
        side: usize,
        mk: &mut dyn FnMut(usize) -> Vec<u8>,
        n: &mut usize,
    ) -> Result<(f64, u32)> {
        let mut rounds = Vec::new();
        let mut action = 0;
        for _ in 0..self.size.rounds {
            let pkts: Vec<Vec<u8>> = (0..self.size.single)
                .map(|_| {
                    *n += 1;
                    mk(*n)
                })
                .collect();
            let mut sum = 0.0;
            for p in &pkts {
                let r = test_run(prog, p, self.ifindex[side], 1)?;
                sum += r.duration_ns as f64;
                action = r.action;
            }
            rounds.push(sum / pkts.len() as f64);
        }
        Ok((median(rounds), action))
    }

    /// `single` over IPv4 new-flow SYNs to `vip`:80, a fresh source
    /// (`fresh_v4`) per packet, so every one misses FLOWS.
    pub fn new_flow_syns(&self, prog: &Xdp, vip: IpAddr) -> Result<(f64, u32)> {
        let mut n = 0usize;
        self.single(
            prog,
            0,
            &mut |n| {
                let (s, p) = fresh_v4(n);
                tcp(0, s, p, vip, 80, Kind::Syn)
            },
            &mut n,
        )
    }

    /// Like `new_flow_syns`, but each SYN's handshake is answered: the
    /// backend's SYN-ACK (untimed) follows every timed SYN, as on a live
    /// host, so the handshake table holds what is in flight rather than
    /// filling with SYNs no one answers (the row above: its worst case).
    pub fn answered_syns(
        &self,
        prog: &Xdp,
        vip: IpAddr,
        backend_side: usize,
    ) -> Result<(f64, u32)> {
        let mut rounds = Vec::new();
        let mut action = 0;
        let mut n = 1usize << 20; // sources unused by the other rows
        for _ in 0..self.size.rounds {
            let mut sum = 0.0;
            for _ in 0..self.size.single {
                n += 1;
                let (s, p) = fresh_v4(n);
                let r = test_run(prog, &tcp(0, s, p, vip, 80, Kind::Syn), self.ifindex[0], 1)?;
                sum += r.duration_ns as f64;
                action = r.action;
                let backend = canary_tests::packet::dst_addr(&r.out);
                let syn_ack = tcp(backend_side as u8, backend, 80, s, p, Kind::SynAck);
                test_run(prog, &syn_ack, self.ifindex[backend_side], 1)?;
            }
            rounds.push(sum / self.size.single as f64);
        }
        Ok((median(rounds), action))
    }

    fn repeated(&self, prog: &Xdp, pkt: &[u8]) -> Result<(f64, u32)> {
        let mut v = Vec::new();
        let mut action = 0;
        for _ in 0..self.size.rounds {
            let r = test_run(prog, pkt, self.ifindex[0], self.size.repeat)?;
            v.push(r.duration_ns as f64);
            action = r.action;
        }
        Ok((median(v), action))
    }

    fn load(&self, tag: &str, flows: u32, backends: usize) -> Result<(DataPlane, Duration)> {
        let instance = format!("cnry-{}-bench-{tag}", std::process::id());
        let mut dp = DataPlane::load(&instance, Some(flows))
            .with_context(|| format!("loading the data plane ({tag})"))?;
        let config = lab_config(backends).config();
        let t = Instant::now();
        let applied = dp.apply(&config);
        let took = t.elapsed();
        if let Err(e) = applied {
            let _ = dp.teardown();
            return Err(e.context("applying the lab config"));
        }
        // Flood mode off: these runs send SYNs far faster than the default
        // budget (50,000 a second), and every SYN row but the flood-mode
        // one measures the path with per-connection state.
        let mut settings = dp.maps().settings()?;
        settings.flood_new_flows_per_s = 0;
        dp.maps_mut().write_settings(settings)?;
        Ok((dp, took))
    }
}

/// Tears the data plane down (pins included) however `f` ends.
pub fn with_dp<R>(
    lab: &Lab,
    tag: &str,
    flows: u32,
    backends: usize,
    f: impl FnOnce(&mut DataPlane, Duration) -> Result<R>,
) -> Result<R> {
    let (mut dp, took) = lab.load(tag, flows, backends)?;
    let r = f(&mut dp, took);
    if let Err(e) = dp.teardown() {
        eprintln!("cleanup: teardown of {tag}: {e:#}");
    }
    let dir = canary_userspace::dataplane::maps::pin_dir(dp.instance());
    let _ = dataplane::remove_pins(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

pub fn micro(size: Size, report: &mut Report) -> Result<()> {
    let ns = Netns::create(&format!("cnry-{}-bench", std::process::id()))?;
    build_lb_namespace(&ns, IFACES, &lab_addressing())?;
    ns.run(|| -> Result<()> {
        let mut ifindex = [0u32; 3];
        for (i, name) in canary_tests::xdp_lab::IFACES[..IFACES].iter().enumerate() {
            ifindex[i] = dataplane::ifindex(name)?;
        }
        let lab = Lab {
            size,
            ifindex,
            _ns: &ns,
        };
        micro_paths(&lab, report)?;
        crate::scaling::micro_scaling(&lab, report)?;
        crate::scaling::micro_services(&lab, report)
    })
}

fn micro_paths(lab: &Lab, report: &mut Report) -> Result<()> {
    let size = lab.size;
    with_dp(lab, "paths", 1 << 21, 2, |dp, _| {
        // The xdp_pass program of the same object, as the floor.
        let instance = dp.instance().to_string();
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(canary_userspace::dataplane::maps::pin_dir(&instance))
            .load(dataplane::ebpf_object())?;
        let pass: &mut Xdp = ebpf
            .program_mut(dataplane::PASS_PROGRAM)
            .context("no xdp_pass")?
            .try_into()?;
        pass.load()?;
        let pass: &Xdp = ebpf.program(dataplane::PASS_PROGRAM).unwrap().try_into()?;
        let canary = dp.program()?;
        let vip = IpAddr::V4(LAB_VIP4);
        let client: IpAddr = "198.18.16.5".parse()?;
        let non_vip = tcp(0, client, 40000, "198.18.250.9".parse()?, 80, Kind::Syn);

        println!(
            "{G_REP} (repeat={}, median of {} rounds)",
            size.repeat, size.rounds
        );
        let (floor, _) = lab.repeated(pass, &non_vip)?;
        report.add(G_REP, "xdp_pass (floor)", floor, "ns/pkt", "");
        let (c, a) = lab.repeated(canary, &non_vip)?;
        report.add(G_REP, "canary, non-VIP packet", c, "ns/pkt", action(a));

        println!(
            "{G_ONE} ({} runs, median of {} rounds)",
            size.single, size.rounds
        );
        let mut n = 0usize;
        let (k, _) = lab.single(pass, 0, &mut |_| non_vip.clone(), &mut n)?;
        report.add(G_ONE, "xdp_pass (floor)", k, "ns/pkt", "");
        let (k, a) = lab.single(canary, 0, &mut |_| non_vip.clone(), &mut n)?;
        report.add(G_ONE, "canary, non-VIP packet", k, "ns/pkt", action(a));
        let (k, a) = lab.new_flow_syns(canary, vip)?;
        report.add(
            G_ONE,
            "canary, new-flow TCP SYN, none answered",
            k,
            "ns/pkt",
            format!("{}, distinct source per run, HANDSHAKES fills", action(a)),
        );
        let (k, a) = lab.answered_syns(canary, vip, 1)?;
        report.add(
            G_ONE,
            "canary, new-flow TCP SYN, handshakes answered",
            k,
            "ns/pkt",
            format!("{}, each followed by its SYN-ACK (untimed)", action(a)),
        );
        let a = test_run(
            canary,
            &tcp(0, client, 40000, vip, 80, Kind::Syn),
            lab.ifindex[0],
            1,
        )?
        .action;
        let ack = tcp(0, client, 40000, vip, 80, Kind::Ack);
        let (k, a2) = lab.single(canary, 0, &mut |_| ack.clone(), &mut n)?;
        report.add(
            G_ONE,
            "canary, established packet (FLOWS hit)",
            k,
            "ns/pkt",
            format!("{} (SYN: {})", action(a2), action(a)),
        );
        // The established connection's own backend answers (a reply from
        // another backend would not be this connection's).
        let entry = dp
            .maps()
            .flows
            .get(&flow_key(client, 40000, vip, 80, PROTO_TCP), 0)?;
        let info = dp.maps().backends.get(&entry.backend_id, 0)?;
        let backend = canary_common::addr::from_words(info.addr, info.family as u8);
        let reply = tcp(1, backend, 80, client, 40000, Kind::Ack);
        let (k, a) = lab.single(canary, 1, &mut |_| reply.clone(), &mut n)?;
        report.add(
            G_ONE,
            "canary, backend reply (reverse NAT)",
            k,
            "ns/pkt",
            action(a),
        );
        let mut n = 0usize;
        let (k, a) = lab.single(
            canary,
            0,
            &mut |n| {
                let s = IpAddr::V4(Ipv4Addr::new(198, 18, 24, n as u8));
                tcp(0, s, 1024 + (n >> 8) as u16, vip, 80, Kind::Syn)
            },
            &mut n,
        )?;
        report.add(
            G_ONE,
            "canary, override hit (new-flow SYN)",
            k,
            "ns/pkt",
            format!("{}, source in 198.18.24.0/24", action(a)),
        );
        // Flood mode: every SYN over a budget of 1 per second is decided
        // without state (no FLOWS or HANDSHAKES insert).
        // (Through the pins: `dp` is borrowed by the program handle.)
        let mut pinned = canary_userspace::dataplane::maps::Maps::from_pins(dp.pin_dir())?;
        let mut settings = pinned.settings()?;
        settings.flood_new_flows_per_s = 1;
        pinned.write_settings(settings)?;
        let (k, a) = lab.new_flow_syns(canary, vip)?;
        let stateless = dp.maps().datapath_stats()?[canary_common::reason::SYN_STATELESS as usize];
        report.add(
            G_ONE,
            "canary, new-flow SYN in flood mode (no state)",
            k,
            "ns/pkt",
            format!("{}, {stateless} SYNs stateless", action(a)),
        );
        settings.flood_new_flows_per_s = 0;
        pinned.write_settings(settings)?;
        let mut n = 0usize;
        let vip6 = IpAddr::V6(LAB_VIP6);
        let (k, a) = lab.single(
            canary,
            0,
            &mut |n| {
                let s = IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0x1000,
                    0,
                    0,
                    0,
                    (n >> 16) as u16,
                    n as u16,
                ));
                tcp(0, s, 40000, vip6, 80, Kind::Syn)
            },
            &mut n,
        )?;
        report.add(G_ONE, "canary, IPv6 new-flow SYN", k, "ns/pkt", action(a));
        drop(ebpf);
        Ok(())
    })
}
