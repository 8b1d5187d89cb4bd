//! The one verdict type of the data plane. Every path returns an `Outcome`
//! (an XDP action and the reason code it is counted under in
//! DATAPATH_STATS); the entry point counts it exactly once and hands the
//! action to the kernel. Events that are not verdicts (flow-table hits,
//! override hits, failed inserts) are counted where they happen, with
//! `stats::count`.

use aya_ebpf::bindings::xdp_action;
use canary_common::reason;

/// Verifier: a struct with both fields always set, not an enum. With
/// `enum { Pass(u32), Drop(u32), Redirect }` LLVM moves the (undefined)
/// payload register of `Redirect` along, and the verifier rejects the read
/// of an uninitialised register (`R4 !read_ok`).
#[derive(Clone, Copy)]
pub struct Outcome {
    action: u32,
    reason: u32,
}

impl Outcome {
    /// To the kernel's stack (rewritten or not), counted under `reason`.
    #[inline(always)]
    pub const fn pass(reason: u32) -> Self {
        Outcome {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }

    /// Dropped, counted under `reason`.
    #[inline(always)]
    pub const fn drop(reason: u32) -> Self {
        Outcome {
            action: xdp_action::XDP_DROP,
            reason,
        }
    }

    /// Sent back out of the interface it came in on (an answer built in
    /// place), counted under `reason`.
    #[inline(always)]
    pub const fn tx(reason: u32) -> Self {
        Outcome {
            action: xdp_action::XDP_TX,
            reason,
        }
    }

    /// Redirected out of a TX_PORTS interface, counted under `reason` (an
    /// answer built in place, say).
    #[inline(always)]
    pub const fn redirected(reason: u32) -> Self {
        Outcome {
            action: xdp_action::XDP_REDIRECT,
            reason,
        }
    }

    /// Redirected out of a TX_PORTS interface (`fwd_redirect`).
    pub const REDIRECT: Outcome = Outcome {
        action: xdp_action::XDP_REDIRECT,
        reason: reason::FWD_REDIRECT,
    };

    /// The XDP action the kernel gets.
    #[inline(always)]
    pub fn action(self) -> u32 {
        self.action
    }

    /// The DATAPATH_STATS index it is counted under.
    #[inline(always)]
    pub fn reason(self) -> u32 {
        self.reason
    }

    /// Did the packet leave the data plane (forwarded or passed)? Only then
    /// is it counted for its version and backend.
    #[inline(always)]
    pub fn delivered(self) -> bool {
        self.action != xdp_action::XDP_DROP
    }
}
