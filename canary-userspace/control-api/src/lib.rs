//! canaryd's control API as a client sees it: the JSON bodies (`api`), the
//! one HTTP/1.1 exchange (`http`) and the Unix-socket client (`client`).
//!
//! This crate is what `canaryctl` links, and all it links: no aya, no map
//! handles, no daemon. `canaryd` serves the same types (its `control`
//! module), so the two sides cannot drift apart.

pub mod api;
pub mod client;
pub mod http;

pub use api::{EventKind, RolloutVerb, Version};
