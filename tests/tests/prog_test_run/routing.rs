//! Next hops: an unresolved neighbour and an oversize frame without DF go
//! to the stack, an expiring TTL to a VIP is dropped; the cached next hop
//! and its invalidation.

use super::*;

// 10 ------------------------------------------------------------------------

#[test]
fn unresolved_neighbour_falls_back_to_the_stack() {
    run_lab(&config(10.0), None, |lab| {
        let (client, vip) = (v4("198.18.16.5"), v4(VIP_UNRESOLVED));
        let pkt = tcp(0, client, 40000, vip, 80, Tcp::Syn);
        let key = flow_key(client, 40000, vip, 80, PROTO_TCP);
        let (r, backend, version) = forward_expect(
            lab,
            "unresolved",
            &pkt,
            &key,
            true,
            XDP_PASS,
            &[(reason::PASS_TO_STACK, 1)],
            "NO_NEIGH",
        );
        assert_eq!((backend, version), (v4(UNRESOLVED_BACKEND), VERSION_STABLE));
        // Rewritten, but TTL and MACs are the stack's business.
        let rw = Rewrite {
            dst: Some(backend),
            ..Rewrite::default()
        };
        assert_rewritten(&r.out, &pkt, rw, "NO_NEIGH");
    });
}

// Extra: TTL expiring, oversize ------------------------------------------------

/// A packet to a VIP whose TTL (hop limit) would expire here is dropped
/// before anything is decided or rewritten: the stack's time exceeded
/// would quote the packet rewritten toward the backend. An IPv4 packet
/// over the route's MTU without DF is left to the stack (which fragments
/// it); with DF it is answered here (see `icmp`).
#[test]
fn expiring_ttl_is_dropped_and_oversize_without_df_left_to_the_stack() {
    run_lab(&config(10.0), None, |lab| {
        for (client, vip) in [
            (v4("198.18.16.5"), v4(VIP4)),
            (v6("2001:db8:1000::5"), v6(VIP6)),
        ] {
            for ttl in [1, 0] {
                let pkt = tcp_full(0, None, client, 40000, vip, 80, Tcp::Syn, ttl);
                expect(
                    lab,
                    &pkt,
                    0,
                    XDP_DROP,
                    false,
                    &[(reason::DROP_TTL_EXPIRED, 1)],
                    &format!("TTL {ttl} to {vip}"),
                );
                let key = flow_key(client, 40000, vip, 80, PROTO_TCP);
                assert!(lab.flow(&key).is_none(), "TTL {ttl}: nothing decided");
            }
        }

        // Larger than the egress MTU (veth: 1500), no DF: the FIB says
        // FRAG_NEEDED, the stack fragments it.
        let (c, vip) = (v4("198.18.16.6"), v4(VIP4));
        let mut big = tcp_data(0, None, c, 40000, vip, 80, &[0x5a; 1600]);
        clear_df(&mut big);
        let key = flow_key(c, 40000, vip, 80, PROTO_TCP);
        let (r, backend, _) = forward_expect(
            lab,
            "web",
            &big,
            &key,
            true,
            XDP_PASS,
            &[(reason::PASS_TO_STACK, 1)],
            "MTU",
        );
        let rw = Rewrite {
            dst: Some(backend),
            ..Rewrite::default()
        };
        assert_rewritten(&r.out, &big, rw, "over the MTU");
    });
}

// Next-hop cache -------------------------------------------------------------

