//! Path MTU discovery and ICMP errors through the splitter, end to end in
//! network namespaces: the backends' links are narrower (MTU 1400) than the
//! clients' (1500), and the backends advertise the MSS of a 1500-byte path
//! (`advmss`), so only path MTU discovery can find the narrow hop.
//!
//! - A UDP datagram with DF, larger than the backend path's MTU: the client
//!   gets "fragmentation needed" (IPv6: "packet too big") from the VIP,
//!   quoting its own packet (seen on a raw ICMP socket), and its kernel
//!   takes it: the connected socket's path MTU drops to 1400, the next such
//!   datagram is refused locally (EMSGSIZE), a smaller one gets through.
//! - A TCP connection over that path completes a 1 MB transfer each way
//!   (the client's first full-size segments are answered "too big", its
//!   MSS drops, the connection goes on).
//! - With the client's link the narrow one instead, the backends' full-size
//!   replies are answered "too big" to the backend (quoting the reply as it
//!   sent it), and the transfer completes too.
//!
//! - Real errors are translated both ways: a backend's kernel answering a
//!   port nobody listens on reaches the client from the VIP (its connected
//!   socket gets ECONNREFUSED); a "too big" a router on the client's side
//!   sends to the VIP about a reply lowers the backend's path MTU toward
//!   that client, while the same error sent from the backends' side is
//!   dropped (see canary-ebpf/src/icmp.rs: where an error may come from).
//!
//! Before the data plane answered these itself, the LB's stack sent the
//! ICMP, quoting the packet rewritten toward the backend: the client could
//! not match it, the datagram test saw no ICMP from the VIP and the TCP
//! transfer stalled (a PMTU black hole).

use anyhow::{bail, ensure, Context, Result};
use canary_common::reason;
use canary_tests::{
    client_v4, client_v6, tcp_connect, LbConfig, Service, Topology, VIP_V4, VIP_V6,
};
use canary_userspace::dataplane::maps::Maps;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{BufRead, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const BACKEND_MTU: u16 = 1400;
const DNS_V4: &str = "198.18.100.2";
const DNS_V6: &str = "2001:db8:100::2";
/// A UDP service on a port no backend listens on.
const CLOSED_V4: &str = "198.18.100.4";
const CLOSED_V6: &str = "2001:db8:100::4";
const CLOSED_PORT: u16 = 54;

fn config() -> String {
    let v4 = ["198.18.1.2", "198.18.2.2"];
    let v6 = ["2001:db8:1::2", "2001:db8:2::2"];
    LbConfig::lab()
        .service(
            Service::tcp("shop", VIP_V4, 80)
                .weight(50.0)
                .stable(v4)
                .canary(["198.18.3.2"]),
        )
        .service(
            Service::tcp("shop6", VIP_V6, 80)
                .weight(50.0)
                .stable(v6)
                .canary(["2001:db8:3::2"]),
        )
        .service(
            Service::udp("dns", DNS_V4, 53)
                .weight(50.0)
                .stable(v4)
                .canary(["198.18.3.2"]),
        )
        .service(
            Service::udp("dns6", DNS_V6, 53)
                .weight(50.0)
                .stable(v6)
                .canary(["2001:db8:3::2"]),
        )
        .service(
            Service::udp("closed", CLOSED_V4, CLOSED_PORT)
                .weight(50.0)
                .stable(v4)
                .canary(["198.18.3.2"]),
        )
        .service(
            Service::udp("closed6", CLOSED_V6, CLOSED_PORT)
                .weight(50.0)
                .stable(v6)
                .canary(["2001:db8:3::2"]),
        )
        .yaml()
}

/// Which side of the LB is the narrow one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Narrow {
    /// The backends' links (1400): the clients' packets are too big.
    Backends,
    /// The client's link (1400): the backends' replies are too big.
    Client,
}

