//! A flow entry's life, as pure functions both sides share: the XDP program
//! moves an entry along as packets pass and treats an expired one as gone;
//! canaryd's sweep removes expired entries with the same rule.
//!
//! TCP: decided on the client's first packet (a SYN, or the handshake ACK
//! in flood mode), `REPLIED` once the backend answers, closing after a FIN
//! from each side or a RST from either. Each state has its own idle timeout
//! (`FlowTimeouts`); a SYN on a closing entry is a new connection reusing
//! the 5-tuple and is decided afresh. UDP: `udp` until the backend answers,
//! then `udp_replied`.

use crate::maps::{FlowState, FlowTimeouts, PROTO_TCP};

/// Seconds of CLOCK_MONOTONIC from its nanoseconds, as the data path counts
/// them (the clock of `FlowState::last_seen`): `ns / 10^9` by a multiply
/// and shifts, since a division is a real `div` per packet in BPF. The
/// factor is 2^50 / 10^9 rounded (1,125,899.9), so it runs ahead of the
/// true second by 1 in 12 million (under a second in 4 months of uptime);
/// canaryd reads time through this same function, so both sides agree.
#[inline(always)]
pub const fn clock_secs(ns: u64) -> u32 {
    ((ns >> 20).wrapping_mul(1_125_900) >> 30) as u32
}

/// The backend has sent a packet on this connection.
pub const FLOW_REPLIED: u16 = 1;
/// The client sent a FIN.
pub const FLOW_FIN_CLIENT: u16 = 2;
/// The backend sent a FIN.
pub const FLOW_FIN_BACKEND: u16 = 4;
/// Either side sent a RST (the backend's is counted once as a health
/// signal).
pub const FLOW_RST: u16 = 8;
/// The backend's RST was counted (one per connection, however many).
pub const FLOW_RST_COUNTED: u16 = 16;
/// The client acknowledged the handshake, and no backend packet came
/// through this host: in a fleet the backend's replies may return through
/// another host (ECMP), while the client's packets always come here. The
/// handshake is answered; the backend's FIN is not seen here.
pub const FLOW_CLIENT_ACKED: u16 = 32;
/// The connection is judged (see `Signals`): its backend's RST or ICMP
/// port unreachable counts against its version.
pub const FLOW_JUDGED: u16 = 64;
/// The backend's ICMP port unreachable was counted (once per flow).
pub const FLOW_UNREACH_COUNTED: u16 = 128;

/// Defaults in seconds. TCP established: RFC 5382's minimum for an idle
/// established connection (2 h 4 min); handshake as conntrack's SYN_SENT
/// (120 s); closing as conntrack's CLOSE (10 s); UDP as conntrack's
/// unreplied (30 s) and stream (120 s) timeouts.
pub const DEFAULT_TIMEOUTS: FlowTimeouts = FlowTimeouts {
    tcp_established: 7440,
    tcp_handshake: 120,
    tcp_closing: 10,
    udp: 30,
    udp_replied: 120,
};

impl Default for FlowTimeouts {
    fn default() -> Self {
        DEFAULT_TIMEOUTS
    }
}

/// TCP flags that move a flow along.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tcp {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

impl Tcp {
    /// A SYN without ACK: a client opening a connection.
    #[inline(always)]
    pub const fn bare_syn(&self) -> bool {
        self.syn && !self.ack
    }
}

/// FIN both ways, or a RST: the connection is over.
#[inline(always)]
pub const fn closing(flags: u16) -> bool {
    flags & FLOW_RST != 0
        || flags & (FLOW_FIN_CLIENT | FLOW_FIN_BACKEND) == (FLOW_FIN_CLIENT | FLOW_FIN_BACKEND)
}

#[inline(always)]
const fn or_default(v: u32, default: u32) -> u32 {
    if v == 0 {
        default
    } else {
        v
    }
}

