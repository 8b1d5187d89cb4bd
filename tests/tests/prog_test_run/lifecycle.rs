//! A flow entry's life in the flow table (`canary_common::flow`): closed by
//! FIN both ways or a RST, expired when idle, reopened by a SYN; flood mode
//! (bare SYNs without state over the budget, the entry made by the
//! handshake's ACK); replies that need no entry.

use super::*;
use canary_common::flow::{
    closing, FLOW_CLIENT_ACKED, FLOW_FIN_BACKEND, FLOW_FIN_CLIENT, FLOW_JUDGED, FLOW_REPLIED,
    FLOW_RST, FLOW_RST_COUNTED,
};
use canary_common::{FlowState, DEFAULT_TIMEOUTS};
use canary_tests::config::{LAB_CANARY_V4, LAB_STABLE_V4};

/// A client's frame (on interface 0): redirected toward its backend, with
/// `counts`.
fn from_client(lab: &Lab, frame: &[u8], counts: &[(u32, u64)], what: &str) -> Run {
    expect(lab, frame, 0, XDP_REDIRECT, false, counts, what)
}

/// A TCP connection of `web` from `client:port`: its key, and the side and
/// address of the backend its SYN went to.
struct Conn {
    client: IpAddr,
    port: u16,
    key: canary_common::FlowKey,
    backend: IpAddr,
    side: u8,
}

fn open(lab: &Lab, client: &str, port: u16) -> Conn {
    let (client, vip) = (v4(client), v4(VIP4));
    let key = flow_key(client, port, vip, 80, PROTO_TCP);
    let syn = tcp(0, client, port, vip, 80, Tcp::Syn);
    let (_, backend, _) = forward_expect(
        lab,
        "web",
        &syn,
        &key,
        true,
        XDP_REDIRECT,
        &[(reason::FWD_REDIRECT, 1)],
        "SYN",
    );
    let flags = lab.flow(&key).expect("the entry").flags;
    assert_ne!(
        flags & FLOW_JUDGED,
        0,
        "a checked SYN within budget is judged"
    );
    Conn {
        client,
        port,
        key,
        backend,
        side: backend_side(backend),
    }
}

impl Conn {
    fn client_sends(&self, kind: Tcp) -> Vec<u8> {
        tcp(0, self.client, self.port, v4(VIP4), 80, kind)
    }
    fn backend_sends(&self, kind: Tcp) -> Vec<u8> {
        tcp(self.side, self.backend, 80, self.client, self.port, kind)
    }
    /// The client sends `kind`: redirected to the backend, with `counts`.
    fn client_redirected(&self, lab: &Lab, kind: Tcp, counts: &[(u32, u64)], what: &str) {
        from_client(lab, &self.client_sends(kind), counts, what);
    }
    /// The backend sends `kind`: redirected to the client, with `counts`.
    fn backend_redirected(&self, lab: &Lab, kind: Tcp, counts: &[(u32, u64)], what: &str) {
        let side = self.side as usize;
        expect(
            lab,
            &self.backend_sends(kind),
            side,
            XDP_REDIRECT,
            false,
            counts,
            what,
        );
    }
    /// The entry's flags but `FLOW_JUDGED` (see `judging.rs`).
    fn flags(&self, lab: &Lab) -> u16 {
        lab.flow(&self.key).expect("the entry").flags & !FLOW_JUDGED
    }
}

