//! Latency as a sequential test: is the canary slower than stable by more
//! than the plan allows?
//!
//! # The test
//!
//! Response times become a proportion, and the existing two-proportion
//! machinery (the conditional-binomial SPRT and the exact final test of the
//! error checks, see the module docs of `analysis`) judges it:
//!
//! 1. **Calibration.** Each step first reads stable's histogram until it
//!    holds `min_stable_responses` (at least `20 / (1 - q)`). From it: the
//!    stable quantile `Q = Q_s(q)` and the threshold
//!    `T = Q + max(max_slower_ms, (max_slower_ratio - 1) Q)`, rounded up to
//!    the histogram's next bucket bound (counts are exact only at bounds).
//!    Canary responses of the calibration are not used: `T` is fixed before
//!    any response it is tested on, so the test below is exact whatever `T`.
//! 2. **Counts.** From then on, per version: responses `n` and responses
//!    above `T` (`x`).
//! 3. **Hypotheses.** H0 "the canary is no slower than stable" gives
//!    `p_c(T) <= p_s(T)` (stochastic order). The limit H1 "the canary's
//!    q-quantile has reached `T`" gives `p_c(T) >= 1 - q`, against stable's
//!    `p0 = p_s(T)` estimated from the calibration (floored at `P0_FLOOR`):
//!    the alternative ratio is `r = (1 - q) / p0` (at least 1.5).
//! 4. **Sequential test** at every look: conditional on the exceedances,
//!    each is the canary's with `θ0 = n_c / (n_c + n_s)` under H0 and
//!    `θ1 = r n_c / (r n_c + n_s)` under H1; the step fails when
//!    `Λ = (θ1/θ0)^x_c ((1-θ1)/(1-θ0))^x_s >= 1/α`. Under H0 `Λ` is a
//!    non-negative supermartingale: `P(ever crossing) <= α` however often
//!    it is looked at (Ville).
//! 5. **Final test**, once, when the canary has the sample
//!    [`required_sample_vs_stable`] asks for (`p0`, `r`, `α`, power,
//!    the observed stable/canary split): the exact conditional binomial
//!    `P(X >= x_c | Bin(x_c + x_s, θ0)) < α` fails the step.
//!
//! # Stated false-alarm rate and power
//!
//! `α = latency.false_alarm_rate / (steps × sources × 2)` per check: the
//! SPRT and the final test of each source in each step. So an A/A rollout
//! (canary as fast as stable) is failed by latency with probability at most
//! `latency.false_alarm_rate` (default: `analysis.false_alarm_rate`, 0.01),
//! **under continuous looks**. The two tests are conservative (Ville's
//! bound; the conditional test), so the measured rate is below it.
//! The step is sized so that a canary whose q-quantile sits at `T` (slower
//! than stable's by the allowance, rounded up to the bucket bound) fails
//! with probability about `power` (normal approximation; `p0` estimated);
//! a canary slower than that fails with more. The unit tests measure both
//! by simulation.
//!
//! Common-mode slowness (load on the host hits both versions) does not
//! fail the canary: the test conditions on the exceedances and asks only
//! how they split between the versions.

use super::counts::VersionCounts;
use super::special::binomial_sf;
use super::verdict::bernoulli_llr;
use super::{required_sample_vs_stable, P0_FLOOR};
use crate::config::LatencyCheck;
use crate::control::api::LatencyStatus;
use serde::{Deserialize, Serialize};

/// A latency histogram: `counts[i]` responses in bucket `i`, bucket `i`
/// covering `(upper_ms[i-1], upper_ms[i]]` (bucket 0 from `first_lower_ms`),
/// and one more bucket above the last bound. All bounds finite (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Hist {
    pub first_lower_ms: f64,
    pub upper_ms: Vec<f64>,
    /// `upper_ms.len() + 1` counts.
    pub counts: Vec<u64>,
}

