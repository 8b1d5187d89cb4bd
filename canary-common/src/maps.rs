//! Map names, sizes and the key/value layouts shared by the XDP program and
//! user space. Every struct is `#[repr(C)]` with explicit padding so both
//! sides agree on every byte (the kernel compares hash keys bytewise).

/// Map names: the same strings in the ELF object, the pin directory and
/// user space.
pub mod names {
    pub const VIPS: &str = "VIPS";
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const FLOWS: &str = "FLOWS";
    pub const OVERRIDES: &str = "OVERRIDES";
    pub const REVERSE_NAT: &str = "REVERSE_NAT";
    pub const VERSION_STATS: &str = "VERSION_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const DATAPATH_STATS: &str = "DATAPATH_STATS";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const HANDSHAKES: &str = "HANDSHAKES";
    pub const HEALTH_STATS: &str = "HEALTH_STATS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const BACKEND_NEXTHOP: &str = "BACKEND_NEXTHOP";
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    pub const FLOOD: &str = "FLOOD";
    pub const SIGNALS: &str = "SIGNALS";
    pub const CLIENT_BUDGET: &str = "CLIENT_BUDGET";
    pub const JUDGE: &str = "JUDGE";
    pub const FAILURES: &str = "FAILURES";
    /// Layout 1's next-hop generation (replaced by `SETTINGS`): only
    /// named so an upgrade can find and drop it.
    pub const NEXTHOP_GEN_V1: &str = "NEXTHOP_GEN";
    /// Every map of this layout, for pinning and cleanup.
    pub const ALL: [&str; 21] = [
        VIPS,
        SERVICES,
        BACKENDS,
        MAGLEV,
        FLOWS,
        OVERRIDES,
        REVERSE_NAT,
        VERSION_STATS,
        BACKEND_STATS,
        DATAPATH_STATS,
        TX_PORTS,
        HANDSHAKES,
        HEALTH_STATS,
        SETTINGS,
        BACKEND_NEXTHOP,
        LOCAL_ADDRS,
        FLOOD,
        SIGNALS,
        CLIENT_BUDGET,
        JUDGE,
        FAILURES,
    ];
}

/// The map layout this data plane uses. Layout 1 (before the flow
/// lifecycle) had a 64-byte `FlowState`, `NEXTHOP_GEN` and 64 services /
/// 4,096 backends; canaryd migrates its pins (see `layout_v1`).
pub const LAYOUT_VERSION: u32 = 2;

/// Services (VIPs) one data plane serves, at most. The Maglev tables are
/// sized at load time for the services the config allows
/// (`limits.services`), so this ceiling costs nothing until it is used.
pub const MAX_SERVICES: u32 = 1024;
/// `limits.services` when the config does not say.
pub const DEFAULT_SERVICE_LIMIT: u32 = 256;
/// `VIPS` entries: per service its (addr, port, proto) key and its
/// address's marker (see [`VipKey::marker`]).
pub const MAX_VIP_ENTRIES: u32 = MAX_SERVICES * 2;
/// Backend ids across all services and pools (ids index `BACKENDS`). A
/// config may use half (16,384), so a reload can bring a whole new set
/// before the old ids are released.
pub const MAX_BACKENDS: u32 = 32_768;
/// Maglev lookup table size per (service, version, generation). Prime, and
/// large against the pool sizes we expect (the paper wants M >> N; with
/// M = 16381 a pool of 100 backends gets ~164 slots each).
pub const MAGLEV_TABLE_SIZE: u32 = 16381;
/// Two generations per pool: user space fills the idle one, then flips
/// `ServiceState::live_gen` in a single 4-byte write.
pub const MAGLEV_GENERATIONS: u32 = 2;
/// Flow table entries unless the config says otherwise.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 262_144;
/// Local addresses canaryd lists for the reply path (`LOCAL_ADDRS`).
pub const MAX_LOCAL_ADDRS: u32 = 1024;
/// Source-prefix override entries.
pub const MAX_OVERRIDES: u32 = 16_384;
/// Interfaces the program may redirect to.
pub const MAX_TX_PORTS: u32 = 64;
/// TCP handshakes in flight (SYN forwarded, no SYN-ACK yet). When full, a
/// new one is not timed (flood mode skips them altogether).
pub const MAX_HANDSHAKES: u32 = 65_536;
/// Buckets of the SYN -> SYN-ACK histogram: bucket `i` counts times in
/// `[2^i, 2^(i+1))` microseconds (bucket 0 also takes anything below 1 us).
pub const HISTOGRAM_BUCKETS: usize = 32;

