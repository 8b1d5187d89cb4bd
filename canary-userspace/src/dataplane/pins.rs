//! Pins watched: the pins are what lets a restarted canaryd adopt the live
//! data plane (its flow table above all). Removed while canaryd runs (an
//! operator's `rm -r`, a cleanup script), nothing breaks at once (the
//! program holds its maps, canaryd holds its links), but the next start
//! would begin without them. So canaryd checks its pins once a second
//! ([`DataPlane::check_pins`], from the daemon's sampling tick) and pins
//! again, from the objects it holds, whatever is missing; what it cannot
//! restore, and a pin path that now holds some other object, it says at
//! once, with what a restart would lose.
//!
//! What is watched is what this data plane holds, not a list: every map of
//! the loaded object that aya pinned (or adopted) by name in the pin
//! directory, recorded at load with a handle of its own
//! ([`PinWatch::record`]), and every XDP link in `DataPlane::links` at the
//! time of the check.
//!
//! Polling, not inotify: inotify does report unlinks on bpffs (tried: a
//! removed pin gives IN_DELETE), but `rm -r` of the pin directory takes the
//! watches with it and they must be armed again on a directory that may not
//! exist yet; one check a second is about 60 cheap syscalls (a stat, an
//! open and an info query per pin) and well inside the two seconds a
//! restore may take.

use super::*;
use aya::maps::{MapData, MapInfo};
use aya::programs::links::LinkType;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// What one check found at one pin path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Our object is pinned there.
    Ours,
    /// Nothing was there: ours is pinned there again.
    Restored,
    /// Nothing is there, and pinning ours failed (why).
    Unrestorable(String),
    /// Some other object is pinned there (what): left alone, not adopted.
    Foreign(String),
}

/// One check of every pin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinReport {
    /// Per pin, relative to the pin directory (`FLOWS`, `links/eth0`).
    pub pins: BTreeMap<String, Found>,
    /// How long the check took.
    pub took: std::time::Duration,
}

impl PinReport {
    /// The pins pinned again by this check.
    pub fn restored(&self) -> Vec<String> {
        pins_where(&self.pins, |f| *f == Found::Restored)
    }

    /// The pins a restart would not find as they are (`at_risk`).
    pub fn at_risk(&self) -> Vec<String> {
        at_risk(&self.pins)
    }
}

/// The pins of `pins` whose finding is `want`ed.
fn pins_where(pins: &BTreeMap<String, Found>, want: impl Fn(&Found) -> bool) -> Vec<String> {
    pins.iter()
        .filter(|(_, f)| want(f))
        .map(|(p, _)| p.clone())
        .collect()
}

/// The pins of `pins` a restart would not find as they are: missing and
/// not restorable, or holding another object.
fn at_risk(pins: &BTreeMap<String, Found>) -> Vec<String> {
    pins_where(pins, |f| {
        matches!(f, Found::Unrestorable(_) | Found::Foreign(_))
    })
}

/// What identifies a map we hold (the id alone could match a link's id:
/// the kernel numbers maps and links apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MapIdent {
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl MapIdent {
    fn of(info: &MapInfo) -> MapIdent {
        MapIdent {
            id: info.id(),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        }
    }
}

struct WatchedMap {
    name: String,
    /// A handle of our own on the map (the typed handles live in `Maps`).
    data: MapData,
    ident: MapIdent,
}

/// The pins a data plane holds and what the last check found.
#[derive(Default)]
pub(super) struct PinWatch {
    maps: Vec<WatchedMap>,
    last: BTreeMap<String, Found>,
    restored_total: u64,
    /// Torn down: its pins are removed on purpose.
    stopped: bool,
    /// A second fd of each of our XDP links (with the link's id), opened
    /// from its pin when it was attached or taken over, to pin the link
    /// again if its pin is removed. Opening a link by id instead needs
    /// CAP_SYS_ADMIN, which the packaged unit does not grant; opening a pin
    /// needs none. Released with the link (detach, teardown), or the link
    /// would stay attached through this fd.
    link_fds: BTreeMap<String, (u32, OwnedFd)>,
}

