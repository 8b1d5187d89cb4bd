//! Layout 1's flow entry, kept so canaryd can carry a running data plane's
//! open connections into this layout on upgrade (the key, `FlowKey`, did
//! not change). Nothing else of layout 1 is migrated: every other map is
//! config-derived or a counter.

use crate::flow::{FLOW_FIN_BACKEND, FLOW_REPLIED, FLOW_RST, FLOW_RST_COUNTED};
use crate::maps::{FlowState, NextHop};

/// Layout 1's `FLOWS` value (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStateV1 {
    pub backend_id: u32,
    pub version: u32,
    pub service_id: u32,
    /// 1: the backend reset it; 2: the backend closed it.
    pub flags: u32,
    pub to_backend: NextHop,
    pub to_client: NextHop,
}

/// Layout 1's limits, as its pins were sized.
pub const MAX_SERVICES_V1: u32 = 64;
pub const MAX_BACKENDS_V1: u32 = 4096;

impl FlowStateV1 {
    /// The same connection in this layout. Its backend keeps its id only if
    /// `backend_id` maps it (ids are reassigned on upgrade); `now_s` starts
    /// its idle clock. Layout 1 did not know whether the backend had
    /// answered: an entry is taken as answered (an open connection's idle
    /// timeout, not a handshake's).
    pub fn upgrade(&self, backend_id: u32, now_s: u32) -> FlowState {
        let mut flags = FLOW_REPLIED;
        if self.flags & 1 != 0 {
            flags |= FLOW_RST | FLOW_RST_COUNTED;
        }
        if self.flags & 2 != 0 {
            flags |= FLOW_FIN_BACKEND;
        }
        FlowState {
            backend_id,
            version: (self.version & 1) as u16,
            flags,
            last_seen: now_s,
            // Next hops are re-learned within a second anyway.
            to_client: NextHop::default(),
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, integers only, no implicit padding.
unsafe impl aya::Pod for FlowStateV1 {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::closing;

    #[test]
    fn v1_entries_keep_backend_version_and_closure() {
        assert_eq!(core::mem::size_of::<FlowStateV1>(), 64);
        let old = FlowStateV1 {
            backend_id: 7,
            version: 1,
            service_id: 3,
            flags: 1,
            ..Default::default()
        };
        let new = old.upgrade(9, 1234);
        assert_eq!((new.backend_id, new.version, new.last_seen), (9, 1, 1234));
        assert!(closing(new.flags));
        let open = FlowStateV1 { flags: 0, ..old }.upgrade(9, 0);
        assert!(!closing(open.flags));
        assert_ne!(open.flags & FLOW_REPLIED, 0);
    }
}
