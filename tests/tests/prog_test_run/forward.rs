//! Client -> VIP packets: DNAT toward the split's backend, redirected (or
//! passed to the stack when tagged), flows keeping their backend.

use super::*;

// 1 -------------------------------------------------------------------------

#[test]
fn ipv4_syn_to_vip_is_dnat_ed_and_redirected() {
    run_lab(&config(10.0), None, |lab| {
        let (client, vip) = (v4("198.18.16.5"), v4(VIP4));
        let pkt = tcp(0, client, 40000, vip, 80, Tcp::Syn);
        let key = flow_key(client, 40000, vip, 80, PROTO_TCP);
        assert!(lab.flow(&key).is_none());
        let (r, backend, version) = forward_expect(
            lab,
            "web",
            &pkt,
            &key,
            true,
            XDP_REDIRECT,
            &[(reason::FWD_REDIRECT, 1)],
            "SYN",
        );

        // The version is the shared split decision, the backend is in that
        // version's pool and is the live Maglev table's choice.
        assert_eq!(version, predicted_version(lab, "web", &key));
        let pool = lab.service("web").pool(Version::from_index(version));
        assert!(pool.contains(&backend), "{backend} not in {pool:?}");
        let flow = lab.flow(&key).unwrap();
        assert_eq!(flow.version as u32, version);
        assert_eq!(flow.backend_id, maglev_backend(lab, "web", version, &key));
        assert_eq!(dst_addr(&r.out), backend);

        assert_rewritten(&r.out, &pkt, to_backend(backend), "SYN");
        // And once more with etherparse, independent of our own parser.
        let p = etherparse::SlicedPacket::from_ethernet(&r.out).unwrap();
        match p.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                assert_eq!(IpAddr::V4(ip.header().destination_addr()), backend);
                assert_eq!(ip.header().ttl(), 63);
            }
            other => panic!("not IPv4: {other:?}"),
        }

        let bs = lab.dp().maps().backend_stats(flow.backend_id).unwrap();
        assert_eq!(
            (bs.packets, bs.new_flows, bs.bytes),
            (1, 1, pkt.len() as u64)
        );
    });
}

// 2 -------------------------------------------------------------------------

#[test]
fn established_flows_keep_their_backend_when_the_weight_changes() {
    run_lab(&config(10.0), None, |lab| {
        let (client, vip) = (v4("198.18.16.5"), v4(VIP4));
        let key = flow_key(client, 40000, vip, 80, PROTO_TCP);
        let syn = tcp(0, client, 40000, vip, 80, Tcp::Syn);
        let (r, backend, version) = forward_one(lab, "web", &syn, &key, true);
        assert_eq!(r.action, XDP_REDIRECT);

        let ack = tcp(0, client, 40000, vip, 80, Tcp::Ack);
        let (r, b2, v2) = forward_expect(
            lab,
            "web",
            &ack,
            &key,
            false,
            XDP_REDIRECT,
            &[(reason::FLOW_HIT, 1), (reason::FWD_REDIRECT, 1)],
            "ACK",
        );
        assert_eq!(
            (b2, v2),
            (backend, version),
            "established packet, same backend"
        );
        assert_rewritten(&r.out, &ack, to_backend(backend), "ACK");

        for (weight, want) in [(0.0, VERSION_STABLE), (100.0, VERSION_CANARY)] {
            lab.apply_yaml(&config(weight));
            // The open connection stays where it started.
            let (r, b, v) = forward_expect(
                lab,
                "web",
                &ack,
                &key,
                false,
                XDP_REDIRECT,
                &[(reason::FLOW_HIT, 1), (reason::FWD_REDIRECT, 1)],
                "ACK after reweight",
            );
            assert_eq!((b, v), (backend, version), "weight {weight}: flow affinity");
            assert_rewritten(&r.out, &ack, to_backend(backend), "ACK after reweight");
            // New connections follow the new weight: new clients, and the
            // same client on a new port.
            let mut clients: Vec<(IpAddr, u16)> = (0..20)
                .map(|i| {
                    (
                        v4(&format!("198.18.17.{}", i + 10 + (weight as u32))),
                        41000,
                    )
                })
                .collect();
            clients.push((client, 40001 + weight as u16));
            for (c, port) in clients {
                let k = flow_key(c, port, vip, 80, PROTO_TCP);
                let syn = tcp(0, c, port, vip, 80, Tcp::Syn);
                let (r, b, v) = forward_expect(
                    lab,
                    "web",
                    &syn,
                    &k,
                    true,
                    XDP_REDIRECT,
                    &[(reason::FWD_REDIRECT, 1)],
                    "SYN",
                );
                assert_eq!(v, want, "weight {weight}: new flow from {c}:{port}");
                assert!(lab
                    .service("web")
                    .pool(Version::from_index(want))
                    .contains(&b));
                assert_rewritten(&r.out, &syn, to_backend(b), "SYN after reweight");
            }
        }
    });
}