impl Hist {
    /// The data plane's log2 SYN -> SYN-ACK histogram (bucket `i`:
    /// `[2^i, 2^(i+1))` µs).
    pub fn from_log2_us(h: &[u64]) -> Hist {
        let mut counts = h.to_vec();
        counts.push(0);
        Hist {
            first_lower_ms: 0.001,
            upper_ms: (0..h.len())
                .map(|i| (1u64 << (i + 1)) as f64 / 1000.0)
                .collect(),
            counts,
        }
    }

    /// A Prometheus histogram: cumulative counts by `le` in seconds
    /// (`+Inf` as infinity), in any order.
    pub fn from_cumulative_seconds(buckets: &[(f64, f64)]) -> Option<Hist> {
        let mut b: Vec<(f64, f64)> = buckets.to_vec();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        let inf = b.iter().find(|x| x.0.is_infinite()).map(|x| x.1);
        let finite: Vec<(f64, f64)> = b.into_iter().filter(|x| x.0.is_finite()).collect();
        if finite.is_empty() {
            return None;
        }
        let mut counts = Vec::with_capacity(finite.len() + 1);
        let mut before = 0.0;
        for (_, c) in &finite {
            counts.push((c - before).max(0.0).round() as u64);
            before = before.max(*c);
        }
        counts.push(inf.map_or(0.0, |i| (i - before).max(0.0)).round() as u64);
        Some(Hist {
            first_lower_ms: 0.0,
            upper_ms: finite.iter().map(|x| x.0 * 1000.0).collect(),
            counts,
        })
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn same_layout(&self, o: &Hist) -> bool {
        self.upper_ms == o.upper_ms && self.counts.len() == o.counts.len()
    }

    /// Adds `o` (same layout; an empty histogram takes `o`'s).
    pub fn add(&mut self, o: &Hist) -> bool {
        if self.counts.is_empty() {
            *self = o.clone();
            return true;
        }
        if !self.same_layout(o) {
            return false;
        }
        self.counts
            .iter_mut()
            .zip(&o.counts)
            .for_each(|(a, b)| *a += b);
        true
    }

    /// `self - earlier`; None when the layouts differ or a count went back
    /// (a counter reset: that interval is skipped).
    pub fn since(&self, earlier: &Hist) -> Option<Hist> {
        if !self.same_layout(earlier) {
            return None;
        }
        let mut counts = Vec::with_capacity(self.counts.len());
        for (a, b) in self.counts.iter().zip(&earlier.counts) {
            counts.push(a.checked_sub(*b)?);
        }
        Some(Hist {
            counts,
            ..self.clone()
        })
    }

    /// Responses above bound `i` (in the buckets after it).
    pub fn above(&self, i: usize) -> u64 {
        self.counts.iter().skip(i + 1).sum()
    }

    /// The `q`-quantile in ms, interpolated in its bucket as Prometheus'
    /// `histogram_quantile` does; infinite when it falls above the last
    /// bound; None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut before = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let c = c as f64;
            if rank <= before + c {
                let Some(&hi) = self.upper_ms.get(i) else {
                    return Some(f64::INFINITY);
                };
                let lo = if i == 0 {
                    self.first_lower_ms
                } else {
                    self.upper_ms[i - 1]
                };
                return Some(lo + (hi - lo) * ((rank - before) / c).clamp(0.0, 1.0));
            }
            before += c;
        }
        Some(f64::INFINITY)
    }
}

/// The threshold a calibration set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// Index of the bucket bound `T` in the histogram.
    pub index: usize,
    pub ms: f64,
    /// Stable's quantile in the calibration, and the allowance above it.
    pub stable_q_ms: f64,
    pub allowed_ms: f64,
    /// Stable's share above `T` in the calibration (floored), and the
    /// alternative ratio `(1 - q) / p0`.
    pub p0: f64,
    pub ratio: f64,
}

/// The parameters of one step's test.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub quantile: f64,
    pub max_slower_ratio: Option<f64>,
    pub max_slower_ms: Option<f64>,
    pub min_stable_responses: u64,
    /// Alpha of each check (the SPRT, the final test).
    pub alpha: f64,
    pub power: f64,
    pub min_canary: u64,
}

