//! Upgrade in place from layout 1's pins (canaryd before the flow
//! lifecycle: 64-byte `FlowState`, `NEXTHOP_GEN`, 64 services / 4,096
//! backends), so that upgrading canaryd keeps open connections.
//!
//! 1. `DataPlane::load`, before aya opens any pin: [`move_aside`] renames
//!    layout 1's map pins into `<pin dir>/layout1/`. `links/` stays: the old
//!    program stays attached and keeps forwarding with its own maps (the
//!    pins are only names; the program holds the maps). The new object then
//!    gets fresh maps. If the load fails, the guard puts the old pins back
//!    (an older canaryd started again adopts them as if nothing happened).
//! 2. The first `apply`, after every map is written and BEFORE the new
//!    program is swapped into the pinned links ([`DataPlane::attach_migrating`]):
//!    every old flow is copied into the new `FLOWS` (key unchanged; the
//!    backend by its VIP's service and its address, ids are reassigned;
//!    value by `FlowStateV1::upgrade`), with `BPF_NOEXIST`.
//! 3. The links are swapped (atomic per interface). A second pass copies the
//!    flows the old program inserted meanwhile, then the old pins are
//!    removed (the old maps go with the old program).
//!
//! Failures: before the swap the old data plane is untouched and
//! `layout1/` stays, so the next start retries the whole upgrade (an apply
//! error says so). A pin directory holding layout-1 pins both in place and
//! in `layout1/` is refused (which one is live cannot be told).

use super::*;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapInfo};
use canary_common::layout_v1::FlowStateV1;
use canary_common::{names, FlowKey, FlowState};
use std::path::Path;

/// Where layout 1's pins wait, inside the pin directory, while an upgrade
/// is under way.
pub const ASIDE: &str = "layout1";

/// `bpf_map_update_elem` flags.
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

pub fn aside_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(ASIDE)
}

/// Map pins directly in `dir` (everything but the `links/` and `layout1/`
/// directories).
fn map_pins(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            continue;
        }
        out.push(e.file_name().to_string_lossy().to_string());
    }
    out.sort();
    Ok(out)
}

/// Layout 1's pins in `dir`: its `NEXTHOP_GEN`, or a `FLOWS` with
/// 64-byte values.
pub fn is_layout1(dir: &Path) -> Result<bool> {
    if dir.join(names::NEXTHOP_GEN_V1).exists() {
        return Ok(true);
    }
    let flows = dir.join(names::FLOWS);
    if !flows.exists() {
        return Ok(false);
    }
    let info = MapInfo::from_pin(&flows)
        .with_context(|| format!("reading pinned map {}", flows.display()))?;
    Ok(info.value_size() as usize == std::mem::size_of::<FlowStateV1>())
}

/// Layout 1's pins moved aside by [`move_aside`]: put back when dropped
/// unless [`MovedAside::keep`] was called (the new object loaded).
#[must_use = "drop puts the old pins back; call keep() once the new object is loaded"]
pub struct MovedAside {
    dir: PathBuf,
    /// Pins this guard would put back (empty: nothing to undo).
    moved: Vec<String>,
}

impl MovedAside {
    /// The new object loaded: the old pins stay aside for the first apply.
    pub fn keep(mut self) {
        self.moved.clear();
    }
}

impl Drop for MovedAside {
    fn drop(&mut self) {
        if self.moved.is_empty() {
            return;
        }
        let aside = aside_dir(&self.dir);
        // Whatever the failed load pinned in the directory is new (the old
        // pins were all moved aside first).
        if let Ok(new) = map_pins(&self.dir) {
            for name in new {
                let _ = std::fs::remove_file(self.dir.join(&name));
            }
        }
        let mut failed = Vec::new();
        for name in &self.moved {
            if let Err(e) = std::fs::rename(aside.join(name), self.dir.join(name)) {
                failed.push(format!("{name}: {e}"));
            }
        }
        if failed.is_empty() {
            let _ = std::fs::remove_dir(&aside);
            error!(
                "upgrade from layout 1 not done: the old data plane is still attached and \
                 forwarding, its pins are back in {}",
                self.dir.display()
            );
        } else {
            error!(
                "upgrade from layout 1 not done: the old data plane is still attached and \
                 forwarding, but putting its pins back failed ({}); they are in {}",
                failed.join("; "),
                aside.display()
            );
        }
    }
}