/// The idle timeout (seconds) of an entry of protocol `proto` with `flags`.
#[inline(always)]
pub const fn timeout(proto: u8, flags: u16, t: &FlowTimeouts) -> u32 {
    let d = DEFAULT_TIMEOUTS;
    if proto == PROTO_TCP {
        if closing(flags) {
            or_default(t.tcp_closing, d.tcp_closing)
        } else if flags & FLOW_REPLIED != 0 {
            or_default(t.tcp_established, d.tcp_established)
        } else if flags & FLOW_CLIENT_ACKED != 0 {
            // The backend's side is not seen here: the client's FIN is the
            // only sign of the end.
            if flags & FLOW_FIN_CLIENT != 0 {
                or_default(t.tcp_closing, d.tcp_closing)
            } else {
                or_default(t.tcp_established, d.tcp_established)
            }
        } else {
            or_default(t.tcp_handshake, d.tcp_handshake)
        }
    } else if flags & FLOW_REPLIED != 0 {
        or_default(t.udp_replied, d.udp_replied)
    } else {
        or_default(t.udp, d.udp)
    }
}

/// Has this entry been idle past its timeout at `now_s`?
#[inline(always)]
pub const fn expired(state: &FlowState, proto: u8, now_s: u32, t: &FlowTimeouts) -> bool {
    now_s.wrapping_sub(state.last_seen) > timeout(proto, state.flags, t)
}

/// Is the entry still this connection's, for a client packet with TCP
/// flags `tcp` at `now_s`? Not when it expired, nor when a bare SYN comes
/// on a closing entry (the client reuses the 5-tuple for a new connection).
#[inline(always)]
pub const fn still_valid(
    state: &FlowState,
    proto: u8,
    tcp: &Tcp,
    now_s: u32,
    t: &FlowTimeouts,
) -> bool {
    if expired(state, proto, now_s, t) {
        return false;
    }
    !(proto == PROTO_TCP && tcp.bare_syn() && closing(state.flags))
}

/// The flags after a client's packet.
#[inline(always)]
pub const fn after_client(flags: u16, tcp: &Tcp) -> u16 {
    let mut f = flags;
    if tcp.fin {
        f |= FLOW_FIN_CLIENT;
    }
    if tcp.rst {
        f |= FLOW_RST;
    }
    f
}

