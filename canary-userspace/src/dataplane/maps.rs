//! Typed handles on the data plane's maps, the same struct whether taken from
//! a freshly loaded object (the daemon) or opened from the pins (tests,
//! inspection tools).

use anyhow::{anyhow, Context, Result};
use aya::maps::{
    Array, DevMapHash, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues, RingBuf,
};
use aya::Ebpf;
use canary_common::{
    names, reason, version_stats_index, BackendAddrKey, BackendInfo, BackendStats, FailureEvent,
    FlowKey, FlowState, HealthStats, JudgeSettings, LocalAddrKey, OverrideKeyData, OverrideValue,
    PendingHandshake, ReverseNat, ServiceState, Settings, Signals, VersionStats, VipInfo, VipKey,
};
use std::path::{Path, PathBuf};

/// The BPF filesystem every pin lives in.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Where an instance pins its maps (and, later, links).
pub fn pin_dir(instance: &str) -> PathBuf {
    PathBuf::from(BPFFS).join("canary").join(instance)
}

/// Mounts the BPF filesystem at /sys/fs/bpf unless it is there already
/// (systemd mounts it on most distributions; minimal hosts and containers
/// often do not). Pins must outlive canaryd, so they cannot live elsewhere.
pub fn ensure_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let st = nix::sys::statfs::statfs(BPFFS).with_context(|| format!("statfs {BPFFS}"))?;
    if st.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    log::info!("mounting the BPF filesystem at {BPFFS}");
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting bpffs at {BPFFS}"))?;
    Ok(())
}

/// What a pinned map must look like to be adopted: (name, key size, value
/// size, max entries). aya reuses a pin by name without checking, so a pin
/// left by an incompatible canaryd must be caught here. `services` is
/// `limits.services` (it sizes `MAGLEV`).
pub fn expected_layout(flow_table_size: u32, services: u32) -> Vec<(&'static str, u32, u32, u32)> {
    use canary_common::*;
    use std::mem::size_of;
    let sz = |n: usize| n as u32;
    vec![
        (
            names::VIPS,
            sz(size_of::<VipKey>()),
            sz(size_of::<VipInfo>()),
            MAX_VIP_ENTRIES,
        ),
        (
            names::SERVICES,
            4,
            sz(size_of::<ServiceState>()),
            MAX_SERVICES,
        ),
        (
            names::BACKENDS,
            4,
            sz(size_of::<BackendInfo>()),
            MAX_BACKENDS,
        ),
        (names::MAGLEV, 4, 4, maglev_entries(services)),
        (
            names::FLOWS,
            sz(size_of::<FlowKey>()),
            sz(size_of::<FlowState>()),
            flow_table_size,
        ),
        (
            names::OVERRIDES,
            4 + sz(size_of::<OverrideKeyData>()),
            sz(size_of::<OverrideValue>()),
            MAX_OVERRIDES,
        ),
        (
            names::REVERSE_NAT,
            sz(size_of::<BackendAddrKey>()),
            sz(size_of::<ReverseNat>()),
            MAX_BACKENDS,
        ),
        (
            names::VERSION_STATS,
            4,
            sz(size_of::<VersionStats>()),
            MAX_SERVICES * NUM_VERSIONS,
        ),
        (
            names::BACKEND_STATS,
            4,
            sz(size_of::<BackendStats>()),
            MAX_BACKENDS,
        ),
        (names::DATAPATH_STATS, 4, 8, reason::SLOTS),
        (
            names::HANDSHAKES,
            sz(size_of::<FlowKey>()),
            sz(size_of::<PendingHandshake>()),
            MAX_HANDSHAKES,
        ),
        (
            names::HEALTH_STATS,
            4,
            sz(size_of::<HealthStats>()),
            MAX_SERVICES * NUM_VERSIONS,
        ),
        (names::SETTINGS, 4, sz(size_of::<Settings>()), 1),
        (
            names::BACKEND_NEXTHOP,
            4,
            sz(size_of::<NextHop>()),
            MAX_BACKENDS,
        ),
        (
            names::LOCAL_ADDRS,
            sz(size_of::<LocalAddrKey>()),
            4,
            MAX_LOCAL_ADDRS,
        ),
        (names::FLOOD, 4, sz(size_of::<FloodWindow>()), 1),
        (
            names::SIGNALS,
            4,
            sz(size_of::<Signals>()),
            MAX_SERVICES * NUM_VERSIONS,
        ),
        (
            names::CLIENT_BUDGET,
            sz(size_of::<ClientKey>()),
            sz(size_of::<ClientBudget>()),
            MAX_BUDGET_CLIENTS,
        ),
        (names::JUDGE, 4, sz(size_of::<JudgeSettings>()), 1),
        (names::FAILURES, 0, 0, FAILURES_BYTES),
    ]
}