/// Moves layout 1's map pins in `dir` into `dir/layout1/` so the new
/// object gets fresh maps (aya reuses pins by name). Leaves `links/` alone.
/// Called by `DataPlane::load` before the object is loaded.
pub fn move_aside(dir: &Path) -> Result<MovedAside> {
    let aside = aside_dir(dir);
    let none = MovedAside {
        dir: dir.to_path_buf(),
        moved: Vec::new(),
    };
    if aside.is_dir() {
        if !aside.join(names::FLOWS).exists() || !aside.join(names::BACKENDS).exists() {
            bail!(
                "{} holds no layout-1 FLOWS and BACKENDS pins: remove it (an unfinished \
                 upgrade cannot be resumed from it)",
                aside.display()
            );
        }
        if is_layout1(dir)? {
            bail!(
                "layout-1 pins both in {} and in {}: an older canaryd ran after an \
                 unfinished upgrade; remove the stale set (the live one is the one the \
                 attached program uses) and start again",
                dir.display(),
                aside.display()
            );
        }
        // An earlier upgrade stopped midway: resume it.
        let pins = map_pins(dir)?;
        info!(
            "resuming an unfinished upgrade from layout 1 ({} holds the old pins)",
            aside.display()
        );
        if pins.is_empty() {
            // It stopped before the new object was loaded: the same as a
            // fresh start, including putting the pins back on failure.
            return Ok(MovedAside {
                dir: dir.to_path_buf(),
                moved: map_pins(&aside)?,
            });
        }
        return Ok(none);
    }
    if !is_layout1(dir)? {
        return Ok(none);
    }
    let pins = map_pins(dir)?;
    info!(
        "pins of map layout 1 in {}: upgrading in place (open connections are carried \
         over at the first apply)",
        dir.display()
    );
    std::fs::create_dir(&aside).with_context(|| format!("creating {}", aside.display()))?;
    let mut guard = MovedAside {
        dir: dir.to_path_buf(),
        moved: Vec::new(),
    };
    for name in pins {
        std::fs::rename(dir.join(&name), aside.join(&name)).with_context(|| {
            format!(
                "moving pin {name} of {} into {}",
                dir.display(),
                aside.display()
            )
        })?; // the guard puts back what was moved
        guard.moved.push(name);
    }
    Ok(guard)
}

/// Removes `dir/layout1/` and what is pinned in it (the old maps go once
/// the old program is gone too).
pub fn remove_aside(dir: &Path) -> Result<()> {
    let aside = aside_dir(dir);
    if !aside.is_dir() {
        return Ok(());
    }
    for name in map_pins(&aside)? {
        std::fs::remove_file(aside.join(&name))
            .with_context(|| format!("removing {}", aside.join(&name).display()))?;
    }
    std::fs::remove_dir(&aside).with_context(|| format!("removing {}", aside.display()))?;
    Ok(())
}

/// Where a migrated flow goes: per VIP (as `FLOWS` keys name it), the new
/// backend id of each backend address the config has for its service.
#[derive(Debug, Default, Clone)]
pub struct Mapping {
    by_vip: HashMap<VipKey, HashMap<IpAddr, u32>>,
}

impl Mapping {
    /// From the config being applied and the ids `apply` gave it.
    pub fn new(config: &Config, ids: &Ids) -> Mapping {
        let mut m = Mapping::default();
        for s in &config.services {
            let Some(sid) = ids.services.get(&s.name) else {
                continue;
            };
            let backends = m.by_vip.entry(vip_key(s)).or_default();
            for v in [Version::Stable, Version::Canary] {
                for b in s.pool(v) {
                    if let Some(bid) = ids.backends.get(&(*sid, *b)) {
                        backends.insert(*b, *bid);
                    }
                }
            }
        }
        m
    }

    #[cfg(test)]
    fn insert(&mut self, vip: VipKey, addr: IpAddr, id: u32) {
        self.by_vip.entry(vip).or_default().insert(addr, id);
    }
}

