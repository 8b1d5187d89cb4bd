//! Veth checks at attach: what XDP forwarding through a veth needs from the
//! other end of the pair, checked (and, with `fix_veth_offloads: true`,
//! fixed) for every veth canaryd attaches to.
//!
//! XDP forwards a frame as it is. Two things then go wrong on veth that do
//! not on a real NIC:
//! - a veth sender with TX checksum offload on (the default) leaves the
//!   checksum partial, as a NIC would complete it; the frame it sends into
//!   our XDP program is forwarded that way, and the receiver drops it;
//! - a frame our program redirects out of a veth is delivered into the
//!   peer's receive queue only when the peer runs NAPI: GRO on, or an XDP
//!   program of its own. Otherwise the kernel drops it.
//!
//! So for each attached veth its peer must have TX checksum offload off and
//! GRO on (or an XDP program). The peer is found through rtnetlink
//! (`IFLA_LINK` and `IFLA_LINK_NETNSID`), its network namespace by asking
//! the kernel for the id each candidate namespace (`/run/netns/*`, then
//! `/proc/*/ns/net`) has from here (`RTM_GETNSID`), and its settings are
//! read (and set) with the ethtool ioctls from a thread that has entered
//! that namespace. Nothing here touches an interface the config does not
//! name, or the peer of one, and the peers only when asked to fix them.
//!
//! The checks run on a thread of their own (`VethChecks`): the daemon hands
//! it the interfaces to check, under its lock, and reads what the thread
//! published, never waiting for rtnetlink, a namespace search or `setns`.
//! Each check is bounded (`CHECK_BUDGET`, the search within it by
//! `SEARCH_BUDGET` and `SEARCH_MAX_ENTRIES`), and a peer namespace not
//! found is searched for again only after a wait that doubles (`Unfound`).
//! At start the daemon waits for the first checks, at most `START_WAIT`, so
//! `fix_veth_offloads` has acted before canaryd says it is ready.

use anyhow::{anyhow, bail, Context, Result};
use canary_control::api::InterfaceStatus;
use log::{info, warn};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the veths are looked at again after their first check.
pub const RECHECK_EVERY: Duration = Duration::from_secs(10);

/// All the time one interface's check may take: its rtnetlink asks, the
/// search for its peer's namespace and the ethtool ioctls in there.
pub const CHECK_BUDGET: Duration = Duration::from_secs(2);

/// The search for a peer's namespace (named ones, then those of
/// processes) opens at most this many entries...
const SEARCH_MAX_ENTRIES: usize = 32_768;
/// ...and takes at most this long (within `CHECK_BUDGET`).
const SEARCH_BUDGET: Duration = Duration::from_secs(1);

/// A peer namespace a search did not find is searched for again after
/// this long, then after twice as long each time, up to `UNFOUND_MAX`.
const UNFOUND_FIRST: Duration = Duration::from_secs(10);
const UNFOUND_MAX: Duration = Duration::from_secs(300);
/// A search due within this much of a re-check is done in that re-check
/// (they come every `RECHECK_EVERY`, on the daemon's one-second clock).
const DUE_SLACK: Duration = Duration::from_secs(1);

/// How long canaryd's start waits for the first checks (before it says
/// it is ready); the checks not done by then report later.
pub const START_WAIT: Duration = Duration::from_secs(5);

/// The peer's network namespace, as canaryd found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// canaryd's own: the peer is on this host's side.
    Own,
    /// A named one, `/run/netns/NAME` (`ip netns`).
    Named(String),
    /// A process's (a container without a name in `/run/netns`).
    Process { pid: u32, comm: String },
}

impl Namespace {
    fn path(&self) -> Option<PathBuf> {
        match self {
            Namespace::Own => None,
            Namespace::Named(n) => Some(PathBuf::from("/run/netns").join(n)),
            Namespace::Process { pid, .. } => Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
        }
    }

    /// Where, in words: "namespace client".
    pub fn describe(&self) -> String {
        match self {
            Namespace::Own => "canaryd's own namespace".to_string(),
            Namespace::Named(n) => format!("namespace {n}"),
            Namespace::Process { pid, comm } => {
                format!("the network namespace of pid {pid} ({comm})")
            }
        }
    }

    /// The shell command that runs `ethtool -K PEER SETTINGS` there.
    pub fn command(&self, peer: &str, settings: &str) -> String {
        let ethtool = format!("ethtool -K {} {settings}", quote(peer));
        match self {
            Namespace::Own => ethtool,
            Namespace::Named(n) => format!("ip netns exec {} {ethtool}", quote(n)),
            Namespace::Process { pid, .. } => {
                format!("nsenter --net=/proc/{pid}/ns/net {ethtool}")
            }
        }
    }
}

/// A word as a shell reads it: as is when it is plain, else single-quoted.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@%+=:,/".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What forwarding needs of a veth peer, as read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerState {
    /// TX checksum offload (`ethtool -k`: tx-checksumming).
    pub tx_checksum: bool,
    /// Generic receive offload.
    pub gro: bool,
    /// An XDP program is attached to the peer (then it runs NAPI anyway).
    pub xdp: bool,
}

/// What is wrong with a veth peer for XDP forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// TX checksum offload on: what it sends us is forwarded with a partial
    /// checksum and dropped by the receiver.
    TxChecksum,
    /// Neither GRO nor an XDP program: what we redirect into it is dropped.
    NoNapi,
}

impl Problem {
    /// The `ethtool -K` setting that fixes it.
    pub fn setting(self) -> &'static str {
        match self {
            Problem::TxChecksum => "tx off",
            Problem::NoNapi => "gro on",
        }
    }

    /// What the peer has: "TX checksum offload on".
    pub fn describe(self) -> &'static str {
        match self {
            Problem::TxChecksum => "TX checksum offload on",
            Problem::NoNapi => "GRO off and no XDP program",
        }
    }

    /// What the peer has once it is mended.
    pub fn mended(self) -> &'static str {
        match self {
            Problem::TxChecksum => "TX checksum offload off",
            Problem::NoNapi => "NAPI (GRO on or an XDP program)",
        }
    }
}

/// The problems of a peer in this state.
pub fn problems(s: PeerState) -> Vec<Problem> {
    let mut out = Vec::new();
    if s.tx_checksum {
        out.push(Problem::TxChecksum);
    }
    if !s.gro && !s.xdp {
        out.push(Problem::NoNapi);
    }
    out
}

