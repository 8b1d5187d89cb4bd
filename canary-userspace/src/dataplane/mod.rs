//! The data plane, and its only owner: the XDP object embedded in canaryd,
//! its maps and its attachments. Nothing outside this module opens a pin or
//! writes a map; the daemon asks `DataPlane` through its methods.
//!
//! Here: loading (or adopting pinned objects) and the questions and small
//! writes the daemon needs. By concern: `attach` (links and pins), `keys`
//! (the map-key encoder), `ids` (stable service and backend ids), `apply`
//! (config to maps), `maglev` (backend tables), `maps` (typed handles),
//! `explain` (one client's fate), `report` (counter snapshots), `pins`
//! (pins watched and restored while canaryd runs).

mod apply;
mod attach;
pub mod explain;
mod ids;
mod keys;
pub mod maglev;
pub mod maps;
pub mod migrate;
pub mod offloads;
pub mod pins;
pub mod report;
pub mod sweep;

pub use apply::ApplyReport;
pub use attach::{ifindex, remove_pins, InterfaceProblem, InterfaceState};
pub use ids::Ids;
pub use keys::{affinity_flag, flow_key, override_lookup_key, proto_number, vip_key};
use keys::{backend_addr_key, vip_marker};

use crate::config::{Affinity, Config, Protocol, ServiceConfig, Version};
use anyhow::{bail, Context, Result};
use aya::maps::lpm_trie::Key as LpmKey;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{xdp::XdpLink, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use canary_common::addr::{family, override_key, to_words};
use canary_common::weight::WeightBp;
use canary_common::{
    maglev_base, BackendAddrKey, BackendInfo, HealthStats, OverrideValue, ReverseNat, ServiceState,
    Settings, Signals, VipInfo, VipKey, AFFINITY_FLOW, AFFINITY_SOURCE_IP, DEFAULT_FLOW_TABLE_SIZE,
    DEFAULT_SERVICE_LIMIT, MAGLEV_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES, PROTO_TCP, PROTO_UDP,
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

/// What is sized when the data plane is loaded (a restart changes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// `FLOWS` entries (`flow_table.size`).
    pub flow_table_size: u32,
    /// Services the `MAGLEV` tables are sized for (`limits.services`).
    pub services: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flow_table_size: DEFAULT_FLOW_TABLE_SIZE,
            services: DEFAULT_SERVICE_LIMIT,
        }
    }
}

impl LoadOptions {
    /// The sizes a config asks for.
    pub fn from_config(config: &Config) -> LoadOptions {
        LoadOptions {
            flow_table_size: config.flow_table_entries(),
            services: config.limits.services,
        }
    }
}

/// CLOCK_MONOTONIC in whole seconds as the data path counts them
/// (`canary_common::flow::clock_secs`): the clock of the flow entries'
/// `last_seen`.
pub fn monotonic_s() -> u32 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            let ns = t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64;
            canary_common::flow::clock_secs(ns)
        })
        .unwrap_or(0)
}

/// Every address of every interface in this network namespace (what
/// `LOCAL_ADDRS` holds: a backend's packet to one of them is this host's
/// own connection, passed untouched).
pub fn local_addresses() -> Result<Vec<IpAddr>> {
    Ok(addresses_of(&InterfaceState::read_all()?))
}

/// Every address in `all` (`InterfaceState::read_all`) once, sorted.
fn addresses_of(all: &BTreeMap<String, InterfaceState>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = all.values().flat_map(|s| s.addresses.clone()).collect();
    out.sort();
    out.dedup();
    out
}

/// The config against this host as a start would find it (`canaryd
/// --check`), from one read of the interfaces: an error for an interface
/// that is missing or a loopback one, or a backend at one of the host's
/// addresses (a start refuses them); a line for an interface that is down
/// or has no address (a start attaches anyway, with a warning).
pub fn check_config_on_host(config: &Config) -> Result<Vec<String>> {
    let host = InterfaceState::read_all()?;
    let mut warnings = Vec::new();
    for (_, problem, said) in attach::interface_problems(config, &host)? {
        if problem == InterfaceProblem::Loopback {
            bail!("{said}");
        }
        warnings.push(format!(
            "{said}; a start attaches anyway (it carries the service once it is up and addressed)"
        ));
    }
    config.check_backends_not_on_host(&addresses_by_interface(host))?;
    Ok(warnings)
}