/// Why an old flow is not carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its VIP is not in the new config.
    Service,
    /// Its backend is not (or no longer) in its service's pools.
    Backend,
}

/// The pure part: an old flow in the new layout, or why not. `old_backend`
/// is the old `BACKENDS` entry its `backend_id` named.
pub fn translate(
    key: &FlowKey,
    old: &FlowStateV1,
    old_backend: Option<&BackendInfo>,
    mapping: &Mapping,
    now_s: u32,
) -> std::result::Result<FlowState, Skip> {
    let vip = VipKey::new(key.dst, key.dport, key.proto, key.family);
    let backends = mapping.by_vip.get(&vip).ok_or(Skip::Service)?;
    let b = old_backend
        .filter(|b| b.family == 4 || b.family == 6)
        .ok_or(Skip::Backend)?;
    let addr = canary_common::addr::from_words(b.addr, b.family as u8);
    let id = backends.get(&addr).ok_or(Skip::Backend)?;
    Ok(old.upgrade(*id, now_s))
}

/// What a copy pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub copied: u64,
    /// Already in the new table (a resumed upgrade's earlier pass).
    pub present: u64,
    pub no_service: u64,
    pub no_backend: u64,
    pub failed: u64,
}

/// Layout 1's FLOWS and BACKENDS, opened from `layout1/`.
struct OldMaps {
    flows: BpfHashMap<MapData, FlowKey, FlowStateV1>,
    backends: Vec<BackendInfo>,
}

impl OldMaps {
    fn open(aside: &Path) -> Result<OldMaps> {
        let open = |name: &str| -> Result<Map> {
            super::maps::open_pinned(aside, name).context("layout 1's maps")
        };
        let flows = BpfHashMap::try_from(open(names::FLOWS)?)
            .context("layout 1's FLOWS has an unexpected type or layout")?;
        let backends: Array<MapData, BackendInfo> = Array::try_from(open(names::BACKENDS)?)
            .context("layout 1's BACKENDS has an unexpected type or layout")?;
        let backends = backends
            .iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .context("reading layout 1's BACKENDS")?;
        Ok(OldMaps { flows, backends })
    }

    /// Copies the old flows into `into`. `seen` holds the keys an earlier
    /// pass took; entries it holds are left alone, and it gains the keys of
    /// this pass. The `first` pass inserts only where no entry
    /// is (`BPF_NOEXIST`: a resumed upgrade must not undo the new program's
    /// decisions); a later pass takes only the flows the old program made
    /// since, and overwrites: the old program forwarded them, so their
    /// backend has the connection.
    fn copy(
        &self,
        into: &mut BpfHashMap<MapData, FlowKey, FlowState>,
        mapping: &Mapping,
        now_s: u32,
        first: bool,
        seen: &mut HashSet<FlowKey>,
    ) -> Counts {
        let mut c = Counts::default();
        for (key, old) in self.flows.iter().filter_map(|r| r.ok()) {
            if !first && seen.contains(&key) {
                continue;
            }
            seen.insert(key);
            let backend = self.backends.get(old.backend_id as usize);
            match translate(&key, &old, backend, mapping, now_s) {
                Err(Skip::Service) => c.no_service += 1,
                Err(Skip::Backend) => c.no_backend += 1,
                Ok(state) => {
                    let flags = if first { BPF_NOEXIST } else { BPF_ANY };
                    match into.insert(key, state, flags) {
                        Ok(()) => c.copied += 1,
                        Err(aya::maps::MapError::SyscallError(e))
                            if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
                        {
                            c.present += 1
                        }
                        Err(_) => c.failed += 1,
                    }
                }
            }
        }
        c
    }
}

/// CLOCK_MONOTONIC seconds, the data path's `last_seen` clock.
fn now_s() -> Result<u32> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(t.tv_sec() as u32)
}

