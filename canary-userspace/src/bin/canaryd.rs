//! canaryd: owns the XDP data plane of one load-balancer host. Loads (or takes
//! over) and attaches the program, applies the config, serves the control API
//! on a root-only Unix socket and, if configured, read-only Prometheus
//! metrics; reloads on SIGHUP; on SIGTERM/SIGINT leaves the data plane
//! forwarding (default) or removes it.
//!
//! Lines on stdout are for supervisors and tests (`canaryd ready`,
//! `canaryd applied config`, `canaryd reload rejected: ...`); the log goes to
//! stderr. Under systemd (`Type=notify`, NOTIFY_SOCKET set) it also sends
//! READY=1 once the data plane is attached, RELOADING=1 ... READY=1 around a
//! SIGHUP reload and STOPPING=1 at exit. `--check` validates a config and
//! exits.

use anyhow::{Context, Result};
use canary_userspace::control;
use canary_userspace::daemon::{lock, read_config, Daemon};
use canary_userspace::logging::{self, LogFormat};
use canary_userspace::service::{self, notify, NotifyState};
use clap::Parser;
use log::{error, info};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(
    name = "canaryd",
    version,
    about = "canary's XDP canary-splitter daemon"
)]
struct Args {
    /// YAML config file. Without it, the built-in demo config is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Instance name: maps and links are pinned under
    /// /sys/fs/bpf/canary/<instance>/.
    #[arg(long, default_value = "default")]
    instance: String,
    /// Control socket (overrides `control_socket:` of the config).
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// State directory (overrides `state_dir:` of the config).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// What SIGTERM/SIGINT do to the data plane: `keep` leaves it forwarding
    /// with its last weights and flow table (a restarted canaryd takes it
    /// over without a gap); `teardown` detaches and removes everything.
    #[arg(long, value_enum, default_value_t = OnExit::Keep)]
    on_exit: OnExit,
    /// Seconds between counter log lines (0: never).
    #[arg(long, default_value_t = 10)]
    stats_interval: u64,
    /// The log's form on stderr: `human`, `journal` (priority prefixes for
    /// journald), `json` (one object per line), or `auto` (`journal` under
    /// systemd, `human` otherwise). The level filter is RUST_LOG (default info).
    #[arg(long, value_enum, env = "CANARY_LOG_FORMAT", default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    /// Read and validate the config (the file of --config, or the built-in
    /// one), print a summary and exit: 0 if it is valid, 1 with the reason
    /// if not. Touches no interface, pin, socket or state file.
    #[arg(long)]
    check: bool,
    /// Write the man page canaryd.8 into DIR and exit (the package build).
    #[arg(long, hide = true, value_name = "DIR")]
    man_page: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnExit {
    Keep,
    Teardown,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.man_page {
        if let Err(e) = write_man_page(dir) {
            eprintln!("canaryd: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if args.check {
        match service::check_config(args.config.as_deref()) {
            Ok(summary) => say(&summary),
            Err(e) => {
                eprintln!("canaryd: {e:#}");
                std::process::exit(1);
            }
        }
        return;
    }
    logging::init(args.log_format);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        // One line, in the log's form (journald files it as an error).
        logging::fatal(&format!("{e:#}"));
        std::process::exit(1);
    }
}

/// canaryd.8 from the clap definitions above (section 8: a daemon).
fn write_man_page(dir: &std::path::Path) -> Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("canaryd.8");
    let mut buf = Vec::new();
    clap_mangen::Man::new(Args::command())
        .section("8")
        .render(&mut buf)?;
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    control::transport::raise_fd_limit();
    let file = read_config(args.config.as_deref())?;
    if args.config.is_none() {
        info!("no --config given: using the built-in demo config");
    }
    let socket = control::socket_path(args.control_socket.clone(), &file);
    // Everything that can fail on the environment is bound before the data
    // plane is touched.
    let listener = control::bind(&socket)?;
    let metrics = match file.metrics {
        Some(addr) => Some((addr, canary_userspace::control::metrics::bind(addr).await?)),
        None => None,
    };
    let mut daemon = match Daemon::start(
        &args.instance,
        args.config.clone(),
        file,
        args.state_dir.clone(),
    ) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    daemon.start_sweeper();
    let logger = daemon.take_logger();
    let (probe_tx, mut probe_rx) = tokio::sync::mpsc::unbounded_channel();
    daemon.start_probes(probe_tx);
    let fleet_cfg = daemon.running().fleet.clone();
    let daemon = Arc::new(Mutex::new(daemon));
    // In a fleet: the etcd link. No connection is needed to start: a host
    // that cannot reach etcd forwards with its last state, cut off.
    let fleet = match fleet_cfg {
        Some(cfg) => {
            let link = canary_userspace::fleet::link::Link::new(&cfg, daemon.clone()).await?;
            tokio::spawn(link.clone().run(daemon.clone()));
            info!(
                "fleet {}: this host is {}; etcd {:?}",
                cfg.cluster, link.host, cfg.etcd
            );
            Some(link)
        }
        None => None,
    };

    let (teardown_tx, mut teardown_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(control::serve(
        listener,
        daemon.clone(),
        teardown_tx,
        fleet.clone(),
    ));
    info!("control API on {} (root only)", socket.display());
    if let Some((addr, listener)) = metrics {
        let d = daemon.clone();
        let source = Arc::new(move || lock(&d).status());
        tokio::spawn(async move {
            if let Err(e) = canary_userspace::control::metrics::serve_on(listener, source).await {
                error!("metrics endpoint: {e:#}");
            }
        });
        info!("metrics on http://{addr}/metrics (read-only)");
    }
    // The signal handlers are in place before "ready": a SIGHUP sent the
    // moment a supervisor sees it must reload, not kill canaryd.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    say("canaryd applied config");
    say("canaryd ready");
    // Daemon::start has attached the XDP program (or taken over the
    // pinned one) by now: the unit's dependants may rely on forwarding.
    let status = {
        let d = lock(&daemon);
        format!(
            "forwarding on {} ({} services)",
            d.running().interface,
            d.running().services.len()
        )
    };
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);

    let mut logger = match logger {
        // SAFETY: the logger owns its ring-buffer fd and keeps it open for as
        // long as the AsyncFd owns the logger.
        Some(l) => {
            Some(unsafe { AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE)? })
        }
        None => None,
    };
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    // The rollout engine's heartbeat: fast enough that a clear failure is
    // acted on within a fraction of a second.
    let mut tick = tokio::time::interval(canary_userspace::rollout::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stats_every = args.stats_interval;
    let mut seconds = 0u64;
    let mut teardown = args.on_exit == OnExit::Teardown;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // systemd (Type=notify): reloading from now until READY=1.
                service::notify_reloading();
                // Its own task: reading the file must not hold up this loop.
                let d = daemon.clone();
                tokio::spawn(async move {
                    let status = match canary_userspace::daemon::reload(&d, "SIGHUP").await {
                        Ok(_) => {
                            say("canaryd applied config");
                            "reloaded the config".to_string()
                        }
                        Err(e) => {
                            error!("reload rejected, running config unchanged: {}", e.message);
                            say(&format!("canaryd reload rejected: {}", e.message));
                            format!("reload rejected, running config unchanged: {}", e.message)
                        }
                    };
                    // Ready again either way: a rejected file leaves the
                    // running config in force.
                    notify(&[
                        NotifyState::Ready,
                        NotifyState::Status(&status),
                    ]);
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = teardown_rx.recv() => {
                teardown = true;
                break;
            }
            Some(t) = probe_rx.recv() => lock(&daemon).health_changed(t),
            _ = tick.tick() => {
                let mut d = lock(&daemon);
                d.tick();
                // The leader's steps and progress, published in order.
                if let Some(link) = &fleet {
                    link.publish_later(d.fleet_outbox());
                }
            }
            _ = sample.tick() => {
                let mut d = lock(&daemon);
                d.retry_save();
                d.watch_pins();
                d.flow_housekeeping();
                if let Err(e) = d.sample() {
                    error!("reading counters: {e:#}");
                }
                seconds += 1;
                if stats_every > 0 && seconds.is_multiple_of(stats_every) {
                    if let Ok(snap) = d.snapshot() {
                        for line in snap.lines() {
                            info!("{line}");
                        }
                    }
                }
            }
            guard = async { logger.as_mut().unwrap().readable_mut().await }, if logger.is_some() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status(if teardown {
            "stopping: removing the data plane"
        } else {
            "stopping: the data plane keeps forwarding"
        }),
    ]);
    let _ = std::fs::remove_file(&socket);
    if let Some(link) = &fleet {
        // Leadership and this host's report go now, not at lease expiry.
        link.resign().await;
    }
    let mut daemon = lock(&daemon);
    if let Ok(snap) = daemon.snapshot() {
        for line in snap.lines() {
            info!("final: {line}");
        }
    }
    if teardown {
        info!("stopping: detaching the data plane");
        daemon.teardown().context("teardown")
    } else {
        info!(
            "stopping: the data plane keeps forwarding with its last state (pinned under {}); \
             start canaryd again to take it over, or `canaryctl teardown --yes` to remove it",
            canary_userspace::dataplane::maps::pin_dir(&args.instance).display()
        );
        Ok(())
    }
}
