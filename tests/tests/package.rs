//! The Debian package `cargo xtask package` builds (its path in CANARY_DEB,
//! which `cargo xtask test` sets): its contents, its control fields and
//! maintainer scripts, the systemd unit (`systemd-analyze verify` where the
//! tool exists), and the binaries, man pages and default config it installs,
//! run from a throwaway root (`dpkg -x`).
//!
//! No root and no network namespaces needed; dpkg-deb is. The netns tests of
//! the unit (readiness, capabilities) are in service.rs.
//! Run: `cargo xtask package && CANARY_DEB=target/debian/canary_*.deb
//! cargo test -p canary-tests --test package -- --nocapture`.

use anyhow::{bail, ensure, Context, Result};
use canary_tests::Netns;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The .deb under test: CANARY_DEB, never skipped.
fn deb() -> PathBuf {
    let hint = "build it with `cargo xtask package` (`cargo xtask test` does, and passes \
                its path in CANARY_DEB)";
    let Some(p) = std::env::var_os("CANARY_DEB") else {
        panic!("CANARY_DEB is not set: the package tests need the .deb; {hint}");
    };
    let p = PathBuf::from(p);
    assert!(
        p.is_file(),
        "CANARY_DEB={} does not exist; {hint}",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

fn stdout(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&run(cmd)?.stdout).into_owned())
}

fn has_tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The package unpacked with `dpkg -x` into a directory removed on drop.
struct Unpacked {
    root: PathBuf,
}