#[test]
fn fin_both_ways_closes_and_a_syn_reopens() {
    run_lab(&config(10.0), None, |lab| {
        let c = open(lab, "198.18.16.5", 40000);
        assert_eq!(c.flags(lab), 0, "a SYN only: not answered yet");
        let hit = |extra: &[(u32, u64)]| {
            let mut v = vec![(reason::FWD_REDIRECT, 1), (reason::FLOW_HIT, 1)];
            v.extend_from_slice(extra);
            v
        };
        c.backend_redirected(lab, Tcp::SynAck, &[(reason::FWD_REDIRECT, 1)], "SYN-ACK");
        assert_eq!(c.flags(lab), FLOW_REPLIED);
        c.client_redirected(lab, Tcp::Fin, &hit(&[]), "client FIN");
        assert_eq!(c.flags(lab), FLOW_REPLIED | FLOW_FIN_CLIENT, "half closed");
        assert!(!closing(c.flags(lab)));
        c.backend_redirected(
            lab,
            Tcp::Fin,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_CLOSED, 1)],
            "backend FIN",
        );
        assert!(closing(c.flags(lab)));
        assert_eq!(
            c.flags(lab),
            FLOW_REPLIED | FLOW_FIN_CLIENT | FLOW_FIN_BACKEND
        );
        // The last ACK still finds the connection's entry.
        c.client_redirected(lab, Tcp::Ack, &hit(&[]), "last ACK");
        // A SYN on the closed 5-tuple is a new connection: decided again,
        // the entry replaced (not a new insert: occupancy is unchanged).
        let before = both(lab, "web");
        c.client_redirected(
            lab,
            Tcp::Syn,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_EXPIRED, 1)],
            "SYN reusing the 5-tuple",
        );
        let after = both(lab, "web");
        let new_flows: u64 = (0..2)
            .map(|v| after[v].new_flows - before[v].new_flows)
            .sum();
        assert_eq!(new_flows, 1, "counted as a new flow");
        assert_eq!(c.flags(lab), 0, "the new connection starts afresh");
        assert!(
            lab.dp().maps().handshakes.get(&c.key, 0).is_ok(),
            "the new connection's handshake is timed"
        );
        // Whereas a SYN on an open connection is a retransmission: a hit.
        c.client_redirected(lab, Tcp::Syn, &hit(&[]), "retransmitted SYN");
    });
}

/// In a fleet the backend's SYN-ACK may return through another host: the
/// client's ACK, which always comes here, ends the handshake (no timeout
/// counted); where the SYN-ACK passes, it does.
#[test]
fn the_clients_ack_ends_a_handshake_answered_elsewhere() {
    run_lab(&config(10.0), None, |lab| {
        let hit = [(reason::FWD_REDIRECT, 1), (reason::FLOW_HIT, 1)];
        let c = open(lab, "198.18.16.6", 40001);
        assert!(lab.dp().maps().handshakes.get(&c.key, 0).is_ok(), "timed");
        c.client_redirected(lab, Tcp::Ack, &hit, "ACK");
        assert!(
            lab.dp().maps().handshakes.get(&c.key, 0).is_err(),
            "the client's ACK ended the handshake"
        );
        assert_eq!(c.flags(lab), FLOW_CLIENT_ACKED);
        // Its FIN is then the only end this host sees: the closing timeout.
        c.client_redirected(lab, Tcp::Fin, &hit, "FIN");
        let d = DEFAULT_TIMEOUTS;
        assert_eq!(
            canary_common::flow::timeout(PROTO_TCP, c.flags(lab), &d),
            d.tcp_closing
        );

        // Where the SYN-ACK passes here, the client's ACK changes nothing.
        let c = open(lab, "198.18.16.7", 40002);
        c.backend_redirected(lab, Tcp::SynAck, &[(reason::FWD_REDIRECT, 1)], "SYN-ACK");
        c.client_redirected(lab, Tcp::Ack, &hit, "ACK");
        assert_eq!(c.flags(lab), FLOW_REPLIED);
    });
}

#[test]
fn a_rst_from_either_side_closes() {
    run_lab(&config(10.0), None, |lab| {
        let sid = lab.sid("web");
        // The client resets.
        let c = open(lab, "198.18.16.7", 40001);
        c.client_redirected(
            lab,
            Tcp::Rst,
            &[
                (reason::FWD_REDIRECT, 1),
                (reason::FLOW_HIT, 1),
                (reason::FLOW_CLOSED, 1),
            ],
            "client RST",
        );
        assert_eq!(c.flags(lab), FLOW_RST);
        // The backend resets: closing, and one health signal however many RSTs.
        let c = open(lab, "198.18.16.8", 40002);
        let version = lab.flow(&c.key).unwrap().version as u32;
        let rsts = || lab.dp().maps().health_stats(sid, version).unwrap().rsts;
        let r0 = rsts();
        c.backend_redirected(
            lab,
            Tcp::Rst,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_CLOSED, 1)],
            "backend RST",
        );
        c.backend_redirected(
            lab,
            Tcp::Rst,
            &[(reason::FWD_REDIRECT, 1)],
            "second backend RST",
        );
        assert_eq!(rsts() - r0, 1, "one RST signal per connection");
        assert_eq!(c.flags(lab), FLOW_REPLIED | FLOW_RST | FLOW_RST_COUNTED);
        assert!(closing(c.flags(lab)));
    });
}

