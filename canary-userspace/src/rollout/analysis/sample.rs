//! Sample sizes: how many canary connections a step needs to tell a
//! regression at the limit from noise, at the step's alpha and power.

use super::special::inverse_normal_cdf;
use super::{MAX_REQUIRED_SAMPLE, P0_FLOOR};

fn finish_sample(n: f64) -> u64 {
    if n.is_finite() && n >= 0.0 {
        (n.ceil() as u64).clamp(1, MAX_REQUIRED_SAMPLE)
    } else {
        MAX_REQUIRED_SAMPLE
    }
}

fn sizing_rates(p_stable: f64, ratio: f64) -> Option<(f64, f64)> {
    if ratio.is_nan() || ratio <= 1.0 {
        return None;
    }
    let p0 = if p_stable.is_finite() {
        p_stable.max(P0_FLOOR)
    } else {
        P0_FLOOR
    };
    let p1 = (ratio * p0).min(1.0 - 1e-9);
    if p1 <= p0 {
        return None;
    }
    Some((p0, p1))
}

/// Canary connections needed to tell a canary failing at `ratio × p_stable`
/// from one failing at `p_stable`, with a stable rate taken as known:
/// one-sided test at level `alpha` with the given `power`, normal
/// approximation to the binomial,
///
/// ```text
/// n = ((z_{1-α} √(p0 (1-p0)) + z_{power} √(p1 (1-p1))) / (p1 - p0))²,  p1 = ratio · p0
/// ```
///
/// `p0 = max(p_stable, P0_FLOOR)` (see the module docs), the result is
/// rounded up and capped at [`MAX_REQUIRED_SAMPLE`] (also returned when
/// `ratio ≤ 1`: there is no regression to detect). `p1` is kept below 1.
pub fn required_sample(p_stable: f64, ratio: f64, alpha: f64, power: f64) -> u64 {
    let Some((p0, p1)) = sizing_rates(p_stable, ratio) else {
        return MAX_REQUIRED_SAMPLE;
    };
    let za = inverse_normal_cdf(1.0 - alpha);
    let zb = inverse_normal_cdf(power);
    let num = za * (p0 * (1.0 - p0)).sqrt() + zb * (p1 * (1.0 - p1)).sqrt();
    finish_sample((num / (p1 - p0)).powi(2))
}

/// Like [`required_sample`], but the stable rate is itself estimated from
/// `stable_per_canary` stable connections per canary connection (the
/// observed traffic split, e.g. 19 at a 5 % step, 1 at 50 %). Two-proportion
/// formula without continuity correction (Fleiss), for canary size `n` and
/// stable size `k n`:
///
/// ```text
/// p̄ = (p1 + k p0) / (1 + k)
/// n = ((z_{1-α} √(p̄ (1-p̄) (1 + 1/k)) + z_{power} √(p1 (1-p1) + p0 (1-p0)/k)) / (p1 - p0))²
/// ```
///
/// As `k → ∞` this is [`required_sample`]. `k` is clamped to `[1e-3, 1e6]`.
pub fn required_sample_vs_stable(
    p_stable: f64,
    ratio: f64,
    alpha: f64,
    power: f64,
    stable_per_canary: f64,
) -> u64 {
    let Some((p0, p1)) = sizing_rates(p_stable, ratio) else {
        return MAX_REQUIRED_SAMPLE;
    };
    let k = if stable_per_canary.is_nan() {
        1.0
    } else {
        stable_per_canary.clamp(1e-3, 1e6)
    };
    let za = inverse_normal_cdf(1.0 - alpha);
    let zb = inverse_normal_cdf(power);
    let pbar = (p1 + k * p0) / (1.0 + k);
    let num = za * (pbar * (1.0 - pbar) * (1.0 + 1.0 / k)).sqrt()
        + zb * (p1 * (1.0 - p1) + p0 * (1.0 - p0) / k).sqrt();
    finish_sample((num / (p1 - p0)).powi(2))
}
