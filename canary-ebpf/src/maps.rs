//! The data plane's maps. State maps are pinned by name, so a restarted
//! `canaryd` adopts them (weights, pools and open flows survive it).
//! Layouts and names come from `canary_common::maps`.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use canary_common::{
    BackendAddrKey, BackendInfo, BackendStats, ClientBudget, ClientKey, FloodWindow, FlowKey,
    FlowState, HealthStats, JudgeSettings, LocalAddrKey, NextHop, OverrideKeyData, OverrideValue,
    PendingHandshake, ReverseNat, ServiceState, Settings, Signals, VersionStats, VipInfo, VipKey,
    DEFAULT_FLOW_TABLE_SIZE, FAILURES_BYTES, MAGLEV_ENTRIES, MAX_BACKENDS, MAX_BUDGET_CLIENTS,
    MAX_HANDSHAKES, MAX_LOCAL_ADDRS, MAX_OVERRIDES, MAX_SERVICES, MAX_TX_PORTS, MAX_VIP_ENTRIES,
    NUM_VERSIONS,
};

/// VIP (addr, port, proto) -> service. An entry with port 0 and proto 0 marks
/// the address itself as a VIP, so packets we cannot split (fragments,
/// options) are recognised as addressed to a VIP before their ports are read.
#[map(name = "VIPS")]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::pinned(MAX_VIP_ENTRIES, 0);

#[map(name = "SERVICES")]
pub static SERVICES: Array<ServiceState> = Array::pinned(MAX_SERVICES, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: Array<BackendInfo> = Array::pinned(MAX_BACKENDS, 0);

/// Flat array of Maglev tables, see `canary_common::maglev_base`. Sized by
/// canaryd at load for the services its config allows, and memory-mapped
/// by it (BPF_F_MMAPABLE): a table is 16,381 entries, 1,024 services have
/// 2,048 of them, one syscall per entry would take a minute.
#[map(name = "MAGLEV")]
pub static MAGLEV: Array<u32> = Array::pinned(MAGLEV_ENTRIES, BPF_F_MMAPABLE);

/// Open connections: their decision, their state (`canary_common::flow`)
/// and the next hop of their replies. canaryd sizes it at load and sweeps
/// out expired entries; the data path treats an expired entry as gone.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::pinned(DEFAULT_FLOW_TABLE_SIZE, 0);

#[map(name = "OVERRIDES")]
pub static OVERRIDES: LpmTrie<OverrideKeyData, OverrideValue> = LpmTrie::pinned(MAX_OVERRIDES, 0);

#[map(name = "REVERSE_NAT")]
pub static REVERSE_NAT: HashMap<BackendAddrKey, ReverseNat> = HashMap::pinned(MAX_BACKENDS, 0);

#[map(name = "VERSION_STATS")]
pub static VERSION_STATS: PerCpuArray<VersionStats> =
    PerCpuArray::pinned(MAX_SERVICES * NUM_VERSIONS, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::pinned(MAX_BACKENDS, 0);

#[map(name = "DATAPATH_STATS")]
pub static DATAPATH_STATS: PerCpuArray<u64> = PerCpuArray::pinned(canary_common::reason::SLOTS, 0);

/// Interfaces the program may redirect to, keyed by ifindex.
#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::pinned(MAX_TX_PORTS, 0);

/// TCP handshakes in flight: SYN forwarded, no SYN-ACK seen yet. A plain
/// hash, not an LRU: when it is full (SYNs nobody answers, faster than
/// canaryd expires them) a new handshake is simply not timed, at the cost
/// of a failed insert; an LRU would evict on every SYN, which measured
/// ~600 ns a SYN (`cargo xtask bench`). canaryd removes the entries older
/// than the handshake timeout and counts them as failed connections.
#[map(name = "HANDSHAKES")]
pub static HANDSHAKES: HashMap<FlowKey, PendingHandshake> = HashMap::pinned(MAX_HANDSHAKES, 0);

/// Passive health signals per (service, version).
#[map(name = "HEALTH_STATS")]
pub static HEALTH_STATS: PerCpuArray<HealthStats> =
    PerCpuArray::pinned(MAX_SERVICES * NUM_VERSIONS, 0);

/// What canaryd tells the data plane besides the tables (next-hop
/// generation, flood threshold, flow timeouts). One entry.
#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// The next hop toward each backend, per CPU: it depends only on the
/// backend, so a new connection's SYN needs no route lookup; per CPU, so
/// concurrent refreshes never tear an entry.
#[map(name = "BACKEND_NEXTHOP")]
pub static BACKEND_NEXTHOP: PerCpuArray<NextHop> = PerCpuArray::pinned(MAX_BACKENDS, 0);

/// This host's own addresses (canaryd keeps them current): a backend's
/// packet to one of them is the host's own connection (a health probe),
/// never reverse-NATed.
#[map(name = "LOCAL_ADDRS")]
pub static LOCAL_ADDRS: HashMap<LocalAddrKey, u32> = HashMap::pinned(MAX_LOCAL_ADDRS, 0);

/// Stateful new flows in the current second, host-wide (flood mode).
#[map(name = "FLOOD")]
pub static FLOOD: Array<FloodWindow> = Array::pinned(1, 0);

/// The signals rollouts are judged on, per (service, version): judged
/// connections and their backends' failures (see `canary_common::Signals`).
#[map(name = "SIGNALS")]
pub static SIGNALS: PerCpuArray<Signals> = PerCpuArray::pinned(MAX_SERVICES * NUM_VERSIONS, 0);

/// Judged connections per client address and service in the current
/// second: one client weighs at most `JUDGE.per_client_per_s` a second.
/// Shared between CPUs without atomics: a race lets one more through.
#[map(name = "CLIENT_BUDGET")]
pub static CLIENT_BUDGET: LruHashMap<ClientKey, ClientBudget> =
    LruHashMap::pinned(MAX_BUDGET_CLIENTS, 0);

/// canaryd's judging settings. One entry.
#[map(name = "JUDGE")]
pub static JUDGE: Array<JudgeSettings> = Array::pinned(1, 0);

/// Judged failures with their client (`canary_common::FailureEvent`), for
/// canaryd's count of distinct failing clients. Full (no canaryd draining
/// it): records are dropped, the counters in `SIGNALS` stay exact.
#[map(name = "FAILURES")]
pub static FAILURES: RingBuf = RingBuf::pinned(FAILURES_BYTES, 0);
