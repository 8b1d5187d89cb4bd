//! Signals a client cannot forge, and the README's length rules: a SYN
//! with a wrong TCP checksum is dropped (never timed against a backend); a
//! SYN with data is forwarded but not judged; one client address has only
//! so many judged connections a second; a backend's RST counts for the
//! rollout (`SIGNALS.resets`) only on a judged connection, not on an entry
//! a bare ACK made; UDP lengths and TCP data offsets that disagree with the
//! IP header are dropped, counted by reason.

use super::lifecycle::start_of_a_second;
use super::*;
use canary_common::flow::FLOW_JUDGED;
use canary_common::{Signals, FAILURE_RESET};

fn signals(lab: &Lab, service: &str, version: u32) -> Signals {
    lab.dp()
        .maps()
        .signals(lab.sid(service), version)
        .expect("SIGNALS")
}

/// Both versions' signals added up: which version a test client hashes to
/// does not matter here.
fn total(lab: &Lab, service: &str) -> Signals {
    let (a, b) = (signals(lab, service, 0), signals(lab, service, 1));
    Signals {
        judged: a.judged + b.judged,
        resets: a.resets + b.resets,
        unreachables: a.unreachables + b.unreachables,
        over_budget: a.over_budget + b.over_budget,
    }
}

fn pending(lab: &Lab, key: &canary_common::FlowKey) -> bool {
    lab.dp().maps().handshakes.get(key, 0).is_ok()
}

/// A client's packet opening a new flow: redirected, counted as
/// `fwd_redirect` and `flow_insert` plus `extra` (see `forward_expect`).
fn new_flow(
    lab: &Lab,
    service: &str,
    frame: &[u8],
    key: &canary_common::FlowKey,
    extra: &[(u32, u64)],
    what: &str,
) -> (Run, IpAddr, u32) {
    let mut reasons = vec![(reason::FWD_REDIRECT, 1)];
    reasons.extend_from_slice(extra);
    forward_expect(lab, service, frame, key, true, XDP_REDIRECT, &reasons, what)
}

/// Is the flow's entry judged?
fn judged(lab: &Lab, key: &canary_common::FlowKey) -> bool {
    lab.flow(key).expect("the entry").flags & FLOW_JUDGED != 0
}

/// Offset of the TCP checksum in a frame without VLAN tag.
fn tcp_check_at(frame: &[u8]) -> usize {
    l4_offset(frame).unwrap().1 + 16
}

#[test]
fn a_syn_with_a_wrong_checksum_is_dropped_and_never_timed() {
    run_lab(&config(10.0), None, |lab| {
        for (client, vip, service) in [
            (v4("198.18.16.40"), v4(VIP4), "web"),
            (v6("2001:db8:1000::40"), v6(VIP6), "web6"),
        ] {
            let key = flow_key(client, 43000, vip, 80, PROTO_TCP);
            let mut syn = tcp(0, client, 43000, vip, 80, Tcp::Syn);
            let at = tcp_check_at(&syn);
            syn[at] ^= 0x5a;
            let s0 = total(lab, service);
            expect(
                lab,
                &syn,
                0,
                XDP_DROP,
                false,
                &[(reason::DROP_BAD_CHECKSUM, 1)],
                "SYN with a wrong checksum",
            );
            assert!(lab.flow(&key).is_none(), "{service}: no entry");
            assert!(!pending(lab, &key), "{service}: no handshake timed");
            assert_eq!(total(lab, service), s0, "{service}: nothing judged");

            // The same SYN with its checksum right is judged and timed.
            let good = tcp(0, client, 43000, vip, 80, Tcp::Syn);
            let before = total(lab, service);
            new_flow(lab, service, &good, &key, &[], "good SYN");
            assert!(judged(lab, &key));
            assert!(pending(lab, &key), "{service}: handshake timed");
            assert_eq!(total(lab, service).judged, before.judged + 1);
        }
    });
}

#[test]
fn a_syn_with_data_is_forwarded_unjudged() {
    run_lab(&config(10.0), None, |lab| {
        let (client, vip) = (v4("198.18.16.41"), v4(VIP4));
        let key = flow_key(client, 43001, vip, 80, PROTO_TCP);
        // A SYN carrying 4 bytes (as TCP Fast Open does): IP length and
        // header checksum fixed, the TCP checksum left stale on purpose.
        let mut syn = tcp(0, client, 43001, vip, 80, Tcp::Syn);
        syn.extend_from_slice(b"data");
        let tot = u16::from_be_bytes([syn[ETH_HLEN + 2], syn[ETH_HLEN + 3]]) + 4;
        set_u16(&mut syn, ETH_HLEN + 2, tot);
        fix_ipv4_csum(&mut syn, ETH_HLEN);
        let s0 = total(lab, "web");
        new_flow(
            lab,
            "web",
            &syn,
            &key,
            &[(reason::NOT_JUDGED_UNCHECKED, 1)],
            "SYN with data",
        );
        assert!(!judged(lab, &key));
        assert!(!pending(lab, &key), "an unjudged SYN is not timed");
        assert_eq!(total(lab, "web"), s0);
    });
}

