//! ICMP for forwarded flows: an error about a forwarded packet reaches the
//! client from the VIP, quoting the client's own packet; an error about a
//! reply reaches its backend; a backend's port unreachable fails a judged
//! UDP flow, once; a packet too big for its route is answered here
//! quoting it as its sender sent it; an expiring TTL to a VIP is dropped;
//! ICMP that is not about our flows passes untouched. An error that does
//! not come back the way its quoted packet went (not addressed to that
//! packet's sender, or in through another interface than the one toward
//! its destination, or 802.1Q-tagged) is not translated: a client cannot
//! forge a backend's port unreachable, probe for backend addresses or have
//! the VIP send ICMP to a third host, and the backends' side cannot send a
//! backend errors about its replies.
//!
//! Every expected frame is built from scratch by etherparse (`icmp_frame`,
//! `tcp_full`, `udp_full`), so comparing the output byte for byte checks
//! every checksum (outer IPv4 header, ICMP / ICMPv6 with its pseudo-header,
//! the quote's IPv4 header and TCP/UDP) independently of the program;
//! `icmp_checksums_ok` checks the outer ones once more with RFC 1071 sums.

use super::*;
use canary_common::flow::{FLOW_JUDGED, FLOW_UNREACH_COUNTED};
use canary_common::FlowKey;

/// A router between this host and the backends, and one on the clients'
/// side (addresses only: nothing is sent to them).
const ROUTER_B4: &str = "198.18.60.1";
const ROUTER_B6: &str = "2001:db8:60::1";
const ROUTER_C4: &str = "198.18.50.1";
const ROUTER_C6: &str = "2001:db8:50::1";

/// TCP and UDP services in both families.
fn icmp_config() -> String {
    LbConfig::lab()
        .service(
            Service::tcp("web", VIP4, 80)
                .affinity("source-ip")
                .weight(10.0)
                .lab_pools(),
        )
        .service(lab_udp("dns", VIP_UDP))
        .service(
            Service::tcp("web6", VIP6, 80)
                .affinity("source-ip")
                .weight(10.0)
                .lab_pools(),
        )
        .service(lab_udp("dns6", VIP6_UDP))
        .yaml()
}

const QUERY: &[u8] = b"query for the canary";

/// ICMP types: v4 destination unreachable, time exceeded, parameter
/// problem; v6 destination unreachable, packet too big, time exceeded.
const V4_UNREACH: u8 = 3;
const V4_TIME_EXCEEDED: u8 = 11;
const V4_PARAM: u8 = 12;
const V6_UNREACH: u8 = 1;
const V6_TOO_BIG: u8 = 2;
const V6_TIME_EXCEEDED: u8 = 3;
/// The MTU field of a "fragmentation needed" (bytes 6..8) and of a
/// "packet too big" (bytes 4..8): 1400.
const MTU_1400: [u8; 4] = [0, 0, 0x05, 0x78];

/// A client's packet to a VIP, as it sends it (TTL `ttl`).
fn client_packet(proto: u8, client: IpAddr, sport: u16, vip: IpAddr, ttl: u8) -> Vec<u8> {
    let port = if proto == PROTO_TCP { 80 } else { 53 };
    if proto == PROTO_TCP {
        tcp_full(0, None, client, sport, vip, port, Tcp::Syn, ttl)
    } else {
        udp_full(0, client, sport, vip, port, QUERY, ttl)
    }
}

/// The outer IPv4 header checksum and the ICMP checksum (ICMPv6: over its
/// pseudo-header too) of an ICMP frame, by RFC 1071 sums.
fn icmp_checksums_ok(f: &[u8], what: &str) {
    let (et, _) = l3_offset(f).unwrap();
    let ip = ip_packet(f);
    if et == 0x0800 {
        let ihl = (ip[0] & 0x0f) as usize * 4;
        assert_eq!(
            fold(rfc1071_sum(&ip[..ihl], 0)),
            0xffff,
            "{what}: IPv4 header checksum"
        );
        assert_eq!(
            fold(rfc1071_sum(&ip[ihl..], 0)),
            0xffff,
            "{what}: ICMP checksum"
        );
    } else {
        let msg = &ip[40..];
        let mut pseudo = ip[8..40].to_vec();
        pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        let sum = rfc1071_sum(msg, rfc1071_sum(&pseudo, 0));
        assert_eq!(fold(sum), 0xffff, "{what}: ICMPv6 checksum");
    }
}

fn assert_frame(out: &[u8], want: &[u8], what: &str) {
    assert_eq!(
        hex(out),
        hex(want),
        "{what}: the frame differs from the expected one"
    );
    icmp_checksums_ok(out, what);
}

