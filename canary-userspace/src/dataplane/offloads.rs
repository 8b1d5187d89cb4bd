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
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// At most this many candidate namespaces are asked for their id (named
/// ones and processes together): a bound on a host with very many
/// processes.
const MAX_CANDIDATES: usize = 65_536;

/// How often the veths are looked at again after their first check.
pub const RECHECK_EVERY: Duration = Duration::from_secs(10);

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
    let what = match p {
        Problem::TxChecksum => format!(
            "{at} has TX checksum offload on: the frames it sends into canary's XDP program \
             carry partial checksums, are forwarded that way and dropped by the receiver \
             (connections through {iface} time out)"
        ),
        Problem::NoNapi => format!(
            "{at} has GRO off and no XDP program: the frames canary redirects out of {iface} \
             are dropped (a veth delivers redirected frames only to a peer with NAPI: GRO on, \
             or an XDP program)"
        ),
    };
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
/// it.
struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
        sock.bind_auto().context("binding the rtnetlink socket")?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let timeout = nix::sys::time::TimeVal::new(2, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .context("rtnetlink receive timeout")?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// One request, its one answer (or the kernel's error).
    fn ask(&mut self, msg: RouteNetlinkMessage) -> Result<RouteNetlinkMessage> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0).context("rtnetlink send")?;
        let mut answer = None;
        // The answer, then the ACK: a bounded number of reads (each bounded
        // by the receive timeout).
        for _ in 0..8 {
            let (data, _) = self.sock.recv_from_full().context("rtnetlink receive")?;
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

/// The namespace that has id `nsid` from here: named ones first
/// (`/run/netns`), then those of processes; each namespace is asked once.
fn find_namespace(rtnl: &mut Rtnl, nsid: i32) -> Option<Namespace> {
    let mut seen = HashSet::new();
    let mut asked = 0usize;
    let mut is_it = |path: &std::path::Path, asked: &mut usize| -> bool {
        if *asked >= MAX_CANDIDATES {
            return false;
        }
        let Ok(f) = File::open(path) else {
            return false;
        };
        let Ok(st) = nix::sys::stat::fstat(f.as_raw_fd()) else {
            return false;
        };
        if !seen.insert((st.st_dev, st.st_ino)) {
            return false;
        }
        *asked += 1;
        rtnl.nsid_of(f.as_raw_fd()) == Some(nsid)
    };
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    for n in names {
        if is_it(&PathBuf::from("/run/netns").join(&n), &mut asked) {
            return Some(Namespace::Named(n));
        }
    }
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        if is_it(&PathBuf::from(format!("/proc/{pid}/ns/net")), &mut asked) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            return Some(Namespace::Process { pid, comm });
        }
    }
    None
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
fn inspect_here(index: u32, fix: bool) -> Result<PeerReport> {
    let facts = Rtnl::open()?.link(index, None, None)?;
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

/// `inspect_here` in namespace `ns`, from a thread that enters it (the
/// namespace of a thread is its own: canaryd's other threads stay put).
fn inspect_in(ns: &Namespace, index: u32, fix: bool) -> Result<PeerReport> {
    let Some(path) = ns.path() else {
        return inspect_here(index, fix);
    };
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {}", ns.describe()))?;
            inspect_here(index, fix)
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
                    .map(|p| {
                        let what = match p {
                            Problem::TxChecksum => "TX checksum offload on",
                            Problem::NoNapi => "GRO off and no XDP program",
                        };
                        format!("{what}; fix: `{}`", ns.command(name, p.setting()))
                    })
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

/// The namespace with id `nsid` from here: the one found before for that
/// id when it still has it, else a fresh search (remembered).
fn namespace_of(
    rtnl: &mut Rtnl,
    nsid: i32,
    known: &mut BTreeMap<i32, Namespace>,
) -> Option<Namespace> {
    if let Some(ns) = known.get(&nsid) {
        let still = ns
            .path()
            .and_then(|p| File::open(p).ok())
            .is_some_and(|f| rtnl.nsid_of(f.as_raw_fd()) == Some(nsid));
        if still {
            return Some(ns.clone());
        }
        known.remove(&nsid);
    }
    let ns = find_namespace(rtnl, nsid)?;
    known.insert(nsid, ns.clone());
    Some(ns)
}

/// Checks `iface` (in canaryd's namespace) and, with `fix`, repairs its
/// peer. None: not a veth (nothing to check). Logs nothing.
fn check_one(
    iface: &str,
    fix: bool,
    known: &mut BTreeMap<i32, Namespace>,
) -> Result<Option<(Check, PeerFix)>> {
    let mut rtnl = Rtnl::open()?;
    let facts = rtnl
        .link(0, Some(iface), None)
        .with_context(|| format!("looking up {iface}"))?;
    if !facts.veth {
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
    let ns = match facts.peer_nsid {
        None => Namespace::Own,
        Some(nsid) => match namespace_of(&mut rtnl, nsid, known) {
            Some(ns) => ns,
            None => {
                // Its name, at least, through the kernel's cross-namespace
                // link query.
                let name = rtnl.link(index, None, Some(nsid)).ok().and_then(|f| f.name);
                let why = format!(
                    "it is interface {index} of the namespace with id {nsid} here, which has \
                     no /run/netns name and no process canaryd can see"
                );
                return Ok(Some((unseen(name, why), PeerFix::default())));
            }
        },
    };
    match inspect_in(&ns, index, fix) {
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
            unseen(None, format!("in {}: {e:#}", ns.describe())),
            PeerFix::default(),
        ))),
    }
}

