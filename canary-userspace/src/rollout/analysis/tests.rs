//! The analysis' unit tests and A/A / A/B simulations (test tables).

use super::*;

use crate::rollout::test_rng::Rng;

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

/// One A/A step fed as the data plane judges connections: per 100 ms tick
/// and version, 40 light clients (a connection with probability 0.3) and
/// one heavy client (a NAT: 8 connections a tick, 80/s). Each connection
/// fails with probability `p`, independently; it counts only if judged,
/// i.e. admitted by its client's budget (`ClientBudget::admit`, 10 a
/// second, as the data plane's default). Returns whether the step failed.
fn simulate_judged_step(rng: &mut Rng, p: f64, l: &Limits) -> bool {
    use canary_common::ClientBudget;
    let mut budgets = [[ClientBudget::default(); 41]; 2];
    let mut w = WindowCounts::default();
    for tick in 0u32..100_000 {
        let second = tick / 10;
        for (v, clients) in budgets.iter_mut().enumerate() {
            let counts = if v == 0 { &mut w.stable } else { &mut w.canary };
            for (c, budget) in clients.iter_mut().enumerate() {
                let conns = if c == 40 {
                    8
                } else {
                    (rng.uniform() < 0.3) as u32
                };
                for _ in 0..conns {
                    let failed = rng.uniform() < p;
                    if budget.admit(second, canary_common::DEFAULT_JUDGED_PER_CLIENT_PER_S) {
                        counts.attempts += 1;
                        counts.failures += failed as u64;
                    }
                }
            }
        }
        match analyze(&w, l) {
            Verdict::NeedMore { .. } => continue,
            Verdict::Pass => return false,
            Verdict::Fail { .. } => return true,
        }
    }
    panic!("no verdict in 10,000 simulated seconds")
}

/// Judging takes each client's first connections of a second, whatever
/// their outcome: the judged connections are a sample chosen independently
/// of success, so their failures are still binomial and the analysis keeps
/// its false-alarm promise (at most `alpha` per rollout) with the budget
/// on, heavy clients and all.
#[test]
fn analysis_aa_false_alarms_with_judging() {
    let l = sim_limits();
    let mut rng = Rng(0x7a1e_5eed_0bad_cafe);
    let runs = 600;
    let alarms = (0..runs)
        .filter(|_| (0..l.steps).any(|_| simulate_judged_step(&mut rng, 0.02, &l)))
        .count();
    let rate = alarms as f64 / runs as f64;
    eprintln!("A/A with judging: {alarms}/{runs} rollouts rolled back ({rate:.4})");
    assert!(rate <= l.alpha, "A/A false-alarm rate {rate} > {}", l.alpha);
}
