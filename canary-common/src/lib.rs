//! Shared truths of the canary data plane: the BPF map names and their
//! key/value layouts, the flow hash, the split decision and the checksum
//! arithmetic. The XDP program and user space both compile this crate, so a
//! decision computed by `canaryctl explain` is, by construction, the one the
//! kernel makes.
//!
//! Conventions:
//! - Addresses are stored as four `u32` words holding the address bytes in
//!   network order exactly as they sit in the packet (`u32::from_ne_bytes` of
//!   each 4-byte group). IPv4 uses word 0; words 1..3 are zero. The kernel side
//!   then compares and copies without byte swaps.
//! - Ports are stored the same way: the two network-order bytes read as a
//!   native `u16` (`u16::from_ne_bytes`).
#![no_std]

#[cfg(any(test, feature = "user"))]
extern crate std;

pub mod checksum;
pub mod flow;
pub mod hash;
pub mod keys;
pub mod layout_v1;
pub mod maps;
pub mod split;
pub mod weight;

#[cfg(feature = "user")]
pub mod addr;

pub use flow::DEFAULT_TIMEOUTS;
pub use maps::*;
pub use split::*;