/// One error about a forwarded packet, as in the test below.
struct ToClient {
    service: &'static str,
    proto: u8,
    client: &'static str,
    vip: &'static str,
    /// `None`: sent by the backend itself.
    router: Option<&'static str>,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    /// Bytes of the forwarded packet the error quotes (`None`: all).
    quote: Option<usize>,
    /// The client sent its UDP datagram without a checksum.
    zero_udp: bool,
}

fn error_to_client(lab: &Lab, c: &ToClient, sport: u16) {
    let (client, vip) = (ip(c.client), ip(c.vip));
    let mut sent = client_packet(c.proto, client, sport, vip, 64);
    let mut as_sent_ttl63 = client_packet(c.proto, client, sport, vip, 63);
    if c.zero_udp {
        for f in [&mut sent, &mut as_sent_ttl63] {
            let l4 = l4_offset(f).unwrap().1;
            f[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        }
    }
    let what = format!(
        "{} {}/{} from {}",
        c.service,
        c.kind,
        c.code,
        c.router.unwrap_or("the backend")
    );
    let r = lab.run(&sent, 0);
    assert_eq!(r.action, XDP_REDIRECT, "{what}: the client's packet");
    let backend = dst_addr(&r.out);
    let side = backend_side(backend);
    let n = c.quote.unwrap_or(ip_packet(&r.out).len());
    // What the backend (or the router before it) received: DNAT'ed, TTL
    // decremented.
    let quote = &ip_packet(&r.out)[..n];
    let from = c.router.map(ip).unwrap_or(backend);
    let err = icmp_error(side, from, client, c.kind, c.code, c.rest, quote);
    let got = expect(
        lab,
        &err,
        side as usize,
        XDP_REDIRECT,
        false,
        &[(reason::ICMP_TO_CLIENT, 1), (reason::FWD_REDIRECT, 1)],
        &what,
    );
    // From the VIP, quoting the client's own packet (as it reached the
    // next hop: TTL 63), routed to the client like a reply.
    let want = icmp_frame(
        mac_lb(0),
        mac_nbr(0),
        None,
        vip,
        client,
        63,
        c.kind,
        c.code,
        c.rest,
        &ip_packet(&as_sent_ttl63)[..n],
    );
    assert_frame(&got.out, &want, &what);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn errors_about_a_forwarded_packet_reach_the_client_from_the_vip() {
    run_lab(&icmp_config(), None, |lab| {
        type Case = ToClient;
        let v4 = |service: &'static str,
                  proto: u8,
                  router: Option<&'static str>,
                  kind: u8,
                  code: u8,
                  rest: [u8; 4],
                  quote: Option<usize>,
                  zero_udp: bool|
         -> Case {
            ToClient {
                service,
                proto,
                client: "198.18.16.5",
                vip: if proto == PROTO_TCP { VIP4 } else { VIP_UDP },
                router,
                kind,
                code,
                rest,
                quote,
                zero_udp,
            }
        };
        let v6 = |service: &'static str,
                  proto: u8,
                  router: Option<&'static str>,
                  kind: u8,
                  code: u8,
                  rest: [u8; 4],
                  quote: Option<usize>|
         -> Case {
            ToClient {
                service,
                proto,
                client: "2001:db8:1000::5",
                vip: if proto == PROTO_TCP { VIP6 } else { VIP6_UDP },
                router,
                kind,
                code,
                rest,
                quote,
                zero_udp: false,
            }
        };
        let (tcp, udp) = (PROTO_TCP, PROTO_UDP);
        let cases = [
            // A router's time exceeded, the whole packet quoted (its TCP
            // checksum too).
            v4(
                "web",
                tcp,
                Some(ROUTER_B4),
                V4_TIME_EXCEEDED,
                0,
                [0; 4],
                None,
                false,
            ),
            // The backend's own error, quoting only the IP header and 8
            // bytes (RFC 792): the TCP checksum is not in the quote.
            v4("web", tcp, None, V4_UNREACH, 3, [0; 4], Some(28), false),
            // Fragmentation needed from a router, with its MTU.
            v4(
                "web",
                tcp,
                Some(ROUTER_B4),
                V4_UNREACH,
                4,
                MTU_1400,
                None,
                false,
            ),
            v4("dns", udp, None, V4_UNREACH, 3, [0; 4], None, false),
            // A UDP checksum of 0 ("none") stays 0.
            v4("dns", udp, None, V4_UNREACH, 3, [0; 4], None, true),
            v4(
                "dns",
                udp,
                Some(ROUTER_B4),
                V4_PARAM,
                0,
                [20, 0, 0, 0],
                None,
                false,
            ),
            v6(
                "web6",
                tcp,
                Some(ROUTER_B6),
                V6_TIME_EXCEEDED,
                0,
                [0; 4],
                None,
            ),
            v6("web6", tcp, None, V6_UNREACH, 4, [0; 4], Some(48)),
            v6("web6", tcp, Some(ROUTER_B6), V6_TOO_BIG, 0, MTU_1400, None),
            v6("dns6", udp, None, V6_UNREACH, 4, [0; 4], None),
        ];
        for (i, c) in cases.iter().enumerate() {
            error_to_client(lab, c, 41000 + i as u16);
        }
    });
}

#[test]
fn errors_about_a_reply_reach_its_backend_quoting_its_packet() {
    run_lab(&icmp_config(), None, |lab| {
        // (service, client, vip, router on the client's side (None: the
        // client itself), type, code, rest)
        let cases = [
            (
                "web",
                "198.18.16.7",
                VIP4,
                Some(ROUTER_C4),
                V4_UNREACH,
                4,
                MTU_1400,
            ),
            ("dns", "198.18.16.7", VIP_UDP, None, V4_UNREACH, 3, [0; 4]),
            (
                "web6",
                "2001:db8:1000::7",
                VIP6,
                Some(ROUTER_C6),
                V6_TOO_BIG,
                0,
                MTU_1400,
            ),
            (
                "dns6",
                "2001:db8:1000::7",
                VIP6_UDP,
                None,
                V6_UNREACH,
                4,
                [0; 4],
            ),
        ];
        for (i, (service, client, vip, router, kind, code, rest)) in cases.into_iter().enumerate() {
            let (client, vip) = (ip(client), ip(vip));
            let proto = if service.starts_with("web") {
                PROTO_TCP
            } else {
                PROTO_UDP
            };
            let (sport, port) = (42000 + i as u16, if proto == PROTO_TCP { 80 } else { 53 });
            let key = flow_key(client, sport, vip, port, proto);
            let r = lab.run(&client_packet(proto, client, sport, vip, 64), 0);
            assert_eq!(r.action, XDP_REDIRECT, "{service}: the client's packet");
            let backend = dst_addr(&r.out);
            let side = backend_side(backend);
            // The backend's reply, as it sends it and as it leaves here.
            let reply = |ttl| {
                if proto == PROTO_TCP {
                    tcp_full(side, None, backend, port, client, sport, Tcp::SynAck, ttl)
                } else {
                    udp_full(side, backend, port, client, sport, b"answer", ttl)
                }
            };
            let r = lab.run(&reply(64), side as usize);
            assert_eq!(r.action, XDP_REDIRECT, "{service}: the reply");
            let from = router.map(ip).unwrap_or(client);
            let err = icmp_error(0, from, vip, kind, code, rest, ip_packet(&r.out));
            let what = format!("{service} {kind}/{code} about a reply");
            let got = expect(
                lab,
                &err,
                0,
                XDP_REDIRECT,
                false,
                &[(reason::ICMP_TO_BACKEND, 1), (reason::FWD_REDIRECT, 1)],
                &what,
            );
            let want = icmp_frame(
                mac_lb(side),
                mac_nbr(side),
                None,
                from,
                backend,
                63,
                kind,
                code,
                rest,
                ip_packet(&reply(63)),
            );
            assert_frame(&got.out, &want, &what);

            // Without the flow entry there is no telling which backend:
            // dropped (it must not reach the stack, which would route it
            // to the VIP).
            lab.remove_flow(&key);
            expect(
                lab,
                &err,
                0,
                XDP_DROP,
                false,
                &[(reason::DROP_ICMP, 1)],
                &format!("{what}, no flow entry"),
            );
        }
    });
}

fn unreachables(lab: &Lab, service: &str, version: u32) -> u64 {
    lab.dp()
        .maps()
        .signals(lab.sid(service), version)
        .expect("SIGNALS")
        .unreachables
}

/// Sends a client's datagram (a new UDP flow), sets its entry's judged
/// flag as asked, and returns (key, backend, version).
fn udp_flow(
    lab: &mut Lab,
    client: IpAddr,
    sport: u16,
    vip: IpAddr,
    judged: bool,
) -> (FlowKey, IpAddr, u32) {
    let key = flow_key(client, sport, vip, 53, PROTO_UDP);
    let r = lab.run(&client_packet(PROTO_UDP, client, sport, vip, 64), 0);
    assert_eq!(r.action, XDP_REDIRECT);
    let mut entry = lab.flow(&key).expect("a flow entry");
    if judged {
        entry.flags |= FLOW_JUDGED;
    } else {
        entry.flags &= !FLOW_JUDGED;
    }
    lab.set_flow(&key, entry);
    (key, dst_addr(&r.out), entry.version as u32)
}

#[test]
fn a_backends_port_unreachable_fails_a_judged_udp_flow_once() {
    run_lab(&icmp_config(), None, |lab| {
        for (service, client, vip, router, code) in [
            ("dns", "198.18.16.9", VIP_UDP, ROUTER_B4, 3),
            ("dns6", "2001:db8:1000::9", VIP6_UDP, ROUTER_B6, 4),
        ] {
            let (client, vip) = (ip(client), ip(vip));
            let kind = if vip.is_ipv4() {
                V4_UNREACH
            } else {
                V6_UNREACH
            };
            let port_unreachable = |lab: &Lab, key: &FlowKey, backend: IpAddr, from: IpAddr| {
                let sport = canary_common::addr::port_from_map(key.sport);
                // The quote: the datagram as the backend got it.
                let dnat = client_packet(PROTO_UDP, client, sport, backend, 63);
                let side = backend_side(backend);
                let err = icmp_error(side, from, client, kind, code, [0; 4], ip_packet(&dnat));
                let r = lab.run(&err, side as usize);
                assert_eq!(r.action, XDP_REDIRECT, "{service}: translated");
            };

            // A judged flow: its backend's port unreachable counts, once.
            let (key, backend, version) = udp_flow(lab, client, 43000, vip, true);
            let before = unreachables(lab, service, version);
            port_unreachable(lab, &key, backend, backend);
            assert_eq!(unreachables(lab, service, version), before + 1, "{service}");
            let flags = lab.flow(&key).unwrap().flags;
            assert_ne!(flags & FLOW_UNREACH_COUNTED, 0, "{service}: marked counted");
            port_unreachable(lab, &key, backend, backend);
            assert_eq!(
                unreachables(lab, service, version),
                before + 1,
                "{service}: a second ICMP for the same flow is not a second failure"
            );

            // Not judged (over its client's budget, say): not counted.
            let (key, backend, version) = udp_flow(lab, client, 43001, vip, false);
            let before = unreachables(lab, service, version);
            port_unreachable(lab, &key, backend, backend);
            assert_eq!(
                unreachables(lab, service, version),
                before,
                "{service}: unjudged"
            );

            // A router's port unreachable says nothing about the backend.
            let (key, backend, version) = udp_flow(lab, client, 43002, vip, true);
            let before = unreachables(lab, service, version);
            port_unreachable(lab, &key, backend, ip(router));
            assert_eq!(
                unreachables(lab, service, version),
                before,
                "{service}: router"
            );
        }

        // TCP: a backend answers a closed port with a RST, which counts
        // already; an ICMP port unreachable about TCP is not a UDP failure.
        let (client, vip) = (ip("198.18.16.10"), ip(VIP4));
        let key = flow_key(client, 43003, vip, 80, PROTO_TCP);
        let r = lab.run(&client_packet(PROTO_TCP, client, 43003, vip, 64), 0);
        let backend = dst_addr(&r.out);
        let mut entry = lab.flow(&key).unwrap();
        entry.flags |= FLOW_JUDGED;
        lab.set_flow(&key, entry);
        let before = unreachables(lab, "web", entry.version as u32);
        let side = backend_side(backend);
        let err = icmp_error(
            side,
            backend,
            client,
            V4_UNREACH,
            3,
            [0; 4],
            ip_packet(&r.out),
        );
        assert_eq!(lab.run(&err, side as usize).action, XDP_REDIRECT);
        assert_eq!(
            unreachables(lab, "web", entry.version as u32),
            before,
            "TCP"
        );
    });
}

/// Sets the MTU of lb-b1..3 (and so of every route to a backend), or of
/// lb-client.
fn set_mtu(lab: &mut Lab, ifaces: &[&str], mtu: u32) {
    let script: String = ifaces
        .iter()
        .map(|i| format!("link set {i} mtu {mtu}\n"))
        .collect();
    ip_batch(&lab.ns, &script).unwrap();
    // Cached next hops carry the old MTU.
    lab.dp_mut().bump_nexthop_gen().unwrap();
}

/// The "too big" answer to `pkt` (arrived on `side`): from its destination
/// to its source, quoting its first `quote` bytes, MTU 1400, back out of
/// the interface it came in on (MACs swapped). No DF on the answer (as the
/// kernel's own ICMP errors).
fn too_big_answer(pkt: &[u8], side: u8, vlan: Option<u16>, quote: usize) -> Vec<u8> {
    let ip = ip_packet(pkt);
    let (src, dst, kind, code) = if ip[0] >> 4 == 4 {
        let a = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&ip[o..o + 4]).unwrap());
        (a(12), a(16), 3, 4)
    } else {
        let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&ip[o..o + 16]).unwrap());
        (a(8), a(24), 2, 0)
    };
    let mut want = icmp_frame(
        mac_lb(side),
        mac_nbr(side),
        vlan,
        dst,
        src,
        64,
        kind,
        code,
        MTU_1400,
        &ip[..quote],
    );
    if src.is_ipv4() {
        clear_df(&mut want);
    }
    want
}

