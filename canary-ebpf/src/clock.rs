//! The data path's clocks and settings, read once per packet: seconds of
//! CLOCK_MONOTONIC for flow ages (the clock canaryd's sweep reads too), and
//! the generation a cached next hop must carry.

use crate::maps::SETTINGS;
use canary_common::{flow::clock_secs, Settings};

/// What one packet needs to know of the time and of canaryd's settings.
pub struct Now {
    /// Seconds of CLOCK_MONOTONIC (`flow::clock_secs`; coarse: a tick's
    /// precision is plenty).
    pub secs: u32,
    /// The generation a cached next hop must carry (see `NextHop`):
    /// canaryd's counter plus the time in units of 2^30 ns (about 1.07 s).
    /// Both only go up, so a cached next hop expires within about a second
    /// even while no canaryd runs, and at once when canaryd bumps it.
    pub gen: u32,
    /// canaryd's settings, in the map (not copied: stack is scarce).
    pub settings: &'static Settings,
}

/// `None` only if `SETTINGS[0]` were missing, which an array of one entry
/// never is (the verifier wants the check).
#[inline(always)]
pub fn now() -> Option<Now> {
    let ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
    let settings = SETTINGS.get(0)?;
    Some(Now {
        secs: clock_secs(ns),
        gen: settings.nexthop_gen.wrapping_add((ns >> 30) as u32),
        settings,
    })
}
