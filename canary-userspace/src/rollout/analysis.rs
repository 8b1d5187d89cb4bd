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

pub use crate::control::api::{Analysis, Verdict};
use serde::{Deserialize, Serialize};

/// Floor on the stable error rate used for sizing a step (not for testing).
pub const P0_FLOOR: f64 = 0.005;

/// No step asks for more canary connections than this.
pub const MAX_REQUIRED_SAMPLE: u64 = 1_000_000;

/// Handshake histogram buckets: bucket `i` holds `[2^i, 2^(i+1))` µs.
pub use canary_common::HISTOGRAM_BUCKETS;

/// Fewest recorded handshakes for which a p99 is read at all.
pub const MIN_HANDSHAKES_FOR_P99: u64 = 100;

// ---------------------------------------------------------------------------
// Distributions
// ---------------------------------------------------------------------------

/// Quantile function of the standard normal distribution, `Φ^-1(p)`.
///
/// Peter J. Acklam's rational approximation (relative error below 1.15e-9
/// over the whole range). Returns ±infinity at 0 and 1 and NaN outside.
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.02425;

    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, n = 9; about 15 significant
/// digits).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    // The published coefficients, digits kept as published.
    #[allow(clippy::excessive_precision)]
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_93,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_13,
        -176.615_029_162_140_59,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_571_6e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = COEF[0];
    let t = x + G + 0.5;
    for (i, c) in COEF.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// `ln P(X = k)` for `X ~ Binomial(n, p)`, `0 < p < 1`, `k ≤ n`.
fn ln_binomial_pmf(k: u64, n: u64, p: f64) -> f64 {
    let (kf, nf) = (k as f64, n as f64);
    ln_gamma(nf + 1.0) - ln_gamma(kf + 1.0) - ln_gamma(nf - kf + 1.0)
        + kf * p.ln()
        + (nf - kf) * (-p).ln_1p()
}

/// Upper tail of the binomial distribution: `P(X ≥ k)` for
/// `X ~ Binomial(n, p)`.
///
/// Exact up to floating point: the pmf at the start is taken from
/// [`ln_gamma`], the rest by the pmf's ratio recurrence, summed away from the
/// mode until the terms no longer matter. When `k` lies above the mean the
/// tail is summed directly (no cancellation, accurate to tiny p-values);
/// otherwise the answer is `1 - P(X ≤ k - 1)`, which is then at least about
/// one half.
pub fn binomial_sf(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let odds = p / (1.0 - p);
    if k as f64 > n as f64 * p {
        // Terms decrease from k upward: pmf(i+1)/pmf(i) = (n-i)/(i+1) · p/q.
        let mut term = ln_binomial_pmf(k, n, p).exp();
        let mut sum = 0.0;
        let mut i = k;
        loop {
            sum += term;
            if i == n {
                break;
            }
            term *= (n - i) as f64 / (i + 1) as f64 * odds;
            i += 1;
            if term <= sum * 1e-17 {
                break;
            }
        }
        sum.min(1.0)
    } else {
        // Terms decrease from k-1 downward: pmf(i-1)/pmf(i) = i/(n-i+1) · q/p.
        let mut i = k - 1;
        let mut term = ln_binomial_pmf(i, n, p).exp();
        let mut sum = 0.0;
        loop {
            sum += term;
            if i == 0 {
                break;
            }
            term *= i as f64 / (n - i + 1) as f64 / odds;
            i -= 1;
            if term <= sum * 1e-17 {
                break;
            }
        }
        (1.0 - sum).clamp(0.0, 1.0)
    }
}

// ---------------------------------------------------------------------------
// Sample sizes
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Histograms
// ---------------------------------------------------------------------------

/// The `q`-quantile (0 ≤ q ≤ 1) of a log2 histogram in microseconds, with
/// linear interpolation inside the bucket: the rank `q · total` falls in
/// bucket `i` after `before` smaller samples, and the answer is
/// `2^i + (rank - before) / h[i] · 2^i`. `None` for an empty histogram or a
/// `q` outside `[0, 1]`.
pub fn histogram_quantile(h: &[u64; HISTOGRAM_BUCKETS], q: f64) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let total: u64 = h.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut before = 0.0;
    for (i, &count) in h.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let c = count as f64;
        let lower = (1u64 << i) as f64;
        if rank <= before + c {
            let frac = ((rank - before) / c).clamp(0.0, 1.0);
            return Some(lower + frac * lower);
        }
        before += c;
    }
    // Only reachable through rounding at q = 1: the top of the last bucket.
    let last = h.iter().rposition(|&c| c > 0)?;
    Some((1u64 << (last + 1)) as f64)
}