#[test]
fn a_packet_too_big_for_the_backends_route_is_answered_from_the_vip() {
    run_lab(&icmp_config(), None, |lab| {
        set_mtu(lab, &["lb-b1", "lb-b2", "lb-b3"], 1400);
        for (service, client, vip, quote) in [
            ("web", "198.18.16.11", VIP4, 20 + 64),
            ("web6", "2001:db8:1000::11", VIP6, 40 + 64),
        ] {
            let (client, vip) = (ip(client), ip(vip));
            let key = flow_key(client, 44000, vip, 80, PROTO_TCP);
            let syn = tcp(0, client, 44000, vip, 80, Tcp::Syn);
            forward_one(lab, service, &syn, &key, true);
            // 1450 bytes of IP packet, DF set (IPv6: never fragmented on
            // the way).
            let data = vec![0x5a; 1450 - 40 - if vip.is_ipv4() { 0 } else { 20 }];
            let big = tcp_data(0, None, client, 44000, vip, 80, &data);
            assert_eq!(ip_packet(&big).len(), 1450);
            let before = both(lab, service);
            let got = expect(
                lab,
                &big,
                0,
                XDP_REDIRECT,
                false,
                &[(reason::TX_ICMP_TOO_BIG, 1), (reason::FLOW_HIT, 1)],
                &format!("{service}: too big"),
            );
            assert_frame(&got.out, &too_big_answer(&big, 0, None, quote), service);
            assert_eq!(
                both(lab, service),
                before,
                "{service}: not forwarded, not counted"
            );

            // 802.1Q-tagged: the answer keeps the tag.
            let tagged = tcp_data(0, Some(7), client, 44000, vip, 80, &data);
            let got = expect(
                lab,
                &tagged,
                0,
                XDP_REDIRECT,
                false,
                &[(reason::TX_ICMP_TOO_BIG, 1), (reason::FLOW_HIT, 1)],
                &format!("{service}: too big, tagged"),
            );
            assert_frame(
                &got.out,
                &too_big_answer(&tagged, 0, Some(7), quote),
                service,
            );
        }

        // The first datagram of a UDP flow: answered, and nothing is
        // remembered for a packet that was not forwarded.
        let (client, vip) = (ip("198.18.16.12"), ip(VIP_UDP));
        let dgram = udp(0, client, 44001, vip, 53, &[0x33; 1450 - 28], false);
        let got = expect(
            lab,
            &dgram,
            0,
            XDP_REDIRECT,
            false,
            &[(reason::TX_ICMP_TOO_BIG, 1)],
            "UDP, too big",
        );
        assert_frame(&got.out, &too_big_answer(&dgram, 0, None, 84), "UDP");
        assert!(lab
            .flow(&flow_key(client, 44001, vip, 53, PROTO_UDP))
            .is_none());

        // The answer leaves through the interface the packet came in on:
        // redirected there when it is a TX port (as above: on a veth, XDP_TX
        // would wake the peer only if the peer ran an XDP program), else
        // XDP_TX.
        let front = lab.ifindex[0];
        lab.dp_mut().maps_mut().tx_ports.remove(front).unwrap();
        let got = expect(
            lab,
            &dgram,
            0,
            XDP_TX,
            false,
            &[(reason::TX_ICMP_TOO_BIG, 1)],
            "UDP, too big, ingress not a TX port",
        );
        assert_frame(
            &got.out,
            &too_big_answer(&dgram, 0, None, 84),
            "UDP, XDP_TX",
        );
        lab.dp_mut()
            .maps_mut()
            .tx_ports
            .insert(front, front, None, 0)
            .unwrap();

        // IPv4 without DF: the stack fragments it, as before (rewritten,
        // forwarded and counted).
        let (client, vip) = (ip("198.18.16.11"), ip(VIP4));
        let key = flow_key(client, 44000, vip, 80, PROTO_TCP);
        let mut frag_ok = tcp_data(0, None, client, 44000, vip, 80, &[0x5a; 1410]);
        clear_df(&mut frag_ok);
        let (r, backend, _) = forward_expect(
            lab,
            "web",
            &frag_ok,
            &key,
            false,
            XDP_PASS,
            &[(reason::PASS_TO_STACK, 1), (reason::FLOW_HIT, 1)],
            "no DF",
        );
        let rw = Rewrite {
            dst: Some(backend),
            ..Rewrite::default()
        };
        assert_rewritten(&r.out, &frag_ok, rw, "no DF");

        // A backend's reply too big for the client's route: answered to the
        // backend, quoting the reply as it sent it, so its path MTU
        // discovery works toward clients.
        set_mtu(lab, &["lb-client"], 1400);
        for (client, vip, quote) in [("198.18.16.11", VIP4, 84), ("2001:db8:1000::11", VIP6, 104)] {
            let (client, vip) = (ip(client), ip(vip));
            let key = flow_key(client, 44000, vip, 80, PROTO_TCP);
            let backend = lab.backend_addr(lab.flow(&key).unwrap().backend_id);
            let side = backend_side(backend);
            let data = vec![0x6b; 1450 - 40 - if vip.is_ipv4() { 0 } else { 20 }];
            let reply = tcp_data(side, None, backend, 80, client, 44000, &data);
            let got = expect(
                lab,
                &reply,
                side as usize,
                XDP_REDIRECT,
                false,
                &[(reason::TX_ICMP_TOO_BIG, 1)],
                &format!("reply from {backend}, too big"),
            );
            assert_frame(
                &got.out,
                &too_big_answer(&reply, side, None, quote),
                "reply",
            );
        }
    });
}

