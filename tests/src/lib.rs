//! The network-namespace harness shared by the integration tests and the
//! demo: a client, a load balancer and backends in their own namespaces,
//! real servers, real clients, canaryd as a child process, nft counters as
//! an independent witness. Everything is torn down on drop (and on panic);
//! names carry `cnry-<pid>-<n>` so parallel runs do not clash and leftovers
//! of crashed runs are recognised.

pub mod cleanup;
pub mod client;
pub mod daemon;
pub mod load;
pub mod netns;
pub mod nft;
pub mod prometheus;
pub mod topology;

pub use client::{burst, tcp_connect, udp_request, Conn};
pub use daemon::Daemon;
pub use load::{Load, LoadBounds};
pub use netns::Netns;
pub use nft::NftCounters;
pub use topology::{bin_path, client_v4, client_v6, ServerOptions, Topology, VIP_V4, VIP_V6};