#[test]
fn idle_entries_expire_by_protocol_and_state() {
    run_lab(&config(10.0), None, |lab| {
        let d = DEFAULT_TIMEOUTS;
        let now = monotonic_secs();
        // An answered TCP connection idle just under its timeout is kept;
        // just over, it is decided again (and the entry replaced).
        let c = open(lab, "198.18.16.9", 40003);
        let aged = |lab: &mut Lab, key, flags, idle: u32| {
            let mut e: FlowState = lab.flow(key).unwrap();
            e.flags = flags;
            e.last_seen = monotonic_secs().wrapping_sub(idle);
            lab.set_flow(key, e);
        };
        aged(lab, &c.key, FLOW_REPLIED, d.tcp_established - 2);
        c.client_redirected(
            lab,
            Tcp::Ack,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_HIT, 1)],
            "idle under the timeout",
        );
        let e = lab.flow(&c.key).unwrap();
        assert!(e.last_seen >= now, "a packet refreshes last_seen");
        aged(lab, &c.key, FLOW_REPLIED, d.tcp_established + 2);
        c.client_redirected(
            lab,
            Tcp::Ack,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_EXPIRED, 1)],
            "idle over the timeout",
        );
        let e = lab.flow(&c.key).unwrap();
        assert!(
            e.last_seen >= now && e.flags == 0,
            "replaced by a fresh entry"
        );
        // Unanswered and closing TCP entries have shorter timeouts.
        aged(lab, &c.key, 0, d.tcp_handshake + 2);
        c.client_redirected(
            lab,
            Tcp::Ack,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_EXPIRED, 1)],
            "unanswered handshake",
        );
        aged(lab, &c.key, FLOW_REPLIED | FLOW_RST, d.tcp_closing + 2);
        c.client_redirected(
            lab,
            Tcp::Ack,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_EXPIRED, 1)],
            "closed connection",
        );
        // The timeouts come from SETTINGS: a UDP flow with udp = 3 s.
        let mut s = lab.settings();
        s.timeouts.udp = 3;
        lab.set_settings(s);
        let (client, vip) = (v4("198.18.16.10"), v4(VIP_UDP));
        let key = flow_key(client, 5353, vip, 53, PROTO_UDP);
        let q = udp(0, client, 5353, vip, 53, b"q", false);
        from_client(
            lab,
            &q,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_INSERT, 1)],
            "UDP query",
        );
        aged(lab, &key, 0, 3);
        from_client(
            lab,
            &q,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_HIT, 1)],
            "UDP idle 3 s",
        );
        aged(lab, &key, 0, 5);
        from_client(
            lab,
            &q,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_EXPIRED, 1)],
            "UDP idle 5 s",
        );
    });
}

/// Waits until the start of a CLOCK_MONOTONIC second, so a handful of
/// packets all fall in one flood-mode window. Then 20 ms more: the data
/// path reads the coarse clock, which lags the fine one by up to a tick
/// (4 ms at 250 Hz), and would still count the first packets in the
/// second before.
pub(super) fn start_of_a_second() {
    let s = monotonic_secs();
    while monotonic_secs() == s {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
}

#[test]
fn flood_mode_decides_bare_syns_without_state() {
    run_lab(&config(10.0), None, |lab| {
        // One client opens every connection here: no judging budget.
        lab.dp_mut().maps_mut().set_judged_per_client(0).unwrap();
        let mut s = lab.settings();
        s.flood_new_flows_per_s = 3;
        lab.set_settings(s);
        let vip = v4(VIP4);
        let syn = |i: u16| tcp(0, v4("198.18.17.1"), 41000 + i, vip, 80, Tcp::Syn);
        let key = |i: u16| flow_key(v4("198.18.17.1"), 41000 + i, vip, 80, PROTO_TCP);
        // Five new connections within one second: three get state, the
        // other two are forwarded without (the window may straddle a
        // second only if the five runs take ~1 s; they take microseconds).
        start_of_a_second();
        for i in 0..5u16 {
            let stateful = i < 3;
            let want: &[(u32, u64)] = if stateful {
                &[(reason::FWD_REDIRECT, 1), (reason::FLOW_INSERT, 1)]
            } else {
                &[(reason::FWD_REDIRECT, 1), (reason::SYN_STATELESS, 1)]
            };
            let r = from_client(lab, &syn(i), want, &format!("SYN {i}"));
            assert_eq!(lab.flow(&key(i)).is_some(), stateful, "entry of SYN {i}");
            assert_eq!(
                lab.dp().maps().handshakes.get(&key(i), 0).is_ok(),
                stateful,
                "pending handshake of SYN {i}"
            );
            // Stateless or not, the decision is the same pure function.
            let k = key(i);
            let v = predicted_version(lab, "web", &k);
            let b = lab.backend_addr(maglev_backend(lab, "web", v, &k));
            assert_rewritten(&r.out, &syn(i), to_backend(b), "flood SYN");
        }
        // The handshake's ACK of a stateless SYN makes its entry.
        let ack = tcp(0, v4("198.18.17.1"), 41004, vip, 80, Tcp::Ack);
        from_client(
            lab,
            &ack,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_INSERT, 1)],
            "handshake ACK",
        );
        assert!(lab.flow(&key(4)).is_some());
        // The next second starts a new budget.
        start_of_a_second();
        from_client(
            lab,
            &syn(10),
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_INSERT, 1)],
            "SYN in the next second",
        );
        // Threshold 0: flood mode off, whatever the rate.
        s.flood_new_flows_per_s = 0;
        lab.set_settings(s);
        for i in 20..30u16 {
            from_client(
                lab,
                &syn(i),
                &[(reason::FWD_REDIRECT, 1), (reason::FLOW_INSERT, 1)],
                "flood mode off",
            );
        }
    });
}