impl DataPlane {
    /// `attach_interfaces`, carrying layout 1's open connections over when
    /// an upgrade is under way (`layout1/` exists): copy, swap the program
    /// into the links, copy what came meanwhile, drop the old pins.
    pub(super) fn attach_migrating(
        &mut self,
        ifindexes: &BTreeMap<String, u32>,
        unattached: &[String],
        config: &Config,
        ids: &Ids,
        report: &mut ApplyReport,
    ) -> Result<()> {
        let aside = aside_dir(&self.pin_dir);
        if !aside.is_dir() {
            return self.attach_interfaces(ifindexes, unattached, report);
        }
        let unfinished = || {
            format!(
                "upgrade from layout 1: the old data plane is left attached, its pins stay in \
                 {} and the next start retries",
                aside.display()
            )
        };
        let old = OldMaps::open(&aside).with_context(unfinished)?;
        let mapping = Mapping::new(config, ids);
        let mut seen = HashSet::new();
        let before = old.copy(&mut self.maps.flows, &mapping, now_s()?, true, &mut seen);
        self.attach_interfaces(ifindexes, unattached, report)
            .with_context(unfinished)?;
        let after = old.copy(&mut self.maps.flows, &mapping, now_s()?, false, &mut seen);
        drop(old);
        let line = summary(&before, &after);
        info!("{line}");
        report.lines.push(line);
        match remove_aside(&self.pin_dir) {
            Ok(()) => report
                .lines
                .push("upgrade from layout 1: old maps removed".to_string()),
            Err(e) => {
                let line = format!(
                    "upgrade from layout 1: removing the old pins in {}: {e:#} (remove them by hand)",
                    aside.display()
                );
                warn!("{line}");
                report.lines.push(line);
            }
        }
        Ok(())
    }
}

