//! What is not ours passes untouched; source-prefix overrides beat the
//! weight; a live cohort decides with its own weight.

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

/// A new connection's SYN from `client` (source port `sport`) to `vip:80`,
/// redirected with `reasons` and its flow insert: the run, its backend
/// and version.
fn new_syn(
    lab: &Lab,
    service: &str,
    client: IpAddr,
    sport: u16,
    vip: IpAddr,
    reasons: &[(u32, u64)],
    what: &str,
) -> (Run, IpAddr, u32) {
    let key = flow_key(client, sport, vip, 80, PROTO_TCP);
    let pkt = tcp(0, client, sport, vip, 80, Tcp::Syn);
    forward_expect(lab, service, &pkt, &key, true, XDP_REDIRECT, reasons, what)
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
            let (_, _, v) = new_syn(
                lab,
                service,
                outside,
                40000,
                vip,
                &[(reason::FWD_REDIRECT, 1)],
                "plain",
            );
            assert_eq!(v, plain_want, "{outside} at weight {weight}");
        }
    });
}

// Cohorts ---------------------------------------------------------------------

/// `web` and `web6` with a staff cohort (198.18.27.0/24, 2001:db8:27::/48)
/// at 100 % from step 1, a /32 (/128) override forcing stable inside it,
/// everyone at `weight`; `staff` is the cohort's live weight in basis
/// points, None for cohorts off (what a rollback leaves).
fn cohort_config(weight: f64, staff: Option<u32>) -> canary_userspace::config::Config {
    let plan = |svc: Service, net: &str| {
        svc.rollout_with_cohorts(
            &[5.0, 100.0],
            "1s",
            &[("staff", &[net], &[100.0, 100.0])],
            "",
        )
    };
    let mut c = LbConfig::lab()
        .service(plan(
            Service::tcp("web", VIP4, 80)
                .affinity("source-ip")
                .weight(weight)
                .lab_pools()
                .force("198.18.27.7/32", "stable"),
            "198.18.27.0/24",
        ))
        .service(plan(
            Service::tcp("web6", VIP6, 80)
                .affinity("source-ip")
                .weight(weight)
                .lab_pools()
                .force("2001:db8:27::7/128", "stable"),
            "2001:db8:27::/48",
        ))
        .config();
    let live = staff.map(|bp| std::collections::BTreeMap::from([("staff".to_string(), bp)]));
    for s in &mut c.services {
        s.set_cohort_weights(live.as_ref());
    }
    c
}

#[test]
fn a_live_cohort_decides_with_its_own_weight() {
    run_lab(&config(0.0), None, |lab| {
        // (service, VIP, staff clients, the /32 override inside the cohort,
        // a neighbour outside it)
        let cases = [
            (
                "web",
                v4(VIP4),
                ["198.18.27.5", "198.18.27.99", "198.18.27.200"].map(v4),
                v4("198.18.27.7"),
                v4("198.18.28.5"),
            ),
            (
                "web6",
                v6(VIP6),
                ["2001:db8:27::5", "2001:db8:27:1::99", "2001:db8:27:ffff::1"].map(v6),
                v6("2001:db8:27::7"),
                v6("2001:db8:28::5"),
            ),
        ];
        // Everyone at 0, staff live at 100 %.
        lab.apply_config(cohort_config(0.0, Some(10_000)));
        for (service, vip, staff, pinned, outside) in cases {
            let state = lab.dp().maps().services.get(&lab.sid(service), 0).unwrap();
            assert_eq!(
                state.has_overrides,
                canary_common::SVC_PREFIXES | canary_common::SVC_COHORTS_LIVE
            );
            for client in staff {
                let key = flow_key(client, 40000, vip, 80, PROTO_TCP);
                let pkt = tcp(0, client, 40000, vip, 80, Tcp::Syn);
                let (r, b, v) = forward_expect(
                    lab,
                    service,
                    &pkt,
                    &key,
                    true,
                    XDP_REDIRECT,
                    &[(reason::COHORT_HIT, 1), (reason::FWD_REDIRECT, 1)],
                    "staff at 100 %",
                );
                assert_eq!(
                    v, VERSION_CANARY,
                    "{client}: staff see the canary at weight 0"
                );
                assert!(lab.service(service).canary.contains(&b));
                assert_rewritten(&r.out, &pkt, to_backend(b), "cohort");
            }
            // The longest prefix wins: the /32 override inside the cohort.
            let (_, _, v) = new_syn(
                lab,
                service,
                pinned,
                40000,
                vip,
                &[(reason::OVERRIDE_HIT, 1), (reason::FWD_REDIRECT, 1)],
                "override inside the cohort",
            );
            assert_eq!(v, VERSION_STABLE, "{pinned}: the override forces stable");
            // A neighbour outside the cohort follows everyone's 0 %.
            let (_, _, v) = new_syn(
                lab,
                service,
                outside,
                40000,
                vip,
                &[(reason::FWD_REDIRECT, 1)],
                "neighbour",
            );
            assert_eq!(v, VERSION_STABLE, "{outside}: everyone at 0 %");
        }

        // Cohorts off (a rollback): the same entries, the live bit clear;
        // new staff connections follow the weight (0): stable.
        lab.apply_config(cohort_config(0.0, None));
        for (service, vip, staff, _, _) in cases {
            let state = lab.dp().maps().services.get(&lab.sid(service), 0).unwrap();
            assert_eq!(state.has_overrides, canary_common::SVC_PREFIXES);
            for client in staff {
                let (_, _, v) = new_syn(
                    lab,
                    service,
                    client,
                    40001,
                    vip,
                    &[(reason::FWD_REDIRECT, 1)],
                    "staff, cohorts off",
                );
                assert_eq!(v, VERSION_STABLE, "{client}: cohorts off, weight 0");
                // Their earlier connection keeps its canary backend.
                let key = flow_key(client, 40000, vip, 80, PROTO_TCP);
                let ack = tcp(0, client, 40000, vip, 80, Tcp::Ack);
                let (_, b, v) = forward_expect(
                    lab,
                    service,
                    &ack,
                    &key,
                    false,
                    XDP_REDIRECT,
                    &[(reason::FLOW_HIT, 1), (reason::FWD_REDIRECT, 1)],
                    "open staff connection",
                );
                assert_eq!(v, VERSION_CANARY, "{client}: an open connection stays");
                assert!(lab.service(service).canary.contains(&b));
            }
        }

        // Cohorts live at 0 %: staff at 0 while everyone is at 100 %: the
        // cohort's own weight decides, not the service's.
        lab.apply_config(cohort_config(100.0, Some(0)));
        for (service, vip, staff, _, outside) in cases {
            for client in staff {
                let (_, _, v) = new_syn(
                    lab,
                    service,
                    client,
                    40002,
                    vip,
                    &[(reason::COHORT_HIT, 1), (reason::FWD_REDIRECT, 1)],
                    "staff live at 0 %",
                );
                assert_eq!(v, VERSION_STABLE, "{client}: the cohort's 0 % decides");
            }
            let (_, _, v) = new_syn(
                lab,
                service,
                outside,
                40002,
                vip,
                &[(reason::FWD_REDIRECT, 1)],
                "neighbour at 100 %",
            );
            assert_eq!(v, VERSION_CANARY, "{outside}: everyone at 100 %");
        }
    });
}
