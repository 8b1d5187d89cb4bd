//! The forward path, one for both families: a client -> VIP packet is
//! decided, rewritten toward its backend (DNAT), sent on, its decision
//! remembered and its traffic counted for its version and backend.

use crate::classify::Packet;
use crate::clock;
use crate::decide::{decide, remember};
use crate::family::IpHdr;
use crate::judge::{self, Opening};
use crate::outcome::Outcome;
use crate::{health, icmp, nat, route, stats};
use aya_ebpf::programs::XdpContext;
use canary_common::{reason, FlowKey, VipInfo};

#[inline(always)]
pub fn forward<H: IpHdr, const L3: usize>(
    ctx: &XdpContext,
    pkt: &Packet<H>,
    vip: &VipInfo,
) -> Outcome {
    let flow = FlowKey::new(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, H::FAMILY);
    // Never None (see clock::now); the stack is the harmless answer.
    let Some(now) = clock::now() else {
        return Outcome::pass(reason::PASS_TO_STACK);
    };
    let tcp = health::tcp_flags(ctx, pkt.l4, pkt.proto);
    let opening = judge::opening::<H>(ctx, pkt, &tcp);
    if opening == Opening::Bad {
        return Outcome::drop(reason::DROP_BAD_CHECKSUM);
    }
    let mut target = match decide(&flow, vip, &tcp, &now) {
        Ok(t) => t,
        Err(outcome) => return outcome,
    };
    let backend = H::addr(&target.addr);
    if nat::dnat::<H>(ctx, pkt.ip, pkt.l4, pkt.proto, &pkt.dst, &backend).is_none() {
        return Outcome::drop(reason::DROP_MALFORMED);
    }
    let routed = route::send::<H, L3>(ctx, pkt.ip, pkt.proto, pkt.sport, pkt.dport, target.cached);
    // Too big for the backend's route: answered from the VIP, quoting the
    // packet as the client sent it (the DNAT undone). Not forwarded, so
    // not judged, remembered nor counted (the smaller retry is decided
    // and judged alike). Verifier: before `remember`, where fewer states
    // reach it.
    if routed.too_big != 0 {
        let (ip, l4, proto, mtu) = (pkt.ip, pkt.l4, pkt.proto, routed.too_big);
        if let Some(answer) = icmp::too_big::<H, L3>(ctx, ip, l4, proto, &flow.dst, false, mtu) {
            return answer;
        }
    }
    // Not answered here: judged now (`note_opening` sets the flags
    // `remember` stores).
    health::note_opening(&tcp, opening, &flow, &mut target, now.secs);
    remember(ctx, &flow, &target, routed.learned, &now);
    if routed.outcome.delivered() {
        stats::count_forward(
            target.service_id,
            target.version,
            target.backend_id,
            pkt.frame_len as u64,
            target.new_flow(),
        );
    }
    routed.outcome
}