/// The maps that hold only counters: without their pins, a restart starts
/// them again from zero (Prometheus takes that as a counter reset), and
/// nothing a connection needs is lost.
pub const COUNTER_MAPS: [&str; 5] = [
    names::VERSION_STATS,
    names::BACKEND_STATS,
    names::DATAPATH_STATS,
    names::HEALTH_STATS,
    names::SIGNALS,
];

/// The counter maps (of [`COUNTER_MAPS`]) whose pin of another shape (an
/// older canaryd's, with fewer slots) is replaced by a fresh map instead of
/// refusing to start. Only the data-path counters: the others are what a
/// rollout in progress is judged on.
const REPLACEABLE: [&str; 1] = [names::DATAPATH_STATS];

/// Checks the pins in `dir` against [`expected_layout`]; a clear error
/// names the first map that differs.
pub fn check_pinned_layout(dir: &Path, flow_table_size: u32, services: u32) -> Result<()> {
    // Replaced only once every other pin passed: a refusal leaves all as
    // it was.
    let mut replace = Vec::new();
    for (name, key, value, max) in expected_layout(flow_table_size, services) {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        let found = (info.key_size(), info.value_size(), info.max_entries());
        if found != (key, value, max) && REPLACEABLE.contains(&name) {
            replace.push((path, found, (key, value, max)));
            continue;
        }
        if found != (key, value, max) {
            anyhow::bail!(
                "pinned map {} has key/value size and entries {found:?}, this canaryd needs {:?}{}; \
                 remove the old data plane first (`canaryctl teardown`, or canaryd --on-exit teardown)",
                path.display(),
                (key, value, max),
                match name {
                    names::FLOWS => " (was flow_table.size changed?)",
                    names::MAGLEV => " (was limits.services changed?)",
                    _ => "",
                }
            );
        }
    }
    for (path, found, want) in replace {
        log::info!(
            "pinned counter map {} has key/value size and entries {found:?}, this canaryd \
             needs {want:?}: replacing it (its counters start again from zero)",
            path.display(),
        );
        // The running program keeps the old map by its fd, not by the pin.
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the old pin {}", path.display()))?;
    }
    Ok(())
}

pub struct Maps {
    pub vips: HashMap<MapData, VipKey, VipInfo>,
    pub services: Array<MapData, ServiceState>,
    pub backends: Array<MapData, BackendInfo>,
    /// Single entries (explain); whole tables go through `maglev_mem`.
    pub maglev: Array<MapData, u32>,
    pub maglev_mem: MaglevMem,
    pub flows: HashMap<MapData, FlowKey, FlowState>,
    pub overrides: LpmTrie<MapData, OverrideKeyData, OverrideValue>,
    pub reverse_nat: HashMap<MapData, BackendAddrKey, ReverseNat>,
    pub version_stats: PerCpuArray<MapData, VersionStats>,
    pub backend_stats: PerCpuArray<MapData, BackendStats>,
    pub datapath_stats: PerCpuArray<MapData, u64>,
    pub tx_ports: DevMapHash<MapData>,
    pub handshakes: HashMap<MapData, FlowKey, PendingHandshake>,
    pub health_stats: PerCpuArray<MapData, HealthStats>,
    pub settings: Array<MapData, Settings>,
    pub local_addrs: HashMap<MapData, LocalAddrKey, u32>,
    pub signals: PerCpuArray<MapData, Signals>,
    pub judge: Array<MapData, JudgeSettings>,
    pub failures: RingBuf<MapData>,
}