impl PinWatch {
    /// Records the maps of a freshly loaded object that are pinned in `dir`
    /// (aya has just pinned or adopted them by name; the object's other
    /// maps, `.rodata` or the log ring, have no pin there). Called before
    /// `Maps` takes the maps out of the object.
    pub(super) fn record(ebpf: &Ebpf, dir: &Path) -> PinWatch {
        let mut maps = Vec::new();
        for (name, _) in ebpf.maps() {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            let opened = MapData::from_pin(&path)
                .map_err(anyhow::Error::from)
                .and_then(|data| {
                    let info = data.info()?;
                    Ok((data, info))
                });
            match opened {
                // The kernel keeps 15 bytes of a map's name.
                Ok((data, info)) if name.as_bytes().starts_with(info.name()) => {
                    maps.push(WatchedMap {
                        name: name.to_string(),
                        ident: MapIdent::of(&info),
                        data,
                    })
                }
                Ok((_, info)) => error!(
                    "pin {} holds map {:?}, not {name}: it is not watched",
                    path.display(),
                    info.name_as_str().unwrap_or("?")
                ),
                Err(e) => error!("pin {}: {e:#}: it is not watched", path.display()),
            }
        }
        maps.sort_by(|a, b| a.name.cmp(&b.name));
        PinWatch {
            maps,
            ..PinWatch::default()
        }
    }

    /// The data plane is being removed: its pins go on purpose.
    pub(super) fn stop(&mut self) {
        self.stopped = true;
        self.link_fds.clear();
    }

    /// Holds a second fd of the XDP link on `iface`, pinned at `pin` just
    /// now, to pin it again should the pin go. Not fatal: without it a
    /// lost pin is restored by the link's id (CAP_SYS_ADMIN).
    pub(super) fn hold_link(&mut self, iface: &str, link: &FdLink, pin: &Path) {
        let held = link_ident(link).and_then(|(id, _)| {
            let fd = obj_get(pin).with_context(|| format!("opening {}", pin.display()))?;
            Ok((id, fd))
        });
        match held {
            Ok(h) => {
                self.link_fds.insert(iface.to_string(), h);
            }
            Err(e) => warn!(
                "{iface}: {e:#}: a removed link pin could be restored only with CAP_SYS_ADMIN"
            ),
        }
    }

    /// The link on `iface` is being detached: its second fd goes too.
    pub(super) fn release_link(&mut self, iface: &str) {
        self.link_fds.remove(iface);
    }
}

impl DataPlane {
    /// Checks every pin of this data plane (each map pin, each link pin),
    /// pins again from the objects it holds what is missing, and logs what
    /// changed since the previous check: a restored pin loudly, one that
    /// cannot be restored or that holds another object at once with what a
    /// restart would lose. canaryd calls it every second.
    pub fn check_pins(&mut self) -> PinReport {
        let started = std::time::Instant::now();
        let mut report = PinReport::default();
        if self.pin_watch.stopped {
            return report;
        }
        let dir = self.pin_dir.clone();
        let links_dir = dir.join("links");
        // `rm -r` of the pin directory: make it again (the pins follow).
        let dirs = match std::fs::symlink_metadata(&links_dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(format!("{} is not a directory", links_dir.display())),
            Err(_) => std::fs::create_dir_all(&links_dir)
                .map_err(|e| format!("creating {}: {e}", links_dir.display())),
        };
        let dir_ok = match (&dirs, dir.is_dir()) {
            (_, true) => Ok(()),
            (Err(why), false) => Err(why.clone()),
            (Ok(()), false) => Err(format!("{} is not a directory", dir.display())),
        };
        for m in &self.pin_watch.maps {
            let path = dir.join(&m.name);
            let found = match probe(&path) {
                Probe::Missing => match &dir_ok {
                    Err(why) => Found::Unrestorable(why.clone()),
                    Ok(()) => match m.data.pin(&path) {
                        Ok(()) => Found::Restored,
                        Err(e) => Found::Unrestorable(format!("{:#}", anyhow::Error::from(e))),
                    },
                },
                Probe::Unreadable(e) => Found::Unrestorable(e),
                Probe::Present => match MapInfo::from_pin(&path) {
                    Ok(info) if MapIdent::of(&info) == m.ident => Found::Ours,
                    Ok(info) => Found::Foreign(format!(
                        "map {:?} (id {}, {}-byte keys, {}-byte values, {} entries), \
                         not the one this data plane uses (id {})",
                        info.name_as_str().unwrap_or("?"),
                        info.id(),
                        info.key_size(),
                        info.value_size(),
                        info.max_entries(),
                        m.ident.id
                    )),
                    Err(e) => Found::Foreign(format!(
                        "an object that is not a map ({:#})",
                        anyhow::Error::from(e)
                    )),
                },
                Probe::Directory => Found::Foreign("a directory".into()),
            };
            report.pins.insert(m.name.clone(), found);
        }
        for (iface, link) in &self.links {
            let path = links_dir.join(iface);
            let found = match (link_ident(link), &dirs) {
                (Err(e), _) => Found::Unrestorable(format!("reading our link's id: {e:#}")),
                (_, Err(why)) => Found::Unrestorable(why.clone()),
                (Ok(ours), Ok(())) => match probe(&path) {
                    Probe::Missing => match self.pin_watch.repin_link(iface, ours.0, &path) {
                        Ok(()) => Found::Restored,
                        Err(e) => Found::Unrestorable(format!("{e:#}")),
                    },
                    Probe::Unreadable(e) => Found::Unrestorable(e),
                    Probe::Present => match pinned_link_ident(&path) {
                        Ok(found) if found == ours => Found::Ours,
                        Ok((id, prog)) => Found::Foreign(format!(
                            "XDP link {id} (program {prog}), not the one this data plane \
                             holds on {iface} (link {}, program {})",
                            ours.0, ours.1
                        )),
                        Err(e) => {
                            Found::Foreign(format!("an object that is not an XDP link ({e:#})"))
                        }
                    },
                    Probe::Directory => Found::Foreign("a directory".into()),
                },
            };
            report.pins.insert(format!("links/{iface}"), found);
        }
        for (level, line) in log_lines(&dir, &self.pin_watch.last, &report.pins) {
            log::log!(level, "{line}");
        }
        self.pin_watch.restored_total += report.restored().len() as u64;
        self.pin_watch.last = report.pins.clone();
        report.took = started.elapsed();
        report
    }