impl Settings {
    /// `check`'s settings in a plan of `steps` steps; `alpha`, `power` and
    /// `min_canary` are the analysis' (used unless `check` sets its own).
    pub fn new(
        check: &LatencyCheck,
        steps: usize,
        alpha: f64,
        power: f64,
        min_canary: u64,
    ) -> Settings {
        let sources = check.handshake as usize + check.prometheus.is_some() as usize;
        let budget = check.false_alarm_rate.unwrap_or(alpha);
        Settings {
            quantile: check.quantile,
            max_slower_ratio: check.max_slower_ratio,
            max_slower_ms: check.max_slower_ms,
            min_stable_responses: check.min_stable_responses,
            alpha: budget / (steps.max(1) * sources.max(1) * 2) as f64,
            power: check.power.unwrap_or(power),
            min_canary: min_canary.max(1),
        }
    }

    /// Stable responses the calibration needs.
    pub fn calibration_need(&self) -> u64 {
        // 20 expected responses above the quantile (less a rounding hair:
        // 20 / (1 - 0.9) is 200.00000000000003).
        let tail = (20.0 / (1.0 - self.quantile) - 1e-6).ceil() as u64;
        self.min_stable_responses.max(tail)
    }

    /// The threshold from stable's calibration histogram (None: it falls
    /// beyond the histogram's last bound, with why).
    pub fn threshold(&self, cal: &Hist) -> Result<Threshold, String> {
        let q = self.quantile;
        let stable_q = cal.quantile(q).ok_or("no stable responses")?;
        if !stable_q.is_finite() {
            return Err(format!(
                "stable's p{} is above the histogram's last bound",
                pct(q)
            ));
        }
        let by_ratio = self.max_slower_ratio.map_or(0.0, |r| (r - 1.0) * stable_q);
        let allowed = by_ratio.max(self.max_slower_ms.unwrap_or(0.0));
        let want = stable_q + allowed;
        let Some(index) = cal.upper_ms.iter().position(|b| *b >= want * (1.0 - 1e-9)) else {
            return Err(format!(
                "the threshold {want:.3} ms is above the histogram's last bound ({:.3} ms)",
                cal.upper_ms.last().copied().unwrap_or(0.0)
            ));
        };
        let p0_hat = cal.above(index) as f64 / cal.total() as f64;
        let p0 = p0_hat.max(P0_FLOOR);
        let ratio = ((1.0 - q) / p0).max(1.5);
        Ok(Threshold {
            index,
            ms: cal.upper_ms[index],
            stable_q_ms: stable_q,
            allowed_ms: allowed,
            p0,
            ratio,
        })
    }
}

fn pct(q: f64) -> String {
    let p = q * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{}", p.round())
    } else {
        format!("{p}")
    }
}

/// What a look says.
#[derive(Debug, Clone, PartialEq)]
pub enum Look {
    /// The step may pass on latency (its final test passed).
    Pass(String),
    /// Not decided yet (calibrating, gathering the sample).
    Wait(String),
    Fail(String),
}

/// One source's test in one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceTest {
    /// "handshake" or "prometheus".
    pub source: String,
    /// Stable's responses while calibrating.
    pub calibration: Hist,
    pub threshold: Option<Threshold>,
    /// Why no threshold could be set (it is retried with more data).
    pub no_threshold: Option<String>,
    pub canary_n: u64,
    pub canary_x: u64,
    pub stable_n: u64,
    pub stable_x: u64,
    /// Both versions' responses since the threshold (for the quantiles).
    pub canary_hist: Hist,
    pub stable_hist: Hist,
    /// The final test was taken and passed.
    pub passed: bool,
    pub llr: f64,
    pub need: Option<u64>,
    pub p_value: Option<f64>,
}

impl SourceTest {
    pub fn new(source: &str) -> SourceTest {
        SourceTest {
            source: source.to_string(),
            calibration: Hist::default(),
            threshold: None,
            no_threshold: None,
            canary_n: 0,
            canary_x: 0,
            stable_n: 0,
            stable_x: 0,
            canary_hist: Hist::default(),
            stable_hist: Hist::default(),
            passed: false,
            llr: 0.0,
            need: None,
            p_value: None,
        }
    }

