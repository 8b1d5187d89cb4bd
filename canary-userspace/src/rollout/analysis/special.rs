//! Special functions the tests need: the normal quantile, log-gamma and
//! the exact binomial tail. Numerics only; no notion of canaries here.

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
