//! canary's user space: configuration, the data-plane loader and map writer,
//! Maglev tables and counter reports. `canaryd` and `canaryctl` are thin
//! binaries over this library; the integration tests use it too.

pub mod api;
pub mod config;
pub mod dataplane;
pub mod maglev;
pub mod maps;
pub mod report;
