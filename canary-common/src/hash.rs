//! The flow hash: MurmurHash3 (x86, 32-bit) over whole 32-bit words, seeded.
//!
//! Why this hash: it is public and pinned down by reference vectors (so every
//! load balancer of a fleet, and `canaryctl explain`, agree bit for bit), it
//! avalanches well enough that `hash % 10000` is uniform for addresses that
//! differ in a single bit, and it costs a handful of multiplies and rotates per
//! word, all of which the BPF instruction set has. Our inputs are always whole
//! words, so the tail step of the reference algorithm never runs; on a
//! little-endian host (x86, bpfel) `murmur3_words(w, s)` equals the reference
//! MurmurHash3_x86_32 of the bytes of `w`.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix_word(h: u32, word: u32) -> u32 {
    let mut k = word.wrapping_mul(C1);
    k = k.rotate_left(15);
    k = k.wrapping_mul(C2);
    let mut h = h ^ k;
    h = h.rotate_left(13);
    h.wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finalize(mut h: u32, len_bytes: u32) -> u32 {
    h ^= len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// MurmurHash3_x86_32 of `N` whole words with `seed`.
#[inline(always)]
pub fn murmur3_words<const N: usize>(words: &[u32; N], seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < N {
        h = mix_word(h, words[i]);
        i += 1;
    }
    finalize(h, (N * 4) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words_of(bytes: &[u8; 4]) -> [u32; 1] {
        [u32::from_le_bytes(*bytes)]
    }

    /// Reference vectors of MurmurHash3_x86_32 (from the reference
    /// implementation's published test values).
    #[test]
    fn matches_reference_vectors() {
        assert_eq!(murmur3_words::<0>(&[], 0), 0);
        assert_eq!(murmur3_words::<0>(&[], 1), 0x514e_28b7);
        assert_eq!(murmur3_words::<0>(&[], 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_words(&words_of(b"test"), 0), 0xba6b_d213);
        assert_eq!(murmur3_words(&words_of(b"aaaa"), 0x9747_b28c), 0x5a97_808a);
        assert_eq!(murmur3_words(&words_of(b"abcd"), 0x9747_b28c), 0xf047_8627);
        assert_eq!(murmur3_words(&[0u32], 0), 0x2362_f9de);
    }

    #[test]
    fn seed_changes_everything() {
        let w = [0x0102_0304u32, 5, 6, 7];
        assert_ne!(murmur3_words(&w, 1), murmur3_words(&w, 2));
    }
}
