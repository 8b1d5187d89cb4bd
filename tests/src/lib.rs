//! The test lab shared by the integration tests, the demo and the bench.
//!
//! - Multi-namespace topology (`topology`, `netns`, `daemon`, `client`,
//!   `load`, `nft`, `prometheus`, `cleanup`): a client, a load balancer and
//!   backends in their own namespaces, real servers, real clients, canaryd
//!   as a child process, nft counters as an independent witness.
//! - Single-namespace `BPF_PROG_TEST_RUN` lab (`xdp_lab`, `prog_run`,
//!   `packet`, `checksum`): the real program, packet in, packet out, with
//!   independent packet builders and checksum verification.
//! - `rollout`: watching a rollout (weight in the map, time to rollback,
//!   the rollout's end).
//! - `flood`: a spoofed-SYN flood generator (AF_PACKET, bounded).
//! - Fleet (`fleet`, `etcd`): several load-balancer hosts behind an ECMP
//!   router sharing the backends, and a real etcd cluster on a management
//!   network.
//! - `config`: the one builder of every config the suite, demo and bench use.
//!
//! Everything is torn down on drop (and on panic); names carry
//! `cnry-<pid>-<n>` so parallel runs do not clash and leftovers of crashed
//! runs are recognised.

pub mod checksum;
pub mod cleanup;
pub mod client;
pub mod config;
pub mod daemon;
pub mod etcd;
pub mod fleet;
pub mod flood;
pub mod load;
pub mod netns;
pub mod nft;
pub mod packet;
pub mod prog_run;
pub mod prometheus;
pub mod rollout;
pub mod snapshot;
pub mod topology;
pub mod xdp_lab;

pub use client::{burst, ping_all, tcp_connect, udp_request, Conn};
pub use config::{FleetSection, FlowTable, LbConfig, Service};
pub use daemon::{Daemon, Host};
pub use etcd::EtcdCluster;
pub use fleet::{FleetTopology, LbHost};
pub use load::{Load, LoadBounds};
pub use netns::Netns;
pub use nft::NftCounters;
pub use topology::{bin_path, client_v4, client_v6, ServerOptions, Topology, VIP_V4, VIP_V6};