#[test]
fn replies_need_no_flow_entry_unless_to_this_host() {
    run_lab(&config(10.0), None, |lab| {
        let c = open(lab, "198.18.16.11", 40004);
        lab.remove_flow(&c.key);
        // Evicted (or forwarded by another host): still reverse-NATed.
        let reply = c.backend_sends(Tcp::Ack);
        let r = expect(
            lab,
            &reply,
            c.side as usize,
            XDP_REDIRECT,
            false,
            &[(reason::FWD_REDIRECT, 1), (reason::REPLY_NO_FLOW_NAT, 1)],
            "reply without an entry",
        );
        let to_client = Rewrite {
            src: Some(v4(VIP4)),
            ttl_dec: true,
            macs: Some((mac_nbr(0), mac_lb(0))),
            ..Rewrite::default()
        };
        assert_rewritten(&r.out, &reply, to_client, "reply without an entry");
        assert!(lab.flow(&c.key).is_none(), "a reply never creates an entry");
        // The client's next packet is decided the same way and remembered.
        let ack = c.client_sends(Tcp::Ack);
        let r = from_client(
            lab,
            &ack,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_INSERT, 1)],
            "client packet after eviction",
        );
        assert_rewritten(
            &r.out,
            &ack,
            to_backend(c.backend),
            "same backend after eviction",
        );
        // To one of this host's own addresses: the host's own connection.
        let own = tcp(
            c.side,
            c.backend,
            80,
            v4(&format!("198.18.{}.1", c.side)),
            51000,
            Tcp::SynAck,
        );
        expect(
            lab,
            &own,
            c.side as usize,
            XDP_PASS,
            true,
            &[(reason::PASS_REPLY_NO_FLOW, 1)],
            "probe reply to this host",
        );
        // IPv6 too.
        let (c6, vip6) = (v6("2001:db8:16::9"), v6(VIP6));
        let key6 = flow_key(c6, 40005, vip6, 80, PROTO_TCP);
        let (_, b6, _) = forward_one(
            lab,
            "web6",
            &tcp(0, c6, 40005, vip6, 80, Tcp::Syn),
            &key6,
            true,
        );
        lab.remove_flow(&key6);
        let s6 = backend_side(b6);
        let reply6 = tcp(s6, b6, 80, c6, 40005, Tcp::Ack);
        expect(
            lab,
            &reply6,
            s6 as usize,
            XDP_REDIRECT,
            false,
            &[(reason::FWD_REDIRECT, 1), (reason::REPLY_NO_FLOW_NAT, 1)],
            "IPv6 reply without an entry",
        );
        let own6 = tcp(
            s6,
            b6,
            80,
            v6(&format!("2001:db8:{s6}::1")),
            51000,
            Tcp::SynAck,
        );
        expect(
            lab,
            &own6,
            s6 as usize,
            XDP_PASS,
            true,
            &[(reason::PASS_REPLY_NO_FLOW, 1)],
            "IPv6 probe reply to this host",
        );
    });
}

