//! Leftovers of crashed runs: namespaces and pins named `cnry-<pid>-...`
//! whose process is gone. Names of live processes are never touched.

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
}