// 5 -------------------------------------------------------------------------

#[test]
fn ipv6_syn_to_vip_is_dnat_ed_with_a_valid_checksum() {
    run_lab(&config(10.0), None, |lab| {
        let (client, vip) = (v6("2001:db8:16::5"), v6(VIP6));
        let pkt = tcp(0, client, 40000, vip, 80, Tcp::Syn);
        let key = flow_key(client, 40000, vip, 80, PROTO_TCP);
        let (r, backend, version) = forward_expect(
            lab,
            "web6",
            &pkt,
            &key,
            true,
            XDP_REDIRECT,
            &[(reason::FWD_REDIRECT, 1)],
            "IPv6 SYN",
        );
        assert_eq!(version, predicted_version(lab, "web6", &key));
        assert!(lab
            .service("web6")
            .pool(Version::from_index(version))
            .contains(&backend));
        assert_eq!(
            lab.flow(&key).unwrap().backend_id,
            maglev_backend(lab, "web6", version, &key)
        );
        // Hop limit - 1, destination rewritten, MACs set; TCP checksum over
        // the IPv6 pseudo-header verified independently.
        assert_rewritten(&r.out, &pkt, to_backend(backend), "IPv6 SYN");
        assert_eq!(r.out[14 + 7], 63);

        // The established packet and a UDP-less ICMPv6 to the VIP.
        let ack = tcp(0, client, 40000, vip, 80, Tcp::Ack);
        let (r, b, _) = forward_one(lab, "web6", &ack, &key, false);
        assert_eq!((r.action, b), (XDP_REDIRECT, backend));
        assert_rewritten(&r.out, &ack, to_backend(backend), "IPv6 ACK");
    });
}

// 7 -------------------------------------------------------------------------

#[test]
fn vlan_tagged_syn_is_rewritten_and_passed_to_the_stack() {
    run_lab(&config(10.0), None, |lab| {
        // forward.rs: "A tagged frame must leave through the VLAN device the
        // stack owns": DNAT'ed (checksums updated) but XDP_PASS, TTL and MACs
        // left to the stack, counted pass_to_stack and forwarded.
        for (client, vip, service) in [
            (v4("198.18.16.7"), v4(VIP4), "web"),
            (v6("2001:db8:16::7"), v6(VIP6), "web6"),
        ] {
            let pkt = tcp_full(0, Some(100), client, 40000, vip, 80, Tcp::Syn, 64);
            let key = flow_key(client, 40000, vip, 80, PROTO_TCP);
            let (r, backend, version) = forward_expect(
                lab,
                service,
                &pkt,
                &key,
                true,
                XDP_PASS,
                &[(reason::PASS_TO_STACK, 1)],
                "VLAN",
            );
            assert_eq!(version, predicted_version(lab, service, &key));
            let rw = Rewrite {
                dst: Some(backend),
                ..Rewrite::default()
            };
            assert_rewritten(&r.out, &pkt, rw, "VLAN SYN");
            assert_eq!(&r.out[12..16], &[0x81, 0x00, 0x00, 100], "tag kept");

            // The tagged reply: source back to the VIP, passed to the stack.
            let side = backend_side(backend);
            let reply = tcp_full(side, Some(100), backend, 80, client, 40000, Tcp::SynAck, 64);
            let before = both(lab, service);
            let r = expect(
                lab,
                &reply,
                side as usize,
                XDP_PASS,
                false,
                &[(reason::PASS_TO_STACK, 1)],
                &format!("{service}: VLAN reply"),
            );
            let rw = Rewrite {
                src: Some(vip),
                ..Rewrite::default()
            };
            assert_rewritten(&r.out, &reply, rw, "VLAN reply");
            let v = version as usize;
            assert_eq!(delta(before[v], both(lab, service)[v]).reply_packets, 1);
        }
    });
}
