//! Progressive delivery: the rollout engine (`engine`, one plan walked step
//! by step) and its inputs: the statistics that judge a step (`analysis`),
//! the optional Prometheus metric (`external`) and the active health probes
//! (`health`). Nothing here touches a map: the daemon carries out the
//! engine's actions through the data plane.

pub mod adaptive;
pub mod analysis;
pub mod engine;
pub mod external;
pub mod health;
#[cfg(test)]
mod sim;

pub use engine::{Action, Phase, Rollout, TICK};
