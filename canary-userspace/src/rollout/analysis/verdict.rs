//! The step verdict: the checks of the module docs (SPRTs, final exact
//! tests, recent-window guard, p99 threshold) over one window.

use super::counts::{histogram_quantile, WindowCounts};
use super::sample::{required_sample, required_sample_vs_stable};
use super::special::binomial_sf;
use super::{Analysis, Verdict, MIN_HANDSHAKES_FOR_P99};
use serde::Serialize;

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
    /// This step's share of `alpha`, when not an even split over `steps`
    /// (an adaptive plan front-loads it, see `rollout/adaptive.rs`).
    pub alpha_step: Option<f64>,
    /// Probability of failing a canary at exactly the ratio limit.
    pub power: f64,
    /// No step passes with fewer canary connections than this.
    pub min_canary_connections: u64,
    /// No step fails on its error counts unless at least this many
    /// distinct clients failed in it (0 or 1: any).
    pub min_failing_clients: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_error_ratio: None,
            max_canary_vs_stable_ratio: None,
            max_p99_handshake_ms: None,
            alpha: 0.01,
            steps: 6,
            alpha_step: None,
            power: 0.9,
            min_canary_connections: 100,
            min_failing_clients: 0,
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
pub(super) fn bernoulli_llr(x: u64, y: u64, p0: f64, p1: f64) -> f64 {
    let mut llr = 0.0;
    if x > 0 {
        llr += x as f64 * (p1 / p0).ln();
    }
    if y > 0 {
        llr += y as f64 * ((1.0 - p1) / (1.0 - p0)).ln();
    }
    llr
}

/// A step's alpha split over its `checks` statistical checks.
fn alpha_per_check(limits: &Limits, checks: u32) -> f64 {
    let alpha_step = limits
        .alpha_step
        .unwrap_or(limits.alpha / f64::from(limits.steps.max(1)));
    alpha_step / f64::from(checks.max(1))
}

/// The canary connections a window of `nc` canary and `ns` stable
/// connections (`xs` stable failures) needs before its final tests, the
/// stable rate taken `se` standard errors below its estimate (the step
/// uses 1; the adaptive planner 2, so the need met at the interval rarely
/// exceeds the plan).
pub fn step_need(limits: &Limits, nc: u64, ns: u64, xs: u64, se: f64) -> u64 {
    let min_stable = limits.min_canary_connections.max(1);
    let ratio = limits
        .max_canary_vs_stable_ratio
        .filter(|r| *r > 1.0 && ns >= min_stable);
    let ceiling = limits.max_error_ratio.filter(|p| *p > 0.0 && *p < 1.0);
    let checks = CHECKS_PER_LIMIT * (ratio.is_some() as u32 + ceiling.is_some() as u32);
    let alpha_check = alpha_per_check(limits, checks);
    let mut need = limits.min_canary_connections.max(1);
    if let Some(r) = ratio {
        let p_hat = xs.min(ns) as f64 / ns as f64;
        let p_stable = p_hat - se * (p_hat * (1.0 - p_hat) / ns as f64).sqrt();
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
    need
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
    let alpha_check = alpha_per_check(limits, checks);
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

    // The sample the step needs. Sized from one standard error below the
    // observed stable rate: the step stops at the first look where the
    // canary count reaches the need, and a need that follows every upward
    // wobble of the stable estimate would stop early exactly when the
    // contrast looks smallest (measured: power 0.83 instead of 0.9 at the
    // ratio limit).
    let need = step_need(limits, nc, ns, xs, 1.0);
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