/// The `MAGLEV` array mapped into this process (it is created
/// BPF_F_MMAPABLE): whole tables are written and read with memory stores
/// instead of a syscall per entry. The kernel lays array values out 8 bytes
/// apart (it rounds the value size up to 8), so entry `i` is the low half
/// (little-endian) of the `i`th u64. The data path reads a table only after
/// `ServiceState::live_gen` points at it, and that flip is a map update
/// (a syscall, so a full barrier) made after the copy.
pub struct MaglevMem {
    ptr: std::ptr::NonNull<u64>,
    entries: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; writes
// need `&mut self`.
unsafe impl Send for MaglevMem {}
unsafe impl Sync for MaglevMem {}

impl MaglevMem {
    fn map(map: &Map) -> Result<MaglevMem> {
        use std::os::fd::{AsFd, AsRawFd};
        let Map::Array(data) = map else {
            anyhow::bail!("map MAGLEV has an unexpected type");
        };
        let entries = data.info()?.max_entries() as usize;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (entries * STRIDE).div_ceil(page) * page;
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's own memory, `bytes` long
        // (the kernel rounds the array's memory up to whole pages).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context(
                "memory-mapping MAGLEV (a pin from before it was BPF_F_MMAPABLE? tear the data plane down first)",
            );
        }
        Ok(MaglevMem {
            ptr: std::ptr::NonNull::new(ptr as *mut u64).context("mmap returned null")?,
            entries,
            bytes,
        })
    }

    fn range(&self, base: u32, len: usize) -> Result<std::ops::Range<usize>> {
        let start = base as usize;
        let end = start + len;
        if end > self.entries {
            anyhow::bail!(
                "MAGLEV entries {start}..{end} beyond its {} entries",
                self.entries
            );
        }
        Ok(start..end)
    }

    /// Writes `table` at entry `base`.
    pub fn write(&mut self, base: u32, table: &[u32]) -> Result<()> {
        let r = self.range(base, table.len())?;
        for (i, id) in r.zip(table) {
            // SAFETY: in bounds (checked); the mapping lives as long as
            // self. A whole aligned word: the kernel never sees half of it.
            unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(i), slot(*id)) };
        }
        Ok(())
    }

    /// The `len` entries from `base`.
    pub fn read(&self, base: u32, len: usize) -> Result<Vec<u32>> {
        let r = self.range(base, len)?;
        // SAFETY: as in `write`.
        Ok(
            r.map(|i| unslot(unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(i)) }))
                .collect(),
        )
    }
}

/// Bytes between two array values in the kernel's layout.
const STRIDE: usize = 8;

/// A u32 value in its 8-byte array slot: its bytes first, then padding.
fn slot(id: u32) -> u64 {
    let b = id.to_ne_bytes();
    u64::from_ne_bytes([b[0], b[1], b[2], b[3], 0, 0, 0, 0])
}

fn unslot(v: u64) -> u32 {
    let b = v.to_ne_bytes();
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

impl Drop for MaglevMem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.bytes) };
    }
}