/// Every address of every interface in this network namespace, with the
/// interface it is on (an address on two interfaces is listed twice).
pub fn host_addresses() -> Result<Vec<(IpAddr, String)>> {
    Ok(addresses_by_interface(InterfaceState::read_all()?))
}

/// `all`'s addresses with the interface each is on.
fn addresses_by_interface(all: BTreeMap<String, InterfaceState>) -> Vec<(IpAddr, String)> {
    all.into_iter()
        .flat_map(|(name, s)| s.addresses.into_iter().map(move |a| (a, name.clone())))
        .collect()
}

/// The IP address of an interface address entry (None for a link-layer
/// one).
fn ip_of(a: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        Some(IpAddr::V4(v4.ip()))
    } else {
        a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
    }
}

pub struct DataPlane {
    ebpf: Ebpf,
    /// Sizes fixed at load.
    options: LoadOptions,
    maps: Maps,
    instance: String,
    pin_dir: PathBuf,
    /// XDP links by interface; each is pinned under `links/`, so it outlives
    /// this process.
    links: BTreeMap<String, FdLink>,
    /// The attached veths' peers as last checked (`offloads`).
    veths: offloads::VethChecks,
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
    /// The pinned maps this data plane holds, watched with its links
    /// (`check_pins`: restored when removed while canaryd runs).
    pin_watch: pins::PinWatch,
}

impl DataPlane {
    /// Loads the embedded object with its maps pinned under
    /// /sys/fs/bpf/canary/<instance>/.
    pub fn load(instance: &str, flow_table_size: Option<u32>) -> Result<DataPlane> {
        DataPlane::load_with(
            instance,
            LoadOptions {
                flow_table_size: flow_table_size.unwrap_or(DEFAULT_FLOW_TABLE_SIZE),
                ..LoadOptions::default()
            },
        )
    }