#[test]
fn icmp_not_about_our_flows_passes_and_bad_quotes_to_a_vip_are_dropped() {
    run_lab(&icmp_config(), None, |lab| {
        let (client, vip, b1) = (ip("198.18.16.13"), ip(VIP4), ip("198.18.1.2"));
        let pass = |pkt: &[u8], side: usize, what: &str| {
            expect(
                lab,
                pkt,
                side,
                XDP_PASS,
                true,
                &[(reason::PASS_NOT_VIP, 1)],
                what,
            );
        };
        // Echo to a VIP address: not an error, not ours.
        pass(
            &icmp_error(0, client, vip, 8, 0, [0, 1, 0, 1], b"ping"),
            0,
            "echo",
        );
        pass(
            &icmp_error(
                0,
                ip("2001:db8:1000::13"),
                ip(VIP6),
                128,
                0,
                [0, 1, 0, 1],
                b"ping",
            ),
            0,
            "echo v6",
        );
        // About a backend's port that is not a service's.
        let other = tcp(0, client, 45000, b1, 8080, Tcp::Syn);
        pass(
            &icmp_error(1, b1, client, V4_UNREACH, 3, [0; 4], ip_packet(&other)),
            1,
            "not a service port",
        );
        // To a VIP address, about a port no service has.
        let reply = tcp(0, vip, 8443, client, 45001, Tcp::SynAck);
        pass(
            &icmp_error(
                0,
                ip(ROUTER_C4),
                vip,
                V4_UNREACH,
                4,
                MTU_1400,
                ip_packet(&reply),
            ),
            0,
            "not a VIP port",
        );
        // A quote with IPv4 options: never one of our flows.
        let mut with_options = ip_packet(&tcp(0, client, 45002, vip, 80, Tcp::Syn)).to_vec();
        with_options[0] = 0x46;
        with_options.splice(20..20, [1, 1, 1, 1]);
        pass(
            &icmp_error(
                0,
                ip(ROUTER_C4),
                client,
                V4_TIME_EXCEEDED,
                0,
                [0; 4],
                &with_options,
            ),
            0,
            "quote with options",
        );

        // A quote too short to tell (the IP header alone), to a VIP
        // address: ours to drop; to any other address: not ours.
        let syn = tcp(0, vip, 80, client, 45003, Tcp::SynAck);
        let header_only = &ip_packet(&syn)[..20];
        let to_vip = icmp_error(0, ip(ROUTER_C4), vip, V4_UNREACH, 4, MTU_1400, header_only);
        expect(
            lab,
            &to_vip,
            0,
            XDP_DROP,
            false,
            &[(reason::DROP_ICMP, 1)],
            "short quote to a VIP",
        );
        let to_client = icmp_error(1, b1, client, V4_UNREACH, 3, [0; 4], header_only);
        pass(&to_client, 1, "short quote, not to a VIP");

        // This host's own connection to a backend (a health probe): its
        // ICMP is the host's, untouched.
        let probe = tcp(1, ip("198.18.1.1"), 45004, b1, 80, Tcp::Syn);
        let err = icmp_error(
            1,
            b1,
            ip("198.18.1.1"),
            V4_UNREACH,
            3,
            [0; 4],
            ip_packet(&probe),
        );
        expect(
            lab,
            &err,
            1,
            XDP_PASS,
            true,
            &[(reason::PASS_REPLY_NO_FLOW, 1)],
            "the host's own probe",
        );
    });
}