/// The warning for one problem of `iface`'s peer.
pub fn warning(iface: &str, peer: &str, ns: &Namespace, p: Problem, fix_on: bool) -> String {
    let at = format!("{iface}: its veth peer {peer} in {}", ns.describe());
    let cmd = ns.command(peer, p.setting());
    let then = match p {
        Problem::TxChecksum => format!(
            "the frames it sends into canary's XDP program carry partial checksums, are \
             forwarded that way and dropped by the receiver (connections through {iface} \
             time out)"
        ),
        Problem::NoNapi => format!(
            "the frames canary redirects out of {iface} are dropped (a veth delivers \
             redirected frames only to a peer with NAPI: GRO on, or an XDP program)"
        ),
    };
    let what = format!("{at} has {}: {then}", p.describe());
    if fix_on {
        format!("{what}; fix_veth_offloads could not change it: run `{cmd}`")
    } else {
        format!("{what}. Fix: `{cmd}` (or set fix_veth_offloads: true)")
    }
}

/// What is said, once, when `iface`'s peer cannot be inspected.
pub fn unseen_warning(iface: &str, peer: Option<&str>, why: &str) -> String {
    let name = peer.unwrap_or("<its peer>");
    format!(
        "{iface} is a veth, but canaryd cannot inspect its peer ({why}); XDP forwarding \
         through it needs TX checksum offload off and GRO on at the peer: in the network \
         namespace that holds it, run `ethtool -K {} tx off gro on`",
        quote(name)
    )
}

/// The parts of an `RTM_NEWLINK` answer that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub index: u32,
    pub name: Option<String>,
    pub veth: bool,
    /// `IFLA_LINK`: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer's namespace's id, seen from here;
    /// absent when the peer is in this namespace.
    pub peer_nsid: Option<i32>,
    /// An XDP program is attached (any mode).
    pub xdp: bool,
}

impl LinkFacts {
    pub fn parse(m: &LinkMessage) -> LinkFacts {
        let mut f = LinkFacts {
            index: m.header.index,
            ..Default::default()
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => f.name = Some(n.clone()),
                LinkAttribute::Link(i) if *i != 0 => f.peer_index = Some(*i),
                LinkAttribute::LinkNetNsId(id) if *id >= 0 => f.peer_nsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    f.veth |= infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                LinkAttribute::Xdp(x) => {
                    f.xdp |= x.iter().any(|x| match x {
                        LinkXdp::Attached(a) => *a != XdpAttached::None,
                        LinkXdp::ProgId(id) => *id != 0,
                        _ => false,
                    })
                }
                _ => {}
            }
        }
        f
    }
}

/// A blocking rtnetlink socket in the namespace of the thread that opened
/// it, whose answers must come before `deadline` (the check's).
struct Rtnl {
    sock: Socket,
    seq: u32,
    deadline: Instant,
}

impl Rtnl {
    fn open(deadline: Instant) -> Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
        sock.bind_auto().context("binding the rtnetlink socket")?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            deadline,
        })
    }

    /// One request, its one answer (or the kernel's error), before the
    /// deadline.
    fn ask(&mut self, msg: RouteNetlinkMessage) -> Result<RouteNetlinkMessage> {
        use nix::sys::time::{TimeVal, TimeValLike};
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0).context("rtnetlink send")?;
        let mut answer = None;
        // The answer, then the ACK: a bounded number of reads, each waiting
        // at most until the deadline.
        for _ in 0..8 {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("rtnetlink: no answer within the check's {CHECK_BUDGET:?}");
            }
            // Never zero: a zero receive timeout waits for ever.
            let wait = TimeVal::microseconds(left.as_micros().clamp(1_000, 2_000_000) as i64);
            nix::sys::socket::setsockopt(
                &self.sock,
                nix::sys::socket::sockopt::ReceiveTimeout,
                &wait,
            )
            .context("rtnetlink receive timeout")?;
            let (data, _) = match self.sock.recv_from_full() {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e).context("rtnetlink receive"),
            };
            let mut at = 0;
            while at < data.len() {
                let m: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&data[at..])
                        .map_err(|e| anyhow!("rtnetlink answer: {e}"))?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::InnerMessage(inner) => answer = Some(inner),
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(e.to_io().into());
                        }
                        NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => {
                            return answer.context("rtnetlink: an ACK without an answer");
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                at += (len + 3) & !3;
            }
        }
        bail!("rtnetlink: no complete answer")
    }

    fn link(
        &mut self,
        index: u32,
        name: Option<&str>,
        target_nsid: Option<i32>,
    ) -> Result<LinkFacts> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(n) = name {
            m.attributes.push(LinkAttribute::IfName(n.to_string()));
        }
        if let Some(id) = target_nsid {
            m.attributes.push(LinkAttribute::IfNetnsId(id));
        }
        match self.ask(RouteNetlinkMessage::GetLink(m))? {
            RouteNetlinkMessage::NewLink(l) => Ok(LinkFacts::parse(&l)),
            other => bail!("rtnetlink: unexpected answer {other:?}"),
        }
    }

    /// The id the namespace behind `fd` has from this socket's namespace
    /// (None: none assigned, or `fd` is no namespace).
    fn nsid_of(&mut self, fd: RawFd) -> Option<i32> {
        let mut m = NsidMessage::default();
        m.attributes.push(NsidAttribute::Fd(fd as u32));
        match self.ask(RouteNetlinkMessage::GetNsId(m)).ok()? {
            RouteNetlinkMessage::NewNsId(m) => m.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                _ => None,
            }),
            _ => None,
        }
    }
}

/// What a search for a namespace found, and what it covered.
#[derive(Debug, Default)]
struct Search {
    found: Option<Namespace>,
    /// Entries opened: `/run/netns` names, then processes.
    opened: usize,
    /// Distinct namespaces among them, each asked for its id once.
    asked: usize,
    took: Duration,
    /// The bound that ended it early, if one did.
    cut: Option<String>,
}

impl Search {
    /// "12 namespaces in 340 entries, 3 ms".
    fn summary(&self) -> String {
        format!(
            "{} namespaces in {} entries, {} ms{}",
            self.asked,
            self.opened,
            self.took.as_millis(),
            match &self.cut {
                Some(c) => format!("; stopped at {c}"),
                None => String::new(),
            }
        )
    }
}

