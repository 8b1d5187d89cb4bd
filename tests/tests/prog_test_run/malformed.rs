//! Malformed and truncated shapes: one table of shape -> (action, reason),
//! one assert for all of them (`expect`, plus "nothing counted as
//! forwarded"), then the lengths the kernel refuses to run at all.

use super::*;

/// The well-formed frames every shape is cut or mangled from.
struct Base {
    client: IpAddr,
    syn4: Vec<u8>,
    syn6: Vec<u8>,
    ack4: Vec<u8>,
    udp4: Vec<u8>,
}

impl Base {
    fn new() -> Base {
        let client = v4("198.18.16.9");
        let c6 = v6("2001:db8:16::9");
        Base {
            client,
            syn4: tcp(0, client, 40000, v4(VIP4), 80, Tcp::Syn),
            syn6: tcp(0, c6, 40000, v6(VIP6), 80, Tcp::Syn),
            ack4: tcp(0, client, 40000, v4(VIP4), 80, Tcp::Ack),
            udp4: udp(0, client, 5353, v4(VIP_UDP), 53, b"0123456789", false),
        }
    }
}

/// `f` with the IPv4 header at 14 mangled by `m`, its checksum fixed after,
/// so the shape is malformed only in the way its row says.
fn v4_mangled(f: &[u8], m: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut p = f.to_vec();
    m(&mut p);
    fix_ipv4_csum(&mut p, 14);
    p
}

type Shape = fn(&Base) -> Vec<u8>;