#[test]
fn one_client_has_only_so_many_judged_connections_a_second() {
    run_lab(&config(10.0), None, |lab| {
        lab.dp_mut().maps_mut().set_judged_per_client(3).unwrap();
        let (client, other, vip) = (v4("198.18.16.42"), v4("198.18.16.43"), v4(VIP4));
        let s0 = total(lab, "web");
        start_of_a_second();
        for i in 0..5u16 {
            let key = flow_key(client, 44000 + i, vip, 80, PROTO_TCP);
            let mut want = vec![];
            if i >= 3 {
                want.push((reason::NOT_JUDGED_BUDGET, 1));
            }
            new_flow(
                lab,
                "web",
                &tcp(0, client, 44000 + i, vip, 80, Tcp::Syn),
                &key,
                &want,
                &format!("SYN {i}"),
            );
            let judged = judged(lab, &key);
            assert_eq!(judged, i < 3, "SYN {i} judged");
            assert_eq!(pending(lab, &key), i < 3, "SYN {i} timed");
        }
        // Another client has a budget of its own.
        let key = flow_key(other, 44100, vip, 80, PROTO_TCP);
        new_flow(
            lab,
            "web",
            &tcp(0, other, 44100, vip, 80, Tcp::Syn),
            &key,
            &[],
            "another client",
        );
        let s = total(lab, "web");
        assert_eq!(s.judged - s0.judged, 4);
        assert_eq!(s.over_budget - s0.over_budget, 2);
        // The next second starts afresh.
        start_of_a_second();
        let key = flow_key(client, 44010, vip, 80, PROTO_TCP);
        new_flow(
            lab,
            "web",
            &tcp(0, client, 44010, vip, 80, Tcp::Syn),
            &key,
            &[],
            "next second",
        );
        assert!(judged(lab, &key));
    });
}

#[test]
fn a_backend_rst_counts_only_on_a_judged_connection() {
    run_lab(&config(10.0), None, |lab| {
        let sid = lab.sid("web");
        let vip = v4(VIP4);
        // A bare ACK opens an entry (no SYN seen here); the backend, which
        // knows no such connection, resets it.
        let client = v4("198.18.16.44");
        let key = flow_key(client, 45000, vip, 80, PROTO_TCP);
        let (_, backend, version) = new_flow(
            lab,
            "web",
            &tcp(0, client, 45000, vip, 80, Tcp::Ack),
            &key,
            &[],
            "bare ACK",
        );
        assert!(!judged(lab, &key));
        let rsts = || lab.dp().maps().health_stats(sid, version).unwrap().rsts;
        let (r0, s0) = (rsts(), signals(lab, "web", version));
        let side = backend_side(backend);
        let rst = tcp(side, backend, 80, client, 45000, Tcp::Rst);
        lab.run(&rst, side as usize);
        assert_eq!(rsts(), r0 + 1, "every backend RST is shown in HEALTH_STATS");
        assert_eq!(
            signals(lab, "web", version).resets,
            s0.resets,
            "but one on an unjudged entry does not count for the rollout"
        );

        // A judged connection's RST counts, once.
        let client = v4("198.18.16.45");
        let key = flow_key(client, 45001, vip, 80, PROTO_TCP);
        let (_, backend, version) = new_flow(
            lab,
            "web",
            &tcp(0, client, 45001, vip, 80, Tcp::Syn),
            &key,
            &[],
            "SYN",
        );
        let s0 = signals(lab, "web", version);
        let side = backend_side(backend);
        let rst = tcp(side, backend, 80, client, 45001, Tcp::Rst);
        let _ = lab.dp_mut().maps_mut().drain_failures();
        lab.run(&rst, side as usize);
        lab.run(&rst, side as usize);
        assert_eq!(signals(lab, "web", version).resets, s0.resets + 1);
        // Reported with its client, for canaryd's distinct-client count.
        let events = lab.dp_mut().maps_mut().drain_failures();
        assert_eq!(events.len(), 1, "{events:?}");
        let e = events[0];
        assert_eq!(
            (e.service_id, e.version, e.kind),
            (sid, version, FAILURE_RESET)
        );
        assert_eq!(e.addr, key.src, "the client");
    });
}

