//! Step analysis: is the canary worse than stable over the same window, and
//! has the step seen enough canary connections to say so?
//!
//! # Inputs
//!
//! Per version, over the step's window: connections attempted, connections
//! failed (RST from the backend, or no SYN-ACK within the timeout) and a log2
//! histogram of SYN -> SYN-ACK time (bucket `i` counts times in
//! `[2^i, 2^(i+1))` microseconds).
//!
//! # The checks
//!
//! 1. **Canary vs stable** (`max_canary_vs_stable_ratio = r`). The step is
//!    sized to tell a canary failing at `r` times the stable rate from one
//!    failing at the stable rate, with false-alarm probability `alpha_check`
//!    and power `Limits::power` ([`required_sample_vs_stable`], the
//!    two-proportion normal-approximation formula that accounts for the
//!    stable sample being finite too). Two tests share the work:
//!    * a **sequential probability ratio test** (SPRT) on the failures seen
//!      so far, evaluated at every look. Conditional on the total number of
//!      failures, each failure belongs to the canary with probability
//!      `θ = n_c p_c / (n_c p_c + n_s p_s)`; "canary = stable" gives
//!      `θ0 = n_c / (n_c + n_s)`, "canary = r × stable" gives
//!      `θ1 = r n_c / (r n_c + n_s)`. The step fails as soon as the
//!      likelihood ratio `Λ = (θ1/θ0)^x_c ((1-θ1)/(1-θ0))^x_s` reaches
//!      `1/alpha_check`. Under "canary no worse than stable" `Λ` is a
//!      non-negative supermartingale, so by Ville's inequality
//!      `P(Λ ever ≥ 1/alpha_check) ≤ alpha_check` **however often the
//!      window is looked at**: a clear failure stops the step early without
//!      spending more than its share of alpha.
//!    * a **fixed-sample exact test** once the canary has the required sample:
//!      the conditional binomial test `P(X ≥ x_c | X ~ Bin(x_c + x_s, θ0))`
//!      (the exact test for two Poisson rates; for binomial data it is
//!      conservative against Fisher's exact test, whose hypergeometric null
//!      has the smaller variance). Fail when it is below `alpha_check`.
//! 2. **Absolute ceiling** (`max_error_ratio = p_max`). Same pair: an SPRT of
//!    `p = p_max` against `p = min(2 p_max, (1 + p_max)/2)` at every look, and
//!    at the required sample the exact one-sided binomial test
//!    `P(X ≥ x_c | Bin(n_c, p_max)) < alpha_check`.
//! 3. **Recent-window guard** ([`recent_guard`]), one per limit above. The
//!    SPRT runs over the whole step, so a fault that starts late in a step
//!    must first outweigh every success before it. The guard looks at the
//!    last seconds only, with the exact tests above (ceiling:
//!    `P(X ≥ x | Bin(n, p_max))`; ratio: the conditional binomial against
//!    equal rates), over every suffix of the engine's last 40 ticks (250 ms
//!    up to 10 s, so a burst is seen whatever the canary's connection rate),
//!    and fails when a p-value is below `alpha_check / (looks × 40)`.
//!    `looks` caps how often it may look in one step (the engine allows
//!    four times the step's interval in ticks, then stops looking), so the
//!    union bound over looks and suffixes stays within its share.
//! 4. **Handshake p99** (`max_p99_handshake_ms`): at the required sample, the
//!    canary's p99 read from its histogram ([`histogram_quantile`]) must not
//!    exceed the limit. This is a threshold on an estimate, not a test; it is
//!    skipped (and noted) while fewer than 100 handshakes are recorded.
//!
//! # False-alarm arithmetic (A/A: canary identical to stable)
//!
//! `Limits::alpha` is the false-alarm budget of a **whole rollout** (default
//! 0.01). It is split by Bonferroni over the plan's `steps` and over the
//! statistical checks that are enabled in a step (three per limit: its SPRT,
//! its final test and its recent-window guard; up to six):
//!
//! ```text
//! alpha_check = alpha / (steps × checks)          e.g. 0.01 / (6 × 3) = 5.6e-4
//! P(false alarm in a step)    ≤ checks × alpha_check = alpha / steps
//! P(false alarm in a rollout) ≤ steps × alpha / steps = alpha        = 0.01
//! expected false alarms in 30 A/A rollouts ≤ 30 × 0.01 = 0.3
//! P(2 or more of 30 roll back) ≤ 1 - 0.99^30 - 30 × 0.01 × 0.99^29 ≈ 0.036
//! ```
//!
//! The SPRT bound holds under continuous monitoring (Ville). The final test is
//! evaluated once per step: the caller acts on the first verdict that is not
//! [`Verdict::NeedMore`] (a [`Verdict::Pass`] ends the step; calling
//! [`analyze`] again on a passed window would spend alpha again). Both tests
//! are conservative (Ville's bound, the conditional binomial against Fisher),
//! so the measured A/A rate is well below the budget; the unit tests simulate
//! it.
//!
//! # Stable error rate of zero
//!
//! The sample size needs a stable rate to size against; an observed 0 would
//! ask for an infinite sample. [`required_sample`] floors the stable rate at
//! [`P0_FLOOR`] = 0.5 %: below that a "×r" regression (say 0.1 % to 0.2 %)
//! would need 10^4–10^5 canary connections per step, which is not a regression
//! worth stalling a rollout for, and the absolute ceiling `max_error_ratio`
//! is what protects a nearly error-free service. The tests themselves use the
//! observed counts, never the floor: with zero stable failures the canary
//! still fails once its own failures are numerous enough to be implausible
//! under "same rate" (e.g. the SPRT with equal traffic and r = 2 needs about
//! 26 canary failures against none on stable at alpha_check = 8e-4). Sample
//! sizes are capped at [`MAX_REQUIRED_SAMPLE`].

mod counts;
pub mod latency;
mod sample;
mod special;
#[cfg(test)]
mod tests;
mod verdict;

pub use crate::control::api::{Analysis, Verdict};
pub use counts::{histogram_quantile, VersionCounts, WindowCounts};
pub use sample::{required_sample, required_sample_vs_stable};
pub use special::{binomial_sf, inverse_normal_cdf, ln_gamma};
pub use verdict::{analyze, analyze_detailed, recent_guard, step_need, Limits, CHECKS_PER_LIMIT};

/// Floor on the stable error rate used for sizing a step (not for testing).
pub const P0_FLOOR: f64 = 0.005;

/// No step asks for more canary connections than this.
pub const MAX_REQUIRED_SAMPLE: u64 = 1_000_000;

/// Handshake histogram buckets: bucket `i` holds `[2^i, 2^(i+1))` µs.
pub use canary_common::HISTOGRAM_BUCKETS;

/// Fewest recorded handshakes for which a p99 is read at all.
pub const MIN_HANDSHAKES_FOR_P99: u64 = 100;