/// Another backend side than `side` (1..=3).
fn other_side(side: u8) -> u8 {
    side % 3 + 1
}

#[test]
fn a_port_unreachable_forged_on_the_client_side_is_neither_translated_nor_counted() {
    run_lab(&icmp_config(), None, |lab| {
        for (service, client, vip) in [
            ("dns", "198.18.16.30", VIP_UDP),
            ("dns6", "2001:db8:1000::30", VIP6_UDP),
        ] {
            let (client, vip) = (ip(client), ip(vip));
            let (kind, code) = if vip.is_ipv4() {
                (V4_UNREACH, 3)
            } else {
                (V6_UNREACH, 4)
            };
            let (key, backend, version) = udp_flow(lab, client, 46000, vip, true);
            let side = backend_side(backend);
            // The client's datagram as the backend got it, quoted in a
            // port unreachable "from the backend" to the client.
            let dnat = client_packet(PROTO_UDP, client, 46000, backend, 63);
            let before = unreachables(lab, service, version);
            let forged =
                |at: u8| icmp_error(at, backend, client, kind, code, [0; 4], ip_packet(&dnat));
            // Sent by the client itself, the outer source spoofed: it comes
            // in on lb-client, not through the interface toward the
            // backend. Passed untouched, as an error about a stranger's
            // packet would be (nothing here tells the client it guessed a
            // backend's address), and no failure of the canary.
            for (at, what) in [
                (0, "on the client's side"),
                (other_side(side), "on another backend's side"),
            ] {
                expect(
                    lab,
                    &forged(at),
                    at as usize,
                    XDP_PASS,
                    true,
                    &[(reason::PASS_NOT_VIP, 1)],
                    &format!("{service}: forged {what}"),
                );
                assert_eq!(
                    unreachables(lab, service, version),
                    before,
                    "{service}: forged {what}, not counted"
                );
                let flags = lab.flow(&key).unwrap().flags;
                assert_eq!(
                    flags & FLOW_UNREACH_COUNTED,
                    0,
                    "{service}: forged {what}, the flow is not marked"
                );
            }
            // The backend's own, through its interface: translated, and
            // the one failure of the flow (the forgeries used nothing up).
            expect(
                lab,
                &forged(side),
                side as usize,
                XDP_REDIRECT,
                false,
                &[(reason::ICMP_TO_CLIENT, 1), (reason::FWD_REDIRECT, 1)],
                &format!("{service}: the backend's own"),
            );
            assert_eq!(
                unreachables(lab, service, version),
                before + 1,
                "{service}: the backend's own counts"
            );
        }
    });
}