/// The namespace that has id `nsid` from here: named ones first
/// (`/run/netns`), then those of processes; each namespace is asked once.
/// Bounded: at most `SEARCH_MAX_ENTRIES` entries, and stops at `until`.
fn find_namespace(rtnl: &mut Rtnl, nsid: i32, until: Instant) -> Search {
    let began = Instant::now();
    let mut s = Search::default();
    let mut seen = HashSet::new();
    // Ok(true): the one; Ok(false): not it; Err: a bound is reached.
    let mut is_it = |path: &Path, s: &mut Search| -> Result<bool, String> {
        if s.opened >= SEARCH_MAX_ENTRIES {
            return Err(format!("its bound of {SEARCH_MAX_ENTRIES} entries"));
        }
        if Instant::now() >= until {
            return Err(format!("its time bound ({} ms)", SEARCH_BUDGET.as_millis()));
        }
        s.opened += 1;
        let Ok(f) = File::open(path) else {
            return Ok(false);
        };
        let Ok(st) = nix::sys::stat::fstat(f.as_raw_fd()) else {
            return Ok(false);
        };
        if !seen.insert((st.st_dev, st.st_ino)) {
            return Ok(false);
        }
        s.asked += 1;
        Ok(rtnl.nsid_of(f.as_raw_fd()) == Some(nsid))
    };
    'search: {
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .take(SEARCH_MAX_ENTRIES)
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        for n in names {
            match is_it(&PathBuf::from("/run/netns").join(&n), &mut s) {
                Ok(true) => {
                    s.found = Some(Namespace::Named(n));
                    break 'search;
                }
                Ok(false) => {}
                Err(cut) => {
                    s.cut = Some(cut);
                    break 'search;
                }
            }
        }
        let mut pids: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .take(SEARCH_MAX_ENTRIES)
            .collect();
        pids.sort_unstable();
        for pid in pids {
            match is_it(&PathBuf::from(format!("/proc/{pid}/ns/net")), &mut s) {
                Ok(true) => {
                    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .map(|c| c.trim().to_string())
                        .unwrap_or_else(|_| "?".into());
                    s.found = Some(Namespace::Process { pid, comm });
                    break 'search;
                }
                Ok(false) => {}
                Err(cut) => {
                    s.cut = Some(cut);
                    break 'search;
                }
            }
        }
    }
    s.took = began.elapsed();
    s
}

// The legacy ethtool commands (linux/ethtool.h), each with a struct
// ethtool_value. The kernel maps them onto the feature bits: TXCSUM is every
// checksum feature (what `ethtool -K DEV tx off` clears), GRO is NETIF_F_GRO.
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// One `SIOCETHTOOL` with an ethtool_value on `dev`; the value back.
fn ethtool(sock: RawFd, dev: &str, cmd: u32, data: u32) -> std::io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: an all-zero ifreq is valid; the name is copied in bounded and
    // NUL-terminated; ifru_data points at `value`, which outlives the call.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = dev.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    let rc = unsafe { libc::ioctl(sock, libc::SIOCETHTOOL, &mut ifr) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value.data)
}

/// What was found (and changed) on a peer, in its namespace.
#[derive(Debug, Clone)]
struct PeerReport {
    name: String,
    state: PeerState,
    /// Settings changed (fix), as "tx off (was on)".
    changed: Vec<&'static str>,
    /// Problems a fix could not mend, and why.
    failed: Vec<(Problem, String)>,
}

/// Reads (and with `fix`, repairs) peer `index` from the current thread's
/// namespace.
fn inspect_here(index: u32, fix: bool, deadline: Instant) -> Result<PeerReport> {
    let facts = Rtnl::open(deadline)?.link(index, None, None)?;
    let name = facts
        .name
        .with_context(|| format!("the peer (index {index}) has no name"))?;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("a socket for the ethtool ioctls")?;
    let fd = sock.as_fd().as_raw_fd();
    let read = |name: &str| -> Result<PeerState> {
        Ok(PeerState {
            tx_checksum: ethtool(fd, name, ETHTOOL_GTXCSUM, 0)
                .with_context(|| format!("reading {name}'s TX checksum offload"))?
                != 0,
            gro: ethtool(fd, name, ETHTOOL_GGRO, 0)
                .with_context(|| format!("reading {name}'s GRO setting"))?
                != 0,
            xdp: facts.xdp,
        })
    };
    let mut state = read(&name)?;
    let mut changed = Vec::new();
    let mut failed = Vec::new();
    if fix {
        for p in problems(state) {
            let (cmd, data, done) = match p {
                Problem::TxChecksum => (ETHTOOL_STXCSUM, 0, "TX checksum offload off (was on)"),
                Problem::NoNapi => (ETHTOOL_SGRO, 1, "GRO on (was off)"),
            };
            match ethtool(fd, &name, cmd, data) {
                Ok(_) => changed.push(done),
                Err(e) => failed.push((p, format!("{}: {e}", p.setting()))),
            }
        }
        if !changed.is_empty() {
            state = read(&name)?;
        }
    }
    Ok(PeerReport {
        name,
        state,
        changed,
        failed,
    })
}

/// Why `setns` into another network namespace failed: EPERM means canaryd
/// lacks `CAP_SYS_ADMIN` (README: Requirements), said as such.
fn setns_error(e: nix::errno::Errno) -> anyhow::Error {
    if e == nix::errno::Errno::EPERM {
        anyhow!(
            "canaryd lacks CAP_SYS_ADMIN, which entering another network namespace needs \
             (setns: EPERM); without it only peers in canaryd's own namespace are checked"
        )
    } else {
        anyhow!("entering it: {e}")
    }
}

/// `inspect_here` in namespace `ns`, from a thread that enters it (the
/// namespace of a thread is its own: canaryd's other threads stay put).
fn inspect_in(ns: &Namespace, index: u32, fix: bool, deadline: Instant) -> Result<PeerReport> {
    let Some(path) = ns.path() else {
        return inspect_here(index, fix, deadline);
    };
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(setns_error)?;
            inspect_here(index, fix, deadline)
        })
        .join()
        .map_err(|_| anyhow!("the thread inspecting the peer panicked"))?
    })
}

/// One attached interface as the last check found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub interface: String,
    pub peer: Peer,
    pub at: Instant,
}

/// A veth's peer, as far as canaryd could see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Seen {
        name: String,
        ns: Namespace,
        state: PeerState,
    },
    /// Not inspected: its name when known, and why not.
    Unseen { name: Option<String>, why: String },
}