    /// The pin watcher's totals as of its last check (status, metrics).
    pub fn pin_status(&self) -> crate::control::api::PinsStatus {
        crate::control::api::PinsStatus {
            watched: (self.pin_watch.maps.len() + self.links.len()) as u64,
            restored_total: self.pin_watch.restored_total,
            at_risk: at_risk(&self.pin_watch.last),
        }
    }

    /// The maps whose pins are watched (every pinned map of the object).
    pub fn watched_maps(&self) -> Vec<String> {
        self.pin_watch.maps.iter().map(|m| m.name.clone()).collect()
    }
}

enum Probe {
    Missing,
    Present,
    Directory,
    Unreadable(String),
}

fn probe(path: &Path) -> Probe {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Probe::Directory,
        Ok(_) => Probe::Present,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Probe::Missing,
        Err(e) => Probe::Unreadable(format!("looking at {}: {e}", path.display())),
    }
}

/// (link id, program id) of a link of ours.
fn link_ident(link: &FdLink) -> Result<(u32, u32)> {
    let info = link.info()?;
    Ok((info.id(), info.program_id()))
}

/// (link id, program id) of the XDP link pinned at `path`; an error for
/// anything else pinned there.
fn pinned_link_ident(path: &Path) -> Result<(u32, u32)> {
    let link = FdLink::from(PinnedLink::from_pin(path)?);
    let info = link.info()?;
    // The kernel answers an info query on any object: a map's answer
    // parsed as a link's has the map's type where the link type is.
    if info.link_type().ok() != Some(LinkType::Xdp) {
        bail!("its type is not an XDP link's");
    }
    Ok((info.id(), info.program_id()))
    // `link` drops here: closing our fd of a pinned link leaves it attached.
}

impl PinWatch {
    /// Pins our link on `iface` (id `id`) at `path` again: from the fd held
    /// since it was attached, else opened by its id.
    fn repin_link(&self, iface: &str, id: u32, path: &Path) -> Result<()> {
        match self.link_fds.get(iface) {
            Some((held, fd)) if *held == id => obj_pin(fd.as_fd(), path)
                .with_context(|| format!("pinning it at {}", path.display())),
            _ => pin_link(id, path),
        }
    }
}