#[test]
fn errors_quoting_a_backend_tell_a_prober_nothing_and_reach_no_third_host() {
    run_lab(&icmp_config(), None, |lab| {
        // (victim or prober, a backend, an address that is no backend,
        // client-side router, type, code)
        for (victim, backend, stranger, router, kind, code) in [
            (
                "198.18.17.1",
                "198.18.1.2",
                "198.18.1.77",
                ROUTER_C4,
                V4_UNREACH,
                3,
            ),
            (
                "2001:db8:1000::31",
                "2001:db8:1::2",
                "2001:db8:1::77",
                ROUTER_C6,
                V6_UNREACH,
                4,
            ),
        ] {
            let (victim, backend, stranger) = (ip(victim), ip(backend), ip(stranger));
            // From the client's side, an error "to" the victim quoting its
            // datagram to an address: a backend's, or a stranger's. The
            // outer source is one routed out of lb-client, as a forger would
            // pick it. Both pass untouched, counted alike: no ICMP from the
            // VIP to the victim, and no difference for a prober to see.
            for (to, what) in [(backend, "a backend"), (stranger, "no backend")] {
                let quoted = client_packet(PROTO_UDP, victim, 47000, to, 63);
                let err = icmp_error(
                    0,
                    ip(router),
                    victim,
                    kind,
                    code,
                    [0; 4],
                    ip_packet(&quoted),
                );
                expect(
                    lab,
                    &err,
                    0,
                    XDP_PASS,
                    true,
                    &[(reason::PASS_NOT_VIP, 1)],
                    &format!("client side, quoting {what} ({to})"),
                );
            }
            // From the backend's own side, but not addressed to the quote's
            // source (the client): not ours either.
            let side = backend_side(backend);
            let quoted = client_packet(PROTO_UDP, victim, 47001, backend, 63);
            let elsewhere = if victim.is_ipv4() {
                ip("198.18.17.2")
            } else {
                ip("2001:db8:1000::32")
            };
            let err = icmp_error(
                side,
                backend,
                elsewhere,
                kind,
                code,
                [0; 4],
                ip_packet(&quoted),
            );
            expect(
                lab,
                &err,
                side as usize,
                XDP_PASS,
                true,
                &[(reason::PASS_NOT_VIP, 1)],
                "backend side, addressed to another host than the quote's source",
            );
        }
    });
}