/// The first packet to a backend caches its next hop (egress interface,
/// MACs, MTU) for the backend (per CPU), and a reply's in its flow entry;
/// later packets use it without a route lookup (a neighbour change is not
/// seen) until canaryd bumps the generation, and never for a packet over
/// the cached MTU.
#[test]
fn cached_next_hop_is_used_until_invalidated() {
    run_lab(&config(10.0), None, |lab| {
        let (client, vip) = (v4("198.18.16.5"), v4(VIP4));
        let key = flow_key(client, 40000, vip, 80, PROTO_TCP);
        let syn = tcp(0, client, 40000, vip, 80, Tcp::Syn);
        let (r, backend, _) = forward_one(lab, "web", &syn, &key, true);
        assert_eq!(r.action, XDP_REDIRECT);
        let side = backend_side(backend);
        let entry = lab.dp().maps().flows.get(&key, 0).unwrap();
        let nh = lab.backend_nexthop(entry.backend_id);
        assert_eq!(nh.ifindex, lab.ifindex[side as usize], "egress cached");
        assert_eq!((nh.dmac, nh.smac), (mac_nbr(side), mac_lb(side)));
        assert_eq!(nh.mtu, 1500, "the route's MTU (veth)");
        assert_eq!(entry.to_client.ifindex, 0, "no reply yet");

        // The backend's MAC changes: the cache still holds the old one ...
        // (the kernel also ages cached next hops every 2^30 ns; should that
        // boundary fall between caching and the check, try again: it cannot
        // fall twice within milliseconds).
        let new_mac = [0x02, 0, 0, 0, side, 0x77];
        let b = format!("198.18.{side}.2");
        let ns = lab.ns.clone();
        let set_mac = |mac: [u8; 6]| {
            ip_batch(
                &ns,
                &format!(
                    "neigh replace {b} lladdr {} dev lb-b{side} nud permanent\n",
                    mac_str(mac)
                ),
            )
            .unwrap()
        };
        let ack = tcp(0, client, 40000, vip, 80, Tcp::Ack);
        let mut stale_used = false;
        for _ in 0..3 {
            set_mac(mac_nbr(side));
            lab.dp_mut().bump_nexthop_gen().unwrap();
            assert_eq!(lab.run(&ack, 0).out[0..6], mac_nbr(side), "re-learned");
            set_mac(new_mac);
            let r = lab.run(&ack, 0);
            assert_eq!(r.action, XDP_REDIRECT);
            if r.out[0..6] == mac_nbr(side) {
                stale_used = true;
                break;
            }
        }
        assert!(stale_used, "the cached MAC was never used");
        // ... until the generation moves on.
        lab.dp_mut().bump_nexthop_gen().unwrap();
        let r = lab.run(&ack, 0);
        assert_eq!(r.action, XDP_REDIRECT);
        assert_eq!(r.out[0..6], new_mac, "looked up again after the bump");
        assert_eq!(lab.backend_nexthop(entry.backend_id).dmac, new_mac);
        // A new connection to the same backend uses the backend's cache:
        // its SYN needs no route lookup, so it carries the cached MAC even
        // after the neighbour changed (retried like the check above, in
        // case an epoch boundary falls in between).
        // (`web` splits by source address: vary the client, not the port.)
        let p2 = 40100;
        let c2 = (100..250u8)
            .map(|i| v4(&format!("198.18.16.{i}")))
            .find(|c| {
                let k = flow_key(*c, p2, vip, 80, PROTO_TCP);
                let v = predicted_version(lab, "web", &k);
                maglev_backend(lab, "web", v, &k) == entry.backend_id
            })
            .expect("a client for the same backend");
        let same_backend = flow_key(c2, p2, vip, 80, PROTO_TCP);
        let mut cached_used = false;
        for _ in 0..3 {
            set_mac(new_mac);
            lab.dp_mut().bump_nexthop_gen().unwrap();
            assert_eq!(lab.run(&ack, 0).out[0..6], new_mac, "re-learned");
            set_mac([0x02, 0, 0, 0, side, 0x79]);
            let syn2 = tcp(0, c2, p2, vip, 80, Tcp::Syn);
            let r = lab.run(&syn2, 0);
            lab.remove_flow(&same_backend);
            if r.out[0..6] == new_mac {
                cached_used = true;
                break;
            }
        }
        assert!(
            cached_used,
            "a new flow's SYN never used its backend's cached next hop"
        );
        set_mac(new_mac);
        // With no bump at all (no canaryd running), it still expires: within
        // two 2^30 ns epochs the next packet looks its route up again.
        let third_mac = [0x02, 0, 0, 0, side, 0x78];
        set_mac(third_mac);
        std::thread::sleep(std::time::Duration::from_millis(2200));
        let r = lab.run(&ack, 0);
        assert_eq!(
            r.out[0..6],
            third_mac,
            "a cached next hop outlived two epochs"
        );

        // Over the cached MTU: the slow path, whose route lookup says too
        // big (answered here, DF being set: see `icmp`).
        let big = tcp_data(0, None, client, 40000, vip, 80, &[0x5a; 1600]);
        expect(
            lab,
            &big,
            0,
            XDP_REDIRECT,
            false,
            &[(reason::TX_ICMP_TOO_BIG, 1), (reason::FLOW_HIT, 1)],
            "over the MTU on an established flow",
        );

        // The reply direction caches its own next hop.
        let reply = tcp(side, backend, 80, client, 40000, Tcp::Ack);
        let r = lab.run(&reply, side as usize);
        assert_eq!(r.action, XDP_REDIRECT);
        let back = lab.dp().maps().flows.get(&key, 0).unwrap().to_client;
        assert_eq!(back.ifindex, lab.ifindex[0]);
        assert_eq!((back.dmac, back.smac), (mac_nbr(0), mac_lb(0)));
        let again = lab.run(&reply, side as usize);
        assert_eq!(
            again.out, r.out,
            "the cached reply path rewrites the same bytes"
        );
    });
}
