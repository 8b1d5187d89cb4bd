//! Leftovers of crashed runs: namespaces, pins, etcd members and their data
//! named `cnry-<pid>-...` whose process is gone. Names of live processes
//! are never touched.

use std::process::Command;

fn owner_alive(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("cnry-") else {
        return true;
    };
    match rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => std::path::Path::new(&format!("/proc/{pid}")).exists(),
        None => true,
    }
}

pub fn leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with("cnry-") && !owner_alive(name) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf/canary") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("cnry-") && !owner_alive(&name) {
                let _ = canary_userspace::dataplane::remove_pins(&e.path());
            }
        }
    }
    etcd_leftovers();
}

/// etcd members of a crashed fleet run (killed by pid; their token is the
/// run's `cnry-<pid>-...` id) and their data dirs. The member outlives its
/// deleted namespace, so the namespace sweep above does not end it.
fn etcd_leftovers() {
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            if args.first() != Some(&crate::etcd::ETCD_BIN.as_bytes()) {
                continue;
            }
            let token = args
                .windows(2)
                .find(|w| w[0] == b"--initial-cluster-token")
                .map(|w| String::from_utf8_lossy(w[1]).to_string());
            if token.is_some_and(|t| t.starts_with("cnry-") && !owner_alive(&t)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(crate::etcd::data_root()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("cnry-") && name.ends_with(".etcd") && !owner_alive(&name) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