/// Three backends, servers on 80 (TCP) and 53 (UDP), canaryd running; the
/// `narrow` side's links have MTU 1400 and its hosts advertise the MSS of a
/// 1500-byte path (`advmss`), so the MSS does not hide the narrow hop.
fn narrow_topology(narrow: Narrow) -> Result<(Topology, canary_tests::Daemon)> {
    let mut topo = Topology::new(3)?;
    let mtu = BACKEND_MTU.to_string();
    let advmss = |ns: &canary_tests::Netns, gw4: &str, gw6: &str| -> Result<()> {
        ns.ip(&["route", "replace", "default", "via", gw4, "advmss", "1460"])?;
        ns.ip(&[
            "-6", "route", "replace", "default", "via", gw6, "advmss", "1440",
        ])?;
        Ok(())
    };
    if narrow == Narrow::Backends {
        for (i, b) in topo.backends.iter().enumerate() {
            let i = i + 1;
            topo.lb
                .ip(&["link", "set", &format!("lb-b{i}"), "mtu", &mtu])?;
            b.ns.ip(&["link", "set", "eth0", "mtu", &mtu])?;
            advmss(&b.ns, &format!("198.18.{i}.1"), &format!("2001:db8:{i}::1"))?;
        }
    } else {
        topo.lb.ip(&["link", "set", "lb-client", "mtu", &mtu])?;
        topo.client.ip(&["link", "set", "eth0", "mtu", &mtu])?;
        advmss(&topo.client, "198.18.0.1", "2001:db8::1")?;
    }
    topo.start_servers(80)?;
    topo.start_servers(53)?;
    let d = topo.spawn_canaryd(Some(&config()))?;
    Ok((topo, d))
}

fn setsockopt_int(s: &Socket, level: i32, name: i32, value: i32) -> Result<()> {
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn getsockopt_int(s: &Socket, level: i32, name: i32) -> Result<i32> {
    let mut value = 0i32;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            name,
            &mut value as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    };
    ensure!(
        rc == 0,
        "getsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
    Ok(value)
}

/// The socket's path MTU (`IP_MTU` / `IPV6_MTU` of a connected socket).
fn path_mtu(s: &Socket, v4: bool) -> Result<i32> {
    if v4 {
        getsockopt_int(s, libc::IPPROTO_IP, libc::IP_MTU)
    } else {
        getsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_MTU)
    }
}

/// One datagram received (or `None` at the socket's timeout).
fn recv(s: &Socket, buf: &mut [MaybeUninit<u8>]) -> Option<(usize, SockAddr)> {
    s.recv_from(buf).ok()
}

fn init(buf: &[MaybeUninit<u8>], n: usize) -> Vec<u8> {
    buf[..n]
        .iter()
        .map(|b| unsafe { b.assume_init() })
        .collect()
}

/// An ICMP "too big" the client received, as its raw socket saw it.
#[derive(Debug)]
struct TooBig {
    from: IpAddr,
    mtu: u32,
    quoted_src: IpAddr,
    quoted_dst: IpAddr,
}

/// Parses an ICMP (with its IPv4 header) or ICMPv6 message (the raw v6
/// socket gives the message alone; `from` is the sender) if it is a
/// fragmentation needed / packet too big.
fn too_big(msg: &[u8], from: IpAddr) -> Option<TooBig> {
    if from.is_ipv4() {
        let ihl = (*msg.first()? & 0x0f) as usize * 4;
        let icmp = msg.get(ihl..)?;
        if icmp.len() < 8 + 20 || icmp[0] != 3 || icmp[1] != 4 {
            return None;
        }
        let q = &icmp[8..];
        let a = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&q[o..o + 4]).unwrap());
        Some(TooBig {
            from,
            mtu: u16::from_be_bytes([icmp[6], icmp[7]]) as u32,
            quoted_src: a(12),
            quoted_dst: a(16),
        })
    } else {
        if msg.len() < 8 + 40 || msg[0] != 2 {
            return None;
        }
        let q = &msg[8..];
        let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&q[o..o + 16]).unwrap());
        Some(TooBig {
            from,
            mtu: u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]),
            quoted_src: a(8),
            quoted_dst: a(24),
        })
    }
}

/// What a UDP client with DF saw (inside the client namespace).
#[derive(Debug)]
struct UdpSeen {
    icmp: TooBig,
    mtu_after: i32,
    /// The errno of the same big datagram sent again (`None`: sent).
    big_again: Option<i32>,
    small_answered_by: String,
}

