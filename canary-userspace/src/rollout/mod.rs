//! Progressive delivery: the rollout engine (`engine`, one plan walked step
//! by step; `adaptive` picks an adaptive plan's weights) and its inputs: the
//! statistics that judge a step (`analysis`, latency included), the
//! Prometheus metrics (`external`) and the active health probes
//! (`health`). `sim` replays the engine on seeded traffic (tests only). Nothing here touches a map: the daemon carries out the
//! engine's actions through the data plane.

pub mod adaptive;
pub mod analysis;
pub mod engine;
pub mod external;
pub mod health;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod test_rng;

pub use engine::{Action, Phase, Rollout, TICK};