impl Check {
    pub fn problems(&self) -> Vec<Problem> {
        match &self.peer {
            Peer::Seen { state, .. } => problems(*state),
            Peer::Unseen { .. } => Vec::new(),
        }
    }

    /// For `canaryctl status` and the metrics.
    pub fn status(&self) -> InterfaceStatus {
        let (peer, problems) = match &self.peer {
            Peer::Seen { name, ns, state } => (
                Some(format!("{name} in {}", ns.describe())),
                problems(*state)
                    .into_iter()
                    .map(|p| format!("{}; fix: `{}`", p.describe(), ns.command(name, p.setting())))
                    .collect(),
            ),
            Peer::Unseen { name, why } => (
                name.clone(),
                vec![format!(
                    "peer not inspected ({why}); run `ethtool -K {} tx off gro on` where it lives",
                    quote(name.as_deref().unwrap_or("<its peer>"))
                )],
            ),
        };
        InterfaceStatus {
            name: self.interface.clone(),
            peer,
            problems,
            checked_age_ms: self.at.elapsed().as_millis() as u64,
        }
    }
}

/// What one check of an interface came to.
#[derive(Debug, Clone)]
enum Verdict {
    /// A veth, and what the check of its peer found.
    Checked(Check),
    /// Not a veth: nothing to check, nothing listed.
    NotVeth,
    /// The interface itself could not be read (said once): the last
    /// finding stays.
    Unreadable,
}

/// The checking thread's work, behind a trait so that a test can put a
/// slow one in its place.
trait Inspector: Send {
    /// Checks `iface` (and with `fix`, repairs its peer), logging what it
    /// finds.
    fn check(&mut self, iface: &str, fix: bool) -> Verdict;
    /// Forgets interfaces no longer attached.
    fn retain(&mut self, attached: &[String]);
}

/// A peer namespace the last search did not find: when that search was,
/// what it covered, and how long until the next one.
#[derive(Debug, Clone)]
struct Unfound {
    at: Instant,
    wait: Duration,
    summary: String,
}

impl Unfound {
    /// After a search at `now` that did not find it; `prev`: the search
    /// before, which did not either (the wait doubles).
    fn after(prev: Option<&Unfound>, now: Instant, summary: String) -> Unfound {
        Unfound {
            at: now,
            wait: prev.map_or(UNFOUND_FIRST, |p| (p.wait * 2).min(UNFOUND_MAX)),
            summary,
        }
    }

    /// Whether a check at `now` searches again.
    fn due(&self, now: Instant) -> bool {
        now + DUE_SLACK >= self.at + self.wait
    }

    fn next_in(&self, now: Instant) -> Duration {
        (self.at + self.wait).saturating_duration_since(now)
    }
}

/// What a fix did.
#[derive(Debug, Clone, Default)]
struct PeerFix {
    changed: Vec<&'static str>,
    failed: Vec<(Problem, String)>,
}

/// The checking thread's memory: the last findings, what has been said,
/// the namespaces found and those not found.
#[derive(Debug, Default)]
struct Checker {
    /// The last finding per interface (what a re-check compares with).
    last: BTreeMap<String, Check>,
    /// Interfaces whose unseen peer has been reported (said once).
    said_unseen: HashSet<String>,
    /// Peer namespaces found so far, by their id from here.
    namespaces: BTreeMap<i32, Namespace>,
    /// Peer namespaces searched for and not found, by their id from here.
    unfound: BTreeMap<i32, Unfound>,
    /// The id of each interface's peer namespace at its last check.
    peer_nsid: BTreeMap<String, i32>,
}

impl Checker {
    /// The namespace with id `nsid` from here: the one found before for
    /// that id when it still has it, else a search, unless one found
    /// nothing a short while ago (`Unfound`). Err: why it is not known.
    fn namespace_of(
        &mut self,
        rtnl: &mut Rtnl,
        iface: &str,
        nsid: i32,
    ) -> std::result::Result<Namespace, String> {
        if let Some(ns) = self.namespaces.get(&nsid) {
            let still = ns
                .path()
                .and_then(|p| File::open(p).ok())
                .is_some_and(|f| rtnl.nsid_of(f.as_raw_fd()) == Some(nsid));
            if still {
                return Ok(ns.clone());
            }
            self.namespaces.remove(&nsid);
        }
        let why = |u: &Unfound| {
            format!(
                "searched {}; next search in {} s",
                u.summary,
                u.next_in(Instant::now()).as_secs()
            )
        };
        let now = Instant::now();
        if let Some(u) = self.unfound.get(&nsid).filter(|u| !u.due(now)) {
            return Err(why(u));
        }
        let s = find_namespace(rtnl, nsid, (now + SEARCH_BUDGET).min(rtnl.deadline));
        if let Some(ns) = s.found {
            self.unfound.remove(&nsid);
            self.namespaces.insert(nsid, ns.clone());
            return Ok(ns);
        }
        let u = Unfound::after(self.unfound.get(&nsid), now, s.summary());
        info!(
            "{iface}: the network namespace of its veth peer (id {nsid} from here) was not \
             found ({}); next search in {} s",
            u.summary,
            u.wait.as_secs()
        );
        let out = why(&u);
        self.unfound.insert(nsid, u);
        Err(out)
    }

