//! The control plane's doors: the control API on the root-only Unix socket
//! (`server`) and the read-only Prometheus endpoint (`metrics`). The API's
//! types, its HTTP exchange and its client live in the `canary-control`
//! crate, shared with `canaryctl`; they are re-exported here so the daemon
//! names one place.

mod extract;
pub mod metrics;
pub mod server;
pub mod transport;

pub use canary_control::{api, client, http};
pub use server::{bind, serve, socket_path};