    /// Adds one interval's responses of each version.
    pub fn observe(&mut self, s: &Settings, stable: &Hist, canary: &Hist) {
        let Some(t) = &self.threshold else {
            self.calibration.add(stable);
            if self.calibration.total() >= s.calibration_need() {
                match s.threshold(&self.calibration) {
                    Ok(t) => {
                        self.threshold = Some(t);
                        self.no_threshold = None;
                    }
                    Err(why) => self.no_threshold = Some(why),
                }
            }
            // Canary responses of the calibration are not tested (the
            // threshold must be fixed before the data it judges).
            return;
        };
        if !stable.same_layout(&self.calibration) || !canary.same_layout(&self.calibration) {
            return;
        }
        let i = t.index;
        self.stable_n += stable.total();
        self.stable_x += stable.above(i);
        self.canary_n += canary.total();
        self.canary_x += canary.above(i);
        self.stable_hist.add(stable);
        self.canary_hist.add(canary);
    }

    /// The verdict now: SPRT at every look, the final test once.
    pub fn look(&mut self, s: &Settings) -> Look {
        let name = format!("latency ({})", self.source);
        let Some(t) = self.threshold.clone() else {
            let why = self.no_threshold.clone().unwrap_or_else(|| {
                format!(
                    "calibrating on stable: {} of {} responses",
                    self.calibration.total(),
                    s.calibration_need()
                )
            });
            return Look::Wait(format!("{name}: {why}"));
        };
        let (nc, xc, ns, xs) = (self.canary_n, self.canary_x, self.stable_n, self.stable_x);
        let counts = format!(
            "above {:.3} ms (stable p{} {:.3} ms + {:.3} ms allowed): canary {xc}/{nc}, stable {xs}/{ns}",
            t.ms,
            pct(s.quantile),
            t.stable_q_ms,
            t.allowed_ms
        );
        if nc == 0 || ns == 0 {
            return Look::Wait(format!(
                "{name}: waiting for responses of both versions; {counts}"
            ));
        }
        let threshold = (1.0 / s.alpha).ln();
        let theta0 = nc as f64 / (nc + ns) as f64;
        let theta1 = t.ratio * nc as f64 / (t.ratio * nc as f64 + ns as f64);
        // Each exceedance is the canary's with probability theta: the
        // error test's Bernoulli likelihood ratio.
        let llr = bernoulli_llr(xc, xs, theta0, theta1);
        self.llr = llr;
        if llr >= threshold {
            return Look::Fail(format!(
                "{name}: canary slower than stable: {counts}; sequential test crossed \
                 (log LR {llr:.2} >= {threshold:.2}, alpha {:.1e})",
                s.alpha
            ));
        }
        if self.passed {
            return Look::Pass(format!("{name}: passed; {counts}"));
        }
        let need = s.min_canary.max(required_sample_vs_stable(
            t.p0,
            t.ratio,
            s.alpha,
            s.power,
            ns as f64 / nc as f64,
        ));
        self.need = Some(need);
        if nc < need {
            return Look::Wait(format!(
                "{name}: need {need} canary responses, have {nc}; {counts}"
            ));
        }
        let p = binomial_sf(xc, xc + xs, theta0);
        self.p_value = Some(p);
        if p < s.alpha {
            return Look::Fail(format!(
                "{name}: canary slower than stable: {counts}; p = {p:.2e} < alpha {:.1e}",
                s.alpha
            ));
        }
        self.passed = true;
        Look::Pass(format!("{name}: passed (p = {p:.2}); {counts}"))
    }