/// The map pinned as `dir/name` (the sweep, a flow reset and an upgrade
/// open theirs on their own threads or from elsewhere).
pub fn open_pinned(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(map: Map, name: &str) -> Result<T> {
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Maps {
    /// Takes the maps out of a loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Maps> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
        };
        Maps::from_fn(&mut take)
    }

    /// Opens the maps an instance pinned.
    pub fn from_pins(dir: &Path) -> Result<Maps> {
        Maps::from_fn(&mut |name: &str| open_pinned(dir, name))
    }

    fn from_fn(get: &mut dyn FnMut(&str) -> Result<Map>) -> Result<Maps> {
        let maglev = get(names::MAGLEV)?;
        let maglev_mem = MaglevMem::map(&maglev)?;
        Ok(Maps {
            vips: typed(get(names::VIPS)?, names::VIPS)?,
            services: typed(get(names::SERVICES)?, names::SERVICES)?,
            backends: typed(get(names::BACKENDS)?, names::BACKENDS)?,
            maglev: typed(maglev, names::MAGLEV)?,
            maglev_mem,
            flows: typed(get(names::FLOWS)?, names::FLOWS)?,
            overrides: typed(get(names::OVERRIDES)?, names::OVERRIDES)?,
            reverse_nat: typed(get(names::REVERSE_NAT)?, names::REVERSE_NAT)?,
            version_stats: typed(get(names::VERSION_STATS)?, names::VERSION_STATS)?,
            backend_stats: typed(get(names::BACKEND_STATS)?, names::BACKEND_STATS)?,
            datapath_stats: typed(get(names::DATAPATH_STATS)?, names::DATAPATH_STATS)?,
            tx_ports: typed(get(names::TX_PORTS)?, names::TX_PORTS)?,
            handshakes: typed(get(names::HANDSHAKES)?, names::HANDSHAKES)?,
            health_stats: typed(get(names::HEALTH_STATS)?, names::HEALTH_STATS)?,
            settings: typed(get(names::SETTINGS)?, names::SETTINGS)?,
            local_addrs: typed(get(names::LOCAL_ADDRS)?, names::LOCAL_ADDRS)?,
            signals: typed(get(names::SIGNALS)?, names::SIGNALS)?,
            judge: typed(get(names::JUDGE)?, names::JUDGE)?,
            failures: typed(get(names::FAILURES)?, names::FAILURES)?,
        })
    }

    /// Per-version counters of a service, summed over CPUs.
    pub fn version_stats(&self, service_id: u32, version: u32) -> Result<VersionStats> {
        summed(
            &self.version_stats,
            version_stats_index(service_id, version),
        )
    }

    pub fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
        summed(&self.backend_stats, backend_id)
    }

    /// Invalidates every cached next hop at once: the connections' next
    /// packets look their route up again (after a config change; without a
    /// bump they age out within about a second in the kernel).
    pub fn bump_nexthop_gen(&mut self) -> Result<()> {
        let mut settings = self.settings()?;
        settings.nexthop_gen = settings.nexthop_gen.wrapping_add(1);
        self.settings.set(0, settings, 0)?;
        Ok(())
    }

    /// `SETTINGS[0]` as the data plane reads it.
    pub fn settings(&self) -> Result<Settings> {
        Ok(self.settings.get(&0, 0)?)
    }

    /// Writes `SETTINGS[0]` whole, with the next-hop generation bumped (so
    /// every cached next hop is looked up again).
    pub fn write_settings(&mut self, mut next: Settings) -> Result<()> {
        let gen = self.settings().map(|s| s.nexthop_gen).unwrap_or(0);
        next.nexthop_gen = gen.wrapping_add(1);
        self.settings.set(0, next, 0)?;
        Ok(())
    }

    /// Makes `LOCAL_ADDRS` hold exactly `addrs` (at most `MAX_LOCAL_ADDRS`);
    /// returns (added, removed).
    pub fn sync_local_addrs(&mut self, addrs: &[std::net::IpAddr]) -> Result<(usize, usize)> {
        let want: std::collections::HashSet<LocalAddrKey> = addrs
            .iter()
            .take(canary_common::MAX_LOCAL_ADDRS as usize)
            .map(|a| local_addr_key(*a))
            .collect();
        let have: std::collections::HashSet<LocalAddrKey> =
            self.local_addrs.keys().filter_map(|k| k.ok()).collect();
        let mut added = 0;
        for k in want.difference(&have) {
            self.local_addrs.insert(k, 1, 0)?;
            added += 1;
        }
        let mut removed = 0;
        for k in have.difference(&want) {
            if self.local_addrs.remove(k).is_ok() {
                removed += 1;
            }
        }
        Ok((added, removed))
    }

    /// Passive health signals of a service's version, summed over CPUs.
    pub fn health_stats(&self, service_id: u32, version: u32) -> Result<HealthStats> {
        summed(&self.health_stats, version_stats_index(service_id, version))
    }

    /// The judged signals of a service's version, summed over CPUs.
    pub fn signals(&self, service_id: u32, version: u32) -> Result<Signals> {
        summed(&self.signals, version_stats_index(service_id, version))
    }

    /// The judged failures the data plane recorded since the last call
    /// (`FAILURES`), oldest first.
    pub fn drain_failures(&mut self) -> Vec<FailureEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.failures.next() {
            if item.len() >= std::mem::size_of::<FailureEvent>() {
                // SAFETY: the data plane writes whole `FailureEvent`s (a
                // plain-old-data record); the ring gives no alignment
                // promise, hence the unaligned read.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const FailureEvent) });
            }
        }
        out
    }

    /// Tells the data plane how many connections a second one client
    /// address may have judged per service (0: no limit).
    pub fn set_judged_per_client(&mut self, per_client_per_s: u32) -> Result<()> {
        let want = JudgeSettings {
            per_client_per_s,
            _pad: 0,
        };
        if self.judge.get(&0, 0)? != want {
            self.judge.set(0, want, 0)?;
        }
        Ok(())
    }

    /// Removes the handshakes that have waited longer than their service's
    /// `timeout_ns(service_id)` for a SYN-ACK (`now_ns` on CLOCK_MONOTONIC, the kernel's
    /// `bpf_ktime_get_ns`) and returns them as (service id, version). An entry
    /// the kernel removes meanwhile (its SYN-ACK arrived) is not counted.
    pub fn expire_handshakes(
        &mut self,
        now_ns: u64,
        timeout_ns: impl Fn(u32) -> u64,
    ) -> Vec<(FlowKey, u32, u32)> {
        let expired: Vec<(FlowKey, PendingHandshake)> = self
            .handshakes
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, p)| now_ns.saturating_sub(p.syn_ns) > timeout_ns(p.service_id))
            .collect();
        expired
            .into_iter()
            .filter(|(k, _)| self.handshakes.remove(k).is_ok())
            .map(|(k, p)| (k, p.service_id, p.version & 1))
            .collect()
    }

    /// Data-path outcome counters, indexed by `canary_common::reason`.
    pub fn datapath_stats(&self) -> Result<[u64; reason::COUNT as usize]> {
        let mut out = [0u64; reason::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = summed(&self.datapath_stats, i as u32)?;
        }
        Ok(out)
    }

    /// The service id serving a VIP, as the kernel sees it.
    pub fn service_of_vip(&self, key: &VipKey) -> Result<u32> {
        Ok(self.vips.get(key, 0)?.service_id)
    }

    /// Every backend id whose `BACKENDS` entry belongs to `service_id`
    /// (live or drained) with its address info.
    pub fn backends_of(&self, service_id: u32) -> Vec<(u32, BackendInfo)> {
        self.backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.ok().map(|b| (i as u32, b)))
            .filter(|(_, b)| b.family != 0 && b.service_id == service_id)
            .collect()
    }
}