/// Versions. Index 0 is stable, 1 is canary, everywhere.
pub const VERSION_STABLE: u32 = 0;
pub const VERSION_CANARY: u32 = 1;
pub const NUM_VERSIONS: u32 = 2;

/// `VipInfo::affinity`.
pub const AFFINITY_SOURCE_IP: u32 = 0;
pub const AFFINITY_FLOW: u32 = 1;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A `MAGLEV` slot with no backend (empty pool).
pub const BACKEND_NONE: u32 = u32::MAX;

/// `VIPS` key: the destination a client addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u32; 4],
    /// Network-order bytes read as a native u16.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// `VIPS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    pub service_id: u32,
    pub affinity: u32,
}

/// `SERVICES` value, indexed by service id. User space always writes the
/// whole struct; each field is an aligned 4-byte word, so the kernel never
/// sees a torn weight or generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// Canary share of new flows in basis points, 0..=10000.
    pub weight_bp: u32,
    /// Seed of the split and backend hashes (shared by a fleet).
    pub seed: u32,
    /// Live Maglev generation per version (0 or 1).
    pub live_gen: [u32; 2],
    /// Backends per version (0 means the pool is empty).
    pub pool_size: [u32; 2],
    /// Non-zero when the service is configured (an array slot always exists).
    pub active: u32,
    /// A bit set (the field's name is older than its bits): `SVC_PREFIXES`
    /// when the service has `OVERRIDES` entries (a new flow of a service
    /// without any skips the LPM lookup), `SVC_COHORTS_LIVE` when the
    /// cohort weights in those entries apply.
    pub has_overrides: u32,
}

/// `ServiceState::has_overrides`: look the client up in `OVERRIDES`.
pub const SVC_PREFIXES: u32 = 1;
/// `ServiceState::has_overrides`: cohort entries decide with their own
/// weight. Clear: they fall through to `weight_bp` (a rollback clears it in
/// the same one write that sets the weight to 0).
pub const SVC_COHORTS_LIVE: u32 = 2;

/// `BACKENDS` value, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendInfo {
    pub addr: [u32; 4],
    pub family: u32,
    pub service_id: u32,
    pub version: u32,
    pub _pad: u32,
}

/// `FLOWS` key and the key of every per-connection decision: the packet's
/// 5-tuple as the client sent it (destination = the VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// A next hop `bpf_fib_lookup` found (egress interface, MACs, the route's
/// MTU), cached so later packets skip the lookup (about 230 ns): toward a
/// backend per backend and CPU (`BACKEND_NEXTHOP`: the forward next hop
/// depends only on the backend), toward a client in its flow entry. Valid
/// while `gen` equals the program's current generation:
/// `Settings::nexthop_gen` (bumped by canaryd on every config change) plus
/// the time in units of 2^30 ns, so a route or neighbour change is seen
/// within about a second even with no canaryd running. `ifindex` 0: nothing
/// cached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub gen: u32,
    /// Largest IP packet (header included) the route takes; bigger ones go
    /// the slow way (the stack sends "fragmentation needed").
    pub mtu: u16,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub _pad: [u8; 2],
}

/// `FLOWS` value: where this connection went, fixed when it was decided,
/// where it is in its life (see `crate::flow`), and the cached next hop of
/// its replies. 36 bytes (layout 1's was 64): with the 40-byte key and the
/// kernel's element header an entry spans two cache lines, not three.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub backend_id: u32,
    /// `VERSION_STABLE` or `VERSION_CANARY`.
    pub version: u16,
    /// `flow::FLOW_*` bits.
    pub flags: u16,
    /// Seconds of CLOCK_MONOTONIC when a packet last passed (updated at
    /// most once a second, so an established packet rarely writes).
    pub last_seen: u32,
    /// Backend -> client (replies).
    pub to_client: NextHop,
}

