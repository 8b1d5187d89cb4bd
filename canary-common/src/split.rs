//! The split decision: `bucket = hash(key, seed) % 10000`, canary iff
//! `bucket < weight_bp`. A client's bucket never changes while the seed stays,
//! so raising the weight only moves clients from stable to canary (monotone).

use crate::hash::murmur3_words;
use crate::maps::{FlowKey, AFFINITY_FLOW, MAGLEV_TABLE_SIZE, VERSION_CANARY, VERSION_STABLE};

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
