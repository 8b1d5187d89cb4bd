//! Attachment and pins: the XDP program on each interface through a link
//! pinned under `links/` (so it outlives canaryd), the teardown that removes
//! it all, and the interface lookup.

use super::*;

impl DataPlane {
    pub(super) fn link_pin(&self, iface: &str) -> PathBuf {
        self.pin_dir.join("links").join(iface)
    }

    /// Attaches to every wanted interface: a link pinned by an earlier
    /// canaryd is taken over by swapping our program into it (atomic, no
    /// packet sees no program); otherwise a new link is created and pinned.
    /// Links of interfaces no longer wanted are removed.
    pub(super) fn attach_interfaces(
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
        self.pin_watch.stop();
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
    // Layout 1's NEXTHOP_GEN too, should its pins never have been migrated.
    let v1 = [canary_common::names::NEXTHOP_GEN_V1];
    for name in canary_common::names::ALL.iter().chain(v1.iter()) {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing pin {}", path.display()))?;
        }
    }
    // An upgrade interrupted midway leaves the old layout's pins aside.
    super::migrate::remove_aside(dir)?;
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
