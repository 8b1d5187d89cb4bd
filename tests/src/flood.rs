//! A spoofed-SYN flood from the client namespace: bare TCP SYNs (with an
//! MSS option, like a real client's) from many source addresses inside
//! `FLOOD_NET` (198.19.0.0/16, a part of the lab's 198.18.0.0/15 that no
//! namespace owns), written as whole Ethernet frames to the client's
//! `eth0` through an `AF_PACKET` socket with `sendmmsg`, so no route,
//! neighbour or socket state in the client is involved.
//!
//! Bounded by a packet count AND a time; optionally paced. The checksums
//! (IPv4 header, TCP over the pseudo-header) are computed for every frame
//! with `checksum::rfc1071_sum`, so each SYN is one a backend accepts.
//!
//! Where the flood's SYN-ACKs go: the backends answer the spoofed sources
//! through the LB (their default route), the LB's route for `FLOOD_NET`
//! (`Topology::route_flood_sources`) sends them to the client namespace,
//! and the client drops them there (a blackhole route; it does not
//! forward). No address outside 198.18.0.0/15 is ever used.

use crate::checksum::{fold, rfc1071_sum};
use crate::netns::Netns;
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The flood's source network: 198.19.0.0/16.
pub const FLOOD_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
pub const FLOOD_PREFIX_LEN: u8 = 16;
/// Most distinct sources `flood_source` hands out (198.19.0.1 ..= 198.19.255.254).
pub const MAX_FLOOD_SOURCES: u32 = 65_534;

/// The `i`-th flood source address (i < MAX_FLOOD_SOURCES).
pub fn flood_source(i: u32) -> Ipv4Addr {
    assert!(i < MAX_FLOOD_SOURCES);
    Ipv4Addr::from(u32::from(FLOOD_NET) + 1 + i)
}

/// What to send.
#[derive(Debug, Clone)]
pub struct FloodSpec {
    /// The interface to write frames to, in the namespace the flood runs in.
    pub ifname: String,
    pub src_mac: [u8; 6],
    /// The next hop's MAC (the LB's `lb-client`).
    pub dst_mac: [u8; 6],
    /// The attacked VIP and port.
    pub dst: SocketAddrV4,
    /// Distinct source addresses, cycled: flood_source(0 .. sources).
    pub sources: u32,
    /// Bounds: whichever comes first.
    pub max_packets: u64,
    pub max_time: Duration,
    /// Packets per second to aim at; 0: as fast as the socket takes them.
    pub pps: u64,
    /// One source address for every frame instead of `flood_source(..)`
    /// (a single client forging signals).
    pub source: Option<Ipv4Addr>,
    /// What each frame is.
    pub shape: Shape,
}

/// The frames a flood sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Shape {
    /// Bare SYNs a backend accepts.
    #[default]
    Syn,
    /// Bare SYNs with a wrong TCP checksum (a backend drops them).
    SynBadChecksum,
    /// Bare ACKs of no connection (a backend answers with a RST).
    BareAck,
}

/// What was sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodReport {
    /// Frames the kernel accepted (`sendmmsg` returned them as sent).
    pub sent: u64,
    /// Frames refused by the socket (ENOBUFS, EAGAIN: the device's queue
    /// was full), not resent.
    pub refused: u64,
    pub elapsed: Duration,
    /// Distinct source addresses among the frames sent.
    pub distinct_sources: u32,
}

impl FloodReport {
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

const FRAME_LEN: usize = 14 + 20 + 24;
const BATCH: usize = 64;

/// A cheap well-mixed 32-bit hash (for ports, sequence numbers).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
    x ^ (x >> 33)
}