/// The `LOCAL_ADDRS` key of one of this host's addresses.
pub fn local_addr_key(addr: std::net::IpAddr) -> LocalAddrKey {
    LocalAddrKey {
        addr: canary_common::addr::to_words(addr),
        family: canary_common::addr::family(addr) as u32,
    }
}

/// A per-CPU value that adds up over CPUs (a counter record, field by
/// field).
pub trait PerCpuSum: aya::Pod + Default {
    fn add(&mut self, other: &Self);
}

/// `PerCpuSum` for a record of plain counters; its fields are named whole
/// (a field added to the record and not here does not compile).
macro_rules! per_cpu_sum {
    ($t:ident: $($f:ident),+) => {
        impl PerCpuSum for $t {
            fn add(&mut self, other: &Self) {
                let $t { $($f),+ } = *other;
                $(self.$f += $f;)+
            }
        }
    };
}

per_cpu_sum!(VersionStats: packets, bytes, new_flows, reply_packets, reply_bytes);
per_cpu_sum!(BackendStats: packets, bytes, new_flows, reply_packets);
per_cpu_sum!(Signals: judged, resets, unreachables, over_budget);

impl PerCpuSum for HealthStats {
    fn add(&mut self, other: &Self) {
        let HealthStats {
            syn_acks,
            rsts,
            handshake_us_log2,
        } = other;
        self.syn_acks += syn_acks;
        self.rsts += rsts;
        for (a, b) in self.handshake_us_log2.iter_mut().zip(handshake_us_log2) {
            *a += b;
        }
    }
}

impl PerCpuSum for u64 {
    fn add(&mut self, other: &Self) {
        *self += other;
    }
}

/// Slot `index` of a per-CPU map, summed over CPUs.
pub fn summed<T: PerCpuSum>(map: &PerCpuArray<MapData, T>, index: u32) -> Result<T> {
    Ok(map.get(&index, 0)?.iter().fold(T::default(), |mut t, v| {
        t.add(v);
        t
    }))
}

/// Sets slot `index` of a per-CPU map to zero on every CPU (the counters
/// of an id handed out afresh).
pub fn zero_per_cpu<T: aya::Pod + Default>(
    map: &mut PerCpuArray<MapData, T>,
    index: u32,
) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    map.set(index, PerCpuValues::try_from(vec![T::default(); cpus])?, 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replaceable_maps_hold_only_counters() {
        assert!(REPLACEABLE.iter().all(|m| COUNTER_MAPS.contains(m)));
    }

    #[test]
    fn counters_add_up_field_by_field() {
        let mut t = HealthStats::default();
        let mut one = HealthStats {
            syn_acks: 1,
            rsts: 2,
            ..HealthStats::default()
        };
        one.handshake_us_log2[3] = 5;
        t.add(&one);
        t.add(&one);
        assert_eq!((t.syn_acks, t.rsts, t.handshake_us_log2[3]), (2, 4, 10));
        let mut s = Signals::default();
        s.add(&Signals {
            judged: 1,
            resets: 2,
            unreachables: 3,
            over_budget: 4,
        });
        s.add(&Signals {
            judged: 10,
            ..Signals::default()
        });
        assert_eq!(
            s,
            Signals {
                judged: 11,
                resets: 2,
                unreachables: 3,
                over_budget: 4
            }
        );
    }
}
