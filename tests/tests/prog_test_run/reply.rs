//! Backend -> client replies: the VIP back as source, the passive health
//! signals, and what is not a reply.

use super::*;

// 3 -------------------------------------------------------------------------

#[test]
fn backend_replies_get_the_vip_back_as_source() {
    run_lab(&config(10.0), None, |lab| {
        let (client, vip) = (v4("198.18.16.5"), v4(VIP4));
        let key = flow_key(client, 40000, vip, 80, PROTO_TCP);
        let syn = tcp(0, client, 40000, vip, 80, Tcp::Syn);
        let (_, backend, version) = forward_one(lab, "web", &syn, &key, true);

        let to_client = |src| Rewrite {
            src: Some(src),
            ttl_dec: true,
            macs: Some((mac_nbr(0), mac_lb(0))),
            ..Rewrite::default()
        };
        let sid = lab.sid("web");
        let health = |v: u32| lab.dp().maps().health_stats(sid, v).unwrap();
        let pending = |k: &canary_common::FlowKey| lab.dp().maps().handshakes.get(k, 0).is_ok();
        assert!(pending(&key), "the SYN left a pending handshake");

        // Replies on the forwarded connection: rewritten. The first SYN-ACK
        // records the handshake (count and histogram) and ends it; a
        // retransmitted one is not counted again; a RST is counted.
        // The RST also closes the connection (`flow_closed`).
        let cases = [
            (Tcp::SynAck, (1, 0), 0),
            (Tcp::SynAck, (0, 0), 0),
            (Tcp::Ack, (0, 0), 0),
            (Tcp::Rst, (0, 1), 1),
        ];
        for (kind, (want_synacks, want_rsts), closed) in cases {
            let side = backend_side(backend);
            let reply = tcp(side, backend, 80, client, 40000, kind);
            let before = both(lab, "web");
            let h0 = health(version);
            let r = expect(
                lab,
                &reply,
                side as usize,
                XDP_REDIRECT,
                false,
                &[(reason::FWD_REDIRECT, 1), (reason::FLOW_CLOSED, closed)],
                &format!("reply {kind:?} from {backend}"),
            );
            assert_rewritten(&r.out, &reply, to_client(vip), "reply");
            let after = both(lab, "web");
            let want = Vs {
                reply_packets: 1,
                reply_bytes: reply.len() as u64,
                ..ZERO
            };
            let v = version as usize;
            assert_eq!(delta(before[v], after[v]), want, "reply stats");
            assert_eq!(delta(before[1 - v], after[1 - v]), ZERO);
            let h1 = health(version);
            assert_eq!(
                (h1.syn_acks - h0.syn_acks, h1.rsts - h0.rsts),
                (want_synacks, want_rsts),
                "health signals of {kind:?}"
            );
            let recorded: u64 =
                h1.handshake_us_log2.iter().sum::<u64>() - h0.handshake_us_log2.iter().sum::<u64>();
            assert_eq!(recorded, want_synacks, "histogram entries of {kind:?}");
        }
        assert!(!pending(&key), "the SYN-ACK ended the pending handshake");

        // The same backend address and port, but not a connection we
        // forwarded (this host's own health probe, say): untouched.
        for b in ["198.18.1.2", "198.18.2.2", "198.18.3.2"] {
            let b = v4(b);
            let side = backend_side(b);
            let probe_reply = tcp(side, b, 80, v4("198.18.1.1"), 51000, Tcp::SynAck);
            expect(
                lab,
                &probe_reply,
                side as usize,
                XDP_PASS,
                true,
                &[(reason::PASS_REPLY_NO_FLOW, 1)],
                &format!("probe reply from {b}"),
            );
        }

        // IPv6 too.
        let (c6, vip6) = (v6("2001:db8:16::5"), v6(VIP6));
        let key6 = flow_key(c6, 40000, vip6, 80, PROTO_TCP);
        let syn6 = tcp(0, c6, 40000, vip6, 80, Tcp::Syn);
        let (_, b6, v6_) = forward_one(lab, "web6", &syn6, &key6, true);
        let reply = tcp(backend_side(b6), b6, 80, c6, 40000, Tcp::SynAck);
        let before = both(lab, "web6");
        let r = lab.run(&reply, backend_side(b6) as usize);
        assert_eq!(r.action, XDP_REDIRECT, "IPv6 reply");
        assert_rewritten(&r.out, &reply, to_client(vip6), "IPv6 reply");
        assert_eq!(
            delta(before[v6_ as usize], both(lab, "web6")[v6_ as usize]).reply_packets,
            1
        );

        // A packet from a backend but not from its service port is not a
        // reply: untouched.
        let other = tcp(1, v4("198.18.1.2"), 8080, client, 40000, Tcp::Ack);
        expect(
            lab,
            &other,
            1,
            XDP_PASS,
            true,
            &[(reason::PASS_NOT_VIP, 1)],
            "not a reply",
        );
    });
}
