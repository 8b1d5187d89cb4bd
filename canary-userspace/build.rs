//! Embeds the XDP object built by `cargo xtask build-ebpf`, so `canaryd` is a
//! single file. Without the object (a plain `cargo check` or clippy) an empty
//! placeholder is embedded and `canaryd` says how to build it properly.
//! Where the object lives is defined once, in xtask/src/ebpf_object.rs.

use std::{env, fs, path::PathBuf};

include!("../xtask/src/ebpf_object.rs");

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.join("..");
    let object = ebpf_object_path(&root);
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("canary.bpf.o");
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rerun-if-changed=../xtask/src/ebpf_object.rs");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => fs::write(&out, []).unwrap(),
    }
}