#[test]
fn udp_lengths_and_tcp_offsets_must_agree_with_the_ip_header() {
    run_lab(&config(10.0), None, |lab| {
        let client4 = v4("198.18.16.46");
        let good = udp(0, client4, 5300, v4(VIP_UDP), 53, b"query", false);
        let l4 = l4_offset(&good).unwrap().1;
        let udp_len = u16::from_be_bytes([good[l4 + 4], good[l4 + 5]]);
        for (len, what) in [
            (udp_len + 1, "UDP length beyond the IP payload"),
            (udp_len - 1, "UDP length short of the IP payload"),
            (7, "UDP length below its header"),
        ] {
            let mut f = good.clone();
            set_u16(&mut f, l4 + 4, len);
            expect(
                lab,
                &f,
                0,
                XDP_DROP,
                false,
                &[(reason::DROP_UDP_LENGTH, 1)],
                what,
            );
        }

        for (client, vip) in [
            (v4("198.18.16.47"), v4(VIP4)),
            (v6("2001:db8:1000::47"), v6(VIP6)),
        ] {
            let good = tcp(0, client, 46000, vip, 80, Tcp::Ack);
            let l4 = l4_offset(&good).unwrap().1;
            let segment = good.len() - l4;
            for (doff, what) in [
                (4u8, "TCP data offset below 5"),
                (
                    ((segment / 4) + 1) as u8,
                    "TCP data offset beyond the segment",
                ),
            ] {
                let mut f = good.clone();
                f[l4 + 12] = (doff << 4) | (f[l4 + 12] & 0x0f);
                expect(
                    lab,
                    &f,
                    0,
                    XDP_DROP,
                    false,
                    &[(reason::DROP_TCP_OFFSET, 1)],
                    what,
                );
            }
            // Not addressed to a VIP: not ours to judge.
            let mut f = tcp(0, client, 46000, dst_other(vip), 80, Tcp::Ack);
            let l4 = l4_offset(&f).unwrap().1;
            f[l4 + 12] = (4 << 4) | (f[l4 + 12] & 0x0f);
            expect(
                lab,
                &f,
                0,
                XDP_PASS,
                true,
                &[(reason::PASS_NOT_VIP, 1)],
                "bad offset, not to a VIP",
            );
        }
    });
}

/// An address of the VIP's family that is not a VIP.
fn dst_other(vip: IpAddr) -> IpAddr {
    match vip {
        IpAddr::V4(_) => v4("198.18.101.1"),
        IpAddr::V6(_) => v6("2001:db8:101::1"),
    }
}

#[test]
fn a_syn_with_a_wrong_ipv4_header_checksum_is_dropped() {
    run_lab(&config(10.0), None, |lab| {
        let (client, vip) = (v4("198.18.16.48"), v4(VIP4));
        let key = flow_key(client, 43100, vip, 80, PROTO_TCP);
        let mut syn = tcp(0, client, 43100, vip, 80, Tcp::Syn);
        // The IPv4 header checksum (bytes 10..12 of the header) made wrong;
        // the TCP checksum is right.
        syn[ETH_HLEN + 10] ^= 0x11;
        expect(
            lab,
            &syn,
            0,
            XDP_DROP,
            false,
            &[(reason::DROP_BAD_CHECKSUM, 1)],
            "SYN with a wrong IPv4 header checksum",
        );
        assert!(lab.flow(&key).is_none());
        assert!(!pending(lab, &key));
    });
}

/// What a client can provoke does not count: its own RST ends its
/// handshake without a timeout, and a backend's RST after the client's own
/// RST or FIN is not judged.
#[test]
fn what_a_client_provokes_after_closing_is_not_judged() {
    run_lab(&config(10.0), None, |lab| {
        let vip = v4(VIP4);
        // A SYN, then the client's RST before any answer: no handshake left
        // to time out.
        let client = v4("198.18.16.49");
        let key = flow_key(client, 45100, vip, 80, PROTO_TCP);
        lab.run(&tcp(0, client, 45100, vip, 80, Tcp::Syn), 0);
        assert!(pending(lab, &key));
        lab.run(&tcp(0, client, 45100, vip, 80, Tcp::Rst), 0);
        assert!(!pending(lab, &key), "the client's RST ended its handshake");

        // A judged connection answered, then closed by the client (FIN);
        // the backend resets what the client sends afterwards.
        let client = v4("198.18.16.50");
        let key = flow_key(client, 45101, vip, 80, PROTO_TCP);
        let (_, backend, version) = new_flow(
            lab,
            "web",
            &tcp(0, client, 45101, vip, 80, Tcp::Syn),
            &key,
            &[],
            "SYN",
        );
        let side = backend_side(backend);
        lab.run(
            &tcp(side, backend, 80, client, 45101, Tcp::SynAck),
            side as usize,
        );
        lab.run(&tcp(0, client, 45101, vip, 80, Tcp::Fin), 0);
        let s0 = signals(lab, "web", version);
        lab.run(
            &tcp(side, backend, 80, client, 45101, Tcp::Rst),
            side as usize,
        );
        assert_eq!(
            signals(lab, "web", version).resets,
            s0.resets,
            "a RST after the client's FIN is not judged"
        );
    });
}

/// An IPv6 client is its /64: fresh addresses in one /64 share a budget.
#[test]
fn an_ipv6_clients_budget_is_its_slash_64() {
    run_lab(&config(10.0), None, |lab| {
        lab.dp_mut().maps_mut().set_judged_per_client(2).unwrap();
        let vip = v6(VIP6);
        start_of_a_second();
        for i in 0..3u16 {
            let client = v6(&format!("2001:db8:1000::{:x}", 0x100 + i));
            let key = flow_key(client, 46100, vip, 80, PROTO_TCP);
            let mut want = vec![];
            if i == 2 {
                want.push((reason::NOT_JUDGED_BUDGET, 1));
            }
            new_flow(
                lab,
                "web6",
                &tcp(0, client, 46100, vip, 80, Tcp::Syn),
                &key,
                &want,
                &format!("SYN from address {i} of the /64"),
            );
        }
    });
}