/// From `src` to `dst` on a connected UDP socket with DF
/// (`IP_PMTUDISC_DO`): a small request, a datagram of 1450 bytes, then the
/// ICMP it draws, the socket's path MTU, the same datagram again and one
/// that fits. Bounded: every wait is a few seconds at most.
fn udp_with_df(src: IpAddr, dst: SocketAddr) -> Result<UdpSeen> {
    let v4 = dst.is_ipv4();
    let domain = Domain::for_address(dst);
    let (raw_proto, level, opt, value) = if v4 {
        (
            Protocol::ICMPV4,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    } else {
        (
            Protocol::ICMPV6,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    };
    // Every ICMP the namespace receives (opened first: nothing is missed).
    let raw = Socket::new(domain, Type::RAW, Some(raw_proto))?;
    raw.set_read_timeout(Some(Duration::from_millis(200)))?;
    let udp = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    udp.bind(&SocketAddr::new(src, 0).into())?;
    setsockopt_int(&udp, level, opt, value)?;
    udp.connect(&dst.into())?;
    udp.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    // The path works for small datagrams.
    udp.send(b"hello")?;
    let (n, _) = recv(&udp, &mut buf).context("no answer to a small datagram")?;
    ensure!(
        init(&buf, n).ends_with(b" hello"),
        "a small datagram's answer"
    );
    ensure!(
        path_mtu(&udp, v4)? == 1500,
        "the path MTU before: the client's link"
    );

    // 1450 bytes of IP packet: fits the client's link, not the backend's.
    let payload_len = 1450 - 8 - if v4 { 20 } else { 40 };
    udp.send(&vec![b'x'; payload_len])
        .context("the first big datagram")?;
    let end = Instant::now() + Duration::from_secs(3);
    let icmp = loop {
        if Instant::now() > end {
            bail!("no fragmentation needed / packet too big reached the client");
        }
        let Some((n, from)) = recv(&raw, &mut buf) else {
            continue;
        };
        let from = from.as_socket().context("raw socket peer")?.ip();
        if let Some(t) = too_big(&init(&buf, n), from) {
            break t;
        }
    };
    // The kernel takes it: the connected socket's path MTU drops.
    let end = Instant::now() + Duration::from_secs(3);
    let mut mtu_after = path_mtu(&udp, v4)?;
    while mtu_after != BACKEND_MTU as i32 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        mtu_after = path_mtu(&udp, v4)?;
    }
    // The error the ICMP left on the socket (if any) is reported once.
    let _ = udp.take_error();
    let big_again = udp
        .send(&vec![b'x'; payload_len])
        .err()
        .and_then(|e| e.raw_os_error());
    let fits = vec![b'y'; payload_len - 100];
    udp.send(&fits)?;
    let (n, _) = recv(&udp, &mut buf).context("no answer to a datagram that fits")?;
    let answer = init(&buf, n);
    ensure!(
        answer.ends_with(&fits),
        "the answer echoes the datagram that fits"
    );
    let name = String::from_utf8_lossy(&answer[..answer.len() - fits.len()]);
    Ok(UdpSeen {
        icmp,
        mtu_after,
        big_again,
        small_answered_by: name.trim().to_string(),
    })
}

fn datapath(topo: &Topology) -> Result<[u64; reason::COUNT as usize]> {
    Maps::from_pins(&topo.pin_dir())?.datapath_stats()
}

#[test]
fn a_df_datagram_too_big_for_the_backend_path_gets_too_big_from_the_vip() -> Result<()> {
    let (topo, _d) = narrow_topology(Narrow::Backends)?;
    for (src, vip) in [(client_v4(7), DNS_V4), (client_v6(7), DNS_V6)] {
        let vip: IpAddr = vip.parse()?;
        let before = datapath(&topo)?[reason::TX_ICMP_TOO_BIG as usize];
        let seen = topo
            .client
            .run(|| udp_with_df(src, SocketAddr::new(vip, 53)))?;
        println!("{src} -> {vip}: {seen:?}");
        let t = &seen.icmp;
        assert_eq!(t.from, vip, "the ICMP comes from the VIP");
        assert_eq!(
            (t.quoted_src, t.quoted_dst),
            (src, vip),
            "it quotes the client's own packet"
        );
        assert_eq!(t.mtu, BACKEND_MTU as u32, "with the backend path's MTU");
        assert_eq!(
            seen.mtu_after, BACKEND_MTU as i32,
            "the client's kernel took it"
        );
        assert_eq!(
            seen.big_again,
            Some(libc::EMSGSIZE),
            "the same datagram again is refused locally"
        );
        assert!(!seen.small_answered_by.is_empty());
        let after = datapath(&topo)?[reason::TX_ICMP_TOO_BIG as usize];
        assert!(after > before, "counted as tx_icmp_too_big");
    }
    Ok(())
}

/// Sends `len` bytes as one line over a connection through the VIP and
/// reads the echo back; returns the client's MSS afterwards.
fn transfer(src: IpAddr, dst: SocketAddr, len: usize) -> Result<i32> {
    let mut conn = tcp_connect(src, dst, Duration::from_secs(10))?;
    let mut line = vec![b'z'; len];
    line.push(b'\n');
    conn.stream
        .get_mut()
        .write_all(&line)
        .with_context(|| format!("sending {len} bytes {src} -> {dst}"))?;
    let mut back = Vec::with_capacity(len + 1);
    conn.stream
        .read_until(b'\n', &mut back)
        .with_context(|| format!("reading the echo {dst} -> {src}"))?;
    ensure!(
        back == line,
        "echo of {} bytes, got {}",
        line.len(),
        back.len()
    );
    let sock = socket2::SockRef::from(conn.stream.get_ref());
    Ok(sock.mss()? as i32)
}

#[test]
fn tcp_over_a_narrower_backend_path_completes_its_transfer() -> Result<()> {
    let (topo, _d) = narrow_topology(Narrow::Backends)?;
    for (src, vip) in [
        (client_v4(8), IpAddr::V4(VIP_V4)),
        (client_v6(8), IpAddr::V6(VIP_V6)),
    ] {
        let before = datapath(&topo)?[reason::TX_ICMP_TOO_BIG as usize];
        let started = Instant::now();
        let mss = topo
            .client
            .run(|| transfer(src, SocketAddr::new(vip, 80), 1 << 20))?;
        let answered = datapath(&topo)?[reason::TX_ICMP_TOO_BIG as usize] - before;
        println!(
            "{src} -> {vip}: 1 MiB each way in {:?}, client MSS {mss}, {answered} too-big answers",
            started.elapsed()
        );
        let header = if vip.is_ipv4() { 40 } else { 60 };
        assert!(
            mss <= BACKEND_MTU as i32 - header,
            "the client's MSS ({mss}) fits the backend path"
        );
        assert!(
            answered >= 1,
            "the data plane answered the full-size segments"
        );
    }
    Ok(())
}

/// The other way: the client's link is the narrow one, so the backends'
/// full-size replies are too big for it. The data plane answers the
/// backend, quoting its reply as it sent it (before the reverse NAT), and
/// the backend's own path MTU discovery toward the client does the rest.
#[test]
fn tcp_over_a_narrower_client_path_completes_its_transfer() -> Result<()> {
    let (topo, _d) = narrow_topology(Narrow::Client)?;
    for (src, vip) in [
        (client_v4(9), IpAddr::V4(VIP_V4)),
        (client_v6(9), IpAddr::V6(VIP_V6)),
    ] {
        let before = datapath(&topo)?[reason::TX_ICMP_TOO_BIG as usize];
        let started = Instant::now();
        topo.client
            .run(|| transfer(src, SocketAddr::new(vip, 80), 1 << 20))?;
        let answered = datapath(&topo)?[reason::TX_ICMP_TOO_BIG as usize] - before;
        println!(
            "{src} -> {vip}: 1 MiB each way in {:?}, {answered} too-big answers to the backend",
            started.elapsed()
        );
        assert!(
            answered >= 1,
            "the data plane answered the full-size replies"
        );
    }
    Ok(())
}

/// An ICMP port unreachable (IPv6: destination unreachable, port) the
/// client received, as its raw socket saw it: (sender, quoted source,
/// quoted destination).
fn port_unreachable(msg: &[u8], from: IpAddr) -> Option<(IpAddr, IpAddr, IpAddr)> {
    if from.is_ipv4() {
        let ihl = (*msg.first()? & 0x0f) as usize * 4;
        let icmp = msg.get(ihl..)?;
        if icmp.len() < 8 + 20 || icmp[0] != 3 || icmp[1] != 3 {
            return None;
        }
        let a = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&icmp[8 + o..8 + o + 4]).unwrap());
        Some((from, a(12), a(16)))
    } else {
        if msg.len() < 8 + 40 || msg[0] != 1 || msg[1] != 4 {
            return None;
        }
        let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&msg[8 + o..8 + o + 16]).unwrap());
        Some((from, a(8), a(24)))
    }
}