/// The flags after a backend's packet.
#[inline(always)]
pub const fn after_backend(flags: u16, tcp: &Tcp) -> u16 {
    let mut f = flags | FLOW_REPLIED;
    if tcp.fin {
        f |= FLOW_FIN_BACKEND;
    }
    if tcp.rst {
        f |= FLOW_RST;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::PROTO_UDP;

    const FIN: Tcp = Tcp {
        syn: false,
        ack: true,
        fin: true,
        rst: false,
    };
    const RST: Tcp = Tcp {
        syn: false,
        ack: false,
        fin: false,
        rst: true,
    };
    const SYN: Tcp = Tcp {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
    };
    const ACK: Tcp = Tcp {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
    };

    fn entry(flags: u16, last_seen: u32) -> FlowState {
        FlowState {
            flags,
            last_seen,
            ..Default::default()
        }
    }

    #[test]
    fn clock_secs_tracks_the_second() {
        for s in [0u64, 1, 59, 3600, 86_400, 10_000_000] {
            let ns = s * 1_000_000_000;
            let got = clock_secs(ns + 500_000_000) as u64;
            // Runs ahead by 1 in 12 million: at most one second off here.
            assert!(got == s || got == s + 1, "{s} s -> {got}");
        }
        assert_eq!(clock_secs(999_000_000), 0);
        assert_eq!(clock_secs(1_001_000_000), 1);
        // 31 years of uptime: 83 s ahead (1 in 12 million), no overflow.
        let got = clock_secs(1_000_000_000 * 1_000_000_000) as u64;
        assert!((1_000_000_000..1_000_000_100).contains(&got), "{got}");
    }

    #[test]
    fn closing_needs_fin_both_ways_or_a_rst() {
        let d = DEFAULT_TIMEOUTS;
        let f = after_client(0, &ACK);
        let f = after_backend(f, &ACK);
        assert_eq!(timeout(PROTO_TCP, f, &d), d.tcp_established);
        let f = after_client(f, &FIN);
        assert!(!closing(f), "half-closed is still open");
        assert_eq!(timeout(PROTO_TCP, f, &d), d.tcp_established);
        let f = after_backend(f, &FIN);
        assert!(closing(f));
        assert_eq!(timeout(PROTO_TCP, f, &d), d.tcp_closing);
        assert!(closing(after_backend(FLOW_REPLIED, &RST)));
        assert!(closing(after_client(0, &RST)));
    }

    #[test]
    fn a_flow_whose_replies_return_elsewhere_lives_by_the_clients_packets() {
        let d = DEFAULT_TIMEOUTS;
        // Handshake acknowledged by the client, no backend packet here.
        let f = FLOW_CLIENT_ACKED;
        assert_eq!(timeout(PROTO_TCP, f, &d), d.tcp_established);
        // The client's FIN is the only end this host sees.
        let f = after_client(f, &FIN);
        assert_eq!(timeout(PROTO_TCP, f, &d), d.tcp_closing);
        // Where the backend's packets are seen, a half-close stays open.
        let f = after_client(FLOW_REPLIED | FLOW_CLIENT_ACKED, &FIN);
        assert_eq!(timeout(PROTO_TCP, f, &d), d.tcp_established);
    }

    #[test]
    fn unanswered_flows_time_out_sooner() {
        let d = DEFAULT_TIMEOUTS;
        assert_eq!(timeout(PROTO_TCP, 0, &d), d.tcp_handshake);
        assert_eq!(timeout(PROTO_UDP, 0, &d), d.udp);
        assert_eq!(timeout(PROTO_UDP, FLOW_REPLIED, &d), d.udp_replied);
    }

    #[test]
    fn expiry_is_strictly_after_the_timeout_and_survives_wrap() {
        let t = FlowTimeouts {
            udp: 5,
            ..DEFAULT_TIMEOUTS
        };
        let e = entry(0, 100);
        assert!(!expired(&e, PROTO_UDP, 105, &t));
        assert!(expired(&e, PROTO_UDP, 106, &t));
        let e = entry(0, u32::MAX - 1);
        assert!(!expired(&e, PROTO_UDP, 2, &t));
        assert!(expired(&e, PROTO_UDP, 5, &t));
    }

    #[test]
    fn zero_timeouts_take_the_defaults() {
        let zero = FlowTimeouts {
            tcp_established: 0,
            tcp_handshake: 0,
            tcp_closing: 0,
            udp: 0,
            udp_replied: 0,
        };
        assert_eq!(
            timeout(PROTO_TCP, FLOW_REPLIED, &zero),
            DEFAULT_TIMEOUTS.tcp_established
        );
        assert_eq!(timeout(PROTO_UDP, 0, &zero), DEFAULT_TIMEOUTS.udp);
    }

    #[test]
    fn a_syn_reopens_only_a_closing_entry() {
        let d = DEFAULT_TIMEOUTS;
        let open = entry(FLOW_REPLIED, 10);
        assert!(
            still_valid(&open, PROTO_TCP, &SYN, 11, &d),
            "a retransmitted SYN keeps its backend"
        );
        let closed = entry(FLOW_REPLIED | FLOW_RST, 10);
        assert!(!still_valid(&closed, PROTO_TCP, &SYN, 11, &d));
        assert!(
            still_valid(&closed, PROTO_TCP, &ACK, 11, &d),
            "the last ACKs still find it"
        );
        assert!(!still_valid(
            &closed,
            PROTO_TCP,
            &ACK,
            10 + d.tcp_closing + 1,
            &d
        ));
    }
}
