//! canaryd: owns the XDP data plane of one load-balancer host. Loads and
//! attaches the program, applies the config, reloads it on SIGHUP, logs the
//! per-version counters, and tears the data plane down on SIGTERM/SIGINT.
//!
//! Lines on stdout are for supervisors and tests (`canaryd ready`,
//! `canaryd applied config`, `canaryd reload rejected: ...`); the log goes to
//! stderr.

use anyhow::{Context, Result};
use canary_userspace::config::{Config, DEFAULT_CONFIG};
use canary_userspace::dataplane::DataPlane;
use canary_userspace::report;
use clap::Parser;
use log::{error, info};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(version, about = "canary's XDP canary-splitter daemon")]
struct Args {
    /// YAML config file. Without it, the built-in demo config is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Instance name: maps are pinned under /sys/fs/bpf/canary/<instance>/.
    #[arg(long, default_value = "default")]
    instance: String,
    /// What SIGTERM/SIGINT do to the data plane: `keep` leaves it forwarding
    /// with its last weights and flow table (a restarted canaryd takes it
    /// over without a gap); `teardown` detaches and removes everything.
    #[arg(long, value_enum, default_value_t = OnExit::Keep)]
    on_exit: OnExit,
    /// Seconds between counter log lines (0: never).
    #[arg(long, default_value_t = 10)]
    stats_interval: u64,
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

fn read_config(args: &Args) -> Result<Config> {
    match &args.config {
        Some(path) => Config::load(path),
        None => Config::parse(DEFAULT_CONFIG).context("built-in config"),
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        error!("{e:#}");
        eprintln!("canaryd: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let config = read_config(&args)?;
    if args.config.is_none() {
        info!("no --config given: using the built-in demo config");
    }
    let mut dp = DataPlane::load(&args.instance, config.flow_table_size)?;
    let logger = dp.take_logger();
    let applied = dp.apply(&config);
    let report = match applied {
        Ok(r) => r,
        Err(e) => {
            // A data plane this process created is removed again; one taken
            // over from an earlier canaryd keeps forwarding as it was.
            if dp.adopted() {
                error!("the pinned data plane is left running as it was");
            } else {
                let _ = dp.teardown();
            }
            return Err(e.context("applying the config"));
        }
    };
    for line in report.lines {
        info!("{line}");
    }
    say("canaryd applied config");
    say("canaryd ready");

    let mut logger = match logger {
        // SAFETY: the logger owns its ring-buffer fd and keeps it open for as
        // long as the AsyncFd owns the logger.
        Some(l) => Some(unsafe { AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE)? }),
        None => None,
    };
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let period = Duration::from_secs(args.stats_interval.max(1));
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match read_config(&args).and_then(|c| dp.apply(&c)) {
                    Ok(report) => {
                        for line in report.lines {
                            info!("reload: {line}");
                        }
                        say("canaryd applied config");
                    }
                    Err(e) => {
                        error!("reload rejected, running config unchanged: {e:#}");
                        say(&format!("canaryd reload rejected: {e:#}"));
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick(), if args.stats_interval > 0 => {
                match report::snapshot(&dp) {
                    Ok(snap) => for line in snap.lines() { info!("{line}") },
                    Err(e) => error!("reading counters: {e:#}"),
                }
            }
            guard = async { logger.as_mut().unwrap().readable_mut().await }, if logger.is_some() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
    if let Ok(snap) = report::snapshot(&dp) {
        for line in snap.lines() {
            info!("final: {line}");
        }
    }
    match args.on_exit {
        OnExit::Teardown => {
            info!("stopping: detaching the data plane");
            dp.teardown()
        }
        OnExit::Keep => {
            info!(
                "stopping: the data plane keeps forwarding with its last state (pinned under {}); \
                 start canaryd again to take it over, or `canaryctl teardown` to remove it",
                canary_userspace::maps::pin_dir(&args.instance).display()
            );
            Ok(())
        }
    }
}