/// Pins the link with id `id` at `path`. Not aya's `FdLink::pin`: it
/// consumes the link, and when the pin fails the link is dropped, which
/// detaches the program from the interface. A second fd of the same link
/// is opened by id and pinned; ours is never at stake.
fn pin_link(id: u32, path: &Path) -> Result<()> {
    let fd = link_fd_by_id(id).context("opening our link by id (BPF_LINK_GET_FD_BY_ID)")?;
    obj_pin(fd.as_fd(), path).with_context(|| format!("pinning it at {}", path.display()))
}

/// `bpf(2)` commands (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// `union bpf_attr` for `BPF_OBJ_PIN`.
#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_LINK_GET_FD_BY_ID`.
#[repr(C)]
struct GetFdByIdAttr {
    link_id: u32,
    next_id: u32,
    open_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is the command's attribute struct as the kernel lays
    // it out (unused fields zero), and the size passed is its own; the
    // kernel reads it only during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn link_fd_by_id(id: u32) -> std::io::Result<OwnedFd> {
    let attr = GetFdByIdAttr {
        link_id: id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &attr)?;
    // SAFETY: a new fd the kernel just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A new fd of the object pinned at `path` (`BPF_OBJ_GET`: the pin's file
/// permissions decide, no capability).
fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let attr = ObjPinAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: a new fd the kernel just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let attr = ObjPinAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    bpf(BPF_OBJ_PIN, &attr)?;
    Ok(())
}

/// What a restart of canaryd would lose with pin `pin` (relative to the pin
/// directory) as it is now.
pub fn restart_loses(pin: &str) -> String {
    if let Some(iface) = pin.strip_prefix("links/") {
        return format!(
            "the XDP link on {iface}: when this canaryd exits, {iface} has no program and \
             the VIPs are not forwarded until the next canaryd attaches anew"
        );
    }
    match pin {
        canary_common::names::FLOWS => "the flow table: every open connection is split \
             again, and those that land on another backend break"
            .into(),
        canary_common::names::HANDSHAKES => {
            "the handshakes in flight (their timeouts go uncounted)".into()
        }
        p if maps::COUNTER_MAPS.contains(&p) => {
            format!("the {p} counters (they start again from zero)")
        }
        p => {
            format!("{p}'s contents (made again from the config, beside whatever is still pinned)")
        }
    }
}