/// `rollout finish`'s apply (stable = the old canary, canary emptied, the
/// old stable pool draining) keeps every open connection: a former canary
/// connection keeps its entry's backend (its id is per address), and a
/// draining backend's reply is still NATed back to the VIP; new
/// connections go to the new stable pool only, a canary override too.
/// Once the drain is gone its replies are no longer ours.
#[test]
fn a_finished_release_keeps_open_connections_on_their_backends() {
    run_lab(&config(100.0), None, |lab| {
        let vip = v4(VIP4);
        let (b1, b3) = (v4(LAB_STABLE_V4[0]), v4(LAB_CANARY_V4));
        let (id1, id3) = (lab.backend_id("web", b1), lab.backend_id("web", b3));
        // At weight 100 a connection goes to the canary b3.
        let c = open(lab, "198.18.16.20", 41000);
        assert_eq!((c.backend, lab.flow(&c.key).unwrap().version), (b3, 1));
        // An older connection on the stable b1, planted (weight 100 sends
        // no new one there).
        let old_key = flow_key(v4("198.18.16.21"), 41001, vip, 80, PROTO_TCP);
        let mut e = lab.flow(&c.key).unwrap();
        e.backend_id = id1;
        e.version = VERSION_STABLE as u16;
        e.flags = FLOW_REPLIED;
        lab.set_flow(&old_key, e);

        // The finish's config.
        let mut next = lab.config.clone();
        let web = next.services.iter_mut().find(|s| s.name == "web").unwrap();
        web.draining = web.stable.clone();
        web.stable = vec![b3];
        web.canary.clear();
        web.set_weight(canary_common::weight::WeightBp::ZERO);
        lab.apply_config(next.clone());

        assert_eq!(lab.backend_id("web", b3), id3, "b3 keeps its id");
        assert_eq!(
            lab.backend_id("web", b1),
            id1,
            "a draining backend keeps its id"
        );
        let state = lab.dp().maps().services.get(&lab.sid("web"), 0).unwrap();
        assert_eq!(
            state.pool_size,
            [1, 0],
            "draining backends get no Maglev slot"
        );
        assert_eq!(state.weight_bp, 0);

        // The former canary connection: a flow hit, same backend.
        c.client_redirected(
            lab,
            Tcp::Ack,
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_HIT, 1)],
            "ACK of a former canary connection",
        );
        let kept = lab.flow(&c.key).unwrap();
        assert_eq!((kept.backend_id, kept.version), (id3, 1), "entry unchanged");
        let to_client = Rewrite {
            src: Some(vip),
            ttl_dec: true,
            macs: Some((mac_nbr(0), mac_lb(0))),
            ..Rewrite::default()
        };
        let reply = c.backend_sends(Tcp::Ack);
        let r = expect(
            lab,
            &reply,
            c.side as usize,
            XDP_REDIRECT,
            false,
            &[(reason::FWD_REDIRECT, 1)],
            "b3's reply",
        );
        assert_rewritten(&r.out, &reply, to_client, "b3's reply");

        // The draining b1: its client still reaches it, its reply is NATed.
        let old_syn_side = backend_side(b1);
        from_client(
            lab,
            &tcp(0, v4("198.18.16.21"), 41001, vip, 80, Tcp::Ack),
            &[(reason::FWD_REDIRECT, 1), (reason::FLOW_HIT, 1)],
            "ACK to a draining backend",
        );
        let reply1 = tcp(old_syn_side, b1, 80, v4("198.18.16.21"), 41001, Tcp::Ack);
        let r = expect(
            lab,
            &reply1,
            old_syn_side as usize,
            XDP_REDIRECT,
            false,
            &[(reason::FWD_REDIRECT, 1)],
            "a draining backend's reply",
        );
        assert_rewritten(&r.out, &reply1, to_client, "a draining backend's reply");

        // New connections: the new stable pool, an override forcing canary
        // too (the canary pool is empty: written as stable).
        for (client, port, extra) in [
            ("198.18.16.22", 41002, None),
            ("198.18.24.5", 41003, Some((reason::OVERRIDE_HIT, 1))),
        ] {
            let key = flow_key(v4(client), port, vip, 80, PROTO_TCP);
            let mut counts = vec![(reason::FWD_REDIRECT, 1)];
            counts.extend(extra);
            let (_, backend, version) = forward_expect(
                lab,
                "web",
                &tcp(0, v4(client), port, vip, 80, Tcp::Syn),
                &key,
                true,
                XDP_REDIRECT,
                &counts,
                &format!("new SYN from {client}"),
            );
            assert_eq!((backend, version), (b3, VERSION_STABLE), "{client}");
        }

        // The drain ends: b1's replies are no longer NATed.
        let web = next.services.iter_mut().find(|s| s.name == "web").unwrap();
        web.draining.clear();
        lab.apply_config(next);
        expect(
            lab,
            &reply1,
            old_syn_side as usize,
            XDP_PASS,
            true,
            &[(reason::PASS_NOT_VIP, 1)],
            "b1's reply after the drain",
        );
    });
}