// ---------------------------------------------------------------------------
// The step verdict
// ---------------------------------------------------------------------------

/// One version's counters over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCounts {
    /// Connections attempted (SYNs forwarded to the version).
    pub attempts: u64,
    /// Of those, failed: RST from the backend or no SYN-ACK within the timeout.
    pub failures: u64,
    /// SYN -> SYN-ACK times; bucket `i` counts `[2^i, 2^(i+1))` µs.
    pub handshake_us_log2: [u64; HISTOGRAM_BUCKETS],
}

impl Default for VersionCounts {
    fn default() -> Self {
        Self {
            attempts: 0,
            failures: 0,
            handshake_us_log2: [0; HISTOGRAM_BUCKETS],
        }
    }
}

impl VersionCounts {
    /// Failures over attempts, `None` without attempts.
    pub fn error_rate(&self) -> Option<f64> {
        (self.attempts > 0).then(|| self.failures as f64 / self.attempts as f64)
    }
}

/// Both versions over the same window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCounts {
    pub stable: VersionCounts,
    pub canary: VersionCounts,
}

/// Health limits of a step, and the statistics' parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    /// Absolute ceiling on the canary error rate (0..1).
    pub max_error_ratio: Option<f64>,
    /// The canary error rate may be at most this multiple of stable's
    /// (must be > 1; the step is sized to detect exactly this regression).
    pub max_canary_vs_stable_ratio: Option<f64>,
    /// Ceiling on the canary's p99 SYN -> SYN-ACK time.
    pub max_p99_handshake_ms: Option<f64>,
    /// False-alarm budget of a whole rollout (A/A rollback probability).
    pub alpha: f64,
    /// Steps in the plan; `alpha` is split evenly over them.
    pub steps: u32,
    /// Probability of failing a canary at exactly the ratio limit.
    pub power: f64,
    /// No step passes with fewer canary connections than this.
    pub min_canary_connections: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_error_ratio: None,
            max_canary_vs_stable_ratio: None,
            max_p99_handshake_ms: None,
            alpha: 0.01,
            steps: 6,
            power: 0.9,
            min_canary_connections: 100,
        }
    }
}

/// Statistical checks per enabled limit (ratio, ceiling): the SPRT, the
/// final test and the recent-window guard share the step's alpha.
pub const CHECKS_PER_LIMIT: u32 = 3;

/// The recent-window guard (module docs, check 3): `Some(reason)` when the
/// canary's failures over `recent` are implausible under the limits at
/// level `alpha_look` (the check's alpha divided by the looks allowed).
pub fn recent_guard(recent: &WindowCounts, limits: &Limits, alpha_look: f64) -> Option<String> {
    let c = &recent.canary;
    let s = &recent.stable;
    let (nc, xc) = (c.attempts, c.failures.min(c.attempts));
    let (ns, xs) = (s.attempts, s.failures.min(s.attempts));
    if nc == 0 || xc == 0 {
        return None;
    }
    if let Some(pmax) = limits.max_error_ratio.filter(|p| *p > 0.0 && *p < 1.0) {
        let p = binomial_sf(xc, nc, pmax);
        if xc as f64 > pmax * nc as f64 && p < alpha_look {
            return Some(format!(
                "canary fails {xc}/{nc} ({:.2}%) in the last seconds, above the ceiling of {:.2}% \
                 (exact test p = {p:.1e} < {alpha_look:.1e})",
                100.0 * xc as f64 / nc as f64,
                100.0 * pmax
            ));
        }
    }
    let min_stable = limits.min_canary_connections.max(1);
    if let Some(r) = limits.max_canary_vs_stable_ratio.filter(|r| *r > 1.0) {
        if ns >= min_stable {
            let theta0 = nc as f64 / (nc + ns) as f64;
            let p = binomial_sf(xc, xc + xs, theta0);
            let rate = |x: u64, n: u64| x as f64 / n as f64;
            if rate(xc, nc) > r * rate(xs, ns) && p < alpha_look {
                return Some(format!(
                    "canary fails {xc}/{nc} ({:.2}%) in the last seconds against stable {xs}/{ns} \
                     ({:.2}%), more than {r}x (exact test p = {p:.1e} < {alpha_look:.1e})",
                    100.0 * rate(xc, nc),
                    100.0 * rate(xs, ns)
                ));
            }
        }
    }
    None
}