/// `SETTINGS[0]`: what canaryd tells the data plane besides the tables.
/// Every field is an aligned 4-byte word, written whole by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Generation of cached next hops (see `NextHop`); bumped on changes.
    pub nexthop_gen: u32,
    /// New flows per second (host-wide) above which bare SYNs are decided
    /// without state (flood mode). 0: flood mode off.
    pub flood_new_flows_per_s: u32,
    /// Idle timeouts in seconds; 0 takes the default (see `flow`).
    pub timeouts: FlowTimeouts,
}

/// Idle timeouts of a flow entry by protocol and state, in seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// TCP after the backend answered.
    pub tcp_established: u32,
    /// TCP before the backend answered (a SYN, maybe spoofed).
    pub tcp_handshake: u32,
    /// TCP after FIN both ways or a RST.
    pub tcp_closing: u32,
    /// UDP before the backend answered.
    pub udp: u32,
    /// UDP after the backend answered.
    pub udp_replied: u32,
}

/// `FLOOD[0]`: the host-wide count of stateful new flows in the current
/// second (flood mode starts when it passes the threshold).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodWindow {
    /// CLOCK_MONOTONIC second this count is for.
    pub second: u64,
    /// Added to atomically by every CPU.
    pub new_flows: u64,
}

/// `LOCAL_ADDRS` key: an address of this host (a backend's packet to it
/// is this host's own connection, never reverse-NATed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalAddrKey {
    pub addr: [u32; 4],
    pub family: u32,
}

/// `OVERRIDES` LPM key data: the service id (big-endian, so it is matched
/// as the first 32 bits) followed by the client address in IPv6 form (IPv4 as
/// `::ffff:a.b.c.d`). Prefix length = 32 + 96 + v4 prefix, or 32 + v6 prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OverrideKeyData {
    pub service_be: [u8; 4],
    pub addr: [u8; 16],
}
/// Bits of the `OVERRIDES` key data before the address starts.
pub const OVERRIDE_SERVICE_BITS: u32 = 32;
/// IPv4-mapped IPv6 prefix length (`::ffff:0:0/96`).
pub const OVERRIDE_V4_MAPPED_BITS: u32 = 96;

/// `OVERRIDES` value. The word is packed (its size is pinned): bit 0 is a
/// plain override's forced version; with `OV_COHORT` set it is a cohort's
/// source instead, with the cohort's index and weight (`split::cohort_value`).
/// Bit 0 of a cohort entry is 0, so a program older than cohorts sends its
/// clients to stable.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverrideValue {
    pub version: u32,
}

/// `OverrideValue::version`: the entry is a cohort's source.
pub const OV_COHORT: u32 = 2;
/// Cohort index: bits 8..16.
pub const OV_COHORT_INDEX_SHIFT: u32 = 8;
pub const OV_COHORT_INDEX_MASK: u32 = 0xff;
/// Cohort weight in basis points: bits 16..30.
pub const OV_COHORT_WEIGHT_SHIFT: u32 = 16;
pub const OV_COHORT_WEIGHT_MASK: u32 = 0x3fff;
/// Cohorts of one service, at most.
pub const MAX_COHORTS: usize = 16;

/// `REVERSE_NAT` key: a backend as it appears in the source of a reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendAddrKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// `REVERSE_NAT` value: the VIP to put back as the reply's source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseNat {
    pub vip: [u32; 4],
    pub service_id: u32,
    pub backend_id: u32,
    pub version: u32,
    pub _pad: u32,
}

/// `VERSION_STATS` (per-CPU array, index `service_id * 2 + version`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionStats {
    /// Client -> VIP packets forwarded to this version.
    pub packets: u64,
    pub bytes: u64,
    /// Flow-table misses decided for this version.
    pub new_flows: u64,
    /// Backend -> client replies rewritten for this version.
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// `BACKEND_STATS` (per-CPU array, index backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
}

/// `HANDSHAKES` value (key: the connection's `FlowKey`): a SYN forwarded to
/// a backend that has not answered yet. The SYN-ACK removes it and records
/// the time taken; `canaryd` removes the ones older than its handshake
/// timeout and counts them as failed connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingHandshake {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the SYN was forwarded.
    pub syn_ns: u64,
    pub service_id: u32,
    pub version: u32,
}

