//! The split decision: `bucket = hash(key, seed) % 10000`, canary iff
//! `bucket < weight_bp`. A client's bucket never changes while the seed stays,
//! so raising the weight only moves clients from stable to canary (monotone).

use crate::hash::murmur3_words;
use crate::maps::{
    FlowKey, ServiceState, AFFINITY_FLOW, MAGLEV_TABLE_SIZE, OV_COHORT, OV_COHORT_INDEX_MASK,
    OV_COHORT_INDEX_SHIFT, OV_COHORT_WEIGHT_MASK, OV_COHORT_WEIGHT_SHIFT, SVC_COHORTS_LIVE,
    VERSION_CANARY, VERSION_STABLE,
};

/// Weights are basis points: 10000 = 100 %.
pub const WEIGHT_SCALE_BP: u32 = 10_000;

/// Backend choice hashes with a derived seed so that, inside the canary
/// bucket range, the backend index is independent of the bucket.
const BACKEND_SEED_SALT: u32 = 0x9e37_79b9;

/// The 5-tuple as hash input words.
#[inline(always)]
fn flow_words(f: &FlowKey) -> [u32; 10] {
    [
        f.src[0],
        f.src[1],
        f.src[2],
        f.src[3],
        f.dst[0],
        f.dst[1],
        f.dst[2],
        f.dst[3],
        (f.sport as u32) | ((f.dport as u32) << 16),
        (f.proto as u32) | ((f.family as u32) << 8),
    ]
}

#[inline(always)]
fn affinity_hash(flow: &FlowKey, affinity: u32, seed: u32) -> u32 {
    if affinity == AFFINITY_FLOW {
        murmur3_words(&flow_words(flow), seed)
    } else {
        // source-ip: the client address alone, so every connection of one
        // client gets the same bucket (and the same backend).
        murmur3_words(&flow.src, seed)
    }
}

/// The hash whose bucket decides the version.
#[inline(always)]
pub fn split_hash(flow: &FlowKey, affinity: u32, seed: u32) -> u32 {
    affinity_hash(flow, affinity, seed)
}

/// The hash that picks a Maglev slot inside the chosen pool.
#[inline(always)]
pub fn backend_hash(flow: &FlowKey, affinity: u32, seed: u32) -> u32 {
    affinity_hash(flow, affinity, seed ^ BACKEND_SEED_SALT)
}

#[inline(always)]
pub fn bucket(hash: u32) -> u32 {
    hash % WEIGHT_SCALE_BP
}

/// `VERSION_CANARY` iff the bucket lies below the weight.
#[inline(always)]
pub fn choose_version(split_hash: u32, weight_bp: u32) -> u32 {
    if bucket(split_hash) < weight_bp {
        VERSION_CANARY
    } else {
        VERSION_STABLE
    }
}

#[inline(always)]
pub fn maglev_slot(backend_hash: u32) -> u32 {
    backend_hash % MAGLEV_TABLE_SIZE
}

/// What decided a new connection's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// A plain source-prefix override.
    Forced,
    /// A live cohort (its index) with its own weight.
    Cohort(u32),
    /// The hash bucket against the service's weight ("everyone").
    Hash,
}

/// The `OVERRIDES` value of a plain override forcing `version`.
#[inline(always)]
pub fn forced_value(version: u32) -> u32 {
    version & 1
}

/// The `OVERRIDES` value of a source of cohort `index` at `weight_bp`
/// (bit 0 stays 0: an older program sends the cohort to stable).
#[inline(always)]
pub fn cohort_value(index: u32, weight_bp: u32) -> u32 {
    OV_COHORT
        | ((index & OV_COHORT_INDEX_MASK) << OV_COHORT_INDEX_SHIFT)
        | ((weight_bp.min(WEIGHT_SCALE_BP) & OV_COHORT_WEIGHT_MASK) << OV_COHORT_WEIGHT_SHIFT)
}

