//! The reply path, one for both families: a packet from a backend's service
//! address and port (REVERSE_NAT) on a connection we forwarded gets the VIP
//! back as its source (reverse NAT), is sent on and counted; a SYN-ACK or
//! RST is also a health signal. From a backend's service port but not on
//! a forwarded connection (this host's own health probes):
//! passed untouched (`pass_reply_no_flow`). A reply the backend fragments
//! (or sends with IPv4 options or IPv6 extension headers) never gets here
//! and is passed untouched (`pass_not_vip`): keep the backends' path MTU at
//! or above the client side's so replies are not fragmented.

use crate::classify::Packet;
use crate::decide::{nexthop_gen, remember_reply, valid};
use crate::family::IpHdr;
use crate::maps::{FLOWS, REVERSE_NAT};
use crate::outcome::Outcome;
use crate::{health, nat, route, stats};
use aya_ebpf::programs::XdpContext;
use canary_common::{reason, BackendAddrKey, FlowKey};

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
    // Only connections we forwarded are rewritten: the host's own
    // connections to a backend (health probes) share its address and port
    // but are not ours to translate.
    let Some(entry) = FLOWS.get_ptr_mut(&flow) else {
        return Some(Outcome::pass(reason::PASS_REPLY_NO_FLOW));
    };
    health::note_reply(ctx, pkt.l4, &flow, entry, service_id, version);
    nat::snat::<H>(ctx, pkt.ip, pkt.l4, pkt.proto, &pkt.src, &vip)?;
    let gen = nexthop_gen();
    let cached = valid(unsafe { &(*entry).to_client }, gen);
    let routed = route::send::<H, L3>(ctx, pkt.ip, pkt.proto, pkt.sport, pkt.dport, cached);
    remember_reply(&flow, backend_id, routed.learned, gen);
    if routed.outcome.delivered() {
        stats::count_reply(service_id, version, backend_id, pkt.frame_len as u64);
    }
    Some(routed.outcome)
}