/// `HEALTH_STATS` (per-CPU array, index `service_id * 2 + version`, like
/// `VERSION_STATS`): passive health signals seen on the backend side.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthStats {
    /// First SYN-ACK of a connection whose SYN we forwarded.
    pub syn_acks: u64,
    /// RSTs sent by the version's backends on connections we forwarded.
    pub rsts: u64,
    /// SYN -> SYN-ACK time, log2 buckets in microseconds.
    pub handshake_us_log2: [u64; HISTOGRAM_BUCKETS],
}

impl Default for HealthStats {
    fn default() -> Self {
        HealthStats {
            syn_acks: 0,
            rsts: 0,
            handshake_us_log2: [0; HISTOGRAM_BUCKETS],
        }
    }
}

/// `SIGNALS` (per-CPU array, index `version_stats_index`): the signals a
/// rollout is judged on, which a client cannot forge. A connection is
/// *judged* when its opening packet was checked (a bare SYN with a valid
/// TCP checksum; the first packet of a UDP flow) and its client address
/// was within its budget (`CLIENT_BUDGET`); only judged connections'
/// failures count. A map of its own: `HEALTH_STATS` keeps its pinned
/// layout across upgrades.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// Judged new connections: the analysis' attempts.
    pub judged: u64,
    /// Backend RSTs on judged connections (a refused SYN, or a reset of a
    /// connection the backend accepted), once per connection.
    pub resets: u64,
    /// ICMP port unreachable from a backend for a judged UDP flow, once
    /// per flow.
    pub unreachables: u64,
    /// New connections not judged: their client was over its budget.
    pub over_budget: u64,
}

/// `CLIENT_BUDGET` key (LRU hash): a client address, per service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub addr: [u32; 4],
    pub service_id: u32,
    pub family: u32,
}

impl ClientKey {
    /// A client as judging sees it, from a connection's source address (map
    /// layout): IPv4 the address (its words 1..3 are zero), IPv6 its /64,
    /// since one host usually holds a whole /64 and could otherwise take a
    /// fresh budget, or count as a fresh failing client, with every address.
    #[inline(always)]
    pub fn client_addr(src: &[u32; 4]) -> [u32; 4] {
        [src[0], src[1], 0, 0]
    }
}

/// `CLIENT_BUDGET` value: how many of a client's new connections were
/// judged in the current second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientBudget {
    pub second: u32,
    pub judged: u32,
}

impl ClientBudget {
    /// May one more connection of this client be judged in second `now_s`,
    /// with at most `per_second` judged a second (0: no limit)? Counts it
    /// if so. The same rule on both sides: the data plane applies it, the
    /// analysis' false-alarm tests simulate it.
    #[inline(always)]
    pub fn admit(&mut self, now_s: u32, per_second: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        if self.second != now_s {
            self.second = now_s;
            self.judged = 0;
        }
        if self.judged >= per_second {
            return false;
        }
        self.judged += 1;
        true
    }
}

/// `JUDGE` (array, one entry): what canaryd tells the data plane about
/// judging connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JudgeSettings {
    /// Judged new connections a second per client address and service
    /// (0: no limit).
    pub per_client_per_s: u32,
    pub _pad: u32,
}

/// A `FAILURES` record: one failure of a judged connection the data plane
/// saw (its backend's RST or ICMP port unreachable), so canaryd can count
/// the distinct clients behind a step's failures (a step fails only when
/// enough distinct clients did: one client cannot fail a canary alone).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureEvent {
    /// The client (IPv6: its /64, as `CLIENT_BUDGET` keys it).
    pub addr: [u32; 4],
    pub family: u32,
    pub service_id: u32,
    pub version: u32,
    /// `FAILURE_RESET` or `FAILURE_UNREACHABLE`.
    pub kind: u32,
}

pub const FAILURE_RESET: u32 = 0;
pub const FAILURE_UNREACHABLE: u32 = 1;

/// Bytes of the `FAILURES` ring buffer (a power of two): 8,192 records,
/// drained every 250 ms.
pub const FAILURES_BYTES: u32 = 256 * 1024;

