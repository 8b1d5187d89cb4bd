//! canary's user space: configuration, the data-plane loader and map writer,
//! Maglev tables and counter reports. `canaryd` and `canaryctl` are thin
//! binaries over this library; the integration tests use it too.

pub mod analysis;
pub mod api;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod events;
pub mod explain;
pub mod external;
pub mod health;
pub mod http;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod report;
pub mod rollout;
pub mod state;
