//! What the analysis reads: per-version counters over a window, and
//! quantiles of the log2 handshake histogram.

use super::HISTOGRAM_BUCKETS;
use serde::{Deserialize, Serialize};

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

/// One version's counters over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCounts {
    /// Connections attempted (SYNs forwarded to the version).
    pub attempts: u64,
    /// Of those, failed: RST from the backend or no SYN-ACK within the timeout.
    pub failures: u64,
    /// SYN -> SYN-ACK times; bucket `i` counts `[2^i, 2^(i+1))` µs.
    pub handshake_us_log2: [u64; HISTOGRAM_BUCKETS],
    /// Distinct clients that failed (a client counts once per step; see
    /// canaryd's `failing.rs`). A counter like the others: a window's value
    /// is the clients that failed first within it.
    #[serde(default)]
    pub failing_clients: u64,
}

impl Default for VersionCounts {
    fn default() -> Self {
        Self {
            attempts: 0,
            failures: 0,
            handshake_us_log2: [0; HISTOGRAM_BUCKETS],
            failing_clients: 0,
        }
    }
}

impl VersionCounts {
    /// Adds `other`'s counts (another window, or another host's).
    pub fn add(&mut self, other: &VersionCounts) {
        self.attempts += other.attempts;
        self.failures += other.failures;
        self.failing_clients += other.failing_clients;
        for (x, y) in self
            .handshake_us_log2
            .iter_mut()
            .zip(other.handshake_us_log2.iter())
        {
            *x += y;
        }
    }

    /// The counts since `earlier` (cumulative counters: `self - earlier`
    /// per field; a counter that went back, as after a reset, gives 0).
    pub fn since(&self, earlier: &VersionCounts) -> VersionCounts {
        let mut h = self.handshake_us_log2;
        for (x, y) in h.iter_mut().zip(earlier.handshake_us_log2.iter()) {
            *x = x.saturating_sub(*y);
        }
        VersionCounts {
            attempts: self.attempts.saturating_sub(earlier.attempts),
            failures: self.failures.saturating_sub(earlier.failures),
            handshake_us_log2: h,
            failing_clients: self.failing_clients.saturating_sub(earlier.failing_clients),
        }
    }

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

impl WindowCounts {
    /// Adds `other`'s counts, version by version.
    pub fn add(&mut self, other: &WindowCounts) {
        self.stable.add(&other.stable);
        self.canary.add(&other.canary);
    }

    /// The counts since `earlier`, version by version (`VersionCounts::since`).
    pub fn since(&self, earlier: &WindowCounts) -> WindowCounts {
        WindowCounts {
            stable: self.stable.since(&earlier.stable),
            canary: self.canary.since(&earlier.canary),
        }
    }
}