    /// Checks `iface` (in canaryd's namespace) and, with `fix`, repairs
    /// its peer, all within `CHECK_BUDGET`. None: not a veth (nothing to
    /// check). Logs nothing but a search that found nothing.
    fn check_one(&mut self, iface: &str, fix: bool) -> Result<Option<(Check, PeerFix)>> {
        let deadline = Instant::now() + CHECK_BUDGET;
        let mut rtnl = Rtnl::open(deadline)?;
        let facts = rtnl
            .link(0, Some(iface), None)
            .with_context(|| format!("looking up {iface}"))?;
        if !facts.veth {
            self.peer_nsid.remove(iface);
            return Ok(None);
        }
        let unseen = |name: Option<String>, why: String| Check {
            interface: iface.to_string(),
            peer: Peer::Unseen { name, why },
            at: Instant::now(),
        };
        let Some(index) = facts.peer_index else {
            return Ok(Some((
                unseen(None, "the kernel names no peer for it".into()),
                PeerFix::default(),
            )));
        };
        // Its name, at least, through the kernel's cross-namespace link
        // query, for a peer that cannot be inspected.
        let name_of = |rtnl: &mut Rtnl| {
            let nsid = facts.peer_nsid?;
            rtnl.link(index, None, Some(nsid)).ok()?.name
        };
        let ns = match facts.peer_nsid {
            None => {
                self.peer_nsid.remove(iface);
                Namespace::Own
            }
            Some(nsid) => {
                self.peer_nsid.insert(iface.to_string(), nsid);
                match self.namespace_of(&mut rtnl, iface, nsid) {
                    Ok(ns) => ns,
                    Err(detail) => {
                        let why = format!(
                            "it is interface {index} of the namespace with id {nsid} here, \
                             which has no /run/netns name and no process canaryd can see \
                             ({detail})"
                        );
                        return Ok(Some((unseen(name_of(&mut rtnl), why), PeerFix::default())));
                    }
                }
            }
        };
        match inspect_in(&ns, index, fix, deadline) {
            Ok(r) => Ok(Some((
                Check {
                    interface: iface.to_string(),
                    peer: Peer::Seen {
                        name: r.name,
                        ns,
                        state: r.state,
                    },
                    at: Instant::now(),
                },
                PeerFix {
                    changed: r.changed,
                    failed: r.failed,
                },
            ))),
            Err(e) => Ok(Some((
                unseen(name_of(&mut rtnl), format!("in {}: {e:#}", ns.describe())),
                PeerFix::default(),
            ))),
        }
    }
}

impl Inspector for Checker {
    /// Checks `iface` (just attached, or asked again) and logs what it
    /// finds: what a fix changed, a warning per problem with its fix
    /// command, and (once per interface) a peer that cannot be seen.
    fn check(&mut self, iface: &str, fix: bool) -> Verdict {
        let (check, done) = match self.check_one(iface, fix) {
            Ok(Some(c)) => c,
            Ok(None) => {
                self.last.remove(iface);
                return Verdict::NotVeth;
            }
            Err(e) => {
                // The interface itself could not be read: the attach would
                // have failed first; say it, but only once.
                if self.said_unseen.insert(iface.to_string()) {
                    warn!("{iface}: checking its veth offloads: {e:#}");
                }
                return Verdict::Unreadable;
            }
        };
        let before = self.last.get(iface).map(Check::problems);
        match &check.peer {
            Peer::Seen { name, ns, .. } => {
                self.said_unseen.remove(iface);
                for c in &done.changed {
                    info!(
                        "fix_veth_offloads: {name} in {}, the veth peer of {iface}: {c}",
                        ns.describe()
                    );
                }
                // A problem already reported is not repeated by the
                // periodic re-check.
                let new = |p: &Problem| before.as_ref().is_none_or(|b| !b.contains(p));
                for (_, f) in done.failed.iter().filter(|(p, _)| new(p)) {
                    warn!(
                        "fix_veth_offloads: {name} in {}, the veth peer of {iface}: \
                         could not set {f}",
                        ns.describe()
                    );
                }
                let now = check.problems();
                for p in now.iter().filter(|p| new(p)) {
                    warn!("{}", warning(iface, name, ns, *p, fix));
                }
                if let Some(b) = &before {
                    for p in b.iter().filter(|p| !now.contains(p)) {
                        if done.changed.is_empty() {
                            info!(
                                "{iface}: its veth peer {name} in {} now has {} \
                                 (the earlier warning no longer applies)",
                                ns.describe(),
                                p.mended()
                            );
                        }
                    }
                }
            }
            Peer::Unseen { name, why } => {
                if self.said_unseen.insert(iface.to_string()) {
                    warn!("{}", unseen_warning(iface, name.as_deref(), why));
                }
            }
        }
        self.last.insert(iface.to_string(), check.clone());
        Verdict::Checked(check)
    }

    fn retain(&mut self, attached: &[String]) {
        let on = |i: &String| attached.contains(i);
        self.last.retain(|i, _| on(i));
        self.said_unseen.retain(on);
        self.peer_nsid.retain(|i, _| on(i));
        let used: HashSet<i32> = self.peer_nsid.values().copied().collect();
        self.namespaces.retain(|id, _| used.contains(id));
        self.unfound.retain(|id, _| used.contains(id));
    }
}

/// What the daemon and the checking thread share: the daemon's asks and
/// the thread's findings. Locked only to read or write these, never across
/// a check.
#[derive(Debug, Default)]
struct Board {
    /// The interfaces attached now (findings for others are dropped).
    attached: Vec<String>,
    /// `fix_veth_offloads`, as last asked.
    fix: bool,
    /// Interfaces to check, in the order asked (each once).
    asked: VecDeque<String>,
    /// The interface being checked now.
    busy: Option<String>,
    /// The findings, by interface: what `canaryctl status` and the metric
    /// show.
    checks: BTreeMap<String, Check>,
    /// Interfaces whose last check could not read them (an rtnetlink
    /// timeout, a socket not opened): not known to be veths or not, so
    /// asked again at every re-check, as the veths in `checks` are.
    unread: BTreeSet<String>,
    /// The daemon's side is gone: the thread ends.
    stop: bool,
}