/// Client addresses the judging budget tracks at once (LRU: the least
/// recently seen are forgotten, and start a fresh budget).
pub const MAX_BUDGET_CLIENTS: u32 = 65_536;

/// Default judged connections a second per client address and service.
pub const DEFAULT_JUDGED_PER_CLIENT_PER_S: u32 = 10;

/// The histogram bucket of a handshake that took `ns` nanoseconds:
/// `floor(log2(us))`, clamped to the last bucket (BPF has no count-leading-
/// zeros instruction; LLVM expands it into a fixed sequence of shifts).
#[inline(always)]
pub fn handshake_bucket(ns: u64) -> u32 {
    let us = ns / 1000;
    if us == 0 {
        return 0;
    }
    let log2 = 63 - us.leading_zeros();
    if log2 >= HISTOGRAM_BUCKETS as u32 {
        HISTOGRAM_BUCKETS as u32 - 1
    } else {
        log2
    }
}

/// `DATAPATH_STATS` (per-CPU array of u64, index = reason). What the program
/// did with packets it did not (or could not) split. Policy for each shape:
/// anything not addressed to a VIP is passed untouched; a packet addressed to
/// a VIP that cannot be split safely is dropped (the host's stack does not own
/// the VIP, so passing it would only bounce an ICMP error or leak it).
pub mod reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    pub const PASS_NOT_IP: u32 = 0;
    /// IP, but not a VIP and not a backend reply: passed.
    pub const PASS_NOT_VIP: u32 = 1;
    /// Headers too short or inconsistent to tell where it goes: passed, so
    /// the kernel's own validation drops or handles it.
    pub const PASS_MALFORMED: u32 = 2;
    /// Forwarded packet whose route needs the kernel (neighbour not
    /// resolved, VLAN, TTL expiring, no redirect port): rewritten, then passed.
    pub const PASS_TO_STACK: u32 = 3;
    /// Rewritten and redirected out of another interface.
    pub const FWD_REDIRECT: u32 = 4;
    /// To a VIP, but an IPv4 fragment: dropped (no ports to hash).
    pub const DROP_FRAGMENT: u32 = 5;
    /// To a VIP with IPv4 options: dropped.
    pub const DROP_IP_OPTIONS: u32 = 6;
    /// To a VIP behind an IPv6 extension header: dropped.
    pub const DROP_IPV6_EXT: u32 = 7;
    /// To a VIP, but the L4 header is truncated or lengths disagree: dropped.
    pub const DROP_MALFORMED: u32 = 8;
    /// To a VIP whose chosen pool has no backend: dropped.
    pub const DROP_NO_BACKEND: u32 = 9;
    /// Route lookup said blackhole/unreachable/prohibited: dropped.
    pub const DROP_UNROUTABLE: u32 = 10;
    /// Decisions made by a source-prefix override (also counted as forwarded).
    pub const OVERRIDE_HIT: u32 = 11;
    /// Flow-table hits (established packets).
    pub const FLOW_HIT: u32 = 12;
    /// Flow-table insert failed (decision still applied, not remembered).
    pub const FLOW_INSERT_FAILED: u32 = 13;
    /// From a backend's service address and port to one of this host's own
    /// addresses (a health probe from this host, say): passed untouched.
    pub const PASS_REPLY_NO_FLOW: u32 = 14;
    /// A new entry in the flow table.
    pub const FLOW_INSERT: u32 = 15;
    /// A flow entry found expired (idle past its timeout, or closed and
    /// reopened by a SYN): decided again and replaced.
    pub const FLOW_EXPIRED: u32 = 16;
    /// A bare SYN decided without state (flood mode): its entry is made
    /// when the client's handshake ACK comes.
    pub const SYN_STATELESS: u32 = 17;
    /// A backend's reply with no flow entry (evicted, or the connection came
    /// from another host), reverse-NATed all the same.
    pub const REPLY_NO_FLOW_NAT: u32 = 18;
    /// A TCP connection closed (FIN both ways, or a RST): its entry now
    /// expires after `tcp_closing`.
    pub const FLOW_CLOSED: u32 = 19;
    /// To a VIP: a SYN whose TCP checksum is wrong. Dropped: the backend
    /// would drop it too, and its silence must not count as the backend's
    /// failure. (A veth whose peer has TX checksum offload on delivers
    /// every frame so: see canaryd's interface checks.)
    pub const DROP_BAD_CHECKSUM: u32 = 20;
    /// To a VIP: a UDP length that disagrees with the IP length: dropped.
    pub const DROP_UDP_LENGTH: u32 = 21;
    /// To a VIP: a TCP data offset below 5 words or beyond the segment:
    /// dropped.
    pub const DROP_TCP_OFFSET: u32 = 22;
    /// To a VIP with a TTL (hop limit) that would expire here: dropped,
    /// since the stack's time-exceeded would quote the rewritten packet.
    pub const DROP_TTL_EXPIRED: u32 = 23;
    /// To a VIP, larger than the route to its backend allows (DF set, or
    /// IPv6): answered from the VIP with ICMP fragmentation needed /
    /// packet too big quoting the client's own packet (XDP_TX).
    pub const TX_ICMP_TOO_BIG: u32 = 24;
    /// An ICMP error about a forwarded connection (from its backend or a
    /// router beyond this host), translated for the client: from the VIP,
    /// quoting the packet as the client sent it.
    pub const ICMP_TO_CLIENT: u32 = 25;
    /// An ICMP error about a reply (from a router on the client's side, to
    /// the VIP), translated for the backend that sent it.
    pub const ICMP_TO_BACKEND: u32 = 26;
    /// An ICMP error quoting a VIP or backend flow this host cannot place
    /// (no backend, no flow entry, truncated quote): dropped.
    pub const DROP_ICMP: u32 = 27;
    /// A new connection's opening packet whose client address was over its
    /// judging budget: forwarded, but not judged.
    pub const NOT_JUDGED_BUDGET: u32 = 28;
    /// A bare SYN too long to check (data with the SYN, beyond 60 bytes of
    /// TCP): forwarded, but not judged.
    pub const NOT_JUDGED_UNCHECKED: u32 = 29;
    /// Decisions made by a live cohort's weight (also counted as forwarded).
    pub const COHORT_HIT: u32 = 30;
    pub const COUNT: u32 = 31;
    /// Slots of the `DATAPATH_STATS` map: room for reasons to come, so a
    /// new reason does not change the pinned map's size.
    pub const SLOTS: u32 = 64;
    // A reason beyond the map's slots would never be counted (the
    // program's lookup of its slot fails): grow `SLOTS` first.
    const _: () = assert!(COUNT <= SLOTS);

    /// Names for logs and metrics, indexed by reason.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_ip",
        "pass_not_vip",
        "pass_malformed",
        "pass_to_stack",
        "fwd_redirect",
        "drop_fragment",
        "drop_ip_options",
        "drop_ipv6_ext",
        "drop_malformed",
        "drop_no_backend",
        "drop_unroutable",
        "override_hit",
        "flow_hit",
        "flow_insert_failed",
        "pass_reply_no_flow",
        "flow_insert",
        "flow_expired",
        "syn_stateless",
        "reply_no_flow_nat",
        "flow_closed",
        "drop_bad_checksum",
        "drop_udp_length",
        "drop_tcp_offset",
        "drop_ttl_expired",
        "tx_icmp_too_big",
        "icmp_to_client",
        "icmp_to_backend",
        "drop_icmp",
        "not_judged_budget",
        "not_judged_unchecked",
        "cohort_hit",
    ];
}

