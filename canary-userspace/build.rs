//! Embeds the XDP object built by `cargo xtask build-ebpf`, so `canaryd` is a
//! single file. Without the object (a plain `cargo check` or clippy) an empty
//! placeholder is embedded and `canaryd` says how to build it properly.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = manifest.join("../canary-ebpf/target/bpfel-unknown-none/release/canary");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("canary.bpf.o");
    println!("cargo:rerun-if-changed={}", object.display());
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => fs::write(&out, []).unwrap(),
    }
}