    /// `load` with every load-time size (`flow_table.size`,
    /// `limits.services`).
    pub fn load_with(instance: &str, options: LoadOptions) -> Result<DataPlane> {
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
        let flows = options.flow_table_size;
        if !(1..=MAX_SERVICES).contains(&options.services) {
            bail!(
                "limits.services: {} is out of range (1 to {MAX_SERVICES})",
                options.services
            );
        }
        let adopted = dir.join(canary_common::names::SERVICES).exists();
        let aside = migrate::move_aside(&dir)?; // layout 1's pins: upgrade (migrate.rs)
        if adopted {
            crate::dataplane::maps::check_pinned_layout(&dir, flows, options.services)?;
            info!("adopting the pinned data plane in {}", dir.display());
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .map_max_entries(canary_common::names::FLOWS, flows)
            .map_max_entries(
                canary_common::names::MAGLEV,
                canary_common::maglev_entries(options.services),
            )
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
        // Before `Maps` takes the maps out of the object.
        let pin_watch = pins::PinWatch::record(&ebpf, &dir);
        let mut maps = Maps::from_ebpf(&mut ebpf)?;
        // This host's own addresses before anything is attached, so a reply
        // to one of its probes is never rewritten.
        maps.sync_local_addrs(&local_addresses()?)
            .context("filling LOCAL_ADDRS")?;
        aside.keep();
        Ok(DataPlane {
            ebpf,
            options,
            maps,
            instance: instance.to_string(),
            pin_dir: dir,
            links: BTreeMap::new(),
            veths: offloads::VethChecks::default(),
            adopted,
            ids: Ids::default(),
            applied: None,
            maglev_live: HashMap::new(),
            unhealthy: HashSet::new(),
            logger,
            pin_watch,
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

    /// Direct write access to the maps, for the bench and tests that fill a
    /// table (FLOWS at a million entries) without traffic. canaryd itself
    /// writes only through `apply` and the methods below.
    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// The instance name (the pin directory's name).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The sizes this data plane was loaded with.
    pub fn options(&self) -> LoadOptions {
        self.options
    }

    /// Where this data plane's maps are pinned.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    /// Makes `LOCAL_ADDRS` match this host's addresses now (canaryd calls
    /// it every few seconds); returns (added, removed).
    pub fn refresh_local_addrs(&mut self) -> Result<(usize, usize)> {
        self.set_local_addrs(&local_addresses()?)
    }

    /// Makes `LOCAL_ADDRS` hold `addrs` (`local_addresses`); returns
    /// (added, removed).
    fn set_local_addrs(&mut self, addrs: &[IpAddr]) -> Result<(usize, usize)> {
        if addrs.len() > canary_common::MAX_LOCAL_ADDRS as usize {
            warn!(
                "this host has {} addresses; LOCAL_ADDRS holds the first {}",
                addrs.len(),
                canary_common::MAX_LOCAL_ADDRS
            );
        }
        self.maps.sync_local_addrs(addrs)
    }

    /// Makes every cached next hop stale at once (their connections' next
    /// packets take a full route lookup). `apply` does it on every change.
    pub fn bump_nexthop_gen(&mut self) -> Result<()> {
        self.maps.bump_nexthop_gen()
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
    /// nothing else of an apply): the last resort of a rollback. Cohorts go
    /// off in the same write (their clients follow `weight`).
    pub fn force_weight(&mut self, service: &str, weight: WeightBp) -> Result<()> {
        let sid = self.service_id(service).context("service has no id")?;
        let mut entry = self.maps.services.get(&sid, 0)?;
        entry.weight_bp = weight.bp();
        entry.has_overrides &= !canary_common::SVC_COHORTS_LIVE;
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
        // Flow entries name their backend, not their service: the BACKENDS
        // entries of the service that are of `version` now. After a
        // `rollout finish` the former canary backends are stable while
        // their older connections' entries still say canary: a later
        // rollback's reset must leave those alone.
        let backends: HashSet<u32> = self
            .maps
            .backends_of(sid)
            .into_iter()
            .filter(|(_, b)| (b.version & 1) == version)
            .map(|(id, _)| id)
            .collect();
        let dir = self.pin_dir.clone();
        let service = service.to_string();
        std::thread::spawn(move || {
            let run = || -> Result<usize> {
                let map = maps::open_pinned(&dir, canary_common::names::FLOWS)?;
                let mut flows: aya::maps::HashMap<
                    aya::maps::MapData,
                    canary_common::FlowKey,
                    canary_common::FlowState,
                > = aya::maps::HashMap::try_from(map)?;
                let doomed: Vec<_> = flows
                    .iter()
                    .filter_map(|r| r.ok())
                    .filter(|(_, f)| {
                        backends.contains(&f.backend_id) && u32::from(f.version & 1) == version
                    })
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

    /// A version's judged signals (summed over CPUs).
    pub fn signals(&self, service: &str, version: u32) -> Option<Signals> {
        let sid = self.service_id(service)?;
        self.maps.signals(sid, version).ok()
    }

    /// A version's health counters (summed over CPUs; None when unknown or
    /// unreadable).
    pub fn health_counters(&self, service: &str, version: u32) -> Option<HealthStats> {
        let sid = self.service_id(service)?;
        self.maps.health_stats(sid, version).ok()
    }

    /// Removes the pending handshakes older than their service's timeout and
    /// returns them as (connection, service id, version).
    pub fn expire_handshakes(
        &mut self,
        now_ns: u64,
        timeout_ns: impl Fn(u32) -> u64,
    ) -> Vec<(canary_common::FlowKey, u32, u32)> {
        self.maps.expire_handshakes(now_ns, timeout_ns)
    }

    /// The judged failures the data plane recorded since the last call.
    pub fn drain_failures(&mut self) -> Vec<canary_common::FailureEvent> {
        self.maps.drain_failures()
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
}