/// Index of a (service, version) in `VERSION_STATS`.
#[inline(always)]
pub fn version_stats_index(service_id: u32, version: u32) -> u32 {
    service_id * NUM_VERSIONS + version
}

/// Index of the first slot of a Maglev table in the flat `MAGLEV` array.
#[inline(always)]
pub fn maglev_base(service_id: u32, version: u32, generation: u32) -> u32 {
    ((service_id * NUM_VERSIONS + version) * MAGLEV_GENERATIONS + generation) * MAGLEV_TABLE_SIZE
}

/// Entries of the flat `MAGLEV` array for `services` services (the array is
/// sized at load time: 1,024 services' tables take 537 MB, the kernel
/// keeping array values 8 bytes apart).
pub const fn maglev_entries(services: u32) -> u32 {
    services * NUM_VERSIONS * MAGLEV_GENERATIONS * MAGLEV_TABLE_SIZE
}

/// `MAGLEV` entries compiled into the object (resized by canaryd at load).
pub const MAGLEV_ENTRIES: u32 = maglev_entries(DEFAULT_SERVICE_LIMIT);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, made only of integers and
    // integer arrays, with explicit padding fields (no implicit padding).
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for ServiceState {}
    unsafe impl aya::Pod for BackendInfo {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for OverrideKeyData {}
    unsafe impl aya::Pod for OverrideValue {}
    unsafe impl aya::Pod for BackendAddrKey {}
    unsafe impl aya::Pod for ReverseNat {}
    unsafe impl aya::Pod for VersionStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for PendingHandshake {}
    unsafe impl aya::Pod for HealthStats {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for FlowTimeouts {}
    unsafe impl aya::Pod for FloodWindow {}
    unsafe impl aya::Pod for LocalAddrKey {}
    unsafe impl aya::Pod for Signals {}
    unsafe impl aya::Pod for ClientKey {}
    unsafe impl aya::Pod for ClientBudget {}
    unsafe impl aya::Pod for JudgeSettings {}
    unsafe impl aya::Pod for FailureEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<VipKey>(), 20);
        assert_eq!(size_of::<VipInfo>(), 8);
        assert_eq!(size_of::<ServiceState>(), 32);
        assert_eq!(size_of::<BackendInfo>(), 32);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<NextHop>(), 24);
        assert_eq!(size_of::<FlowState>(), 36);
        assert_eq!(size_of::<Settings>(), 28);
        assert_eq!(size_of::<FloodWindow>(), 16);
        assert_eq!(size_of::<LocalAddrKey>(), 20);
        assert_eq!(size_of::<OverrideKeyData>(), 20);
        assert_eq!(size_of::<BackendAddrKey>(), 20);
        assert_eq!(size_of::<ReverseNat>(), 32);
        assert_eq!(size_of::<VersionStats>(), 40);
        assert_eq!(size_of::<PendingHandshake>(), 16);
        assert_eq!(size_of::<HealthStats>(), 16 + 8 * HISTOGRAM_BUCKETS);
        assert_eq!(size_of::<Signals>(), 32);
        assert_eq!(size_of::<ClientKey>(), 24);
        assert_eq!(size_of::<ClientBudget>(), 8);
        assert_eq!(size_of::<JudgeSettings>(), 8);
        assert_eq!(size_of::<FailureEvent>(), 32);
    }

    #[test]
    fn a_client_budget_admits_per_second_then_refuses() {
        let mut b = ClientBudget::default();
        assert!((0..3).all(|_| b.admit(7, 3)));
        assert!(!b.admit(7, 3), "the fourth in the same second is over");
        assert!(b.admit(8, 3), "a new second starts afresh");
        let mut free = ClientBudget::default();
        assert!((0..1000).all(|_| free.admit(7, 0)), "0: no limit");
    }

    #[test]
    fn handshake_buckets_are_log2_microseconds() {
        assert_eq!(handshake_bucket(0), 0);
        assert_eq!(handshake_bucket(999), 0);
        assert_eq!(handshake_bucket(1_000), 0);
        assert_eq!(handshake_bucket(1_999), 0);
        assert_eq!(handshake_bucket(2_000), 1);
        assert_eq!(handshake_bucket(1_000_000), 9); // 1 ms = 2^9.97 us
        assert_eq!(handshake_bucket(1_000_000_000), 19); // 1 s = 2^19.93 us
        assert_eq!(handshake_bucket(u64::MAX), HISTOGRAM_BUCKETS as u32 - 1);
    }

    #[test]
    fn maglev_tables_do_not_overlap() {
        let last = maglev_base(MAX_SERVICES - 1, 1, 1) + MAGLEV_TABLE_SIZE;
        assert_eq!(last, maglev_entries(MAX_SERVICES));
        assert_eq!(maglev_base(0, 0, 1), MAGLEV_TABLE_SIZE);
        assert_eq!(maglev_base(0, 1, 0), 2 * MAGLEV_TABLE_SIZE);
    }
}
