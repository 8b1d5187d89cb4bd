//! Checksums: UDP's updated or kept zero, and the independent verifier
//! itself catching corruption.

use super::*;

// 4 -------------------------------------------------------------------------

#[test]
fn udp_checksum_is_updated_or_stays_zero() {
    run_lab(&config(10.0), None, |lab| {
        let vip = v4(VIP_UDP);
        let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06canary\x04test\x00\x00\x01\x00\x01";
        for (i, zero) in [(0u8, false), (1, true)] {
            let client = v4(&format!("198.18.16.{}", 50 + i));
            let pkt = udp(0, client, 5353, vip, 53, query, zero);
            let key = flow_key(client, 5353, vip, 53, PROTO_UDP);
            let (r, backend, version) = forward_expect(
                lab,
                "dns",
                &pkt,
                &key,
                true,
                XDP_REDIRECT,
                &[(reason::FWD_REDIRECT, 1)],
                "UDP",
            );
            assert_eq!(version, predicted_version(lab, "dns", &key));
            assert!(lab
                .service("dns")
                .pool(Version::from_index(version))
                .contains(&backend));
            assert_rewritten(&r.out, &pkt, to_backend(backend), "UDP");
            let l4 = 14 + 20;
            let csum = u16::from_be_bytes([r.out[l4 + 6], r.out[l4 + 7]]);
            if zero {
                assert_eq!(csum, 0, "a zero UDP checksum stays zero");
            } else {
                assert_ne!(csum, 0);
            }
        }

        // A checksum that comes out as 0 after the rewrite must be sent as
        // 0xffff (RFC 768: 0 means "no checksum"). Tune two payload bytes so
        // that the rewritten datagram's checksum is exactly that case.
        let client = v4("198.18.16.60");
        let key = flow_key(client, 5300, vip, 53, PROTO_UDP);
        let version = predicted_version(lab, "dns", &key);
        let backend = lab.backend_addr(maglev_backend(lab, "dns", version, &key));
        let mut payload = [0u8, 0, 0xca, 0xfe, 0xba, 0xbe, 0x12, 0x34];
        let probe = udp(0, client, 5300, backend, 53, &payload, true);
        let (_, l4, len) = l4_offset(&probe).unwrap();
        let mut pseudo = probe[26..34].to_vec();
        pseudo.extend_from_slice(&[0, PROTO_UDP]);
        pseudo.extend_from_slice(&(len as u16).to_be_bytes());
        let sum = fold(rfc1071_sum(&probe[l4..l4 + len], rfc1071_sum(&pseudo, 0)));
        payload[0..2].copy_from_slice(&(!sum).to_be_bytes());
        let rewritten = udp(0, client, 5300, backend, 53, &payload, false);
        assert_eq!(
            &rewritten[l4 + 6..l4 + 8],
            &[0xff, 0xff],
            "test construction"
        );
        let pkt = udp(0, client, 5300, vip, 53, &payload, false);
        assert_ne!(&pkt[l4 + 6..l4 + 8], &[0xff, 0xff]);
        let (r, b, _) = forward_one(lab, "dns", &pkt, &key, true);
        assert_eq!((r.action, b), (XDP_REDIRECT, backend));
        assert_rewritten(
            &r.out,
            &pkt,
            to_backend(backend),
            "UDP checksum 0 -> 0xffff",
        );
        assert_eq!(
            &r.out[l4 + 6..l4 + 8],
            &[0xff, 0xff],
            "a computed UDP checksum of 0 is sent as 0xffff"
        );
    });
}

// Measurement ---------------------------------------------------------------

#[test]
fn checksum_verifier_catches_corruption() {
    let frames = [
        tcp(0, v4("198.18.16.5"), 40000, v4(VIP4), 80, Tcp::Ack),
        tcp(0, v6("2001:db8:16::5"), 40000, v6(VIP6), 80, Tcp::Ack),
        udp(0, v4("198.18.16.5"), 5353, v4(VIP_UDP), 53, b"query", false),
        udp(0, v6("2001:db8:16::5"), 5353, v6(VIP6), 53, b"query", false),
    ];
    for f in &frames {
        verify_checksums(f).unwrap();
        let (_, l4, _) = l4_offset(f).unwrap();
        // A payload byte (covered by the L4 checksum) ...
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 0x01;
        assert!(verify_checksums(&bad).is_err());
        // ... and an address (covered by the pseudo-header) ...
        let mut bad = f.clone();
        bad[l4 - 1] ^= 0x01;
        if f[12..14] == [0x08, 0x00] {
            fix_ipv4_csum(&mut bad, 14);
        }
        assert!(verify_checksums(&bad).is_err());
        // ... and, for IPv4, the TTL (covered by the header checksum only).
        if f[12..14] == [0x08, 0x00] {
            let mut bad = f.clone();
            bad[14 + 8] -= 1;
            assert!(verify_checksums(&bad).is_err());
        }
    }
    let f = &frames[0];
    let rw = Rewrite {
        ttl_dec: true,
        ..Rewrite::default()
    };
    let good = expected(f, rw);
    let caught = std::panic::catch_unwind(|| assert_rewritten(&good, f, rw, "self-test"));
    assert!(
        caught.is_err(),
        "a TTL change without a checksum update must fail"
    );
    let mut wrong_mac = f.clone();
    wrong_mac[0] ^= 1;
    let caught = std::panic::catch_unwind(|| {
        assert_rewritten(&wrong_mac, f, Rewrite::default(), "self-test")
    });
    assert!(
        caught.is_err(),
        "a MAC change outside the expectation must fail"
    );
}