/// From `src` on a connected UDP socket to `dst`, where no backend
/// listens: the errno the socket reports, and the port unreachable the
/// namespace received (bounded: a few seconds at most).
fn udp_to_closed(src: IpAddr, dst: SocketAddr) -> Result<(i32, (IpAddr, IpAddr, IpAddr))> {
    let domain = Domain::for_address(dst);
    let raw_proto = if dst.is_ipv4() {
        Protocol::ICMPV4
    } else {
        Protocol::ICMPV6
    };
    let raw = Socket::new(domain, Type::RAW, Some(raw_proto))?;
    raw.set_read_timeout(Some(Duration::from_millis(200)))?;
    let udp = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    udp.bind(&SocketAddr::new(src, 0).into())?;
    udp.connect(&dst.into())?;
    udp.set_read_timeout(Some(Duration::from_secs(3)))?;
    udp.send(b"anyone there?")?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    let errno = match udp.recv(&mut buf) {
        Ok(n) => bail!("an answer from a closed port: {n} bytes"),
        Err(e) => e.raw_os_error().unwrap_or(0),
    };
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        ensure!(
            Instant::now() < end,
            "no port unreachable reached the client"
        );
        let Some((n, from)) = recv(&raw, &mut buf) else {
            continue;
        };
        let from = from.as_socket().context("raw socket peer")?.ip();
        if let Some(seen) = port_unreachable(&init(&buf, n), from) {
            return Ok((errno, seen));
        }
    }
}