#[test]
fn an_error_about_a_reply_forged_on_the_backend_side_does_not_reach_the_backend() {
    run_lab(&icmp_config(), None, |lab| {
        for (i, (service, client, vip, kind, code, rest)) in [
            ("web", "198.18.16.33", VIP4, V4_UNREACH, 4, MTU_1400),
            ("web6", "2001:db8:1000::33", VIP6, V6_TOO_BIG, 0, MTU_1400),
        ]
        .into_iter()
        .enumerate()
        {
            let (client, vip) = (ip(client), ip(vip));
            let sport = 48000 + i as u16;
            let r = lab.run(&client_packet(PROTO_TCP, client, sport, vip, 64), 0);
            assert_eq!(r.action, XDP_REDIRECT, "{service}: the client's packet");
            let backend = dst_addr(&r.out);
            let side = backend_side(backend);
            let reply = tcp_full(side, None, backend, 80, client, sport, Tcp::SynAck, 64);
            let r = lab.run(&reply, side as usize);
            assert_eq!(r.action, XDP_REDIRECT, "{service}: the reply");
            let quote = ip_packet(&r.out).to_vec();
            // A "too big" about the reply, to the VIP, coming in from the
            // backends' side (a backend's neighbour, say, telling the
            // backend its path to the client is narrow): dropped, the
            // backend never sees it.
            for at in [side, other_side(side)] {
                let from = if vip.is_ipv4() {
                    ip(&format!("198.18.{at}.9"))
                } else {
                    ip(&format!("2001:db8:{at}::9"))
                };
                let err = icmp_error(at, from, vip, kind, code, rest, &quote);
                expect(
                    lab,
                    &err,
                    at as usize,
                    XDP_DROP,
                    false,
                    &[(reason::DROP_ICMP, 1)],
                    &format!("{service}: about a reply, from backend side {at}"),
                );
            }
            // Addressed to the backend itself rather than to the reply's
            // sender (the VIP): not ours, untouched.
            let router = if vip.is_ipv4() { ROUTER_C4 } else { ROUTER_C6 };
            let err = icmp_error(0, ip(router), backend, kind, code, rest, &quote);
            expect(
                lab,
                &err,
                0,
                XDP_PASS,
                true,
                &[(reason::PASS_NOT_VIP, 1)],
                &format!("{service}: about a reply, addressed to the backend"),
            );
            // The same error to the VIP from the client's side: translated.
            let err = icmp_error(0, ip(router), vip, kind, code, rest, &quote);
            expect(
                lab,
                &err,
                0,
                XDP_REDIRECT,
                false,
                &[(reason::ICMP_TO_BACKEND, 1), (reason::FWD_REDIRECT, 1)],
                &format!("{service}: about a reply, from the client's side"),
            );
        }
    });
}