    /// The status line of this source; `shown` are quantiles to show
    /// instead of the test window's (Prometheus' `histogram_quantile`).
    pub fn status(
        &self,
        s: &Settings,
        verdict: &Look,
        shown: Option<(Option<f64>, Option<f64>)>,
    ) -> LatencyStatus {
        let (canary_ms, stable_ms) = shown.unwrap_or_else(|| {
            (
                self.canary_hist
                    .quantile(s.quantile)
                    .filter(|v| v.is_finite()),
                self.stable_hist
                    .quantile(s.quantile)
                    .filter(|v| v.is_finite()),
            )
        });
        let (state, detail) = match verdict {
            Look::Pass(d) => ("passed", d),
            Look::Wait(d) => ("waiting", d),
            Look::Fail(d) => ("failing", d),
        };
        LatencyStatus {
            source: self.source.clone(),
            quantile: s.quantile,
            canary_ms,
            stable_ms,
            threshold_ms: self.threshold.as_ref().map(|t| t.ms),
            canary_above: self.canary_x,
            canary_responses: self.canary_n,
            stable_above: self.stable_x,
            stable_responses: self.stable_n,
            required_canary_responses: self.need,
            log_lr: self.threshold.as_ref().map(|_| self.llr),
            log_lr_threshold: (1.0 / s.alpha).ln(),
            alpha: s.alpha,
            state: state.to_string(),
            detail: detail.clone(),
        }
    }
}

/// A rollout's latency tests in its current step (kept in the state file;
/// a new step, or a resume after a failure, starts afresh).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyState {
    pub step: usize,
    /// The step's weight (an adaptive plan's first step after its warm-up
    /// has the warm-up's index).
    #[serde(default)]
    pub weight: f64,
    pub handshake: Option<SourceTest>,
    pub prometheus: Option<SourceTest>,
    /// The last Prometheus reading's sequence number and cumulative
    /// histograms (stable, canary): the next one's baseline. Not saved:
    /// after a restart the first reading is a baseline again.
    #[serde(skip)]
    pub prom_prev: Option<(u64, Hist, Hist)>,
    #[serde(default)]
    pub status: Vec<LatencyStatus>,
}

/// One Prometheus reading of the latency histograms (cumulative).
#[derive(Debug, Clone, PartialEq)]
pub struct HistReading {
    pub seq: u64,
    pub stable: Option<Hist>,
    pub canary: Option<Hist>,
    /// `histogram_quantile` over the recent window, per version (shown).
    pub stable_q_ms: Option<f64>,
    pub canary_q_ms: Option<f64>,
    pub error: Option<String>,
}

impl LatencyState {
    pub fn new(step: usize, check: &LatencyCheck) -> LatencyState {
        LatencyState {
            step,
            weight: 0.0,
            handshake: check.handshake.then(|| SourceTest::new("handshake")),
            prometheus: check
                .prometheus
                .as_ref()
                .map(|_| SourceTest::new("prometheus")),
            prom_prev: None,
            status: Vec::new(),
        }
    }

