//! A flow's first packet answered here with ICMP "too big" (see `icmp`)
//! was not forwarded: it is not judged and takes nothing from its client's
//! judging budget, so the smaller retry, the flow's real first packet, is
//! judged once, as any first packet.

use super::lifecycle::start_of_a_second;
use super::*;
use canary_common::flow::FLOW_JUDGED;

/// UDP services in both families (a UDP flow's first packet is judged).
fn udp_config() -> String {
    LbConfig::lab()
        .service(lab_udp("dns", VIP_UDP))
        .service(lab_udp("dns6", VIP6_UDP))
        .yaml()
}

/// Judged and over-budget openings of both versions of `service`.
fn judging(lab: &Lab, service: &str) -> (u64, u64) {
    let sid = lab.sid(service);
    let s = |v| lab.dp().maps().signals(sid, v).expect("SIGNALS");
    let (a, b) = (s(VERSION_STABLE), s(VERSION_CANARY));
    (a.judged + b.judged, a.over_budget + b.over_budget)
}

#[test]
fn a_first_packet_answered_too_big_is_not_judged_and_its_retry_is() {
    run_lab(&udp_config(), None, |lab| {
        // One judged opening a second per client: a too-big first packet
        // that took it would leave the retry unjudged.
        lab.dp_mut().maps_mut().set_judged_per_client(1).unwrap();
        ip_batch(
            &lab.ns,
            "link set lb-b1 mtu 1400\nlink set lb-b2 mtu 1400\nlink set lb-b3 mtu 1400\n",
        )
        .unwrap();
        lab.dp_mut().bump_nexthop_gen().unwrap();
        for (service, client, vip, ip_hlen) in [
            ("dns", v4("198.18.16.60"), v4(VIP_UDP), 20),
            ("dns6", v6("2001:db8:1000::60"), v6(VIP6_UDP), 40),
        ] {
            let key = flow_key(client, 47000, vip, 53, PROTO_UDP);
            start_of_a_second();
            let before = judging(lab, service);
            // 1450 bytes of IP packet: over the backends' 1400.
            let big = udp(
                0,
                client,
                47000,
                vip,
                53,
                &vec![0x33; 1450 - ip_hlen - 8],
                false,
            );
            expect(
                lab,
                &big,
                0,
                XDP_REDIRECT,
                false,
                &[(reason::TX_ICMP_TOO_BIG, 1)],
                &format!("{service}: first datagram, too big"),
            );
            assert!(lab.flow(&key).is_none(), "{service}: nothing remembered");
            assert_eq!(
                judging(lab, service),
                before,
                "{service}: a datagram answered too big is not judged"
            );

            // The retry that fits: forwarded as the flow's first packet,
            // and judged (within the budget the first one did not take).
            let small = udp(0, client, 47000, vip, 53, b"query", false);
            forward_expect(
                lab,
                service,
                &small,
                &key,
                true,
                XDP_REDIRECT,
                &[(reason::FWD_REDIRECT, 1)],
                &format!("{service}: the retry"),
            );
            assert_ne!(
                lab.flow(&key).unwrap().flags & FLOW_JUDGED,
                0,
                "{service}: the retry is judged"
            );
            assert_eq!(
                judging(lab, service),
                (before.0 + 1, before.1),
                "{service}: judged once, within budget"
            );
        }
    });
}