/// The `n`-th SYN of a flood into `f` (FRAME_LEN bytes).
pub fn syn_frame(f: &mut [u8], spec: &FloodSpec, n: u64) {
    let src = spec
        .source
        .unwrap_or_else(|| flood_source((n % spec.sources as u64) as u32));
    let h = mix(n);
    let sport = 1024 + (h % 64_000) as u16;
    let seq = (h >> 20) as u32;
    let dst = *spec.dst.ip();
    f[0..6].copy_from_slice(&spec.dst_mac);
    f[6..12].copy_from_slice(&spec.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&(20u16 + 24).to_be_bytes());
    ip[4..6].copy_from_slice(&(n as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = !fold(rfc1071_sum(ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..58];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&spec.dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].fill(0);
    tcp[12] = 6 << 4; // 24-byte header
    tcp[13] = 0x02; // SYN
    if spec.shape == Shape::BareAck {
        tcp[8..12].copy_from_slice(&(seq ^ 0x5555_5555).to_be_bytes());
        tcp[13] = 0x10; // ACK
    }
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    tcp[16..18].fill(0);
    tcp[18..20].fill(0);
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
    let c = !fold(rfc1071_sum(tcp, rfc1071_sum(&pseudo, 0)));
    let c = if spec.shape == Shape::SynBadChecksum {
        c ^ 0x0101
    } else {
        c
    };
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface {name}: {}", std::io::Error::last_os_error());
    }
    Ok(i)
}

/// Sends the flood from the calling thread's network namespace until a
/// bound is hit or `stop` is set; `progress` follows the frames sent.
pub fn run(spec: &FloodSpec, stop: &AtomicBool, progress: &AtomicU64) -> Result<FloodReport> {
    anyhow::ensure!(
        spec.sources > 0 && spec.sources <= MAX_FLOOD_SOURCES,
        "sources {}",
        spec.sources
    );
    let ifindex = ifindex(&spec.ifname)?;
    // Protocol 0: the socket receives nothing (the flood's SYN-ACKs are
    // not our business), it only sends.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    struct Fd(i32);
    impl Drop for Fd {
        fn drop(&mut self) {
            unsafe { libc::close(self.0) };
        }
    }
    let fd = Fd(fd);
    // skb priority 1 (TC_PRIO_FILLER): the lowest band of pfifo_fast's
    // (and prio's) default map (`Topology::route_flood_sources` puts one on the client's
    // eth0), below ordinary traffic (priority 0).
    let prio: libc::c_int = 1;
    if unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_PRIORITY,
            &prio as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    } != 0
    {
        bail!("SO_PRIORITY: {}", std::io::Error::last_os_error());
    }
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&spec.dst_mac);

    let mut frames = vec![[0u8; FRAME_LEN]; BATCH];
    let mut iovs: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr() as *mut libc::c_void,
            iov_len: FRAME_LEN,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = &mut addr as *mut libc::sockaddr_ll as *mut libc::c_void;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            h.msg_hdr.msg_iov = iov as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();

    let start = Instant::now();
    let end = start + spec.max_time;
    let (mut sent, mut refused, mut n) = (0u64, 0u64, 0u64);
    while sent < spec.max_packets && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if spec.pps > 0 {
            // Ahead of schedule: wait (bounded by the end).
            let due = start + Duration::from_secs_f64(sent as f64 / spec.pps as f64);
            if due > now {
                std::thread::sleep((due - now).min(end - now));
                continue;
            }
        }
        let batch = (spec.max_packets - sent).min(BATCH as u64) as usize;
        for (i, f) in frames.iter_mut().take(batch).enumerate() {
            syn_frame(f, spec, n + i as u64);
        }
        let r = unsafe { libc::sendmmsg(fd.0, msgs.as_mut_ptr(), batch as u32, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    refused += 1;
                    n += 1;
                    std::thread::yield_now();
                    continue;
                }
                _ => return Err(e).context("sendmmsg"),
            }
        }
        let r = r as u64;
        sent += r;
        // A partial batch: the first unsent frame was refused.
        if r < batch as u64 {
            refused += 1;
            n += r + 1;
        } else {
            n += r;
        }
        progress.store(sent, Ordering::Relaxed);
    }
    // Frames numbered n' < n were sent except the refused ones; sources
    // cycle, so all of them were used once n passed `sources`.
    let distinct = if sent >= spec.sources as u64 + refused {
        spec.sources
    } else {
        sent.min(spec.sources as u64) as u32
    };
    Ok(FloodReport {
        sent,
        refused,
        elapsed: start.elapsed(),
        distinct_sources: distinct,
    })
}

/// A flood running on its own thread inside a namespace.
pub struct SynFlood {
    stop: Arc<AtomicBool>,
    /// Frames sent so far.
    pub progress: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<FloodReport>>>,
}

impl SynFlood {
    pub fn start(ns: &Netns, spec: FloodSpec) -> SynFlood {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let path = ns.path();
        let (s, p) = (stop.clone(), progress.clone());
        let handle = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).context("open netns")?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            run(&spec, &s, &p)
        });
        SynFlood {
            stop,
            progress,
            handle: Some(handle),
        }
    }

    /// Whether the flood has ended (a bound reached, or an error).
    pub fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Waits for the flood to reach a bound.
    pub fn wait(mut self) -> Result<FloodReport> {
        self.join()
    }

    /// Stops the flood now.
    pub fn stop(mut self) -> Result<FloodReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    fn join(&mut self) -> Result<FloodReport> {
        match self.handle.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| bail!("the flood thread panicked")),
            None => bail!("already joined"),
        }
    }
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_valid_syns_from_the_flood_net() {
        let spec = FloodSpec {
            ifname: "eth0".into(),
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst: SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 1), 80),
            sources: 50_000,
            max_packets: 1,
            max_time: Duration::from_secs(1),
            pps: 0,
            source: None,
            shape: Shape::Syn,
        };
        let mut f = [0u8; FRAME_LEN];
        for n in [0u64, 1, 49_999, 50_000, 1 << 40] {
            syn_frame(&mut f, &spec, n);
            crate::checksum::verify_checksums(&f).unwrap();
            crate::checksum::verify_with_etherparse(&f).unwrap();
            let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
            assert_eq!(u32::from(src) >> 16, u32::from(FLOOD_NET) >> 16, "{src}");
            assert_eq!(src, flood_source((n % 50_000) as u32));
            assert_eq!(f[47], 0x02, "bare SYN");
        }
    }

    #[test]
    fn forged_shapes_are_what_they_say() {
        let client = Ipv4Addr::new(198, 18, 16, 9);
        let mut spec = FloodSpec {
            ifname: "eth0".into(),
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst: SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 1), 80),
            sources: 1,
            max_packets: 1,
            max_time: Duration::from_secs(1),
            pps: 0,
            source: Some(client),
            shape: Shape::SynBadChecksum,
        };
        let mut f = [0u8; FRAME_LEN];
        syn_frame(&mut f, &spec, 3);
        assert_eq!(Ipv4Addr::new(f[26], f[27], f[28], f[29]), client);
        assert_eq!(f[47], 0x02, "a SYN");
        assert!(
            crate::checksum::verify_checksums(&f).is_err(),
            "bad TCP checksum"
        );
        spec.shape = Shape::BareAck;
        syn_frame(&mut f, &spec, 3);
        assert_eq!(f[47], 0x10, "a bare ACK");
        crate::checksum::verify_checksums(&f).unwrap();
    }
}