/// What a fix did.
#[derive(Debug, Clone, Default)]
struct PeerFix {
    changed: Vec<&'static str>,
    failed: Vec<(Problem, String)>,
}

/// The checks of the attached veths, and what has been said about them.
#[derive(Debug, Default)]
pub struct VethChecks {
    checks: BTreeMap<String, Check>,
    /// Interfaces whose unseen peer has been reported (said once).
    said_unseen: HashSet<String>,
    /// Peer namespaces found so far, by their id from here.
    namespaces: BTreeMap<i32, Namespace>,
    last_round: Option<Instant>,
}

impl VethChecks {
    /// Checks `iface` (just attached, or asked again) and logs what it
    /// finds: a warning per problem with its fix command, and (once per
    /// interface) a peer that cannot be seen. Returns what a fix changed, one
    /// line each, for the caller to log (the apply report, or `recheck`).
    pub fn check(&mut self, iface: &str, fix: bool) -> Vec<String> {
        let mut report = Vec::new();
        let (check, done) = match check_one(iface, fix, &mut self.namespaces) {
            Ok(Some(c)) => c,
            Ok(None) => {
                self.checks.remove(iface);
                return report;
            }
            Err(e) => {
                // The interface itself could not be read: the attach would
                // have failed first; say it, but only once.
                if self.said_unseen.insert(iface.to_string()) {
                    warn!("{iface}: checking its veth offloads: {e:#}");
                }
                return report;
            }
        };
        let before = self.checks.get(iface).map(Check::problems);
        match &check.peer {
            Peer::Seen { name, ns, .. } => {
                self.said_unseen.remove(iface);
                for c in &done.changed {
                    report.push(format!(
                        "fix_veth_offloads: {name} in {}, the veth peer of {iface}: {c}",
                        ns.describe()
                    ));
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
                                match p {
                                    Problem::TxChecksum => "TX checksum offload off",
                                    Problem::NoNapi => "NAPI (GRO on or an XDP program)",
                                }
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
        self.checks.insert(iface.to_string(), check);
        report
    }

    /// Forgets interfaces no longer attached.
    pub fn retain(&mut self, attached: impl Fn(&str) -> bool) {
        self.checks.retain(|i, _| attached(i));
        self.said_unseen.retain(|i| attached(i));
    }

    /// Looks at every checked veth again every `RECHECK_EVERY` (a problem
    /// fixed by hand leaves the status; a new one is warned about; with
    /// `fix`, repaired).
    pub fn recheck(&mut self, fix: bool) {
        if self.last_round.is_some_and(|t| t.elapsed() < RECHECK_EVERY) {
            return;
        }
        self.last_round = Some(Instant::now());
        let names: Vec<String> = self.checks.keys().cloned().collect();
        for iface in names {
            for line in self.check(&iface, fix) {
                info!("{line}");
            }
        }
    }

    /// The veths checked and what their checks found.
    pub fn status(&self) -> Vec<InterfaceStatus> {
        self.checks.values().map(Check::status).collect()
    }
}

impl super::DataPlane {
    /// After an apply attached `fresh` (interfaces this canaryd had not
    /// attached before: all of them at start, new ones on a reload): checks
    /// those that are veths. When `fix_veth_offloads` has just been turned
    /// on, every attached one is checked (and fixed). What a fix changed
    /// goes into the apply report too.
    pub(super) fn check_veths(
        &mut self,
        fresh: &[String],
        config: &crate::config::Config,
        prev: Option<&crate::config::Config>,
        report: &mut super::ApplyReport,
    ) {
        let fix = config.fix_veth_offloads;
        let turned_on = fix && prev.is_some_and(|p| !p.fix_veth_offloads);
        let attached: Vec<String> = self.links.keys().cloned().collect();
        self.veths.retain(|i| attached.iter().any(|a| a == i));
        for iface in &attached {
            if turned_on || fresh.contains(iface) {
                report.lines.extend(self.veths.check(iface, fix));
            }
        }
    }

    /// Looks at the attached veths' peers again (every `RECHECK_EVERY`;
    /// canaryd calls it every second): a fixed problem leaves the status, a
    /// new one is warned about (and fixed, with `fix_veth_offloads`).
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
}
