//! canary's user space, `canaryd`'s library. Read it top down, the way a
//! request travels:
//!
//! - [`control`]: the control API (types and client in the `canary-control`
//!   crate, the axum server here) and the read-only metrics endpoint.
//! - [`daemon`]: the core operations behind every route, the health-probe and
//!   rollout drivers, the status views, and the state file.
//! - [`rollout`]: the rollout engine and what feeds it (the statistical
//!   analysis, the external Prometheus metric, the active health probes).
//! - [`dataplane`]: the only owner of the BPF object: load, attach, pins,
//!   map keys, the apply plan and its writes, Maglev tables, counters.
//! - [`fleet`]: several hosts as one: the documents kept in etcd and the
//!   link that reads, watches and writes them (the daemon decides).
//! - [`config`]: the YAML model, its validation and the resolution of defaults.
//! - [`logging`]: the log's forms (terminal, journald, JSON).
//! - [`service`]: canaryd as a system service: readiness for systemd, `--check`.
//!
//! `canaryctl` is not here: it is its own package (`canaryctl/`) over the
//! `canary-control` crate (`control-api/`), so it links no aya.

pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod fleet;
pub mod logging;
pub mod rollout;
pub mod service;
