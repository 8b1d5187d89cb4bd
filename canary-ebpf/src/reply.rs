//! The reply path, one for both families: a packet from a backend's service
//! address and port (REVERSE_NAT) gets the VIP back as its source (reverse
//! NAT), is sent on and counted; a SYN-ACK or RST is also a health signal.
//! The flow entry is not needed: a connection whose entry was evicted (or
//! that another host of the fleet forwarded) is rewritten all the same
//! (`reply_no_flow_nat`). Only a packet to one of this host's own addresses
//! (LOCAL_ADDRS: the host's health probes share the backend's address and
//! port) is passed untouched (`pass_reply_no_flow`). A reply the backend
//! fragments (or sends with IPv4 options or IPv6 extension headers) never
//! gets here and is passed untouched (`pass_not_vip`): keep the backends'
//! path MTU at or above the client side's so replies are not fragmented.
//! A reply too big for the client's route (IPv4 with DF, IPv6) is answered
//! to its backend with ICMP fragmentation needed / packet too big quoting
//! the reply as the backend sent it (`tx_icmp_too_big`, see `icmp`), so the
//! backend's path MTU discovery works toward clients.

use crate::classify::Packet;
use crate::clock;
use crate::decide::{remember_reply, valid};
use crate::family::IpHdr;
use crate::maps::{FLOWS, LOCAL_ADDRS, REVERSE_NAT};
use crate::outcome::Outcome;
use crate::stats::count;
use crate::{health, icmp, nat, route, stats};
use aya_ebpf::programs::XdpContext;
use canary_common::{reason, BackendAddrKey, FlowKey, LocalAddrKey};

/// `None`: not from a backend's service port (or not rewritable), so not a
/// reply at all; the caller passes it as not ours.
#[inline(always)]
pub fn reply<H: IpHdr, const L3: usize>(ctx: &XdpContext, pkt: &Packet<H>) -> Option<Outcome> {
    let key = BackendAddrKey::new(pkt.src, pkt.sport, pkt.proto, H::FAMILY);
    let rev = unsafe { REVERSE_NAT.get(&key) }?;
    let (service_id, version, backend_id, vip) = (
        rev.service_id,
        rev.version & 1,
        rev.backend_id,
        H::addr(&rev.vip),
    );
    // The connection as the client sent it: client -> VIP.
    let flow = FlowKey::new(pkt.dst, vip, pkt.dport, pkt.sport, pkt.proto, H::FAMILY);
    let entry = FLOWS.get_ptr_mut(&flow);
    if entry.is_none() {
        let local = LocalAddrKey {
            addr: pkt.dst,
            family: H::FAMILY as u32,
        };
        if unsafe { LOCAL_ADDRS.get(&local) }.is_some() {
            return Some(Outcome::pass(reason::PASS_REPLY_NO_FLOW));
        }
        count(reason::REPLY_NO_FLOW_NAT);
    }
    // Never None (see clock::now); the stack is the harmless answer.
    let Some(now) = clock::now() else {
        return Some(Outcome::pass(reason::PASS_TO_STACK));
    };
    let tcp = health::tcp_flags(ctx, pkt.l4, pkt.proto);
    health::note_reply(&tcp, &flow, entry, service_id, version, now.secs);
    nat::snat::<H>(ctx, pkt.ip, pkt.l4, pkt.proto, &pkt.src, &vip)?;
    let cached = match entry {
        Some(e) => valid(unsafe { core::ptr::addr_of!((*e).to_client) }, now.gen),
        None => core::ptr::null(),
    };
    let routed = route::send::<H, L3>(ctx, pkt.ip, pkt.proto, pkt.sport, pkt.dport, cached);
    // Too big for the client's route: answered to the backend, quoting its
    // packet as it sent it (the reverse NAT undone), so its path MTU
    // discovery works; not forwarded.
    if routed.too_big != 0 {
        let (ip, l4, proto, mtu) = (pkt.ip, pkt.l4, pkt.proto, routed.too_big);
        if let Some(answer) = icmp::too_big::<H, L3>(ctx, ip, l4, proto, &key.addr, true, mtu) {
            return Some(answer);
        }
    }
    if entry.is_some() {
        remember_reply(&flow, backend_id, routed.learned, now.gen);
    }
    if routed.outcome.delivered() {
        stats::count_reply(service_id, version, backend_id, pkt.frame_len as u64);
    }
    Some(routed.outcome)
}
