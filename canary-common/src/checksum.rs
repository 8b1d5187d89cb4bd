//! Incremental Internet checksum update (RFC 1624, equation 3:
//! `HC' = ~(~HC + ~m + m')`), used when the data plane rewrites an address or
//! the TTL. Values are taken in their in-memory representation (the packet's
//! network-order bytes loaded as native integers): one's-complement addition is
//! byte-order independent (RFC 1071 section 2), so no swaps are needed as long
//! as the checksum field is loaded and stored the same way.

/// A one's-complement sum of 16- or 32-bit terms folded to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    // Four folds take any sum of a few dozen 32-bit terms down to 16 bits.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum `check` after the 32-bit words `old` were replaced by `new`.
#[inline(always)]
pub fn replace_words<const N: usize>(check: u16, old: &[u32; N], new: &[u32; N]) -> u16 {
    let mut sum = (!check) as u64;
    let mut i = 0;
    while i < N {
        sum += (!old[i]) as u64;
        sum += new[i] as u64;
        i += 1;
    }
    !fold(sum)
}

/// The checksum `check` after the 16-bit word `old` was replaced by `new`.
#[inline(always)]
pub fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u64 + (!old) as u64 + new as u64;
    !fold(sum)
}

/// UDP over IPv4 uses 0 for "no checksum"; a computed 0 is sent as 0xffff
/// (RFC 768). Apply after an incremental update of a UDP checksum.
#[inline(always)]
pub fn udp_nonzero(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Straightforward RFC 1071 checksum over big-endian 16-bit words, as an
    /// independent reference.
    fn full_checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in bytes.chunks(2) {
            let w = if chunk.len() == 2 {
                u16::from_be_bytes([chunk[0], chunk[1]])
            } else {
                u16::from_be_bytes([chunk[0], 0])
            };
            sum += w as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn incremental_equals_full_recompute() {
        // An IPv4 header with its checksum zeroed, then filled in.
        let mut hdr: Vec<u8> = std::vec![
            0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 64, 6, 0, 0, 198, 18, 16, 7, 198, 18, 100, 1,
        ];
        let c = full_checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let check = u16::from_ne_bytes([hdr[10], hdr[11]]);
        let old = [u32::from_ne_bytes([hdr[16], hdr[17], hdr[18], hdr[19]])];
        let new = [u32::from_ne_bytes([198, 18, 3, 2])];
        let updated = replace_words(check, &old, &new);
        hdr[16..20].copy_from_slice(&[198, 18, 3, 2]);
        hdr[10..12].copy_from_slice(&[0, 0]);
        let expect = full_checksum(&hdr);
        assert_eq!(updated.to_ne_bytes(), expect.to_be_bytes());
    }

    #[test]
    fn ttl_decrement() {
        let mut hdr: Vec<u8> =
            std::vec![0x45, 0, 0, 60, 0, 1, 0, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 18, 1, 2,];
        let c = full_checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let old = u16::from_ne_bytes([hdr[8], hdr[9]]);
        hdr[8] -= 1;
        let new = u16::from_ne_bytes([hdr[8], hdr[9]]);
        let updated = replace_u16(u16::from_ne_bytes([hdr[10], hdr[11]]), old, new);
        hdr[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(updated.to_ne_bytes(), full_checksum(&hdr).to_be_bytes());
    }

    #[test]
    fn udp_zero_becomes_ffff() {
        assert_eq!(udp_nonzero(0), 0xffff);
        assert_eq!(udp_nonzero(0x1234), 0x1234);
    }
}
