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
    /// Links of interfaces no longer wanted are removed. `unattached`: the
    /// wanted ones not attached yet (`plan` found them).
    pub(super) fn attach_interfaces(
        &mut self,
        wanted: &BTreeMap<String, u32>,
        unattached: &[String],
        report: &mut ApplyReport,
    ) -> Result<()> {
        for iface in unattached {
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
            self.pin_watch.hold_link(iface, &fd_link, &pin);
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
        // What the move means for traffic, said before the old interfaces
        // are detached (the new ones are attached already, above).
        report.lines.extend(move_lines(
            self.applied.as_ref(),
            unattached,
            &stale,
            wanted.keys(),
        ));
        for iface in stale {
            let _ = std::fs::remove_file(self.link_pin(&iface));
            self.pin_watch.release_link(&iface);
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

impl DataPlane {
    /// Those of `ifaces` this data plane is not attached to yet, in their
    /// order.
    pub(super) fn unattached<'a>(
        &self,
        ifaces: impl IntoIterator<Item = &'a String>,
    ) -> Vec<String> {
        ifaces
            .into_iter()
            .filter(|i| !self.links.contains_key(*i))
            .cloned()
            .collect()
    }

    /// The interfaces `config` attaches to, checked against this host's
    /// interfaces as `host` (`InterfaceState::read_all`) lists them, before
    /// anything is written (`plan`); `unattached` are those this data plane
    /// is not attached to yet. A loopback interface
    /// is refused always: no packet from another host arrives there. One
    /// that is down or has no address is refused on a reload (moving the
    /// data plane there would leave every new connection unanswered); at
    /// start it is a warning and canaryd attaches anyway, so that a restart
    /// during a link flap keeps control of the data plane (XDP attaches to a
    /// down link and works once it comes up). The same rules hold for
    /// `backend_interfaces`: replies come back there and packets to the
    /// backends leave there, so a down or unaddressed one loses its
    /// backends' traffic just as a wrong `interface` loses the clients'.
    ///
    /// An interface attached already is refused only if it is a loopback
    /// one (a data plane taken over from pins an older canaryd left on
    /// `lo`): its going down (or losing its addresses) since it was
    /// attached does not block a weight or a pool change.
    pub(super) fn check_interfaces(
        &self,
        config: &Config,
        unattached: &[String],
        host: &BTreeMap<String, InterfaceState>,
    ) -> Result<()> {
        let starting = self.applied.is_none();
        for (iface, problem, said) in interface_problems(config, host)? {
            if problem != InterfaceProblem::Loopback && !unattached.contains(&iface) {
                continue;
            }
            if problem == InterfaceProblem::Loopback || !starting {
                bail!("{said}");
            }
            warn!(
                "{said}; attached anyway at start (it carries the service once it is up \
                 and addressed)"
            );
        }
        Ok(())
    }
}

/// The config's interfaces that break a rule in `host` (`read_all`), each
/// with its problem and the line that says so (`interface: lo is a
/// loopback interface`); an error for one that is not there at all. The
/// start's check and `canaryd --check` both read it.
pub fn interface_problems(
    config: &Config,
    host: &BTreeMap<String, InterfaceState>,
) -> Result<Vec<(String, InterfaceProblem, String)>> {
    let mut out = Vec::new();
    for iface in config.interfaces() {
        if let Some(problem) = InterfaceState::find(host, &iface)?.problem() {
            let said = format!(
                "{}: {iface} {}",
                config.interface_field(&iface),
                problem.says()
            );
            out.push((iface, problem, said));
        }
    }
    Ok(out)
}

/// What `plan` needs to know of an interface before attaching to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceState {
    /// IFF_UP: set up by the administrator (whatever its carrier).
    pub up: bool,
    /// IFF_LOOPBACK.
    pub loopback: bool,
    /// Its IPv4 and IPv6 addresses, link-local ones included.
    pub addresses: Vec<IpAddr>,
}

/// Why an interface cannot carry the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceProblem {
    Loopback,
    Down,
    NoAddress,
}

impl InterfaceProblem {
    /// The end of `FIELD: IFACE ...`.
    pub fn says(self) -> &'static str {
        match self {
            InterfaceProblem::Loopback => {
                "is a loopback interface; no packet from another host arrives there"
            }
            InterfaceProblem::Down => {
                "is down (not IFF_UP); it carries no packet until it is set up"
            }
            InterfaceProblem::NoAddress => {
                "has no address, not even a link-local one; no route leads through it"
            }
        }
    }
}

impl InterfaceState {
    /// The flags and addresses of every interface in this network
    /// namespace, from one listing.
    pub fn read_all() -> Result<BTreeMap<String, InterfaceState>> {
        use nix::net::if_::InterfaceFlags as F;
        let mut all: BTreeMap<String, InterfaceState> = BTreeMap::new();
        for ifa in nix::ifaddrs::getifaddrs().context("listing this host's interfaces")? {
            let ip = ifa.address.as_ref().and_then(super::ip_of);
            let state = all.entry(ifa.interface_name).or_default();
            state.up |= ifa.flags.contains(F::IFF_UP);
            state.loopback |= ifa.flags.contains(F::IFF_LOOPBACK);
            state.addresses.extend(ip);
        }
        Ok(all)
    }

    /// `name`'s state in `all` (`read_all`), or why there is none.
    pub fn find<'a>(
        all: &'a BTreeMap<String, InterfaceState>,
        name: &str,
    ) -> Result<&'a InterfaceState> {
        all.get(name).with_context(|| {
            format!("interface {name}: no such interface in this network namespace")
        })
    }

    /// The first rule this interface breaks, if any.
    pub fn problem(&self) -> Option<InterfaceProblem> {
        if self.loopback {
            Some(InterfaceProblem::Loopback)
        } else if !self.up {
            Some(InterfaceProblem::Down)
        } else if self.addresses.is_empty() {
            Some(InterfaceProblem::NoAddress)
        } else {
            None
        }
    }
}

