//! Loading, attaching and configuring the XDP data plane. `apply` turns a
//! validated `Config` into map contents, make-before-break: backends, reverse
//! NAT and Maglev tables first, the service entry (weight, live generation)
//! next, the VIP last, and removals in the opposite order.

pub mod explain;
pub mod maglev;
pub mod maps;
pub mod report;

use crate::config::{Affinity, Config, Protocol, ServiceConfig, Version};
use anyhow::{bail, Context, Result};
use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::PerCpuValues;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{xdp::XdpLink, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use canary_common::addr::{family, override_key, port_to_map, to_words};
use canary_common::weight::WeightBp;
use canary_common::{
    maglev_base, BackendAddrKey, BackendInfo, HealthStats, OverrideValue, ReverseNat, ServiceState,
    VersionStats, VipInfo, VipKey, AFFINITY_FLOW, AFFINITY_SOURCE_IP, DEFAULT_FLOW_TABLE_SIZE,
    MAGLEV_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES, PROTO_TCP, PROTO_UDP,
};
use log::{error, info, warn};
use maps::{pin_dir, Maps};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

/// The XDP object, embedded at build time (see build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/canary.bpf.o"));

pub const PROGRAM: &str = "canary";
/// The do-nothing program in the same object: the per-packet floor.
pub const PASS_PROGRAM: &str = "xdp_pass";

/// The embedded object (empty when built without `cargo xtask build-ebpf`).
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

pub fn vip_key(s: &ServiceConfig) -> VipKey {
    VipKey {
        addr: to_words(s.vip),
        port: port_to_map(s.port),
        proto: proto_number(s.protocol),
        family: family(s.vip),
    }
}

/// The key marking an address as a VIP address (any port).
fn vip_marker(addr: IpAddr) -> VipKey {
    VipKey {
        addr: to_words(addr),
        port: 0,
        proto: 0,
        family: family(addr),
    }
}

fn backend_addr_key(s: &ServiceConfig, b: IpAddr) -> BackendAddrKey {
    BackendAddrKey {
        addr: to_words(b),
        port: port_to_map(s.port),
        proto: proto_number(s.protocol),
        family: family(b),
    }
}

/// Stable ids: a service keeps its id across reloads (flows and counters are
/// keyed by it), a backend keeps its id while it stays in its service.
#[derive(Debug, Clone, Default)]
pub struct Ids {
    pub services: BTreeMap<String, u32>,
    pub backends: HashMap<(u32, IpAddr), u32>,
    next_backend: u32,
    free_backends: Vec<u32>,
}

impl Ids {
    /// The id of service `name`; a new one avoids ids in use and slots the
    /// kernel still has active (adopted, about to be removed).
    fn service(&mut self, name: &str, active_slots: &HashSet<u32>) -> Result<u32> {
        if let Some(id) = self.services.get(name) {
            return Ok(*id);
        }
        let used: HashSet<u32> = self.services.values().copied().collect();
        let id = (0..MAX_SERVICES)
            .find(|i| !used.contains(i) && !active_slots.contains(i))
            .context("no free service id")?;
        self.services.insert(name.to_string(), id);
        Ok(id)
    }

    fn backend(&mut self, service_id: u32, addr: IpAddr) -> Result<u32> {
        if let Some(id) = self.backends.get(&(service_id, addr)) {
            return Ok(*id);
        }
        // Fresh ids first: an id released a moment ago may still be named by
        // open flows until they end.
        let id = if self.next_backend < MAX_BACKENDS {
            self.next_backend += 1;
            self.next_backend - 1
        } else if !self.free_backends.is_empty() {
            self.free_backends.remove(0)
        } else {
            bail!("no free backend id");
        };
        self.backends.insert((service_id, addr), id);
        Ok(id)
    }

    /// Ids as a previous canaryd left them in the pinned maps: services by
    /// their VIP, backends by their BACKENDS entry.
    fn adopt(maps: &Maps, config: &Config) -> Ids {
        let mut ids = Ids::default();
        for s in &config.services {
            if let Ok(info) = maps.vips.get(&vip_key(s), 0) {
                ids.services.insert(s.name.clone(), info.service_id);
            }
        }
        for (i, b) in maps.backends.iter().enumerate() {
            let Ok(b) = b else { continue };
            if b.family == 0 {
                continue;
            }
            let addr = canary_common::addr::from_words(b.addr, b.family as u8);
            ids.backends.insert((b.service_id, addr), i as u32);
            ids.next_backend = ids.next_backend.max(i as u32 + 1);
        }
        ids
    }

    /// Drops every id not in `keep`, returning the released backend ids.
    fn retain(
        &mut self,
        services: &HashSet<String>,
        backends: &HashSet<(u32, IpAddr)>,
    ) -> Vec<u32> {
        self.services.retain(|name, _| services.contains(name));
        let mut released = Vec::new();
        self.backends.retain(|k, id| {
            let keep = backends.contains(k);
            if !keep {
                released.push(*id);
            }
            keep
        });
        self.free_backends.extend(&released);
        released
    }
}

/// What one `apply` changed, for the log.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub lines: Vec<String>,
}