impl Unpacked {
    fn new(what: &str) -> Result<Unpacked> {
        let root =
            std::env::temp_dir().join(format!("canary-pkgtest-{}-{what}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        let u = Unpacked { root };
        run(Command::new("dpkg").arg("-x").arg(deb()).arg(&u.root))?;
        Ok(u)
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Every path the operators' kit promises, with its mode.
const EXPECTED: &[(&str, &str)] = &[
    ("/usr/sbin/canaryd", "-rwxr-xr-x"),
    ("/usr/bin/canaryctl", "-rwxr-xr-x"),
    ("/usr/lib/systemd/system/canaryd.service", "-rw-r--r--"),
    ("/etc/canary/canary.yaml", "-rw-r--r--"),
    ("/usr/share/man/man8/canaryd.8.gz", "-rw-r--r--"),
    ("/usr/share/man/man1/canaryctl.1.gz", "-rw-r--r--"),
    (
        "/usr/share/man/man1/canaryctl-set-weight.1.gz",
        "-rw-r--r--",
    ),
    ("/usr/share/man/man1/canaryctl-rollout.1.gz", "-rw-r--r--"),
    (
        "/usr/share/bash-completion/completions/canaryctl",
        "-rw-r--r--",
    ),
    ("/usr/share/zsh/vendor-completions/_canaryctl", "-rw-r--r--"),
    (
        "/usr/share/fish/vendor_completions.d/canaryctl.fish",
        "-rw-r--r--",
    ),
    ("/usr/share/canary/grafana-dashboard.json", "-rw-r--r--"),
    ("/usr/share/doc/canary/README.md", "-rw-r--r--"),
];

#[test]
fn contents_list_every_promised_path() -> Result<()> {
    let listing = stdout(Command::new("dpkg-deb").arg("--contents").arg(deb()))?;
    // `-rwxr-xr-x 0/0 11425176 2026-11-30 00:00 ./usr/sbin/canaryd`
    let mut files: BTreeMap<String, (String, String, u64)> = BTreeMap::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() >= 6, "unexpected dpkg-deb line: {line}");
        let path = f[5].trim_start_matches('.').to_string();
        files.insert(path, (f[0].to_string(), f[1].to_string(), f[2].parse()?));
    }
    for (path, mode) in EXPECTED {
        let Some((m, owner, size)) = files.get(*path) else {
            bail!("{path} is not in the package; it has:\n{listing}");
        };
        ensure!(m == mode, "{path}: mode {m}, expected {mode}");
        ensure!(owner == "0/0", "{path}: owner {owner}, expected root");
        ensure!(*size > 0, "{path} is empty");
    }
    // Every visible canaryctl command has its page (generate.rs writes one
    // per command); at least the dozen there are today.
    let pages = files
        .keys()
        .filter(|p| p.starts_with("/usr/share/man/man1/canaryctl") && p.ends_with(".1.gz"))
        .count();
    ensure!(pages >= 10, "{pages} canaryctl man pages");
    // The state directory is the unit's StateDirectory=, not a package
    // path (systemd creates it with the unit's mode); nothing else in /var.
    ensure!(
        !files.keys().any(|p| p.starts_with("/var/")),
        "the package ships files under /var"
    );
    println!(
        "package: {} entries, {} man pages for canaryctl; canaryd {} bytes",
        files.len(),
        pages,
        files["/usr/sbin/canaryd"].2
    );
    Ok(())
}

#[test]
fn control_fields_and_maintainer_scripts() -> Result<()> {
    let deb = deb();
    let field = |name: &str| -> Result<String> {
        Ok(
            stdout(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name))?
                .trim()
                .to_string(),
        )
    };
    ensure!(
        field("Package")? == "canary",
        "Package: {}",
        field("Package")?
    );
    let version = field("Version")?;
    ensure!(
        version == format!("{VERSION}-1"),
        "Version: {version}, expected the workspace's {VERSION}-1"
    );
    let arch = field("Architecture")?;
    let host = stdout(Command::new("dpkg").arg("--print-architecture"))?;
    ensure!(arch == host.trim(), "Architecture {arch}, host {host}");
    let depends = field("Depends")?;
    ensure!(depends.contains("libc6"), "Depends: {depends}");
    ensure!(field("Section")? == "net", "Section: {}", field("Section")?);
    ensure!(!field("Maintainer")?.is_empty(), "no Maintainer");
    // The summary line is the crate's description (cargo-deb's placeholder
    // without one is "[generated from Rust crate ...]"), the extended one
    // says what to do first.
    let description = field("Description")?;
    let summary = description.lines().next().unwrap_or_default();
    ensure!(
        summary.contains("XDP canary splitter") && !summary.contains("generated from"),
        "Description summary: {summary:?}"
    );
    ensure!(
        description.contains("/etc/canary/canary.yaml"),
        "Description: {description}"
    );

    let info = stdout(Command::new("dpkg-deb").arg("--info").arg(&deb))?;
    for part in ["conffiles", "postinst", "prerm", "postrm"] {
        ensure!(
            info.contains(part),
            "no {part} in the control archive:\n{info}"
        );
    }
    let ctl = std::env::temp_dir().join(format!("canary-pkgtest-{}-control", std::process::id()));
    let _ = std::fs::remove_dir_all(&ctl);
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&ctl))?;
    let read = |name: &str| std::fs::read_to_string(ctl.join(name)).unwrap_or_default();
    let (conffiles, postinst, prerm) = (read("conffiles"), read("postinst"), read("prerm"));
    let _ = std::fs::remove_dir_all(&ctl);
    // An edited config survives upgrades.
    ensure!(
        conffiles.lines().any(|l| l == "/etc/canary/canary.yaml"),
        "conffiles: {conffiles}"
    );
    // Not enabled and not started on install (the example config attaches
    // to a placeholder interface); a running canaryd is restarted after an
    // upgrade (try-restart: only if it runs), not stopped before it.
    ensure!(
        postinst.contains("deb-systemd-invoke try-restart canaryd.service"),
        "postinst does not try-restart canaryd:\n{postinst}"
    );
    ensure!(
        !postinst.contains("deb-systemd-invoke start")
            && !postinst.contains("deb-systemd-invoke restart"),
        "postinst starts canaryd:\n{postinst}"
    );
    let enables = postinst
        .lines()
        .filter(|l| l.contains("deb-systemd-helper enable"))
        .count();
    let guarded = postinst.contains("was-enabled canaryd.service");
    ensure!(
        enables == 1 && guarded,
        "postinst enables canaryd other than where it was enabled before:\n{postinst}"
    );
    ensure!(
        prerm.contains("\"$1\" = remove") && prerm.contains("stop canaryd.service"),
        "prerm should stop canaryd on removal only:\n{prerm}"
    );
    println!("package: {deb:?}: canary {version} {arch}, Depends: {depends}");
    Ok(())
}