/// The step verdict; see [`analyze_detailed`] for the figures.
pub fn analyze(window: &WindowCounts, limits: &Limits) -> Verdict {
    analyze_detailed(window, limits).verdict
}

/// Log likelihood ratio of `x` successes and `y` failures of a Bernoulli
/// trial under `p1` against `p0`.
fn bernoulli_llr(x: u64, y: u64, p0: f64, p1: f64) -> f64 {
    let mut llr = 0.0;
    if x > 0 {
        llr += x as f64 * (p1 / p0).ln();
    }
    if y > 0 {
        llr += y as f64 * ((1.0 - p1) / (1.0 - p0)).ln();
    }
    llr
}

/// Runs every check of the module docs on one window.
pub fn analyze_detailed(window: &WindowCounts, limits: &Limits) -> Analysis {
    let c = &window.canary;
    let s = &window.stable;
    let mut notes = Vec::new();

    // Counters are read from the data plane without a lock; never let a
    // failure count exceed its attempts.
    let (nc, xc) = (c.attempts, c.failures.min(c.attempts));
    let (ns, xs) = (s.attempts, s.failures.min(s.attempts));

    // A stable sample smaller than the least canary sample estimates no
    // rate worth comparing with (at a 100 % step stable gets only the
    // stragglers of its open connections): the ratio checks sit out.
    let min_stable = limits.min_canary_connections.max(1);
    let ratio = match limits.max_canary_vs_stable_ratio {
        Some(r) if r > 1.0 && ns >= min_stable => Some(r),
        Some(r) if r.is_nan() || r <= 1.0 => {
            notes.push(format!(
                "max_canary_vs_stable_ratio {r} is not above 1; ratio checks off"
            ));
            None
        }
        Some(_) => {
            notes.push(format!(
                "{ns} stable connections in the window (fewer than {min_stable}); ratio checks off"
            ));
            None
        }
        None => None,
    };
    let ceiling = match limits.max_error_ratio {
        Some(p) if p > 0.0 && p < 1.0 => Some(p),
        Some(p) => {
            notes.push(format!(
                "max_error_ratio {p} is not in (0, 1); ceiling checks off"
            ));
            None
        }
        None => None,
    };
    let checks = CHECKS_PER_LIMIT * (ratio.is_some() as u32 + ceiling.is_some() as u32);
    let alpha_step = limits.alpha / f64::from(limits.steps.max(1));
    let alpha_check = alpha_step / f64::from(checks.max(1));
    let threshold = (1.0 / alpha_check).ln();

    let mut a = Analysis {
        verdict: Verdict::Pass,
        canary_attempts: nc,
        canary_failures: xc,
        stable_attempts: ns,
        stable_failures: xs,
        canary_error_rate: c.error_rate(),
        stable_error_rate: s.error_rate(),
        required_canary_connections: limits.min_canary_connections.max(1),
        checks,
        alpha_per_check: alpha_check,
        ratio_sprt_llr: None,
        ceiling_sprt_llr: None,
        sprt_threshold: threshold,
        ratio_p_value: None,
        ceiling_p_value: None,
        canary_p99_handshake_ms: histogram_quantile(&c.handshake_us_log2, 0.99)
            .map(|us| us / 1000.0),
        stable_p99_handshake_ms: histogram_quantile(&s.handshake_us_log2, 0.99)
            .map(|us| us / 1000.0),
        notes,
    };
    let pct = |x: u64, n: u64| 100.0 * x as f64 / n.max(1) as f64;

    // Sequential checks: may fail at any look.
    let theta0 = nc as f64 / (nc + ns).max(1) as f64;
    if let Some(r) = ratio {
        let theta1 = r * nc as f64 / (r * nc as f64 + ns as f64);
        let llr = if nc > 0 {
            bernoulli_llr(xc, xs, theta0, theta1)
        } else {
            0.0
        };
        a.ratio_sprt_llr = Some(llr);
        if llr >= threshold {
            a.verdict = Verdict::Fail {
                reason: format!(
                    "canary fails {xc}/{nc} ({:.2}%) against stable {xs}/{ns} ({:.2}%): \
                     sequential test for canary at {r}x stable crossed \
                     (log LR {llr:.2} >= {threshold:.2}, alpha {alpha_check:.2e})",
                    pct(xc, nc),
                    pct(xs, ns)
                ),
            };
            return a;
        }
    }
    if let Some(pmax) = ceiling {
        let p1 = (2.0 * pmax).min((1.0 + pmax) / 2.0);
        let llr = bernoulli_llr(xc, nc - xc, pmax, p1);
        a.ceiling_sprt_llr = Some(llr);
        if llr >= threshold {
            a.verdict = Verdict::Fail {
                reason: format!(
                    "canary fails {xc}/{nc} ({:.2}%), above the ceiling of {:.2}%: \
                     sequential test crossed (log LR {llr:.2} >= {threshold:.2}, \
                     alpha {alpha_check:.2e})",
                    pct(xc, nc),
                    100.0 * pmax
                ),
            };
            return a;
        }
    }

    // The sample the step needs.
    let mut need = limits.min_canary_connections.max(1);
    if let Some(r) = ratio {
        // Sized from one standard error below the observed stable rate: the
        // step stops at the first look where the canary count reaches the
        // need, and a need that follows every upward wobble of the stable
        // estimate would stop early exactly when the contrast looks smallest
        // (measured: power 0.83 instead of 0.9 at the ratio limit).
        let p_hat = xs as f64 / ns as f64;
        let p_stable = p_hat - (p_hat * (1.0 - p_hat) / ns as f64).sqrt();
        let k = ns as f64 / nc.max(1) as f64;
        need = need.max(required_sample_vs_stable(
            p_stable,
            r,
            alpha_check,
            limits.power,
            k,
        ));
    }
    if let Some(pmax) = ceiling {
        // Sized to tell a canary at twice the ceiling from one at the ceiling.
        need = need.max(required_sample(pmax, 2.0, alpha_check, limits.power));
    }
    a.required_canary_connections = need;
    if nc < need {
        a.verdict = Verdict::NeedMore { have: nc, need };
        return a;
    }

    // Final tests, once per step.
    if ratio.is_some() {
        let p = binomial_sf(xc, xc + xs, theta0);
        a.ratio_p_value = Some(p);
        if p < alpha_check {
            a.verdict = Verdict::Fail {
                reason: format!(
                    "canary fails {xc}/{nc} ({:.2}%) against stable {xs}/{ns} ({:.2}%): \
                     p = {p:.2e} < alpha {alpha_check:.2e} for \"canary no worse than stable\"",
                    pct(xc, nc),
                    pct(xs, ns)
                ),
            };
            return a;
        }
    }
    if let Some(pmax) = ceiling {
        let p = binomial_sf(xc, nc, pmax);
        a.ceiling_p_value = Some(p);
        if p < alpha_check {
            a.verdict = Verdict::Fail {
                reason: format!(
                    "canary fails {xc}/{nc} ({:.2}%), above the ceiling of {:.2}%: \
                     p = {p:.2e} < alpha {alpha_check:.2e}",
                    pct(xc, nc),
                    100.0 * pmax
                ),
            };
            return a;
        }
    }
    if let Some(limit_ms) = limits.max_p99_handshake_ms {
        let handshakes: u64 = c.handshake_us_log2.iter().sum();
        match a.canary_p99_handshake_ms {
            Some(p99) if handshakes >= MIN_HANDSHAKES_FOR_P99 => {
                if p99 > limit_ms {
                    a.verdict = Verdict::Fail {
                        reason: format!(
                            "canary p99 handshake {p99:.3} ms over {handshakes} handshakes \
                             exceeds {limit_ms} ms (stable p99 {})",
                            a.stable_p99_handshake_ms
                                .map_or("n/a".to_string(), |v| format!("{v:.3} ms"))
                        ),
                    };
                    return a;
                }
            }
            _ => a.notes.push(format!(
                "p99 handshake not checked: {handshakes} handshakes recorded, \
                 {MIN_HANDSHAKES_FOR_P99} needed"
            )),
        }
    }
    a.verdict = Verdict::Pass;
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a tiny seeded generator, enough for simulations.
    struct Rng(u64);
    impl Rng {
        fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn count_failures(&mut self, n: u64, p: f64) -> u64 {
            (0..n).filter(|_| self.uniform() < p).count() as u64
        }
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(f64::MIN_POSITIVE)
    }

    #[test]
    fn analysis_inverse_normal_known_quantiles() {
        for (p, z) in [
            (0.95, 1.644_853_626_951_472),
            (0.975, 1.959_963_984_540_054),
            (0.99, 2.326_347_874_040_841),
            (0.8, 0.841_621_233_572_914),
            (0.9, 1.281_551_565_544_6),
            (0.999, 3.090_232_306_167_813),
            (0.5, 0.0),
        ] {
            let got = inverse_normal_cdf(p);
            assert!((got - z).abs() < 1e-8, "p={p}: {got} vs {z}");
            assert!(
                (inverse_normal_cdf(1.0 - p) + z).abs() < 1e-8,
                "p={p} mirror"
            );
        }
        // Deep tail (the lower region of the approximation).
        assert!((inverse_normal_cdf(1e-6) + 4.753_424_308_822_899).abs() < 1e-7);
        assert!(inverse_normal_cdf(0.0).is_infinite());
        assert!(inverse_normal_cdf(1.5).is_nan());
    }

    #[test]
    fn analysis_ln_gamma_known_values() {
        assert!(ln_gamma(1.0).abs() < 1e-13);
        assert!(ln_gamma(2.0).abs() < 1e-13);
        assert!(close(ln_gamma(10.0), 362_880f64.ln(), 1e-13));
        assert!(close(
            ln_gamma(0.5),
            std::f64::consts::PI.sqrt().ln(),
            1e-12
        ));
        // ln(100!) = 363.73937555556347
        assert!(close(ln_gamma(101.0), 363.739_375_555_563_47, 1e-13));
    }

    /// P(X >= k) by summing every pmf term in plain f64 products.
    fn direct_sf(k: u64, n: u64, p: f64) -> f64 {
        let q = 1.0 - p;
        let mut pmf = q.powi(n as i32);
        let mut tail = 0.0;
        for i in 0..=n {
            if i >= k {
                tail += pmf;
            }
            pmf *= (n - i) as f64 / (i + 1) as f64 * p / q;
        }
        tail
    }

    #[test]
    fn analysis_binomial_tail_known_value() {
        // P(X >= 5 | n = 100, p = 0.01) = 1 - sum_{k<5} C(100,k) .01^k .99^(100-k)
        let direct = direct_sf(5, 100, 0.01);
        assert!(close(direct, 0.003_432_321_587_754_5, 1e-9), "{direct}");
        assert!(close(binomial_sf(5, 100, 0.01), direct, 1e-10));
        // Edges.
        assert_eq!(binomial_sf(0, 10, 0.3), 1.0);
        assert_eq!(binomial_sf(11, 10, 0.3), 0.0);
        assert_eq!(binomial_sf(3, 10, 0.0), 0.0);
        assert_eq!(binomial_sf(3, 10, 1.0), 1.0);
        assert!(close(binomial_sf(10, 10, 0.5), 0.5f64.powi(10), 1e-12));
        assert!(close(binomial_sf(1, 10, 0.5), 1.0 - 0.5f64.powi(10), 1e-12));
    }

    #[test]
    fn analysis_binomial_tail_matches_direct_summation() {
        let mut compared = 0;
        for n in [1u64, 2, 5, 10, 37, 100, 250, 500, 1000] {
            for p in [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5] {
                if n as f64 * -(1.0f64 - p).ln() > 650.0 {
                    continue; // q^n would underflow in the direct sum
                }
                for k in 0..=n {
                    let direct = direct_sf(k, n, p);
                    if direct < 1e-250 {
                        continue;
                    }
                    let fast = binomial_sf(k, n, p);
                    assert!(
                        close(fast, direct, 1e-8),
                        "n={n} p={p} k={k}: {fast} vs {direct}"
                    );
                    compared += 1;
                }
            }
        }
        assert!(compared > 3000, "{compared}");
    }

    #[test]
    fn analysis_binomial_tail_large_n() {
        // n = 1e6: compare with the normal approximation with continuity
        // correction, which is good to ~1e-3 relative at ~1 sd.
        let (n, p) = (1_000_000u64, 0.02);
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        let k = (n as f64 * p + sd).round() as u64; // ~ +1 sd
        let tail = binomial_sf(k, n, p);
        assert!((tail - 0.158_655).abs() < 0.005, "{tail}");
        // Monotone in k.
        assert!(binomial_sf(k + 10, n, p) < tail);
    }

    #[test]
    fn analysis_required_sample_known_values() {
        // Computed by hand from the formula with exact z values:
        // p0 = 1%, ratio 2, one-sided alpha 5%, power 80%: 792.35 -> 793.
        assert_eq!(required_sample(0.01, 2.0, 0.05, 0.8), 793);
        // Figures for the report: alpha 0.01, power 0.9.
        assert_eq!(required_sample(0.01, 2.0, 0.01, 0.9), 1689); // 1688.27
        assert_eq!(required_sample(0.01, 3.0, 0.01, 0.9), 507); // 506.44
        assert_eq!(required_sample(0.02, 2.0, 0.01, 0.9), 832); // 831.80
        assert_eq!(required_sample(0.02, 3.0, 0.01, 0.9), 249); // 248.09
        assert_eq!(required_sample(0.05, 2.0, 0.01, 0.9), 318); // 317.90
        assert_eq!(required_sample(0.05, 3.0, 0.01, 0.9), 94); // 93.05
                                                               // Floor: p0 = 0 is sized as 0.5 %.
        assert_eq!(
            required_sample(0.0, 2.0, 0.01, 0.9),
            required_sample(P0_FLOOR, 2.0, 0.01, 0.9)
        );
        // No regression to detect: the cap.
        assert_eq!(required_sample(0.02, 1.0, 0.01, 0.9), MAX_REQUIRED_SAMPLE);
        // ratio · p0 beyond 1 is sized against a canary that always fails.
        assert!(required_sample(0.6, 2.0, 0.01, 0.9) < 20);
        // Smaller alpha / higher power / smaller ratio need more.
        assert!(required_sample(0.02, 2.0, 0.001, 0.9) > required_sample(0.02, 2.0, 0.01, 0.9));
        assert!(required_sample(0.02, 2.0, 0.01, 0.95) > required_sample(0.02, 2.0, 0.01, 0.9));
        assert!(required_sample(0.02, 1.5, 0.01, 0.9) > required_sample(0.02, 2.0, 0.01, 0.9));
    }

    #[test]
    fn analysis_required_sample_vs_stable_known_values() {
        // Fleiss (no continuity correction), equal groups, 1% vs 2%,
        // one-sided 5%, power 80%: 1825.90 per group.
        assert_eq!(required_sample_vs_stable(0.01, 2.0, 0.05, 0.8, 1.0), 1826);
        // Alpha 0.01/12 (6 steps, 2 checks), power 0.9, 2% vs 4%:
        // equal split 2846.83, 5 % step (19 stable per canary) 1285.19.
        assert_eq!(
            required_sample_vs_stable(0.02, 2.0, 0.01 / 12.0, 0.9, 1.0),
            2847
        );
        assert_eq!(
            required_sample_vs_stable(0.02, 2.0, 0.01 / 12.0, 0.9, 19.0),
            1286
        );
        // Converges to the known-stable formula with a huge stable sample.
        let known = required_sample(0.02, 2.0, 0.01, 0.9);
        let vs = required_sample_vs_stable(0.02, 2.0, 0.01, 0.9, 1e6);
        assert!(vs.abs_diff(known) <= 1, "{vs} vs {known}");
    }

    #[test]
    fn analysis_histogram_quantiles() {
        let mut h = [0u64; 32];
        assert_eq!(histogram_quantile(&h, 0.5), None);
        // All 100 samples in [1024, 2048) µs.
        h[10] = 100;
        assert_eq!(histogram_quantile(&h, 0.5), Some(1536.0));
        assert!(close(histogram_quantile(&h, 0.99).unwrap(), 2037.76, 1e-12));
        assert_eq!(histogram_quantile(&h, 0.0), Some(1024.0));
        assert_eq!(histogram_quantile(&h, 1.0), Some(2048.0));
        // 90 in [8, 16) µs, 10 in [128, 256) µs.
        let mut h = [0u64; 32];
        h[3] = 90;
        h[7] = 10;
        assert_eq!(histogram_quantile(&h, 0.9), Some(16.0));
        assert!(close(histogram_quantile(&h, 0.99).unwrap(), 243.2, 1e-12));
        assert!(close(histogram_quantile(&h, 0.45).unwrap(), 12.0, 1e-12));
        assert!(close(histogram_quantile(&h, 0.95).unwrap(), 192.0, 1e-12));
        // Bucket 0 and the top bucket.
        let mut h = [0u64; 32];
        h[0] = 1;
        h[31] = 1;
        assert_eq!(histogram_quantile(&h, 0.25), Some(1.5));
        assert_eq!(histogram_quantile(&h, 1.0), Some(4_294_967_296.0));
        assert_eq!(histogram_quantile(&h, 1.1), None);
    }

    fn window(nc: u64, xc: u64, ns: u64, xs: u64) -> WindowCounts {
        WindowCounts {
            canary: VersionCounts {
                attempts: nc,
                failures: xc,
                ..Default::default()
            },
            stable: VersionCounts {
                attempts: ns,
                failures: xs,
                ..Default::default()
            },
        }
    }

    fn ratio_limits() -> Limits {
        Limits {
            max_canary_vs_stable_ratio: Some(2.0),
            ..Default::default()
        }
    }

    #[test]
    fn recent_guard_catches_a_late_fault_and_keeps_quiet_otherwise() {
        let l = Limits {
            max_error_ratio: Some(0.1),
            max_canary_vs_stable_ratio: Some(2.0),
            min_canary_connections: 50,
            ..Default::default()
        };
        let alpha_look = 1e-6;
        // 12 of 12 recent canary connections failed (p = 1e-12 under 10 %).
        let why = recent_guard(&window(12, 12, 0, 0), &l, alpha_look).unwrap();
        assert!(why.contains("above the ceiling"), "{why}");
        // Against stable: 30/300 vs 5/1000 (p far below alpha_look).
        let why = recent_guard(&window(300, 30, 1000, 5), &l, alpha_look).unwrap();
        assert!(why.contains("more than 2x"), "{why}");
        // A/A-like noise: equal rates, nothing.
        assert_eq!(
            recent_guard(&window(300, 15, 1000, 50), &l, alpha_look),
            None
        );
        // A few failures are not enough at this level: P(X >= 3 | Bin(20, 0.1)) = 0.32.
        assert_eq!(recent_guard(&window(20, 3, 0, 0), &l, alpha_look), None);
        assert_eq!(recent_guard(&window(0, 0, 100, 50), &l, alpha_look), None);
    }

    #[test]
    fn analysis_verdicts() {
        let l = ratio_limits();
        // Too few: NeedMore with the figure status shows.
        let a = analyze_detailed(&window(500, 10, 500, 10), &l);
        assert_eq!(a.checks, 3);
        assert!(close(a.alpha_per_check, 0.01 / 18.0, 1e-12));
        // Sized from the stable rate one standard error low.
        let p0 = 0.02 - (0.02f64 * 0.98 / 500.0).sqrt();
        let need = required_sample_vs_stable(p0, 2.0, 0.01 / 18.0, 0.9, 1.0);
        assert!(need > 2847, "{need}");
        assert_eq!(a.verdict, Verdict::NeedMore { have: 500, need });
        // Enough and equal: Pass.
        assert_eq!(analyze(&window(4000, 80, 4000, 80), &l), Verdict::Pass);
        // A clear failure stops early, long before the sample.
        match analyze(&window(300, 36, 300, 6), &l) {
            Verdict::Fail { reason } => assert!(reason.contains("sequential"), "{reason}"),
            v => panic!("{v:?}"),
        }
        // At the sample, the exact test: p-value is the binomial tail.
        let a = analyze_detailed(&window(4000, 120, 4000, 80), &l);
        let p = binomial_sf(120, 200, 0.5);
        assert_eq!(a.ratio_p_value, Some(p));
        assert_eq!(a.verdict == Verdict::Pass, p >= 0.01 / 12.0);
        // Absolute ceiling.
        let l = Limits {
            max_error_ratio: Some(0.05),
            ..Default::default()
        };
        assert_eq!(analyze(&window(1000, 40, 0, 0), &l), Verdict::Pass);
        assert!(matches!(
            analyze(&window(1000, 120, 0, 0), &l),
            Verdict::Fail { .. }
        ));
        // No stable traffic: ratio checks are off, with a note.
        let a = analyze_detailed(&window(1000, 10, 0, 0), &ratio_limits());
        assert_eq!(a.checks, 0);
        assert_eq!(a.verdict, Verdict::Pass);
        assert!(!a.notes.is_empty());
    }

    #[test]
    fn analysis_p99_handshake() {
        let mut w = window(1000, 0, 1000, 0);
        w.canary.handshake_us_log2[10] = 990; // ~1-2 ms
        w.canary.handshake_us_log2[14] = 10; // 16-32 ms
        let l = Limits {
            max_p99_handshake_ms: Some(20.0),
            ..Default::default()
        };
        // p99 = rank 990 -> top of bucket 10 = 2.048 ms.
        let a = analyze_detailed(&w, &l);
        assert_eq!(a.canary_p99_handshake_ms, Some(2.048));
        assert_eq!(a.verdict, Verdict::Pass);
        w.canary.handshake_us_log2[10] = 900;
        w.canary.handshake_us_log2[14] = 100; // p99 = 16384 + 0.9 * 16384 µs
        match analyze(&w, &l) {
            Verdict::Fail { reason } => assert!(reason.contains("31.130"), "{reason}"),
            v => panic!("{v:?}"),
        }
    }

    /// One step: add `batch` connections per version, look, repeat until the
    /// verdict is not NeedMore. Returns (failed, canary connections seen).
    fn simulate_step(rng: &mut Rng, ps: f64, pc: f64, batch: u64, l: &Limits) -> (bool, u64) {
        let mut w = WindowCounts::default();
        loop {
            w.canary.attempts += batch;
            w.canary.failures += rng.count_failures(batch, pc);
            w.stable.attempts += batch;
            w.stable.failures += rng.count_failures(batch, ps);
            match analyze(&w, l) {
                Verdict::NeedMore { .. } => continue,
                Verdict::Pass => return (false, w.canary.attempts),
                Verdict::Fail { .. } => return (true, w.canary.attempts),
            }
        }
    }

    #[test]
    fn analysis_aa_unequal_split() {
        // A 10 % step: 9 stable connections per canary connection, so the
        // conditional test's theta0 is 0.1 and the sample is sized for k = 9.
        let l = sim_limits();
        let mut rng = Rng(0x5151_5151_abcd_0001);
        let runs = 500;
        let mut alarms = 0;
        for _ in 0..runs {
            let mut rolled_back = false;
            for _ in 0..l.steps {
                let mut w = WindowCounts::default();
                let verdict = loop {
                    w.canary.attempts += 50;
                    w.canary.failures += rng.count_failures(50, 0.02);
                    w.stable.attempts += 450;
                    w.stable.failures += rng.count_failures(450, 0.02);
                    match analyze(&w, &l) {
                        Verdict::NeedMore { .. } => continue,
                        v => break v,
                    }
                };
                if verdict != Verdict::Pass {
                    rolled_back = true;
                    break;
                }
            }
            alarms += rolled_back as u32;
        }
        eprintln!("A/A 10% split: {alarms}/{runs} rollouts rolled back");
        assert!(
            f64::from(alarms) <= l.alpha * runs as f64,
            "{alarms}/{runs}"
        );
    }

    fn simulate_rollout(rng: &mut Rng, ps: f64, pc: f64, l: &Limits) -> bool {
        (0..l.steps).any(|_| simulate_step(rng, ps, pc, 50, l).0)
    }

    fn sim_limits() -> Limits {
        Limits {
            max_error_ratio: Some(0.10),
            max_canary_vs_stable_ratio: Some(2.0),
            ..Default::default()
        }
    }

    #[test]
    fn analysis_aa_false_alarms() {
        let l = sim_limits();
        // The stated bound: P(false alarm in a rollout) <= alpha = 0.01.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let alarms_30 = (0..30)
            .filter(|_| simulate_rollout(&mut rng, 0.02, 0.02, &l))
            .count();
        assert!(alarms_30 <= 1, "{alarms_30} of 30 A/A rollouts rolled back");
        let runs = 3000;
        let alarms = (0..runs)
            .filter(|_| simulate_rollout(&mut rng, 0.02, 0.02, &l))
            .count();
        let rate = alarms as f64 / runs as f64;
        eprintln!("A/A: {alarms_30}/30, {alarms}/{runs} rollouts rolled back ({rate:.4})");
        assert!(rate <= l.alpha, "A/A false-alarm rate {rate} > {}", l.alpha);
    }

    #[test]
    fn analysis_power_at_five_times_stable() {
        let l = sim_limits();
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let runs = 1000;
        let mut failed = 0;
        let mut seen = Vec::new();
        for _ in 0..runs {
            let (f, n) = simulate_step(&mut rng, 0.02, 0.10, 50, &l);
            failed += f as u32;
            seen.push(n);
        }
        seen.sort_unstable();
        eprintln!(
            "5x: failed {failed}/{runs}, median canary connections at decision {}",
            seen[runs / 2]
        );
        assert!(f64::from(failed) >= 0.95 * runs as f64, "{failed}/{runs}");
    }

    #[test]
    fn analysis_power_at_the_ratio_limit() {
        // A canary at exactly the limit (2x) is caught with about the stated
        // power (0.9) once the required sample is reached.
        let l = Limits {
            max_canary_vs_stable_ratio: Some(2.0),
            ..Default::default()
        };
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let runs = 1000;
        let failed = (0..runs)
            .filter(|_| simulate_step(&mut rng, 0.02, 0.04, 50, &l).0)
            .count();
        eprintln!("2x: failed {failed}/{runs}");
        // Measured 884/1000 with this seed: the exact conditional test is a
        // little more conservative than the normal approximation that sizes it.
        assert!(failed as f64 >= 0.86 * runs as f64, "{failed}/{runs}");
    }
}