#[test]
fn a_tagged_error_about_a_forwarded_packet_is_dropped_unchecked() {
    run_lab(&icmp_config(), None, |lab| {
        let (client, vip) = (ip("198.18.16.34"), ip(VIP_UDP));
        let (key, backend, version) = udp_flow(lab, client, 49000, vip, true);
        let side = backend_side(backend);
        let dnat = client_packet(PROTO_UDP, client, 49000, backend, 63);
        let before = unreachables(lab, "dns", version);
        // The backend's port unreachable, 802.1Q-tagged: XDP sees the
        // parent device, not the VLAN device the route names, so where it
        // came from cannot be told. Neither translated nor passed on (the
        // client would see the backend's address).
        let err = icmp_frame(
            mac_nbr(side),
            mac_lb(side),
            Some(7),
            backend,
            client,
            64,
            V4_UNREACH,
            3,
            [0; 4],
            ip_packet(&dnat),
        );
        expect(
            lab,
            &err,
            side as usize,
            XDP_DROP,
            false,
            &[(reason::DROP_ICMP, 1)],
            "tagged",
        );
        assert_eq!(unreachables(lab, "dns", version), before, "not counted");
        assert_eq!(lab.flow(&key).unwrap().flags & FLOW_UNREACH_COUNTED, 0);
    });
}