/// The report lines of a change of the attached interfaces, said after the
/// new ones are attached and before the old ones are detached: what
/// becomes of the traffic arriving on an interface canary leaves. `prev`
/// is the config applied so far (its roles), `attached` the interfaces
/// just attached, `leaving` those about to be detached, `kept` every
/// interface attached afterwards. None when nothing is detached.
pub(super) fn move_lines<'a>(
    prev: Option<&Config>,
    attached: &[String],
    leaving: &[String],
    kept: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    if leaving.is_empty() {
        return Vec::new();
    }
    let kept: Vec<&str> = kept.map(String::as_str).collect();
    let mut lines = vec![if attached.is_empty() {
        format!(
            "interfaces: detaching the data plane from {}",
            leaving.join(", ")
        )
    } else {
        format!(
            "interfaces: moving the data plane from {} to {} ({} attached first)",
            leaving.join(", "),
            attached.join(", "),
            attached.join(", ")
        )
    }];
    for iface in leaving {
        let client = prev.is_some_and(|c| &c.interface == iface);
        // Replies come back on `backend_interfaces`, or on `interface` when
        // there are none.
        let replies = prev.is_some_and(|c| {
            c.backend_interfaces.contains(iface)
                || (c.backend_interfaces.is_empty() && &c.interface == iface)
        });
        let mut what = Vec::new();
        if client || prev.is_none() {
            what.push(
                "new connections to the VIPs arriving there are no longer split (the kernel \
                 routes them as if canary were not there), and packets of open connections \
                 arriving there are no longer forwarded to their backends"
                    .to_string(),
            );
        }
        if replies || prev.is_none() {
            what.push(
                "backends' replies arriving there are no longer given their VIP back (clients \
                 drop them)"
                    .to_string(),
            );
        }
        what.push(format!(
            "packets canary rewrites toward {iface} are handed to the kernel to forward \
             (pass_to_stack: it has left the redirect ports); open connections keep their \
             flow-table entries, so their packets arriving on {} go on to the same backend",
            kept.join(", ")
        ));
        lines.push(format!(
            "interfaces: once {iface} is detached: {}",
            what.join("; ")
        ));
    }
    lines
}

pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("interface {name}: no such interface in this network namespace");
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_rules_in_order() {
        let ok = InterfaceState {
            up: true,
            loopback: false,
            addresses: vec!["fe80::1".parse().unwrap()],
        };
        assert_eq!(ok.problem(), None, "a link-local address is an address");
        let lo = InterfaceState {
            loopback: true,
            ..ok.clone()
        };
        assert_eq!(lo.problem(), Some(InterfaceProblem::Loopback));
        let down = InterfaceState {
            up: false,
            addresses: vec![],
            ..ok.clone()
        };
        assert_eq!(down.problem(), Some(InterfaceProblem::Down));
        let bare = InterfaceState {
            addresses: vec![],
            ..ok.clone()
        };
        assert_eq!(bare.problem(), Some(InterfaceProblem::NoAddress));
        assert!(InterfaceProblem::Loopback.says().contains("loopback"));
        assert!(InterfaceProblem::Down.says().contains("down"));
        assert!(InterfaceProblem::NoAddress.says().contains("no address"));
    }

    #[test]
    fn the_loopback_interface_reads_as_loopback() {
        let all = InterfaceState::read_all().unwrap();
        let lo = InterfaceState::find(&all, "lo").unwrap();
        assert!(lo.loopback, "{lo:?}");
        assert!(InterfaceState::find(&all, "no-such-if0").is_err());
    }

    #[test]
    fn fields_name_each_interface_once() {
        let mut c = Config::parse(crate::config::DEFAULT_CONFIG).unwrap();
        c.interface = "front".into();
        c.backend_interfaces = vec!["b1".into(), "front".into(), "b2".into()];
        let f: Vec<(String, String)> = c
            .interfaces()
            .into_iter()
            .map(|i| (c.interface_field(&i), i))
            .collect();
        assert_eq!(
            f,
            [
                ("interface".to_string(), "front".to_string()),
                ("backend_interfaces[0]".to_string(), "b1".to_string()),
                ("backend_interfaces[2]".to_string(), "b2".to_string()),
            ]
        );
    }

    #[test]
    fn a_move_says_what_becomes_of_the_old_interface() {
        let mut prev = Config::parse(crate::config::DEFAULT_CONFIG).unwrap();
        prev.interface = "x".into();
        prev.backend_interfaces = vec!["b1".into()];
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let kept = s(&["b1", "y"]);
        assert!(move_lines(Some(&prev), &s(&["y"]), &[], kept.iter()).is_empty());
        let lines = move_lines(Some(&prev), &s(&["y"]), &s(&["x"]), kept.iter());
        assert_eq!(
            lines[0],
            "interfaces: moving the data plane from x to y (y attached first)"
        );
        assert!(lines[1].starts_with("interfaces: once x is detached: new connections"));
        assert!(lines[1].contains("no longer split"), "{}", lines[1]);
        assert!(!lines[1].contains("replies"), "{}", lines[1]);
        assert!(lines[1].contains("arriving on b1, y go on to the same backend"));
        // A backend interface dropped: its replies.
        let kept = s(&["x"]);
        let lines = move_lines(Some(&prev), &[], &s(&["b1"]), kept.iter());
        assert_eq!(lines[0], "interfaces: detaching the data plane from b1");
        assert!(lines[1].contains("replies arriving there are no longer given their VIP back"));
        assert!(!lines[1].contains("no longer split"), "{}", lines[1]);
    }
}