/// A UDP request from `src` to `dst`; returns the answering backend's name
/// and the client's port.
fn udp_flow(src: IpAddr, dst: SocketAddr) -> Result<(String, u16)> {
    let sock = std::net::UdpSocket::bind(SocketAddr::new(src, 0))?;
    sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    sock.send_to(b"hello", dst)?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).context("no answer")?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let name = text.split_once(' ').context("answer")?.0.to_string();
    Ok((name, sock.local_addr()?.port()))
}

/// An ICMP "fragmentation needed" (IPv6: "packet too big") with MTU 1400,
/// quoting `quote`, sent from `from` to `to` on a raw socket of the calling
/// thread's namespace (the kernel adds the IP header, and ICMPv6's
/// checksum).
fn send_too_big(from: IpAddr, to: IpAddr, quote: &[u8]) -> Result<()> {
    let v4 = to.is_ipv4();
    let (domain, proto) = if v4 {
        (Domain::IPV4, Protocol::ICMPV4)
    } else {
        (Domain::IPV6, Protocol::ICMPV6)
    };
    let mut msg = if v4 {
        vec![3, 4, 0, 0, 0, 0, 0x05, 0x78]
    } else {
        vec![2, 0, 0, 0, 0, 0, 0x05, 0x78]
    };
    msg.extend_from_slice(quote);
    if v4 {
        let c = !canary_tests::checksum::fold(canary_tests::checksum::rfc1071_sum(&msg, 0));
        msg[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let raw = Socket::new(domain, Type::RAW, Some(proto))?;
    raw.bind(&SocketAddr::new(from, 0).into())?;
    raw.send_to(&msg, &SocketAddr::new(to, 0).into())?;
    Ok(())
}

/// Does `ns`'s route to `dst` carry a path MTU of 1400 (an exception a
/// "too big" left)? Waits up to `wait` for it to appear.
fn pmtu_1400(ns: &canary_tests::Netns, dst: IpAddr, wait: Duration) -> Result<bool> {
    let end = Instant::now() + wait;
    loop {
        let out = ns.ip(&["route", "get", &dst.to_string()])?;
        if String::from_utf8_lossy(&out.stdout).contains("mtu 1400") {
            return Ok(true);
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn real_icmp_errors_are_translated_both_ways_and_only_from_their_side() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(53)?;
    let _d = topo.spawn_canaryd(Some(&config()))?;
    let stat = |r: u32| -> Result<u64> { Ok(datapath(&topo)?[r as usize]) };

    // A backend's kernel: port unreachable, to the client from the VIP.
    for (src, vip) in [(client_v4(20), CLOSED_V4), (client_v6(20), CLOSED_V6)] {
        let vip: IpAddr = vip.parse()?;
        let before = stat(reason::ICMP_TO_CLIENT)?;
        let (errno, (from, qsrc, qdst)) = topo
            .client
            .run(|| udp_to_closed(src, SocketAddr::new(vip, CLOSED_PORT)))?;
        println!("{src} -> {vip}:{CLOSED_PORT}: errno {errno}, ICMP from {from} quoting {qsrc} -> {qdst}");
        assert_eq!(errno, libc::ECONNREFUSED, "the client's socket took it");
        assert_eq!(from, vip, "from the VIP");
        assert_eq!((qsrc, qdst), (src, vip), "quoting the client's packet");
        assert!(stat(reason::ICMP_TO_CLIENT)? > before, "icmp_to_client");
    }

    // A "too big" about a reply: from the backends' side it is dropped,
    // from a router on the client's side it reaches the backend.
    for (src, vip, router) in [
        (client_v4(21), DNS_V4, "198.18.0.2"),
        (client_v6(21), DNS_V6, "2001:db8::2"),
    ] {
        let vip: IpAddr = vip.parse()?;
        let router: IpAddr = router.parse()?;
        let (name, port) = topo
            .client
            .run(|| udp_flow(src, SocketAddr::new(vip, 53)))?;
        let k = topo
            .backends
            .iter()
            .position(|b| b.name == name)
            .with_context(|| format!("answered by {name}"))?;
        let (backend, neighbour) = (&topo.backends[k], &topo.backends[(k + 1) % 3]);
        // The reply as it left the load balancer: VIP:53 -> client.
        let reply = canary_tests::packet::udp_full(0, vip, 53, src, port, b"b1 hello", 63);
        let quote = canary_tests::packet::ip_packet(&reply).to_vec();
        assert!(
            !pmtu_1400(&backend.ns, src, Duration::ZERO)?,
            "{name}: no exception to begin with"
        );

        let (dropped, translated) = (stat(reason::DROP_ICMP)?, stat(reason::ICMP_TO_BACKEND)?);
        let n_src = if vip.is_ipv4() {
            neighbour.v4
        } else {
            neighbour.v6
        };
        neighbour.ns.run(|| send_too_big(n_src, vip, &quote))?;
        assert!(
            !pmtu_1400(&backend.ns, src, Duration::from_millis(500))?,
            "{name}: a too-big from {} ({n_src}) must not reach it",
            neighbour.name
        );
        assert!(stat(reason::DROP_ICMP)? > dropped, "dropped (drop_icmp)");
        assert_eq!(stat(reason::ICMP_TO_BACKEND)?, translated, "not translated");

        topo.client.run(|| send_too_big(router, vip, &quote))?;
        assert!(
            pmtu_1400(&backend.ns, src, Duration::from_secs(3))?,
            "{name}: its path MTU toward {src} is 1400 after the client side's too-big"
        );
        assert!(
            stat(reason::ICMP_TO_BACKEND)? > translated,
            "icmp_to_backend"
        );
        println!("{src}: too big about {name}'s reply: dropped from {n_src}, taken from {router}");
    }
    Ok(())
}