pub struct DataPlane {
    ebpf: Ebpf,
    // transitional: tests/src/bin/bench.rs still reads `maps` and `instance`
    // as fields; everything in canary-userspace goes through `maps()` and
    // `instance()`. Both become private when the tests switch.
    #[doc(hidden)]
    pub maps: Maps,
    #[doc(hidden)]
    pub instance: String,
    pin_dir: PathBuf,
    /// XDP links by interface; each is pinned under `links/`, so it outlives
    /// this process.
    links: BTreeMap<String, FdLink>,
    /// Maps came from a previous canaryd's pins (ids are rebuilt from them
    /// on the first apply).
    adopted: bool,
    ids: Ids,
    applied: Option<Config>,
    /// The live Maglev table per (service, version) and its generation.
    maglev_live: HashMap<(u32, u32), (u32, Vec<u32>)>,
    /// Backends (service, address) the health probes found unhealthy: kept
    /// in BACKENDS and REVERSE_NAT (their open connections go on) but left
    /// out of their pool's Maglev table, unless the whole pool is unhealthy
    /// (then all stay: failing open beats dropping every new connection).
    unhealthy: HashSet<(String, IpAddr)>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl DataPlane {
    /// Loads the embedded object with its maps pinned under
    /// /sys/fs/bpf/canary/<instance>/.
    pub fn load(instance: &str, flow_table_size: Option<u32>) -> Result<DataPlane> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this canaryd was built without its XDP object; build it with `cargo xtask build`"
            );
        }
        crate::dataplane::maps::ensure_bpffs()?;
        let dir = pin_dir(instance);
        std::fs::create_dir_all(dir.join("links")).with_context(|| {
            format!(
                "creating pin directory {} (is bpffs mounted?)",
                dir.display()
            )
        })?;
        let flows = flow_table_size.unwrap_or(DEFAULT_FLOW_TABLE_SIZE);
        let adopted = dir.join(canary_common::names::SERVICES).exists();
        if adopted {
            crate::dataplane::maps::check_pinned_layout(&dir, flows)?;
            info!("adopting the pinned data plane in {}", dir.display());
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .map_max_entries(canary_common::names::FLOWS, flows)
            .load(EBPF_OBJECT)
            .context("loading the XDP object")?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("eBPF log records unavailable: {e}");
                None
            }
        };
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .context("the XDP object has no program `canary`")?
            .try_into()?;
        program
            .load()
            .context("loading the XDP program into the kernel (verifier)")?;
        let maps = Maps::from_ebpf(&mut ebpf)?;
        Ok(DataPlane {
            ebpf,
            maps,
            instance: instance.to_string(),
            pin_dir: dir,
            links: BTreeMap::new(),
            adopted,
            ids: Ids::default(),
            applied: None,
            maglev_live: HashMap::new(),
            unhealthy: HashSet::new(),
            logger,
        })
    }

    /// The aya-log reader, to be polled by the daemon's event loop.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// The loaded XDP program (for `BPF_PROG_TEST_RUN` and inspection).
    pub fn program(&self) -> Result<&Xdp> {
        Ok(self.ebpf.program(PROGRAM).context("program")?.try_into()?)
    }

    /// True when the maps were taken over from an earlier canaryd's pins.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    /// The typed map handles (read-only for callers: writes go through
    /// `apply` and the methods below).
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The instance name (the pin directory's name).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The id the maps know service `name` by.
    pub fn service_id(&self, name: &str) -> Option<u32> {
        self.ids.services.get(name).copied()
    }

    /// The service with id `sid`.
    pub fn service_name(&self, sid: u32) -> Option<&str> {
        self.ids
            .services
            .iter()
            .find(|(_, id)| **id == sid)
            .map(|(name, _)| name.as_str())
    }

    /// Records a probe verdict: an unhealthy backend stays in BACKENDS and
    /// REVERSE_NAT but leaves its pool's Maglev table at the next `apply`
    /// (unless its whole pool is unhealthy).
    pub fn set_backend_health(&mut self, service: &str, addr: IpAddr, healthy: bool) {
        let key = (service.to_string(), addr);
        if healthy {
            self.unhealthy.remove(&key);
        } else {
            self.unhealthy.insert(key);
        }
    }

    /// Whether the probes found this backend unhealthy.
    pub fn is_unhealthy(&self, service: &str, addr: IpAddr) -> bool {
        self.unhealthy.contains(&(service.to_string(), addr))
    }

    /// Forgets the verdicts of backends `probed` rejects (no longer probed or
    /// configured); true when one was forgotten (then `apply` is due).
    pub fn retain_health(&mut self, probed: impl Fn(&str, IpAddr) -> bool) -> bool {
        let before = self.unhealthy.len();
        self.unhealthy.retain(|(s, a)| probed(s, *a));
        self.unhealthy.len() != before
    }

    /// Writes `weight` straight into the service's map entry (one write,
    /// nothing else of an apply): the last resort of a rollback.
    pub fn force_weight(&mut self, service: &str, weight: WeightBp) -> Result<()> {
        let sid = self.service_id(service).context("service has no id")?;
        let mut entry = self.maps.services.get(&sid, 0)?;
        entry.weight_bp = weight.bp();
        self.maps.services.set(sid, entry, 0)?;
        Ok(())
    }

    /// Forgets the flow-table entries of a service's connections to
    /// `version`, so their next packets are split again (on_rollback:
    /// reset). The table can hold millions of entries: the scan runs on its
    /// own thread over the pinned map, so the caller's lock is not held.
    pub fn reset_flows(&self, service: &str, version: u32) {
        let Some(sid) = self.service_id(service) else {
            return;
        };
        let path = self.pin_dir.join(canary_common::names::FLOWS);
        let service = service.to_string();
        std::thread::spawn(move || {
            let run = || -> Result<usize> {
                let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(&path)?)?;
                let mut flows: aya::maps::HashMap<
                    aya::maps::MapData,
                    canary_common::FlowKey,
                    canary_common::FlowState,
                > = aya::maps::HashMap::try_from(map)?;
                let doomed: Vec<_> = flows
                    .iter()
                    .filter_map(|r| r.ok())
                    .filter(|(_, f)| f.service_id == sid && f.version & 1 == version)
                    .map(|(k, _)| k)
                    .collect();
                Ok(doomed.iter().filter(|k| flows.remove(k).is_ok()).count())
            };
            match run() {
                Ok(n) => info!(
                    "service {service}: {n} open canary connections reset (on_rollback: reset)"
                ),
                Err(e) => error!("service {service}: resetting canary connections: {e:#}"),
            }
        });
    }

    /// A version's traffic and health counters (summed over CPUs).
    pub fn counters(&self, service: &str, version: u32) -> Option<(VersionStats, HealthStats)> {
        let sid = self.service_id(service)?;
        let vs = self.maps.version_stats(sid, version).ok()?;
        let hs = self.maps.health_stats(sid, version).ok()?;
        Some((vs, hs))
    }

    /// A version's health counters (zero when unreadable).
    pub fn health_counters(&self, service: &str, version: u32) -> Option<HealthStats> {
        let sid = self.service_id(service)?;
        Some(self.maps.health_stats(sid, version).unwrap_or_default())
    }

    /// Removes the pending handshakes older than their service's timeout and
    /// returns them as (service id, version).
    pub fn expire_handshakes(
        &mut self,
        now_ns: u64,
        timeout_ns: impl Fn(u32) -> u64,
    ) -> Vec<(u32, u32)> {
        self.maps.expire_handshakes(now_ns, timeout_ns)
    }

    /// Which version and backend `client` gets from service `s` now,
    /// computed by the kernel's code on the maps' contents.
    pub fn explain(
        &self,
        sid: u32,
        s: &ServiceConfig,
        client: IpAddr,
        port: Option<u16>,
    ) -> Result<crate::control::api::Explain> {
        explain::explain(&self.maps, sid, s, client, port)
    }

    pub fn applied(&self) -> Option<&Config> {
        self.applied.as_ref()
    }

    /// Makes the maps and attachments match `config`: a reconciliation of
    /// what the maps hold against what the config wants, so it is the same
    /// code for the first apply, a reload, and a restarted daemon adopting
    /// pinned maps. Everything that can be checked without writing is checked
    /// first, so a config that cannot be applied changes nothing.
    pub fn apply(&mut self, config: &Config) -> Result<ApplyReport> {
        config.validate()?;
        let mut ifindexes = BTreeMap::new();
        for iface in config.interfaces() {
            ifindexes.insert(iface.clone(), ifindex(&iface)?);
        }
        if let Some(prev) = &self.applied {
            if prev.flow_table_size != config.flow_table_size {
                bail!("flow_table_size: changing the flow table size needs a restart of canaryd");
            }
        }
        let prev = self.applied.clone();
        let prev_service = |name: &str| {
            prev.as_ref()
                .and_then(|c| c.services.iter().find(|s| s.name == name))
                .cloned()
        };

        // Ids: kept for known services and backends, fresh ones for new.
        let mut ids = if self.adopted && self.applied.is_none() {
            Ids::adopt(&self.maps, config)
        } else {
            self.ids.clone()
        };
        let active_slots: HashSet<u32> = (0..MAX_SERVICES)
            .filter(|i| {
                self.maps
                    .services
                    .get(i, 0)
                    .map(|s| s.active != 0)
                    .unwrap_or(false)
            })
            .collect();
        let mut plan = Vec::new();
        let mut fresh_services = Vec::new();
        let mut fresh_backends = Vec::new();
        for s in &config.services {
            let known = ids.services.contains_key(&s.name);
            let sid = ids.service(&s.name, &active_slots)?;
            if !known {
                fresh_services.push(sid);
            }
            let mut members = Vec::new();
            for v in [Version::Stable, Version::Canary] {
                for b in s.pool(v) {
                    let known = ids.backends.contains_key(&(sid, *b));
                    let bid = ids.backend(sid, *b)?;
                    if !known {
                        fresh_backends.push(bid);
                    }
                    members.push((v, *b, bid));
                }
            }
            plan.push((s, sid, members));
        }
        let planned_sids: HashSet<u32> = plan.iter().map(|(_, sid, _)| *sid).collect();

        // The desired contents of the keyed maps.
        let mut want_vips: HashMap<VipKey, VipInfo> = HashMap::new();
        let mut want_rev: HashMap<BackendAddrKey, ReverseNat> = HashMap::new();
        let mut want_overrides = HashSet::new();
        for (s, sid, members) in &plan {
            let info = VipInfo {
                service_id: *sid,
                affinity: match s.affinity {
                    Affinity::SourceIp => AFFINITY_SOURCE_IP,
                    Affinity::Flow => AFFINITY_FLOW,
                },
            };
            want_vips.insert(vip_key(s), info);
            want_vips.insert(vip_marker(s.vip), info);
            for (v, b, bid) in members {
                want_rev.insert(
                    backend_addr_key(s, *b),
                    ReverseNat {
                        vip: to_words(s.vip),
                        service_id: *sid,
                        backend_id: *bid,
                        version: v.index(),
                        _pad: 0,
                    },
                );
            }
            for o in &s.overrides {
                want_overrides.insert(override_key(*sid, o.cidr.addr(), o.cidr.prefix_len()));
            }
        }

        let mut report = ApplyReport::default();

        // 1. VIPs nobody wants any more go first, so no new packet reaches a
        //    service while it is being dismantled.
        let stale_vips: Vec<VipKey> = self
            .maps
            .vips
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want_vips.contains_key(k))
            .collect();
        for k in &stale_vips {
            let _ = self.maps.vips.remove(k);
        }

        // 2. Counters of ids handed out afresh start from zero.
        for sid in &fresh_services {
            for v in 0..canary_common::NUM_VERSIONS {
                self.zero_version_stats(*sid, v)?;
            }
        }
        for bid in &fresh_backends {
            self.zero_backend_stats(*bid)?;
        }

        // 3. Every configured service: backends, reverse NAT, Maglev tables,
        //    overrides, the service entry, and its VIP last.
        for (s, sid, members) in &plan {
            let old = prev_service(&s.name);
            for (v, b, bid) in members {
                self.maps.backends.set(
                    *bid,
                    BackendInfo {
                        addr: to_words(*b),
                        family: family(*b) as u32,
                        service_id: *sid,
                        version: v.index(),
                        _pad: 0,
                    },
                    0,
                )?;
                self.maps.reverse_nat.insert(
                    backend_addr_key(s, *b),
                    want_rev[&backend_addr_key(s, *b)],
                    0,
                )?;
            }
            let mut state = self.maps.services.get(sid, 0).unwrap_or_default();
            for v in [Version::Stable, Version::Canary] {
                let all: Vec<(IpAddr, u32)> = members
                    .iter()
                    .filter(|(mv, _, _)| *mv == v)
                    .map(|(_, b, id)| (*b, *id))
                    .collect();
                let healthy: Vec<(IpAddr, u32)> = all
                    .iter()
                    .filter(|(b, _)| !self.unhealthy.contains(&(s.name.clone(), *b)))
                    .copied()
                    .collect();
                let pool = if healthy.is_empty() { all } else { healthy };
                let table = maglev::build_table(&pool, MAGLEV_TABLE_SIZE);
                let vi = v.index();
                let live_gen = state.live_gen[vi as usize] & 1;
                let live = match self.maglev_live.remove(&(*sid, vi)) {
                    Some(cached) => Some(cached),
                    // Adopted maps: read what the kernel is using now.
                    None if state.active != 0 => {
                        Some((live_gen, self.read_maglev(*sid, vi, live_gen)?))
                    }
                    None => None,
                };
                let generation = match live {
                    Some((g, t)) if t == table => g,
                    Some((g, t)) => {
                        let next = 1 - g;
                        self.write_maglev(*sid, vi, next, &table)?;
                        report.lines.push(format!(
                            "service {}: {} pool now {} backends ({}), {:.1}% of Maglev slots moved",
                            s.name,
                            v.name(),
                            pool.len(),
                            pool.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>().join(", "),
                            maglev::moved_fraction(&t, &table) * 100.0
                        ));
                        next
                    }
                    None => {
                        self.write_maglev(*sid, vi, 0, &table)?;
                        0
                    }
                };
                state.live_gen[vi as usize] = generation;
                state.pool_size[vi as usize] = pool.len() as u32;
                self.maglev_live.insert((*sid, vi), (generation, table));
            }
            for o in &s.overrides {
                let (bits, data) = override_key(*sid, o.cidr.addr(), o.cidr.prefix_len());
                self.maps.overrides.insert(
                    &LpmKey::new(bits, data),
                    OverrideValue {
                        version: o.version.index(),
                    },
                    0,
                )?;
            }
            let old_weight = if state.active != 0 {
                Some(state.weight_bp)
            } else {
                None
            };
            state.weight_bp = s.weight_bp();
            state.seed = s.seed();
            state.active = 1;
            // One write: weight, seed and the live generations switch together.
            self.maps.services.set(*sid, state, 0)?;
            match (old_weight, &old) {
                (Some(w), _) if w != state.weight_bp => report.lines.push(format!(
                    "service {}: canary weight {} -> {} (config)",
                    s.name,
                    WeightBp::from_bp(w),
                    s.weight()
                )),
                (None, _) | (_, None) => report.lines.push(format!(
                    "service {} (id {sid}): {}:{} {:?}, canary weight {}, {} stable + {} canary backends",
                    s.name,
                    s.vip,
                    s.port,
                    s.protocol,
                    s.weight(),
                    s.stable.len(),
                    s.canary.len()
                )),
                _ => {}
            }
            self.maps
                .vips
                .insert(vip_marker(s.vip), want_vips[&vip_marker(s.vip)], 0)?;
            self.maps
                .vips
                .insert(vip_key(s), want_vips[&vip_key(s)], 0)?;
        }

        // 4. Leftovers: reverse NAT and overrides nobody wants, service slots
        //    no longer configured.
        let stale_rev: Vec<BackendAddrKey> = self
            .maps
            .reverse_nat
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want_rev.contains_key(k))
            .collect();
        for k in stale_rev {
            let _ = self.maps.reverse_nat.remove(&k);
        }
        let stale_overrides: Vec<LpmKey<canary_common::OverrideKeyData>> = self
            .maps
            .overrides
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want_overrides.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale_overrides {
            let _ = self.maps.overrides.remove(&k);
        }
        for sid in active_slots.difference(&planned_sids) {
            self.maps.services.set(*sid, ServiceState::default(), 0)?;
            self.maglev_live.remove(&(*sid, 0));
            self.maglev_live.remove(&(*sid, 1));
            let name = self
                .ids
                .services
                .iter()
                .find(|(_, id)| *id == sid)
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| format!("id {sid}"));
            report.lines.push(format!("service {name}: removed"));
        }

        // 5. Interfaces: redirect ports, then attachments.
        let wanted: HashSet<u32> = ifindexes.values().copied().collect();
        for idx in ifindexes.values() {
            self.maps.tx_ports.insert(*idx, *idx, None, 0)?;
        }
        let stale_ports: Vec<u32> = self
            .maps
            .tx_ports
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !wanted.contains(k))
            .collect();
        for k in stale_ports {
            let _ = self.maps.tx_ports.remove(k);
        }
        self.attach_interfaces(&ifindexes, &mut report)?;

        let keep_services: HashSet<String> =
            config.services.iter().map(|s| s.name.clone()).collect();
        let keep_backends: HashSet<(u32, IpAddr)> = plan
            .iter()
            .flat_map(|(_, sid, m)| m.iter().map(move |(_, b, _)| (*sid, *b)))
            .collect();
        ids.retain(&keep_services, &keep_backends);
        self.ids = ids;
        self.applied = Some(config.clone());
        // Interfaces or backends may have changed: no cached next hop is
        // trusted past this point. (A failed bump only delays that by the
        // kernel's own one-second ageing; the config is applied either way.)
        if let Err(e) = self.maps.bump_nexthop_gen() {
            warn!("invalidating cached next hops: {e:#}");
        }
        Ok(report)
    }

    fn read_maglev(&self, sid: u32, version: u32, generation: u32) -> Result<Vec<u32>> {
        let base = maglev_base(sid, version, generation);
        (0..MAGLEV_TABLE_SIZE)
            .map(|i| Ok(self.maps.maglev.get(&(base + i), 0)?))
            .collect()
    }

    /// Per-version counters and health signals of a fresh (possibly reused)
    /// service id start from zero.
    fn zero_version_stats(&mut self, sid: u32, version: u32) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let index = canary_common::version_stats_index(sid, version);
        let zeros = PerCpuValues::try_from(vec![canary_common::VersionStats::default(); n])?;
        self.maps.version_stats.set(index, zeros, 0)?;
        let zeros = PerCpuValues::try_from(vec![canary_common::HealthStats::default(); n])?;
        self.maps.health_stats.set(index, zeros, 0)?;
        Ok(())
    }

    fn zero_backend_stats(&mut self, bid: u32) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zeros = PerCpuValues::try_from(vec![canary_common::BackendStats::default(); n])?;
        self.maps.backend_stats.set(bid, zeros, 0)?;
        Ok(())
    }

    fn write_maglev(
        &mut self,
        sid: u32,
        version: u32,
        generation: u32,
        table: &[u32],
    ) -> Result<()> {
        let base = maglev_base(sid, version, generation);
        for (i, id) in table.iter().enumerate() {
            self.maps.maglev.set(base + i as u32, id, 0)?;
        }
        Ok(())
    }

    fn link_pin(&self, iface: &str) -> PathBuf {
        self.pin_dir.join("links").join(iface)
    }

    /// Attaches to every wanted interface: a link pinned by an earlier
    /// canaryd is taken over by swapping our program into it (atomic, no
    /// packet sees no program); otherwise a new link is created and pinned.
    /// Links of interfaces no longer wanted are removed.
    fn attach_interfaces(
        &mut self,
        wanted: &BTreeMap<String, u32>,
        report: &mut ApplyReport,
    ) -> Result<()> {
        for iface in wanted.keys() {
            if self.links.contains_key(iface) {
                continue;
            }
            let pin = self.link_pin(iface);
            let program: &mut Xdp = self
                .ebpf
                .program_mut(PROGRAM)
                .context("program")?
                .try_into()?;
            let mut adopted = None;
            if pin.exists() {
                let swap = PinnedLink::from_pin(&pin)
                    .map_err(anyhow::Error::from)
                    .and_then(|p| Ok(XdpLink::try_from(FdLink::from(p))?))
                    .and_then(|l| Ok(program.attach_to_link(l)?));
                match swap {
                    Ok(id) => adopted = Some(id),
                    Err(e) => {
                        warn!("pinned link on {iface} is stale ({e:#}); attaching afresh");
                        let _ = std::fs::remove_file(&pin);
                    }
                }
            }
            let link_id = match adopted {
                Some(id) => {
                    report
                        .lines
                        .push(format!("took over the XDP link on {iface}"));
                    id
                }
                None => {
                    let id = program
                        .attach(iface, XdpMode::default())
                        .with_context(|| format!("attaching XDP to {iface}"))?;
                    report.lines.push(format!("attached to {iface}"));
                    id
                }
            };
            let fd_link = FdLink::try_from(program.take_link(link_id)?)?;
            let fd_link = if pin.exists() {
                fd_link
            } else {
                FdLink::from(
                    fd_link
                        .pin(&pin)
                        .with_context(|| format!("pinning {}", pin.display()))?,
                )
            };
            self.links.insert(iface.clone(), fd_link);
        }
        // Interfaces dropped from the config, including links an earlier
        // canaryd pinned for interfaces this config does not name.
        let mut stale: Vec<String> = self
            .links
            .keys()
            .filter(|i| !wanted.contains_key(*i))
            .cloned()
            .collect();
        if let Ok(entries) = std::fs::read_dir(self.pin_dir.join("links")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !wanted.contains_key(&name) && !stale.contains(&name) {
                    stale.push(name);
                }
            }
        }
        for iface in stale {
            let _ = std::fs::remove_file(self.link_pin(&iface));
            self.links.remove(&iface);
            report.lines.push(format!("detached from {iface}"));
        }
        Ok(())
    }

    /// Detaches from every interface and removes the pins: the data plane is
    /// gone once this returns (and the flow table with it).
    pub fn teardown(&mut self) -> Result<()> {
        for iface in std::mem::take(&mut self.links).into_keys() {
            let _ = std::fs::remove_file(self.link_pin(&iface));
        }
        remove_pins(&self.pin_dir)?;
        info!("detached and removed {}", self.pin_dir.display());
        Ok(())
    }
}

/// Removes an instance's pins (links first, so the program detaches, then
/// maps) and its directory.
pub fn remove_pins(dir: &std::path::Path) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir.join("links")) {
        for e in entries.flatten() {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    let _ = std::fs::remove_dir(dir.join("links"));
    for name in canary_common::names::ALL {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing pin {}", path.display()))?;
        }
    }
    let _ = std::fs::remove_dir(dir);
    // The shared parent goes too once the last instance has left it.
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("interface {name}: no such interface in this network namespace");
    }
    Ok(idx)
}
