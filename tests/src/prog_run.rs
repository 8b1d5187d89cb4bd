//! `BPF_PROG_TEST_RUN` for XDP: the `xdp_md` context, one run with exact
//! inputs, and the run most callers want (ctx naming the ingress interface,
//! falling back to none once on a kernel that refuses it).

use anyhow::Result;
use aya::programs::{TestRun, TestRunOptions, Xdp};
use std::sync::atomic::{AtomicU8, Ordering};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

const XDP_NAMES: [&str; 5] = ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"];

/// `XDP_PASS` and friends, by value.
pub fn action_name(a: u32) -> String {
    format!("XDP_{}", XDP_NAMES.get(a as usize).copied().unwrap_or("?"))
}

/// 0 unknown, 1 the kernel accepts an `xdp_md` ctx, 2 it does not.
static CTX_SUPPORT: AtomicU8 = AtomicU8::new(0);

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
    /// The kernel's mean time per repetition.
    pub duration_ns: u64,
}

/// The 24-byte `struct xdp_md` the kernel takes as `ctx_in` for XDP. The
/// kernel wants `data_end` = the input length and `data` = the length of
/// the metadata in front of the frame (a multiple of 4, at most 32; usually 0).
pub fn xdp_md(meta_len: usize, len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let words = [meta_len as u32, len as u32, 0, ingress_ifindex, 0, 0];
    let mut b = [0u8; 24];
    for (i, w) in words.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    b
}

/// One `BPF_PROG_TEST_RUN` with exactly these inputs. The output holds the
/// metadata (if any) followed by the frame.
pub fn test_run_raw(
    prog: &Xdp,
    data_in: &[u8],
    ctx: Option<&[u8; 24]>,
    repeat: u32,
) -> Result<Run> {
    let mut out = vec![0u8; data_in.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(data_in),
        data_out: Some(&mut out),
        ctx_in: ctx.map(|c| &c[..]),
        ctx_out: None,
        repeat,
        ..TestRunOptions::new()
    };
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok(Run {
        action: r.return_value,
        out,
        duration_ns: r.duration.as_nanos() as u64,
    })
}

/// Runs `prog` once (or `repeat` times on the same buffer) on `pkt` as if it
/// arrived on `ingress_ifindex`. Uses an `xdp_md` ctx when the kernel takes
/// one, else none (then the ingress device is the namespace's loopback).
pub fn test_run(prog: &Xdp, pkt: &[u8], ingress_ifindex: u32, repeat: u32) -> Result<Run> {
    let ctx = xdp_md(0, pkt.len(), ingress_ifindex);
    match CTX_SUPPORT.load(Ordering::Relaxed) {
        1 => test_run_raw(prog, pkt, Some(&ctx), repeat),
        2 => test_run_raw(prog, pkt, None, repeat),
        _ => match test_run_raw(prog, pkt, Some(&ctx), repeat) {
            Ok(r) => {
                CTX_SUPPORT.store(1, Ordering::Relaxed);
                Ok(r)
            }
            Err(e) => {
                // Maybe this kernel refuses the ctx, maybe it refuses this
                // packet: try without to find out.
                let r = test_run_raw(prog, pkt, None, repeat).map_err(|e2| {
                    anyhow::anyhow!("test run failed with ctx ({e:#}) and without ({e2:#})")
                })?;
                eprintln!("NOTE: the kernel refused an xdp_md ctx ({e:#}); running without");
                CTX_SUPPORT.store(2, Ordering::Relaxed);
                Ok(r)
            }
        },
    }
}

/// Whether the kernel took the `xdp_md` ctx (known after the first run).
pub fn ctx_supported() -> bool {
    CTX_SUPPORT.load(Ordering::Relaxed) == 1
}
