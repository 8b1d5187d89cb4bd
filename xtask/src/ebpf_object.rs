// The one definition of where the XDP object is built and found. Read by
// xtask (`mod ebpf_object`) and by canary-userspace/build.rs (`include!`),
// which embeds the object in canaryd: change it here and both follow.
// (Plain comments: this file is `include!`d, inner doc comments would not parse.)

/// The BPF target `cargo xtask build-ebpf` builds canary-ebpf for.
pub const EBPF_TARGET: &str = "bpfel-unknown-none";

/// The XDP object relative to the workspace root.
pub fn ebpf_object_path(root: &std::path::Path) -> std::path::PathBuf {
    root.join("canary-ebpf/target")
        .join(EBPF_TARGET)
        .join("release/canary")
}