    /// Feeds this tick's data: the engine's window delta (handshakes) and
    /// the latest Prometheus reading (taken since the step began), then
    /// looks. The first failing source fails; all must pass to pass.
    pub fn tick(
        &mut self,
        s: &Settings,
        delta: Option<(&VersionCounts, &VersionCounts)>,
        reading: Option<&HistReading>,
    ) -> Look {
        if let (Some(t), Some((stable, canary))) = (self.handshake.as_mut(), delta) {
            t.observe(
                s,
                &Hist::from_log2_us(&stable.handshake_us_log2),
                &Hist::from_log2_us(&canary.handshake_us_log2),
            );
        }
        let mut prom_note = None;
        if let (Some(t), Some(r)) = (self.prometheus.as_mut(), reading) {
            match (&r.stable, &r.canary) {
                (Some(st), Some(ca)) if self.prom_prev.as_ref().is_none_or(|p| p.0 != r.seq) => {
                    if let Some((_, ps, pc)) = &self.prom_prev {
                        if let (Some(ds), Some(dc)) = (st.since(ps), ca.since(pc)) {
                            t.observe(s, &ds, &dc);
                        }
                    }
                    self.prom_prev = Some((r.seq, st.clone(), ca.clone()));
                }
                (Some(_), Some(_)) => {}
                _ => {
                    prom_note = Some(
                        r.error
                            .clone()
                            .unwrap_or_else(|| "no histogram for both versions".into()),
                    )
                }
            }
        }
        let shown = reading.map(|r| (r.canary_q_ms, r.stable_q_ms));
        let mut looks = Vec::new();
        self.status.clear();
        if let Some(t) = self.handshake.as_mut() {
            let l = t.look(s);
            self.status.push(t.status(s, &l, None));
            looks.push(l);
        }
        if let Some(t) = self.prometheus.as_mut() {
            let mut l = t.look(s);
            if let (Some(note), Look::Wait(w)) = (&prom_note, &l) {
                l = Look::Wait(format!("{w} ({note})"));
            }
            if reading.is_none() {
                if let Look::Wait(w) = &l {
                    l = Look::Wait(format!("{w} (no Prometheus reading since the step began)"));
                }
            }
            self.status.push(t.status(s, &l, shown));
            looks.push(l);
        }
        if let Some(f) = looks.iter().find(|l| matches!(l, Look::Fail(_))) {
            return f.clone();
        }
        if let Some(w) = looks.iter().find(|l| matches!(l, Look::Wait(_))) {
            return w.clone();
        }
        let all: Vec<String> = looks
            .into_iter()
            .map(|l| match l {
                Look::Pass(x) | Look::Wait(x) | Look::Fail(x) => x,
            })
            .collect();
        Look::Pass(all.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rollout::test_rng::Rng;

    /// Prometheus-like bounds: 0.25 ms steps up to 20 ms, then coarser.
    fn bounds() -> Vec<f64> {
        let mut b: Vec<f64> = (1..=80).map(|i| i as f64 * 0.25).collect();
        b.extend([25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]);
        b
    }

    fn hist(bounds: &[f64], samples: impl IntoIterator<Item = f64>) -> Hist {
        let mut counts = vec![0u64; bounds.len() + 1];
        for v in samples {
            let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
            counts[i] += 1;
        }
        Hist {
            first_lower_ms: 0.0,
            upper_ms: bounds.to_vec(),
            counts,
        }
    }

    fn settings(alpha: f64) -> Settings {
        Settings {
            quantile: 0.9,
            max_slower_ratio: Some(1.2),
            max_slower_ms: Some(1.0),
            min_stable_responses: 200,
            alpha,
            power: 0.9,
            min_canary: 50,
        }
    }

    /// One step: stable latencies 1 + Exp(mean 1) ms, the canary's
    /// `shift + scale × (1 + Exp)`; 3 stable responses per canary one, in
    /// looks of 40 responses. True when the step failed.
    fn step(rng: &mut Rng, s: &Settings, shift: f64, scale: f64) -> bool {
        let b = bounds();
        let mut t = SourceTest::new("sim");
        for _ in 0..10_000 {
            let st = hist(&b, (0..30).map(|_| 1.0 + rng.exp()));
            let ca = hist(&b, (0..10).map(|_| shift + scale * (1.0 + rng.exp())));
            t.observe(s, &st, &ca);
            match t.look(s) {
                Look::Fail(_) => return true,
                Look::Pass(_) => return false,
                Look::Wait(_) => {}
            }
        }
        panic!("undecided after 10000 looks: {t:?}");
    }

    #[test]
    fn latency_histograms_convert_and_interpolate() {
        // Log2 µs: 10 handshakes in [64, 128) µs, 10 in [1024, 2048).
        let mut h = [0u64; 24];
        h[6] = 10;
        h[10] = 10;
        let x = Hist::from_log2_us(&h);
        assert_eq!(x.total(), 20);
        assert_eq!(x.above(6), 10, "above 128 µs");
        let p50 = x.quantile(0.5).unwrap();
        assert!((p50 - 0.128).abs() < 1e-9, "{p50}");
        // Prometheus: le in seconds, cumulative, +Inf last.
        let p = Hist::from_cumulative_seconds(&[(f64::INFINITY, 10.0), (0.005, 4.0), (0.01, 8.0)])
            .unwrap();
        assert_eq!(p.upper_ms, vec![5.0, 10.0]);
        assert_eq!(p.counts, vec![4, 4, 2]);
        assert_eq!(p.quantile(0.6), Some(7.5));
        assert_eq!(p.quantile(0.95), Some(f64::INFINITY));
        let later =
            Hist::from_cumulative_seconds(&[(0.005, 5.0), (0.01, 20.0), (f64::INFINITY, 30.0)])
                .unwrap();
        assert_eq!(later.since(&p).unwrap().counts, vec![1, 11, 8]);
        assert_eq!(p.since(&later), None, "a reset is skipped");
    }

    #[test]
    fn latency_threshold_is_the_quantile_plus_the_larger_allowance() {
        let s = settings(1e-3);
        let b = bounds();
        // Stable p90 near 3.3 ms: 20 % of 3.3 = 0.66 < 1 ms: T = 4.3 -> 4.5.
        let mut rng = Rng(7);
        let cal = hist(&b, (0..20_000).map(|_| 1.0 + rng.exp()));
        let t = s.threshold(&cal).unwrap();
        assert!((t.stable_q_ms - 3.3).abs() < 0.1, "{t:?}");
        assert_eq!(t.allowed_ms, 1.0);
        assert_eq!(t.ms, 4.5, "rounded up to the next bound");
        // p0 = P(1 + Exp > 4.5) = e^-3.5 = 0.030; ratio 0.1 / 0.03.
        assert!((t.p0 - 0.030).abs() < 0.004, "{t:?}");
        assert!((t.ratio - 0.1 / t.p0).abs() < 1e-9);
        // A ratio allowance above the ms one wins.
        let s2 = Settings {
            max_slower_ratio: Some(2.0),
            ..s.clone()
        };
        let t2 = s2.threshold(&cal).unwrap();
        assert!((t2.allowed_ms - t2.stable_q_ms).abs() < 1e-9, "{t2:?}");
        // Beyond the last bound: said, not guessed.
        let s3 = Settings {
            max_slower_ms: Some(5000.0),
            ..s
        };
        assert!(s3
            .threshold(&cal)
            .unwrap_err()
            .contains("above the histogram's last bound"));
    }

    /// A/A: the canary's latencies come from stable's distribution. The
    /// promise: P(a step fails) <= 2 alpha (the SPRT and the final test,
    /// alpha each). At 2 alpha = 0.05 over 2000 seeded steps the measured
    /// rate may exceed 0.05 by noise only: the bound is 0.05 + 3 standard
    /// errors (3 × sqrt(0.05 × 0.95 / 2000) = 0.0146).
    #[test]
    fn latency_aa_false_alarm_rate_is_within_its_alpha() {
        let s = settings(0.025);
        let mut rng = Rng(0x5eed_1a7e);
        let runs = 2000;
        let fails = (0..runs).filter(|_| step(&mut rng, &s, 0.0, 1.0)).count();
        let rate = fails as f64 / runs as f64;
        let bound = 0.05 + 3.0 * (0.05f64 * 0.95 / runs as f64).sqrt();
        println!(
            "A/A: {fails}/{runs} steps failed ({rate:.4}); promised <= 0.05 (bound {bound:.4})"
        );
        assert!(rate <= bound, "A/A false alarms {rate} > {bound}");
    }

    /// A canary slower than stable by the allowance at the threshold (its
    /// p90 at T): the test is sized for `power` = 0.9 there. Over 500
    /// seeded steps the measured power may fall short by noise (3 standard
    /// errors: 3 × sqrt(0.9 × 0.1 / 500) = 0.040) and by the normal
    /// approximation; asserted >= 0.85. A canary 30 ms slower fails always.
    #[test]
    fn latency_power_at_the_limit_and_beyond() {
        let s = settings(1e-3);
        let mut rng = Rng(0xfeed);
        // Stable p90 = 1 + ln 10 = 3.303 ms; allowance 1 ms; T = 4.5 ms,
        // the next bound: a canary shifted by 4.5 - 3.303 has its p90 at T.
        let shift = 4.5 - (1.0 + 10f64.ln());
        let runs = 500;
        let caught = (0..runs).filter(|_| step(&mut rng, &s, shift, 1.0)).count();
        let power = caught as f64 / runs as f64;
        println!("power at the limit: {caught}/{runs} = {power:.3} (stated 0.9)");
        assert!(power >= 0.85, "power {power}");
        // Half the allowance: a slowdown the plan tolerates fails rarely.
        let tolerated = (0..runs)
            .filter(|_| step(&mut rng, &s, 0.5 * shift, 1.0))
            .count();
        println!("half the allowance: {tolerated}/{runs} failed");
        assert!(tolerated < caught / 2, "{tolerated} vs {caught}");
        let slow = (0..100).filter(|_| step(&mut rng, &s, 30.0, 1.0)).count();
        assert_eq!(slow, 100);
    }

    /// Common-mode slowness (both versions 3x slower for a while) is not
    /// a canary regression.
    #[test]
    fn latency_common_mode_slowness_does_not_fail() {
        let s = settings(1e-3);
        let b = bounds();
        let mut rng = Rng(42);
        let mut t = SourceTest::new("sim");
        let mut looks = 0;
        loop {
            looks += 1;
            let slow = if (looks / 5) % 2 == 1 { 3.0 } else { 1.0 };
            let st = hist(&b, (0..30).map(|_| slow * (1.0 + rng.exp())));
            let ca = hist(&b, (0..10).map(|_| slow * (1.0 + rng.exp())));
            t.observe(&s, &st, &ca);
            match t.look(&s) {
                Look::Pass(_) => break,
                Look::Fail(why) => panic!("{why}"),
                Look::Wait(_) => assert!(looks < 10_000),
            }
        }
    }

    #[test]
    fn latency_state_reads_prometheus_deltas_and_handshakes() {
        let check = LatencyCheck {
            quantile: 0.9,
            max_slower_ratio: None,
            max_slower_ms: Some(10.0),
            handshake: true,
            prometheus: Some(crate::config::LatencyHistogram {
                url: "http://x:1".into(),
                histogram: "$version".into(),
                interval: std::time::Duration::from_secs(1),
            }),
            false_alarm_rate: None,
            power: None,
            min_stable_responses: 200,
        };
        let s = Settings::new(&check, 2, 0.01, 0.9, 50);
        assert!(
            (s.alpha - 0.01 / 8.0).abs() < 1e-12,
            "2 steps x 2 sources x 2 checks"
        );
        let mut st = LatencyState::new(0, &check);
        // Cumulative counts: `fast` responses within 1 ms, `slow` ones in
        // (25, 100] ms.
        let cum = |fast: f64, slow: f64| {
            let t = fast + slow;
            Hist::from_cumulative_seconds(&[
                (0.001, fast),
                (0.005, fast),
                (0.025, fast),
                (0.1, t),
                (f64::INFINITY, t),
            ])
        };
        // Handshakes: all in [64, 128) µs for both versions.
        let mut hs = VersionCounts::default();
        hs.handshake_us_log2[6] = 100;
        let mut seq = 0;
        let mut read = |i: u64| {
            seq += 1;
            let (fast, slow) = (100.0 * i.min(2) as f64, 100.0 * i.saturating_sub(2) as f64);
            HistReading {
                seq,
                stable: cum(300.0 * i as f64, 0.0),
                canary: cum(fast, slow),
                stable_q_ms: Some(0.9),
                canary_q_ms: Some(if i > 2 { 90.0 } else { 0.9 }),
                error: None,
            }
        };
        // Baseline, then calibration (300 stable responses), then data: the
        // canary's responses are all in (25, 100] ms, T = 25 ms.
        let mut last = Look::Wait(String::new());
        for i in 1..=8 {
            let r = read(i);
            last = st.tick(&s, Some((&hs, &hs)), Some(&r));
            if matches!(last, Look::Fail(_)) {
                break;
            }
        }
        let Look::Fail(why) = last else {
            panic!("{last:?} {:#?}", st.status)
        };
        assert!(
            why.starts_with("latency (prometheus): canary slower than stable: above 25.000 ms"),
            "{why}"
        );
        let p = &st.status[1];
        assert_eq!(
            (p.source.as_str(), p.threshold_ms),
            ("prometheus", Some(25.0))
        );
        assert_eq!(p.canary_ms, Some(90.0), "the shown quantile is Prometheus'");
        assert_eq!(p.stable_above, 0);
        // The handshakes (same for both) are not failing.
        assert_ne!(st.status[0].state, "failing", "{:?}", st.status[0]);
    }
}