/// The log lines of a check: what changed since the previous one.
/// Restored pins and pins back to ours always; pins at risk when they
/// become so (or what holds them changes), once, not every second.
pub fn log_lines(
    dir: &Path,
    prev: &BTreeMap<String, Found>,
    now: &BTreeMap<String, Found>,
) -> Vec<(log::Level, String)> {
    let mut lines = Vec::new();
    let restored: Vec<&str> = now
        .iter()
        .filter(|(_, f)| **f == Found::Restored)
        .map(|(p, _)| p.as_str())
        .collect();
    if !restored.is_empty() {
        lines.push((
            log::Level::Warn,
            format!(
                "PINS REMOVED while canaryd runs: {} gone from {}; pinned again from the \
                 maps and links canaryd holds ({} restored; a restart adopts the live data \
                 plane as before)",
                restored.join(", "),
                dir.display(),
                restored.len()
            ),
        ));
    }
    // Unrestorable pins that became so, grouped by why.
    let mut failed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (pin, found) in now {
        let changed = prev.get(pin) != Some(found);
        match found {
            Found::Unrestorable(why) if changed => {
                failed.entry(why.as_str()).or_default().push(pin.as_str())
            }
            Found::Foreign(what) if changed => {
                let path = dir.join(pin);
                lines.push((
                    log::Level::Error,
                    format!(
                        "PIN REPLACED: {} holds {what}. canaryd does not adopt it and leaves \
                         it alone, but a restart would take it (or refuse to start) instead \
                         of the live one, and lose {}. Remove it (rm {}) and canaryd pins \
                         its own there again within a second",
                        path.display(),
                        restart_loses(pin),
                        path.display()
                    ),
                ));
            }
            Found::Ours
                if matches!(
                    prev.get(pin),
                    Some(Found::Unrestorable(_) | Found::Foreign(_))
                ) =>
            {
                lines.push((
                    log::Level::Info,
                    format!(
                        "pin {} is this data plane's own again",
                        dir.join(pin).display()
                    ),
                ));
            }
            _ => {}
        }
    }
    for (why, pins) in failed {
        let loses: Vec<String> = pins
            .iter()
            .map(|p| format!("{p}: {}", restart_loses(p)))
            .collect();
        lines.push((
            log::Level::Error,
            format!(
                "PINS LOST: {} removed from {} and cannot be pinned again ({why}); \
                 the data plane forwards as before while this canaryd runs, but a restart \
                 now loses: {}. canaryd retries every second",
                pins.join(", "),
                dir.display(),
                loses.join("; ")
            ),
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(list: &[(&str, Found)]) -> BTreeMap<String, Found> {
        list.iter()
            .map(|(p, f)| (p.to_string(), f.clone()))
            .collect()
    }

    fn dir() -> PathBuf {
        PathBuf::from("/sys/fs/bpf/canary/t")
    }

    #[test]
    fn nothing_is_logged_while_every_pin_is_ours() {
        let now = pins(&[("FLOWS", Found::Ours), ("links/eth0", Found::Ours)]);
        assert!(log_lines(&dir(), &BTreeMap::new(), &now).is_empty());
        assert!(log_lines(&dir(), &now, &now).is_empty());
    }

    #[test]
    fn restored_pins_are_one_loud_line_every_time() {
        let now = pins(&[
            ("FLOWS", Found::Restored),
            ("VIPS", Found::Ours),
            ("links/eth0", Found::Restored),
        ]);
        for prev in [BTreeMap::new(), now.clone()] {
            let lines = log_lines(&dir(), &prev, &now);
            assert_eq!(lines.len(), 1, "{lines:?}");
            let (level, line) = &lines[0];
            assert_eq!(*level, log::Level::Warn);
            assert!(line.contains("FLOWS, links/eth0 gone from /sys/fs/bpf/canary/t"));
            assert!(line.contains("2 restored"), "{line}");
        }
    }

    #[test]
    fn a_pin_at_risk_is_said_once_with_what_a_restart_loses() {
        let why = || Found::Unrestorable("EPERM".into());
        let now = pins(&[
            ("FLOWS", why()),
            ("links/eth0", why()),
            ("VIPS", Found::Foreign("map \"X\"".into())),
        ]);
        let lines = log_lines(&dir(), &BTreeMap::new(), &now);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|(l, _)| *l == log::Level::Error));
        let replaced = &lines[0].1;
        assert!(replaced.starts_with("PIN REPLACED: /sys/fs/bpf/canary/t/VIPS holds map"));
        assert!(
            replaced.contains("rm /sys/fs/bpf/canary/t/VIPS"),
            "{replaced}"
        );
        let lost = &lines[1].1;
        assert!(lost.contains("FLOWS, links/eth0 removed") && lost.contains("(EPERM)"));
        assert!(
            lost.contains("every open connection is split again"),
            "{lost}"
        );
        assert!(lost.contains("eth0 has no program"), "{lost}");
        // The same next second: silent; what holds the pin changes: said.
        assert!(log_lines(&dir(), &now, &now).is_empty());
        let mut other = now.clone();
        other.insert("VIPS".into(), Found::Foreign("map \"Y\"".into()));
        assert_eq!(log_lines(&dir(), &now, &other).len(), 1);
        // Fixed by hand: one line each.
        let fixed = pins(&[
            ("FLOWS", Found::Restored),
            ("links/eth0", Found::Restored),
            ("VIPS", Found::Ours),
        ]);
        let lines = log_lines(&dir(), &now, &fixed);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].1.contains("VIPS is this data plane's own again"));
    }

    #[test]
    fn a_restart_loses_says_what_each_pin_keeps() {
        assert!(restart_loses("FLOWS").contains("open connection"));
        assert!(restart_loses("VERSION_STATS").contains("counters"));
        assert!(restart_loses("SIGNALS").contains("counters"));
        assert!(restart_loses("links/lb-client").contains("lb-client has no program"));
        assert!(restart_loses("MAGLEV").contains("made again from the config"));
    }

    #[test]
    fn the_report_sorts_pins_by_outcome() {
        let r = PinReport {
            pins: pins(&[
                ("A", Found::Ours),
                ("B", Found::Restored),
                ("C", Found::Unrestorable("x".into())),
                ("D", Found::Foreign("y".into())),
            ]),
            ..PinReport::default()
        };
        assert_eq!(r.restored(), ["B"]);
        assert_eq!(r.at_risk(), ["C", "D"]);
    }
}