/// The report line of an upgrade's two copy passes.
pub fn summary(before: &Counts, after: &Counts) -> String {
    let skipped = before.no_service + before.no_backend + after.no_service + after.no_backend;
    let mut s = format!(
        "upgrade from layout 1: {} open flows carried over ({} before the switch, {} after), \
         {skipped} skipped (service or backend gone: {} / {})",
        before.copied + after.copied,
        before.copied,
        after.copied,
        before.no_service + after.no_service,
        before.no_backend + after.no_backend,
    );
    if before.present + after.present > 0 {
        s += &format!(", {} already present", before.present + after.present);
    }
    if before.failed + after.failed > 0 {
        s += &format!(", {} could not be inserted", before.failed + after.failed);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_common::addr::{flow_key, to_words, vip_key};
    use canary_common::flow::{closing, FLOW_REPLIED};

    fn backend(addr: &str, service_id: u32) -> BackendInfo {
        let ip: IpAddr = addr.parse().unwrap();
        BackendInfo {
            addr: to_words(ip),
            family: canary_common::addr::family(ip) as u32,
            service_id,
            version: 0,
            _pad: 0,
        }
    }

    fn mapping() -> Mapping {
        let mut m = Mapping::default();
        let vip: IpAddr = "198.18.100.1".parse().unwrap();
        m.insert(
            vip_key(vip, 80, PROTO_TCP),
            "198.18.1.2".parse().unwrap(),
            5,
        );
        m.insert(
            vip_key(vip, 80, PROTO_TCP),
            "198.18.2.2".parse().unwrap(),
            6,
        );
        let vip6: IpAddr = "2001:db8:100::1".parse().unwrap();
        m.insert(
            vip_key(vip6, 80, PROTO_TCP),
            "2001:db8:1::2".parse().unwrap(),
            7,
        );
        m
    }

    fn key(client: &str, vip: &str, port: u16, proto: u8) -> FlowKey {
        flow_key(
            client.parse().unwrap(),
            40000,
            vip.parse().unwrap(),
            port,
            proto,
        )
    }

    #[test]
    fn a_flow_keeps_its_backend_under_its_new_id() {
        let k = key("198.18.16.1", "198.18.100.1", 80, PROTO_TCP);
        // Old id 3 named 198.18.2.2 (old service id 9); its new id is 6.
        let old = FlowStateV1 {
            backend_id: 3,
            version: 1,
            service_id: 9,
            ..Default::default()
        };
        let got = translate(&k, &old, Some(&backend("198.18.2.2", 9)), &mapping(), 100).unwrap();
        assert_eq!(got.backend_id, 6);
        assert_eq!(got.version, 1);
        assert_eq!(got.last_seen, 100);
        assert_eq!(got.flags & FLOW_REPLIED, FLOW_REPLIED);
        assert!(!closing(got.flags));
        let k6 = key("2001:db8:1000::1", "2001:db8:100::1", 80, PROTO_TCP);
        let got = translate(&k6, &old, Some(&backend("2001:db8:1::2", 1)), &mapping(), 1);
        assert_eq!(got.unwrap().backend_id, 7);
    }

    #[test]
    fn gone_services_and_backends_are_skipped() {
        let old = FlowStateV1 {
            backend_id: 3,
            ..Default::default()
        };
        let b = backend("198.18.1.2", 0);
        // Another port, another protocol, another address: not a VIP now.
        for k in [
            key("198.18.16.1", "198.18.100.1", 81, PROTO_TCP),
            key("198.18.16.1", "198.18.100.1", 80, PROTO_UDP),
            key("198.18.16.1", "198.18.100.2", 80, PROTO_TCP),
        ] {
            assert_eq!(
                translate(&k, &old, Some(&b), &mapping(), 0),
                Err(Skip::Service)
            );
        }
        let k = key("198.18.16.1", "198.18.100.1", 80, PROTO_TCP);
        // A backend no longer in the pools, an empty slot, an id past the table.
        assert_eq!(
            translate(&k, &old, Some(&backend("198.18.3.2", 0)), &mapping(), 0),
            Err(Skip::Backend)
        );
        assert_eq!(
            translate(&k, &old, Some(&BackendInfo::default()), &mapping(), 0),
            Err(Skip::Backend)
        );
        assert_eq!(translate(&k, &old, None, &mapping(), 0), Err(Skip::Backend));
        // A backend of another VIP's service is not this one's.
        assert_eq!(
            translate(&k, &old, Some(&backend("2001:db8:1::2", 0)), &mapping(), 0),
            Err(Skip::Backend)
        );
    }

    #[test]
    fn closed_flows_stay_closed() {
        let k = key("198.18.16.1", "198.18.100.1", 80, PROTO_TCP);
        let old = FlowStateV1 {
            backend_id: 0,
            flags: 1,
            ..Default::default()
        };
        let got = translate(&k, &old, Some(&backend("198.18.1.2", 0)), &mapping(), 0).unwrap();
        assert!(closing(got.flags));
    }

    #[test]
    fn summary_counts_both_passes() {
        let before = Counts {
            copied: 48,
            no_backend: 1,
            ..Default::default()
        };
        let after = Counts {
            copied: 2,
            no_service: 3,
            failed: 1,
            ..Default::default()
        };
        assert_eq!(
            summary(&before, &after),
            "upgrade from layout 1: 50 open flows carried over (48 before the switch, 2 after), \
             4 skipped (service or backend gone: 3 / 1), 1 could not be inserted"
        );
    }

    #[test]
    fn pins_move_aside_and_back() {
        let dir = std::env::temp_dir().join(format!("C-migrate-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("links")).unwrap();
        for name in ["FLOWS", "BACKENDS", "NEXTHOP_GEN"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        std::fs::write(dir.join("links/eth0"), "").unwrap();
        {
            let guard = move_aside(&dir).unwrap();
            assert!(!dir.join("NEXTHOP_GEN").exists());
            assert!(aside_dir(&dir).join("NEXTHOP_GEN").exists());
            assert!(dir.join("links/eth0").exists());
            // The failed load's own pin goes; the old ones come back.
            std::fs::write(dir.join("SETTINGS"), "").unwrap();
            drop(guard);
        }
        assert!(dir.join("NEXTHOP_GEN").exists() && dir.join("FLOWS").exists());
        assert!(!dir.join("SETTINGS").exists());
        assert!(!aside_dir(&dir).exists());
        // Kept: they stay aside; a second start resumes (nothing to move).
        move_aside(&dir).unwrap().keep();
        std::fs::write(dir.join("SETTINGS"), "").unwrap();
        let again = move_aside(&dir).unwrap();
        assert!(again.moved.is_empty());
        again.keep();
        remove_aside(&dir).unwrap();
        assert!(!aside_dir(&dir).exists() && dir.join("links/eth0").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