impl Board {
    /// `iface` to be checked, unless it already waits for it.
    fn ask(&mut self, iface: &String) {
        if !self.asked.contains(iface) {
            self.asked.push_back(iface.clone());
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    board: Mutex<Board>,
    /// Something was asked, or a check is done.
    changed: Condvar,
}

impl Shared {
    fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The checking thread: takes the asked interfaces one at a time, checks
/// each with the board unlocked and publishes the finding. Ends when the
/// daemon's side is dropped.
fn work(shared: &Shared, mut inspector: Box<dyn Inspector>) {
    loop {
        let (iface, fix, attached) = {
            let mut b = shared.board();
            let iface = loop {
                if b.stop {
                    return;
                }
                if let Some(i) = b.asked.pop_front() {
                    break i;
                }
                b = shared.changed.wait(b).unwrap_or_else(|p| p.into_inner());
            };
            b.busy = Some(iface.clone());
            (iface, b.fix, b.attached.clone())
        };
        inspector.retain(&attached);
        let verdict = inspector.check(&iface, fix);
        let mut b = shared.board();
        b.busy = None;
        if b.attached.contains(&iface) {
            match verdict {
                Verdict::Checked(c) => {
                    b.unread.remove(&iface);
                    b.checks.insert(iface, c);
                }
                Verdict::NotVeth => {
                    b.unread.remove(&iface);
                    b.checks.remove(&iface);
                }
                Verdict::Unreadable => {
                    b.unread.insert(iface);
                }
            }
        }
        drop(b);
        shared.changed.notify_all();
    }
}

/// The checks of the attached veths, as the daemon sees them: it asks for
/// checks and reads their findings, each a moment's hold of the board; the
/// checks run on a thread of their own (started at the first ask).
pub struct VethChecks {
    shared: Arc<Shared>,
    /// What the thread checks with, until it starts.
    idle: Option<Box<dyn Inspector>>,
    /// When the last round was asked for.
    last_round: Option<Instant>,
}

impl Default for VethChecks {
    fn default() -> VethChecks {
        VethChecks::with(Box::new(Checker::default()))
    }
}

impl Drop for VethChecks {
    fn drop(&mut self) {
        self.shared.board().stop = true;
        self.shared.changed.notify_all();
    }
}

impl VethChecks {
    fn with(inspector: Box<dyn Inspector>) -> VethChecks {
        VethChecks {
            shared: Arc::default(),
            idle: Some(inspector),
            last_round: None,
        }
    }

    /// Asks for `ifaces` to be checked, with `fix_veth_offloads` = `fix`;
    /// `attached`: every interface attached now (the findings for others
    /// are dropped). Returns at once: the thread logs what it finds, and
    /// `status` shows it.
    pub fn ask(&mut self, ifaces: &[String], attached: &[String], fix: bool) {
        {
            let mut b = self.shared.board();
            let on = |i: &String| attached.contains(i);
            b.attached = attached.to_vec();
            b.fix = fix;
            b.checks.retain(|i, _| on(i));
            b.unread.retain(on);
            b.asked.retain(on);
            for i in ifaces.iter().filter(|i| on(i)) {
                b.ask(i);
            }
        }
        self.shared.changed.notify_all();
        self.last_round.get_or_insert_with(Instant::now);
        if ifaces.is_empty() {
            return;
        }
        if let Some(inspector) = self.idle.take() {
            let shared = self.shared.clone();
            let started = std::thread::Builder::new()
                .name("canary-veths".into())
                .spawn(move || work(&shared, inspector));
            if let Err(e) = started {
                warn!("the veth peers go unchecked: starting their thread: {e}");
            }
        }
    }

    /// Waits until everything asked has been checked, at most `within`:
    /// true when it has.
    pub fn wait(&self, within: Duration) -> bool {
        let end = Instant::now() + within;
        let mut b = self.shared.board();
        while !b.asked.is_empty() || b.busy.is_some() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            b = self
                .shared
                .changed
                .wait_timeout(b, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Every `RECHECK_EVERY`, asks for every checked veth to be looked at
    /// again (a problem fixed by hand leaves the status; a new one is
    /// warned about; with `fix`, repaired), and every interface whose last
    /// check could not read it. Returns at once.
    pub fn recheck(&mut self, fix: bool) {
        let now = Instant::now();
        let Some(last) = self.last_round else {
            self.last_round = Some(now);
            return;
        };
        if now.duration_since(last) < RECHECK_EVERY {
            return;
        }
        self.last_round = Some(now);
        {
            let mut b = self.shared.board();
            b.fix = fix;
            let again: Vec<String> = b.checks.keys().chain(&b.unread).cloned().collect();
            for i in &again {
                b.ask(i);
            }
        }
        self.shared.changed.notify_all();
    }

    /// The veths checked and what their last checks found.
    pub fn status(&self) -> Vec<InterfaceStatus> {
        self.shared
            .board()
            .checks
            .values()
            .map(Check::status)
            .collect()
    }
}

impl super::DataPlane {
    /// After an apply attached `fresh` (interfaces this canaryd had not
    /// attached before: all of them at start, new ones on a reload): asks
    /// for those to be checked. When `fix_veth_offloads` has just been
    /// turned on, every attached one is checked (and fixed). At start
    /// (`prev` None) it waits for the checks, at most `START_WAIT`, so the
    /// peers are fixed before canaryd says it is ready; later it does not
    /// wait (the daemon's lock is held): the findings go to the log and the
    /// status as they come.
    pub(super) fn check_veths(
        &mut self,
        fresh: &[String],
        config: &crate::config::Config,
        prev: Option<&crate::config::Config>,
    ) {
        let fix = config.fix_veth_offloads;
        let turned_on = fix && prev.is_some_and(|p| !p.fix_veth_offloads);
        let attached: Vec<String> = self.links.keys().cloned().collect();
        let ask: Vec<String> = attached
            .iter()
            .filter(|i| turned_on || fresh.contains(*i))
            .cloned()
            .collect();
        self.veths.ask(&ask, &attached, fix);
        if prev.is_none() && !ask.is_empty() && !self.veths.wait(START_WAIT) {
            warn!(
                "the veth peer checks are not done after {START_WAIT:?}: canaryd goes on, \
                 and what they find follows in the log and in `canaryctl status`"
            );
        }
    }

    /// Asks for the attached veths' peers to be looked at again (every
    /// `RECHECK_EVERY`; canaryd calls it every second, under its lock: it
    /// returns at once): a fixed problem leaves the status, a new one is
    /// warned about (and fixed, with `fix_veth_offloads`).
    pub fn recheck_veths(&mut self) {
        let fix = self.applied.as_ref().is_some_and(|c| c.fix_veth_offloads);
        self.veths.recheck(fix);
    }

    /// The attached veths and what the last check of their peers found.
    pub fn interface_status(&self) -> Vec<InterfaceStatus> {
        self.veths.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns_named() -> Namespace {
        Namespace::Named("client".into())
    }

    #[test]
    fn commands_name_the_namespace_and_the_setting() {
        assert_eq!(
            ns_named().command("eth0", "tx off gro on"),
            "ip netns exec client ethtool -K eth0 tx off gro on"
        );
        assert_eq!(
            Namespace::Own.command("veth1", "gro on"),
            "ethtool -K veth1 gro on"
        );
        assert_eq!(
            Namespace::Process {
                pid: 4242,
                comm: "nginx".into()
            }
            .command("eth0", "tx off"),
            "nsenter --net=/proc/4242/ns/net ethtool -K eth0 tx off"
        );
        // A name a shell would split is quoted.
        assert_eq!(
            Namespace::Named("my ns".into()).command("eth0", "tx off"),
            "ip netns exec 'my ns' ethtool -K eth0 tx off"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn problems_follow_the_settings() {
        let s = |tx_checksum, gro, xdp| PeerState {
            tx_checksum,
            gro,
            xdp,
        };
        // Veth defaults: TX checksum offload on, GRO off, no program.
        assert_eq!(
            problems(s(true, false, false)),
            vec![Problem::TxChecksum, Problem::NoNapi]
        );
        // What the test harness sets.
        assert!(problems(s(false, true, false)).is_empty());
        // An XDP program on the peer runs NAPI without GRO.
        assert!(problems(s(false, false, true)).is_empty());
        assert_eq!(problems(s(true, true, true)), vec![Problem::TxChecksum]);
        assert_eq!(problems(s(false, false, false)), vec![Problem::NoNapi]);
    }

    #[test]
    fn warnings_name_interface_peer_namespace_and_command() {
        let w = warning("lb-client", "eth0", &ns_named(), Problem::TxChecksum, false);
        assert!(
            w.starts_with("lb-client: its veth peer eth0 in namespace client"),
            "{w}"
        );
        assert!(w.contains("TX checksum offload on"), "{w}");
        assert!(
            w.contains("Fix: `ip netns exec client ethtool -K eth0 tx off`"),
            "{w}"
        );
        assert!(w.contains("fix_veth_offloads: true"), "{w}");
        let w = warning("lb-b1", "eth0", &ns_named(), Problem::NoNapi, true);
        assert!(w.contains("GRO off and no XDP program"), "{w}");
        assert!(
            w.contains("could not change it: run `ip netns exec client ethtool -K eth0 gro on`"),
            "{w}"
        );
        let u = unseen_warning("veth9", None, "no such namespace");
        assert!(u.contains("`ethtool -K '<its peer>' tx off gro on`"), "{u}");
        let u = unseen_warning("veth9", Some("eth0"), "x");
        assert!(u.contains("`ethtool -K eth0 tx off gro on`"), "{u}");
    }

    #[test]
    fn link_facts_from_an_rtnetlink_answer() {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.attributes = vec![
            LinkAttribute::IfName("lb-client".into()),
            LinkAttribute::Link(2),
            LinkAttribute::LinkNetNsId(3),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
            LinkAttribute::Xdp(vec![
                LinkXdp::Attached(XdpAttached::Driver),
                LinkXdp::ProgId(31),
            ]),
        ];
        // Through the wire format and back, as the kernel's answer comes.
        let mut msg = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(RouteNetlinkMessage::NewLink(m)),
        );
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        let back: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&buf).unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = back.payload else {
            panic!("not a link message");
        };
        assert_eq!(
            LinkFacts::parse(&l),
            LinkFacts {
                index: 7,
                name: Some("lb-client".into()),
                veth: true,
                peer_index: Some(2),
                peer_nsid: Some(3),
                xdp: true,
            }
        );
        // A plain device: no peer, no program, not a veth.
        let mut m = LinkMessage::default();
        m.attributes = vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Link(0),
            LinkAttribute::LinkNetNsId(-1),
            LinkAttribute::Xdp(vec![LinkXdp::Attached(XdpAttached::None)]),
        ];
        let f = LinkFacts::parse(&m);
        assert!(!f.veth && !f.xdp && f.peer_index.is_none() && f.peer_nsid.is_none());
    }

    #[test]
    fn status_lines_carry_the_fix() {
        let c = Check {
            interface: "lb-b1".into(),
            peer: Peer::Seen {
                name: "eth0".into(),
                ns: ns_named(),
                state: PeerState {
                    tx_checksum: true,
                    gro: false,
                    xdp: false,
                },
            },
            at: Instant::now(),
        };
        let s = c.status();
        assert_eq!(s.peer.as_deref(), Some("eth0 in namespace client"));
        assert_eq!(
            s.problems,
            vec![
                "TX checksum offload on; fix: `ip netns exec client ethtool -K eth0 tx off`"
                    .to_string(),
                "GRO off and no XDP program; fix: `ip netns exec client ethtool -K eth0 gro on`"
                    .to_string(),
            ]
        );
    }

    /// The searches for a peer namespace that is never found, with a
    /// re-check every 10 s for 15 minutes: after 10 s, then 20, 40, 80,
    /// 160 s, then every 5 minutes (7 searches, where searching at every
    /// re-check would be 91).
    #[test]
    fn an_unfound_namespace_is_searched_again_after_a_doubling_wait() {
        let t0 = Instant::now();
        let mut unfound: Option<Unfound> = None;
        let mut searches = Vec::new();
        for round in 0..=90u64 {
            // The re-checks drift a little, and a search starts a moment
            // after its round.
            let now = t0 + Duration::from_millis(round * 10_000 + round * 7);
            if unfound.as_ref().is_none_or(|u| u.due(now)) {
                let at = now + Duration::from_millis(3);
                searches.push(round * 10);
                unfound = Some(Unfound::after(unfound.as_ref(), at, String::new()));
            }
        }
        assert_eq!(searches, vec![0, 10, 30, 70, 150, 310, 610]);
        assert_eq!(unfound.unwrap().wait, UNFOUND_MAX);
    }

    /// A slow check (standing in for a long namespace search) and what
    /// the daemon does under its lock meanwhile: asking, re-checking and
    /// reading the status each return at once, not after the check.
    struct Slow {
        each: Duration,
        done: Arc<std::sync::atomic::AtomicU32>,
    }

    impl Inspector for Slow {
        fn check(&mut self, iface: &str, _fix: bool) -> Verdict {
            std::thread::sleep(self.each);
            self.done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Verdict::Checked(Check {
                interface: iface.to_string(),
                peer: Peer::Unseen {
                    name: None,
                    why: "slow".into(),
                },
                at: Instant::now(),
            })
        }
        fn retain(&mut self, _attached: &[String]) {}
    }

    #[test]
    fn the_daemon_side_never_waits_for_a_slow_check() {
        let done = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut v = VethChecks::with(Box::new(Slow {
            each: Duration::from_millis(600),
            done: done.clone(),
        }));
        let ifaces: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let t = Instant::now();
        v.ask(&ifaces, &ifaces, false);
        let asked = t.elapsed();
        // While the three checks (1.8 s) run: the daemon's calls, timed.
        let mut slowest = asked;
        let mut while_busy = 0;
        let end = Instant::now() + Duration::from_millis(1_500);
        while Instant::now() < end {
            let busy = v.shared.board().busy.is_some();
            let t = Instant::now();
            let _ = v.status();
            v.recheck(true);
            v.ask(&ifaces[..1], &ifaces, false);
            slowest = slowest.max(t.elapsed());
            if busy && done.load(std::sync::atomic::Ordering::SeqCst) < 3 {
                while_busy += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("slowest daemon-side call while checks ran: {slowest:?} ({while_busy} calls)");
        assert!(while_busy > 10, "the calls overlapped the checks");
        assert!(slowest < Duration::from_millis(200), "{slowest:?}");
        // Waiting is bounded, and the findings arrive.
        let t = Instant::now();
        assert!(!v.wait(Duration::from_millis(100)), "still checking");
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert!(v.wait(Duration::from_secs(5)), "the checks end");
        let names: Vec<String> = v.status().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ifaces);
        // A detached interface leaves the status at the next ask.
        v.ask(&[], &ifaces[1..], false);
        assert_eq!(v.status().len(), 2);
    }

    /// `veth0` cannot be read at its first check (an rtnetlink timeout),
    /// then is a veth; `eth0` is no veth. Records every check.
    struct Flaky {
        checked: Arc<Mutex<Vec<String>>>,
    }

    impl Inspector for Flaky {
        fn check(&mut self, iface: &str, _fix: bool) -> Verdict {
            let mut checked = self.checked.lock().unwrap();
            checked.push(iface.to_string());
            if iface == "eth0" {
                return Verdict::NotVeth;
            }
            if checked.iter().filter(|i| *i == iface).count() == 1 {
                return Verdict::Unreadable;
            }
            Verdict::Checked(Check {
                interface: iface.to_string(),
                peer: Peer::Unseen {
                    name: None,
                    why: "flaky".into(),
                },
                at: Instant::now(),
            })
        }
        fn retain(&mut self, _attached: &[String]) {}
    }

    #[test]
    fn an_interface_unreadable_at_its_first_check_is_checked_again() {
        let checked = Arc::new(Mutex::new(Vec::new()));
        let mut v = VethChecks::with(Box::new(Flaky {
            checked: checked.clone(),
        }));
        let ifaces: Vec<String> = ["veth0", "eth0"].map(String::from).to_vec();
        v.ask(&ifaces, &ifaces, false);
        assert!(v.wait(Duration::from_secs(5)), "the checks end");
        assert!(v.status().is_empty(), "{:?}", v.status());
        // The next rounds (due once RECHECK_EVERY has passed): the
        // unreadable one is asked again and found a veth; the one that is
        // no veth is not asked again.
        for round in 1..=2 {
            v.last_round = Instant::now().checked_sub(RECHECK_EVERY);
            v.recheck(false);
            assert!(v.wait(Duration::from_secs(5)), "round {round} ends");
            let names: Vec<String> = v.status().into_iter().map(|s| s.name).collect();
            assert_eq!(names, ["veth0"], "round {round}");
        }
        assert_eq!(
            *checked.lock().unwrap(),
            ["veth0", "eth0", "veth0", "veth0"]
        );
        // Detached: no longer asked.
        v.ask(&[], &[], false);
        v.last_round = Instant::now().checked_sub(RECHECK_EVERY);
        v.recheck(false);
        assert!(v.wait(Duration::from_secs(5)));
        assert_eq!(checked.lock().unwrap().len(), 4);
    }

    #[test]
    fn rtnetlink_asks_end_at_the_check_deadline() {
        let mut late = Rtnl::open(Instant::now()).expect("rtnetlink socket");
        let t = Instant::now();
        let e = late.link(1, None, None).unwrap_err();
        assert!(e.to_string().contains("no answer within"), "{e:#}");
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        // In time, the loopback device answers (index 1 in every namespace).
        let mut rtnl = Rtnl::open(Instant::now() + CHECK_BUDGET).unwrap();
        assert_eq!(
            rtnl.link(1, None, None).unwrap().name.as_deref(),
            Some("lo")
        );
    }

    #[test]
    fn a_namespace_search_is_bounded() {
        let mut rtnl = Rtnl::open(Instant::now() + CHECK_BUDGET).unwrap();
        // No time left: nothing is opened.
        let s = find_namespace(&mut rtnl, i32::MAX - 7, Instant::now());
        assert!(s.found.is_none() && s.opened == 0, "{s:?}");
        assert!(s.cut.as_deref().unwrap().contains("time bound"), "{s:?}");
        // An id nothing has: the whole host looked at, within its budget.
        let t = Instant::now();
        let s = find_namespace(&mut rtnl, i32::MAX - 7, t + SEARCH_BUDGET);
        assert!(s.found.is_none(), "{s:?}");
        assert!(t.elapsed() < SEARCH_BUDGET + Duration::from_millis(100));
        println!("a search that finds nothing: {}", s.summary());
    }

    /// `setns` without CAP_SYS_ADMIN: the peer is not inspectable, and the
    /// reason names the capability. (Capabilities are a thread's own: the
    /// test drops CAP_SYS_ADMIN on a thread of its own; without root it is
    /// not there in the first place.)
    #[test]
    fn entering_a_namespace_without_cap_sys_admin_names_the_capability() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const CAP_SYS_ADMIN: u32 = 21;
        let e = std::thread::spawn(|| {
            let mut hdr = Header {
                version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
                pid: 0,
            };
            let mut data = [Data::default(); 2];
            // SAFETY: a v3 header and two data structs, as capget/capset
            // take them; pid 0 is this thread.
            unsafe {
                assert_eq!(
                    libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()),
                    0
                );
                data[0].effective &= !(1 << CAP_SYS_ADMIN);
                assert_eq!(libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()), 0);
            }
            // Our own namespace by a process path: setns all the same.
            let ns = Namespace::Process {
                pid: std::process::id(),
                comm: "test".into(),
            };
            inspect_in(&ns, 1, false, Instant::now() + CHECK_BUDGET).unwrap_err()
        })
        .join()
        .unwrap();
        let e = format!("{e:#}");
        assert!(e.contains("lacks CAP_SYS_ADMIN"), "{e}");
        assert!(e.contains("EPERM"), "{e}");
        let other = format!("{:#}", setns_error(nix::errno::Errno::EINVAL));
        assert!(!other.contains("CAP_SYS_ADMIN"), "{other}");
    }
}
