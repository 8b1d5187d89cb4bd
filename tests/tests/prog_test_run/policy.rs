//! What is not ours passes untouched; source-prefix overrides beat the
//! weight.

use super::*;

// 6 -------------------------------------------------------------------------

#[test]
fn non_vip_traffic_passes_untouched() {
    run_lab(&config(10.0), None, |lab| {
        let client = v4("198.18.16.5");
        let mut echo = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac_nbr(0), mac_lb(0))
            .ipv4([198, 18, 16, 5], [198, 18, 100, 1], 64)
            .icmpv4_echo_request(7, 1)
            .write(&mut echo, b"ping")
            .unwrap();
        let mut echo6 = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac_nbr(0), mac_lb(0))
            .ipv6(v6_octets("2001:db8:16::5"), v6_octets(VIP6), 64)
            .icmpv6_echo_request(7, 1)
            .write(&mut echo6, b"ping")
            .unwrap();
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&mac_nbr(0));
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&mac_nbr(0));
        arp.extend_from_slice(&[198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 198, 18, 100, 1]);
        let mut lldp = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
        lldp.extend_from_slice(&mac_nbr(0));
        lldp.extend_from_slice(&[0x88, 0xcc, 0x02, 0x07, 0x04, 2, 0, 0, 0, 0, 2, 0, 0]);

        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            (
                "TCP to a non-VIP address",
                tcp(0, client, 40000, v4("198.18.100.9"), 80, Tcp::Syn),
                reason::PASS_NOT_VIP,
            ),
            (
                "UDP to another address",
                udp(0, client, 5353, v4("198.18.50.1"), 53, b"x", false),
                reason::PASS_NOT_VIP,
            ),
            (
                "TCP to the VIP address on another port",
                tcp(0, client, 40000, v4(VIP4), 443, Tcp::Syn),
                reason::PASS_NOT_VIP,
            ),
            (
                "UDP to the TCP VIP's port",
                udp(0, client, 5353, v4(VIP4), 80, b"x", false),
                reason::PASS_NOT_VIP,
            ),
            ("ICMP echo to the VIP", echo, reason::PASS_NOT_VIP),
            ("ICMPv6 echo to the VIP", echo6, reason::PASS_NOT_VIP),
            (
                "IPv6 TCP to another address",
                tcp(
                    0,
                    v6("2001:db8:16::5"),
                    40000,
                    v6("2001:db8:100::9"),
                    80,
                    Tcp::Syn,
                ),
                reason::PASS_NOT_VIP,
            ),
            ("ARP request for the VIP", arp, reason::PASS_NOT_IP),
            ("LLDP", lldp, reason::PASS_NOT_IP),
        ];
        for (what, pkt, why) in cases {
            expect(lab, &pkt, 0, XDP_PASS, true, &[(why, 1)], what);
        }
        for s in ["web", "dns", "web6"] {
            assert_eq!(both(lab, s), [ZERO, ZERO], "{s}: nothing forwarded");
        }
    });
}

fn v6_octets(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

// 9 -------------------------------------------------------------------------

#[test]
fn source_prefix_overrides_beat_the_weight() {
    run_lab(&config(0.0), None, |lab| {
        // (weight, service, VIP, client in an override prefix, a client just
        // outside it, override version, weight's version)
        let cases = [
            (
                0.0,
                "web",
                v4(VIP4),
                v4("198.18.24.7"),
                v4("198.18.23.7"),
                1,
                0,
            ),
            (
                100.0,
                "web",
                v4(VIP4),
                v4("198.18.25.7"),
                v4("198.18.26.7"),
                0,
                1,
            ),
            (
                0.0,
                "web6",
                v6(VIP6),
                v6("2001:db8:24::7"),
                v6("2001:db8:23::7"),
                1,
                0,
            ),
            (
                100.0,
                "web6",
                v6(VIP6),
                v6("2001:db8:25:ffff::7"),
                v6("2001:db8:26::7"),
                0,
                1,
            ),
        ];
        for (weight, service, vip, client, outside, want, plain_want) in cases {
            lab.apply_yaml(&config(weight));
            let key = flow_key(client, 40000, vip, 80, PROTO_TCP);
            let pkt = tcp(0, client, 40000, vip, 80, Tcp::Syn);
            let (r, b, v) = forward_expect(
                lab,
                service,
                &pkt,
                &key,
                true,
                XDP_REDIRECT,
                &[(reason::OVERRIDE_HIT, 1), (reason::FWD_REDIRECT, 1)],
                "override",
            );
            assert_eq!(v, want, "{client} at weight {weight}");
            assert!(lab
                .service(service)
                .pool(Version::from_index(want))
                .contains(&b));
            assert_rewritten(&r.out, &pkt, to_backend(b), "override");
            // A neighbour outside the prefix follows the weight.
            let key = flow_key(outside, 40000, vip, 80, PROTO_TCP);
            let pkt = tcp(0, outside, 40000, vip, 80, Tcp::Syn);
            let (_, _, v) = forward_expect(
                lab,
                service,
                &pkt,
                &key,
                true,
                XDP_REDIRECT,
                &[(reason::FWD_REDIRECT, 1)],
                "plain",
            );
            assert_eq!(v, plain_want, "{outside} at weight {weight}");
        }
    });
}