/// `key=value` lines of the unit's [Service] section (repeated keys kept).
fn service_section(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[test]
fn unit_file_is_what_the_kit_promises_and_verifies() -> Result<()> {
    let u = Unpacked::new("unit")?;
    let unit_path = u.path("/usr/lib/systemd/system/canaryd.service");
    let unit = std::fs::read_to_string(&unit_path)?;
    let service = service_section(&unit);
    let one = |key: &str| -> Result<String> {
        let v: Vec<&String> = service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect();
        ensure!(v.len() == 1, "[Service] {key}= appears {} times", v.len());
        Ok(v[0].clone())
    };
    ensure!(one("Type")? == "notify", "Type={}", one("Type")?);
    let exec = one("ExecStart")?;
    let argv: Vec<&str> = exec.split_whitespace().collect();
    ensure!(argv[0] == "/usr/sbin/canaryd", "ExecStart={exec}");
    ensure!(
        argv.windows(2)
            .any(|w| w == ["--config", "/etc/canary/canary.yaml"]),
        "ExecStart={exec}"
    );
    ensure!(
        argv.windows(2).any(|w| w == ["--on-exit", "keep"]),
        "ExecStart={exec}: the data plane must outlive a restart"
    );
    ensure!(
        one("ExecReload")? == "/bin/kill -HUP $MAINPID",
        "ExecReload={}",
        one("ExecReload")?
    );
    ensure!(
        one("Restart")? == "on-failure",
        "Restart={}",
        one("Restart")?
    );
    ensure!(one("StateDirectory")? == "canary");
    ensure!(one("RuntimeDirectory")? == "canary");
    // Root with a bounded set, not full root: exactly the three canaryd was
    // seen to need (service.rs runs it under this set).
    let caps: Vec<String> = one("CapabilityBoundingSet")?
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut sorted = caps.clone();
    sorted.sort();
    ensure!(
        sorted == ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"],
        "CapabilityBoundingSet={caps:?}"
    );
    ensure!(
        !unit.lines().any(|l| l.trim_start().starts_with("User=")),
        "the unit changes user: AmbientCapabilities would be needed"
    );
    ensure!(one("NoNewPrivileges")? == "yes");
    // The binaries the unit names are in the package.
    ensure!(u.path("/usr/sbin/canaryd").is_file());

    if !has_tool("systemd-analyze") {
        println!("unit: parsed; systemd-analyze is not installed here, not verified");
        return Ok(());
    }
    // systemd 252's `verify --root` wants a whole systemd tree (sysinit.target,
    // /bin/kill) in the root; instead the unit's own copy with ExecStart
    // pointing into the unpacked tree, and MANPATH there so that its
    // Documentation= man pages are looked up in the package's.
    let copy = u.root.join("canaryd.service");
    std::fs::write(
        &copy,
        unit.replace(
            "ExecStart=/usr/sbin/canaryd",
            &format!("ExecStart={}", u.path("/usr/sbin/canaryd").display()),
        ),
    )?;
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify");
    if !has_tool("man") {
        // Without man-db it cannot look the Documentation= pages up (the
        // package's pages are checked by the man page test).
        verify.arg("--man=no");
    }
    let out = verify
        .arg(&copy)
        .env("MANPATH", u.path("/usr/share/man"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It exits 0 on directives it ignores (a misspelt Type=): any word on
    // stderr is a failure.
    ensure!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify ({}): {stderr}",
        out.status
    );
    println!("unit: systemd-analyze verify: clean");
    Ok(())
}

#[test]
fn binaries_from_a_throwaway_root_print_the_workspace_version() -> Result<()> {
    let u = Unpacked::new("bins")?;
    for (bin, name) in [
        ("/usr/sbin/canaryd", "canaryd"),
        ("/usr/bin/canaryctl", "canaryctl"),
    ] {
        let out = stdout(Command::new(u.path(bin)).arg("--version"))?;
        ensure!(
            out.trim() == format!("{name} {VERSION}"),
            "{bin} --version: {out:?}, expected \"{name} {VERSION}\""
        );
        println!("{bin} --version: {}", out.trim());
    }
    Ok(())
}

#[test]
fn man_pages_render_and_completions_are_the_generated_ones() -> Result<()> {
    let u = Unpacked::new("man")?;
    for page in [
        "/usr/share/man/man8/canaryd.8.gz",
        "/usr/share/man/man1/canaryctl.1.gz",
    ] {
        let p = u.path(page);
        let troff = stdout(Command::new("gzip").arg("-dc").arg(&p))?;
        let th = troff
            .lines()
            .find(|l| l.starts_with(".TH "))
            .with_context(|| format!("{page}: no .TH line"))?;
        let section = if page.contains("man8") { "8" } else { "1" };
        ensure!(
            th.split_whitespace().nth(2) == Some(section),
            "{page}: {th}"
        );
        if has_tool("man") {
            let out = run(Command::new("man")
                .arg("-l")
                .arg(&p)
                .env("MANWIDTH", "80")
                .env("MAN_KEEP_FORMATTING", "0"))?;
            // Without a terminal man overstrikes bold ("N\x08N"): dropped.
            let raw = String::from_utf8_lossy(&out.stdout);
            let mut text = String::new();
            for c in raw.chars() {
                if c == '\u{8}' {
                    text.pop();
                } else {
                    text.push(c);
                }
            }
            ensure!(
                text.contains("NAME") && text.contains("SYNOPSIS"),
                "{page} rendered without NAME/SYNOPSIS:\n{text}"
            );
            ensure!(
                out.stderr.is_empty(),
                "{page}: man warned: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            if page.contains("canaryd") {
                ensure!(
                    text.contains("--on-exit") && text.contains("--check"),
                    "{text}"
                );
            }
        }
    }
    // The packaged completions are what this canaryctl generates.
    let ctl = u.path("/usr/bin/canaryctl");
    for (shell, path) in [
        ("bash", "/usr/share/bash-completion/completions/canaryctl"),
        ("zsh", "/usr/share/zsh/vendor-completions/_canaryctl"),
        (
            "fish",
            "/usr/share/fish/vendor_completions.d/canaryctl.fish",
        ),
    ] {
        let generated = run(Command::new(&ctl).args(["completions", shell]))?.stdout;
        ensure!(
            std::fs::read(u.path(path))? == generated,
            "{path} differs from `canaryctl completions {shell}`"
        );
    }
    Ok(())
}

/// The packaged config with every commented-out `key: value` line turned on.
fn uncommented(yaml: &str) -> String {
    let mut out = String::new();
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let rest = line.trim_start();
        let on = rest.strip_prefix("# ").filter(|r| {
            let r = r.trim_start();
            let key = r.strip_prefix("- ").unwrap_or(r);
            key.split_once(':').is_some_and(|(k, _)| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
        });
        match on {
            Some(r) => out.push_str(&format!("{}{r}\n", " ".repeat(indent))),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

#[test]
fn default_config_parses_and_so_does_every_commented_key() -> Result<()> {
    let u = Unpacked::new("config")?;
    let canaryd = u.path("/usr/sbin/canaryd");
    let conf = u.path("/etc/canary/canary.yaml");
    // --check looks at this host's interfaces, as a start would: a
    // namespace of our own with the example's eth0 and eth1 (a veth pair, up,
    // addressed in 198.18.0.0/15).
    let ns = Netns::recreate(&format!("cnry-{}-pkgcheck", std::process::id()))?;
    ns.ip_batch(
        "link add eth0 type veth peer name eth1\n\
         addr add 198.18.250.1/24 dev eth0\naddr add 198.18.251.1/24 dev eth1\n\
         link set eth0 up\nlink set eth1 up\n",
    )?;
    let check = |file: &Path| -> Result<std::process::Output> {
        let mut c = ns.command(canaryd.to_str().context("path")?);
        c.arg("--check").arg("--config").arg(file);
        Ok(c.output()?)
    };
    let valid = |file: &Path| -> Result<String> {
        let out = check(file)?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        ensure!(
            out.status.success() && text.contains("is valid"),
            "--check {}: {} {text} {}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text)
    };
    let ok = valid(&conf)?;
    println!("{}", ok.trim());
    // The commented keys are examples an operator turns on: they must be
    // valid as written.
    let yaml = std::fs::read_to_string(&conf)?;
    let full = uncommented(&yaml);
    ensure!(
        full.contains("\nmetrics: ")
            && full.contains("      probe: http")
            && full.contains("    rollout:"),
        "the uncommenting found too little:\n{full}"
    );
    let full_path = u.root.join("full.yaml");
    std::fs::write(&full_path, &full)?;
    valid(&full_path)?;
    // --check must fail on a bad file, or it proves nothing: a weight of
    // 150, and an interface this host does not have (a start would fail).
    for (name, from, to, says) in [
        (
            "weight",
            "canary_weight: 0 ",
            "canary_weight: 150 ",
            "canary_weight",
        ),
        (
            "interface",
            "interface: eth0",
            "interface: nosuch0",
            "nosuch0",
        ),
    ] {
        ensure!(yaml.contains(from), "the example has no {from:?}");
        let bad = u.root.join(format!("bad-{name}.yaml"));
        std::fs::write(&bad, yaml.replacen(from, to, 1))?;
        let out = check(&bad)?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains(says),
            "--check with {to:?}: {} {err}",
            out.status
        );
    }
    // The dashboard shipped beside it is JSON.
    let board = std::fs::read(u.path("/usr/share/canary/grafana-dashboard.json"))?;
    let _: serde_json::Value = serde_json::from_slice(&board).context("the packaged dashboard")?;
    Ok(())
}