/// (shape, how to build it, action, the one DATAPATH_STATS reason it moves).
const SHAPES: &[(&str, Shape, u32, u32)] = &[
    (
        "802.1Q tag truncated",
        |b| {
            let mut p = b.syn4[..14].to_vec();
            p[12..14].copy_from_slice(&[0x81, 0x00]);
            p.extend_from_slice(&[0x00, 0x64]);
            p
        },
        XDP_PASS,
        reason::PASS_MALFORMED,
    ),
    (
        "IPv4 header truncated",
        |b| b.syn4[..14 + 12].to_vec(),
        XDP_PASS,
        reason::PASS_MALFORMED,
    ),
    (
        "IPv4 version 5",
        |b| v4_mangled(&b.syn4, |p| p[14] = 0x55),
        XDP_PASS,
        reason::PASS_MALFORMED,
    ),
    (
        "IPv4 IHL 4",
        |b| v4_mangled(&b.syn4, |p| p[14] = 0x44),
        XDP_PASS,
        reason::PASS_MALFORMED,
    ),
    (
        // 4 bytes of options (NOPs + EOL).
        "IPv4 options to the VIP",
        |b| {
            let mut p = b.syn4[..34].to_vec();
            p.extend_from_slice(&[1, 1, 1, 0]);
            p.extend_from_slice(&b.syn4[34..]);
            v4_mangled(&p, |p| {
                p[14] = 0x46;
                set_u16(p, 16, (b.syn4.len() - 14 + 4) as u16);
            })
        },
        XDP_DROP,
        reason::DROP_IP_OPTIONS,
    ),
    (
        "first fragment (MF) to the VIP",
        |b| v4_mangled(&b.ack4, |p| set_u16(p, 20, 0x2000)), // MF, offset 0
        XDP_DROP,
        reason::DROP_FRAGMENT,
    ),
    (
        "later fragment to the VIP",
        |b| v4_mangled(&b.ack4, |p| set_u16(p, 20, 185)), // offset 1480, last
        XDP_DROP,
        reason::DROP_FRAGMENT,
    ),
    (
        "middle fragment to the UDP VIP",
        |b| v4_mangled(&b.udp4, |p| set_u16(p, 20, 0x2000 | 3)),
        XDP_DROP,
        reason::DROP_FRAGMENT,
    ),
    (
        "IPv4 total length > frame",
        |b| {
            v4_mangled(&b.syn4, |p| {
                set_u16(p, 16, (b.syn4.len() - 14 + 100) as u16)
            })
        },
        XDP_DROP,
        reason::DROP_MALFORMED,
    ),
    (
        "IPv4 total length < IP + TCP header",
        |b| v4_mangled(&b.syn4, |p| set_u16(p, 16, 20 + 10)),
        XDP_DROP,
        reason::DROP_MALFORMED,
    ),
    (
        "TCP header truncated (lengths agree)",
        |b| v4_mangled(&b.syn4[..14 + 20 + 10], |p| set_u16(p, 16, 20 + 10)),
        XDP_DROP,
        reason::DROP_MALFORMED,
    ),
    (
        "TCP header truncated (frame cut)",
        |b| b.syn4[..14 + 20 + 10].to_vec(),
        XDP_DROP,
        reason::DROP_MALFORMED,
    ),
    (
        "UDP header truncated",
        |b| v4_mangled(&b.udp4[..14 + 20 + 4], |p| set_u16(p, 16, 20 + 4)),
        XDP_DROP,
        reason::DROP_MALFORMED,
    ),
    (
        "IPv6 header truncated",
        |b| b.syn6[..14 + 30].to_vec(),
        XDP_PASS,
        reason::PASS_MALFORMED,
    ),
    (
        "IPv6 ethertype, IP version 4",
        |b| {
            let mut p = b.syn6.clone();
            p[14] = 0x40;
            p
        },
        XDP_PASS,
        reason::PASS_MALFORMED,
    ),
    (
        // Hop-by-hop options header (8 bytes: next = TCP, len 0, PadN 4).
        "IPv6 hop-by-hop to the VIP",
        |b| {
            let mut p = b.syn6[..54].to_vec();
            p.extend_from_slice(&[PROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
            p.extend_from_slice(&b.syn6[54..]);
            p[14 + 6] = 0;
            set_u16(&mut p, 18, (b.syn6.len() - 54 + 8) as u16);
            p
        },
        XDP_DROP,
        reason::DROP_IPV6_EXT,
    ),
    (
        "IPv6 fragment header to the VIP",
        |b| {
            let mut p = b.syn6.clone();
            p[14 + 6] = 44;
            p
        },
        XDP_DROP,
        reason::DROP_IPV6_EXT,
    ),
    (
        // A protocol that is not an extension header (GRE) is not split,
        // and passed like its IPv4 twin, not dropped.
        "IPv6 GRE to the VIP address",
        |b| {
            let mut p = b.syn6.clone();
            p[14 + 6] = 47;
            p
        },
        XDP_PASS,
        reason::PASS_NOT_VIP,
    ),
    (
        "IPv6 payload length > frame",
        |b| {
            let mut p = b.syn6.clone();
            set_u16(&mut p, 18, (b.syn6.len() - 54 + 100) as u16);
            p
        },
        XDP_DROP,
        reason::DROP_MALFORMED,
    ),
    (
        "IPv6 TCP header truncated",
        |b| {
            let mut p = b.syn6[..54 + 8].to_vec();
            set_u16(&mut p, 18, 8);
            p
        },
        XDP_DROP,
        reason::DROP_MALFORMED,
    ),
    // The same shapes not addressed to a VIP are none of our business.
    (
        "fragment to a non-VIP",
        |b| {
            let p = tcp(0, b.client, 40000, v4("198.18.100.9"), 80, Tcp::Ack);
            v4_mangled(&p, |p| set_u16(p, 20, 0x2000))
        },
        XDP_PASS,
        reason::PASS_NOT_VIP,
    ),
    (
        "bad length to a non-VIP",
        |b| {
            let p = tcp(0, b.client, 40000, v4("198.18.100.9"), 80, Tcp::Syn);
            v4_mangled(&p, |p| set_u16(p, 16, 200))
        },
        XDP_PASS,
        reason::PASS_NOT_VIP,
    ),
    // The shortest frames the kernel runs: a bare 14-byte Ethernet header
    // with an IPv4, IPv6 or 802.1Q type and nothing after it.
    (
        "bare Ethernet header, IPv4",
        |b| bare_ethernet(b, [0x08, 0x00]),
        XDP_PASS,
        reason::PASS_MALFORMED,
    ),
    (
        "bare Ethernet header, IPv6",
        |b| bare_ethernet(b, [0x86, 0xdd]),
        XDP_PASS,
        reason::PASS_MALFORMED,
    ),
    (
        "bare Ethernet header, 802.1Q",
        |b| bare_ethernet(b, [0x81, 0x00]),
        XDP_PASS,
        reason::PASS_MALFORMED,
    ),
];

fn bare_ethernet(b: &Base, ethertype: [u8; 2]) -> Vec<u8> {
    let mut p = b.syn4[..14].to_vec();
    p[12..14].copy_from_slice(&ethertype);
    p
}

#[test]
fn malformed_and_truncated_shapes() {
    run_lab(&config(10.0), None, |lab| {
        let base = Base::new();
        let services = ["web", "dns", "web6"];
        for &(what, shape, action, why) in SHAPES {
            let pkt = shape(&base);
            let vs0: Vec<_> = services.iter().map(|s| both(lab, s)).collect();
            expect(lab, &pkt, 0, action, action == XDP_PASS, &[(why, 1)], what);
            let vs1: Vec<_> = services.iter().map(|s| both(lab, s)).collect();
            assert_eq!(vs0, vs1, "{what}: nothing counted as forwarded");
        }

        // Frames shorter than an Ethernet header cannot reach the program
        // through BPF_PROG_TEST_RUN: the kernel refuses inputs under 14
        // bytes, with or without a ctx, and also a frame under 14 bytes put
        // behind XDP metadata (xdp_md.data > 0). The shortest frames it runs
        // are the bare Ethernet headers of the table.
        let syn4 = &base.syn4;
        let prog = lab.dp().program().unwrap();
        let dp0 = lab.datapath();
        for len in [0usize, 1, 13] {
            assert!(
                test_run_raw(prog, &syn4[..len], None, 1).is_err(),
                "{len} bytes"
            );
            let ctx = xdp_md(0, len, lab.ifindex[0]);
            assert!(
                test_run_raw(prog, &syn4[..len], Some(&ctx), 1).is_err(),
                "{len} bytes"
            );
            let mut data = vec![0u8; 4];
            data.extend_from_slice(&syn4[..len.max(10)]);
            let ctx = xdp_md(4, data.len(), lab.ifindex[0]);
            assert!(
                test_run_raw(prog, &data, Some(&ctx), 1).is_err(),
                "{len} bytes + meta"
            );
        }
        assert_reasons(&dp0, &lab.datapath(), &[], "refused runs");

        // No flow was created by any of them.
        let (client, c6) = (base.client, v6("2001:db8:16::9"));
        assert!(lab
            .flow(&flow_key(client, 40000, v4(VIP4), 80, PROTO_TCP))
            .is_none());
        assert!(lab
            .flow(&flow_key(c6, 40000, v6(VIP6), 80, PROTO_TCP))
            .is_none());
        assert!(lab
            .flow(&flow_key(client, 5353, v4(VIP_UDP), 53, PROTO_UDP))
            .is_none());
    });
}