/// A cohort value's (index, weight in basis points); None for a plain one.
#[inline(always)]
pub fn cohort_of(value: u32) -> Option<(u32, u32)> {
    if value & OV_COHORT == 0 {
        return None;
    }
    Some((
        (value >> OV_COHORT_INDEX_SHIFT) & OV_COHORT_INDEX_MASK,
        (value >> OV_COHORT_WEIGHT_SHIFT) & OV_COHORT_WEIGHT_MASK,
    ))
}

/// The version of a new connection: `ov` is the client's `OVERRIDES` value
/// (the longest prefix), if any. A plain override forces its version; a
/// cohort source decides with the cohort's weight while the service's
/// cohorts are live; anything else is the hash against the weight. The
/// kernel and `canaryctl explain` both call this.
#[inline(always)]
pub fn decide_version(hash: u32, svc: &ServiceState, ov: Option<u32>) -> (u32, By) {
    match ov {
        Some(v) if v & OV_COHORT == 0 => (forced_value(v), By::Forced),
        Some(v) if svc.has_overrides & SVC_COHORTS_LIVE != 0 => {
            let w = (v >> OV_COHORT_WEIGHT_SHIFT) & OV_COHORT_WEIGHT_MASK;
            let idx = (v >> OV_COHORT_INDEX_SHIFT) & OV_COHORT_INDEX_MASK;
            (choose_version(hash, w), By::Cohort(idx))
        }
        _ => (choose_version(hash, svc.weight_bp), By::Hash),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{AFFINITY_SOURCE_IP, FAMILY_V4, PROTO_TCP};

    fn client(i: u32, sport: u16) -> FlowKey {
        let a = [198u8, 18, (16 + (i >> 8)) as u8, i as u8];
        FlowKey::new(
            [u32::from_ne_bytes(a), 0, 0, 0],
            [u32::from_ne_bytes([198, 18, 100, 1]), 0, 0, 0],
            sport.to_be(),
            80u16.to_be(),
            PROTO_TCP,
            FAMILY_V4,
        )
    }

    #[test]
    fn monotone_in_weight() {
        for i in 0..4000 {
            let h = split_hash(&client(i, 1000), AFFINITY_SOURCE_IP, 7);
            let mut was_canary = false;
            for w in (0..=WEIGHT_SCALE_BP).step_by(250) {
                let canary = choose_version(h, w) == VERSION_CANARY;
                assert!(!was_canary || canary, "client {i} flipped back at {w}");
                was_canary = canary;
            }
            assert_eq!(choose_version(h, 0), VERSION_STABLE);
            assert_eq!(choose_version(h, WEIGHT_SCALE_BP), VERSION_CANARY);
        }
    }

    fn svc(weight_bp: u32, flags: u32) -> ServiceState {
        ServiceState {
            weight_bp,
            has_overrides: flags,
            ..Default::default()
        }
    }

    #[test]
    fn cohort_value_round_trips_and_keeps_bit_0_clear() {
        for idx in 0..crate::maps::MAX_COHORTS as u32 {
            for w in [0, 1, 500, 9_999, WEIGHT_SCALE_BP] {
                let v = cohort_value(idx, w);
                assert_eq!(cohort_of(v), Some((idx, w)));
                assert_eq!(v & 1, 0, "an older program must read stable");
            }
        }
        assert_eq!(
            cohort_of(cohort_value(3, 20_000)),
            Some((3, WEIGHT_SCALE_BP))
        );
        assert_eq!(cohort_of(forced_value(VERSION_CANARY)), None);
        assert_eq!(cohort_of(forced_value(VERSION_STABLE)), None);
    }

    #[test]
    fn forced_beats_cohort_beats_hash() {
        use crate::maps::{SVC_COHORTS_LIVE, SVC_PREFIXES};
        let live = svc(0, SVC_PREFIXES | SVC_COHORTS_LIVE);
        for i in 0..2000 {
            let h = split_hash(&client(i, 1), AFFINITY_SOURCE_IP, 9);
            // A plain override forces whatever the weights say.
            assert_eq!(
                decide_version(h, &live, Some(forced_value(VERSION_STABLE))),
                (VERSION_STABLE, By::Forced)
            );
            assert_eq!(
                decide_version(
                    h,
                    &svc(WEIGHT_SCALE_BP, SVC_PREFIXES),
                    Some(forced_value(0))
                ),
                (VERSION_STABLE, By::Forced)
            );
            // A live cohort at 100 % beats the service's 0 %.
            assert_eq!(
                decide_version(h, &live, Some(cohort_value(2, WEIGHT_SCALE_BP))),
                (VERSION_CANARY, By::Cohort(2))
            );
            // No entry: the hash against the service's weight.
            assert_eq!(decide_version(h, &live, None), (VERSION_STABLE, By::Hash));
            assert_eq!(
                decide_version(
                    h,
                    &svc(WEIGHT_SCALE_BP, SVC_PREFIXES | SVC_COHORTS_LIVE),
                    None
                ),
                (VERSION_CANARY, By::Hash)
            );
        }
    }

    #[test]
    fn without_the_live_bit_the_weight_decides() {
        use crate::maps::SVC_PREFIXES;
        for i in 0..2000 {
            let h = split_hash(&client(i, 1), AFFINITY_SOURCE_IP, 9);
            for w in [0, 500, 5000, WEIGHT_SCALE_BP] {
                let off = svc(w, SVC_PREFIXES);
                let (v, by) = decide_version(h, &off, Some(cohort_value(0, WEIGHT_SCALE_BP)));
                assert_eq!((v, by), (choose_version(h, w), By::Hash));
            }
        }
    }

    #[test]
    fn monotone_in_the_cohort_weight() {
        use crate::maps::{SVC_COHORTS_LIVE, SVC_PREFIXES};
        let live = svc(0, SVC_PREFIXES | SVC_COHORTS_LIVE);
        for i in 0..4000 {
            let h = split_hash(&client(i, 1000), AFFINITY_SOURCE_IP, 7);
            let mut was_canary = false;
            for w in (0..=WEIGHT_SCALE_BP).step_by(250) {
                let (v, by) = decide_version(h, &live, Some(cohort_value(1, w)));
                assert_eq!(by, By::Cohort(1));
                let canary = v == VERSION_CANARY;
                assert!(!was_canary || canary, "client {i} flipped back at {w}");
                was_canary = canary;
            }
            assert!(was_canary);
        }
    }

    #[test]
    fn source_ip_ignores_ports_flow_does_not() {
        let a = client(5, 1000);
        let b = client(5, 2000);
        assert_eq!(
            split_hash(&a, AFFINITY_SOURCE_IP, 1),
            split_hash(&b, AFFINITY_SOURCE_IP, 1)
        );
        assert_ne!(
            split_hash(&a, AFFINITY_FLOW, 1),
            split_hash(&b, AFFINITY_FLOW, 1)
        );
    }

    /// Over n = 40,000 clients at 10 %, the canary count is Binomial(n, p)
    /// with sd = sqrt(n p (1-p)) = 60; a bound of 4 sd (±240) fails by chance
    /// with probability < 1e-4 if the hash is uniform.
    #[test]
    fn canary_share_within_binomial_bound() {
        let n = 40_000u32;
        for (w, p) in [(1000u32, 0.10f64), (500, 0.05), (5000, 0.5)] {
            let canary = (0..n)
                .filter(|&i| {
                    let h = split_hash(&client(i, 1), AFFINITY_SOURCE_IP, 42);
                    choose_version(h, w) == VERSION_CANARY
                })
                .count() as f64;
            let mean = n as f64 * p;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (canary - mean).abs() <= 4.0 * sd,
                "w={w}: {canary} vs {mean}±{}",
                4.0 * sd
            );
        }
    }
}
