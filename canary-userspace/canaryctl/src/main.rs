//! canaryctl: the operator's command line for canaryd. Talks to the
//! daemon's root-only control socket; input is checked here first, so a
//! typo is answered without touching the daemon, and again by the daemon.
//! Errors are one line on stderr (`canaryctl: ...`) and exit status 1; a
//! daemon that does not answer within `--timeout` is one of them. A closed
//! stdout (`canaryctl events | head -1`) ends canaryctl quietly, status 0.

mod cli;
mod generate;
mod output;
mod render;
mod watch;

use anyhow::{bail, Result};
use canary_common::weight::WeightBp;
use canary_control::api::{parse_client, Change, RolloutVerb, Version};
use canary_control::client::Client;
use clap::Parser;
use std::io::Write;
use std::net::IpAddr;

use crate::cli::{Args, BackendAction, Command, Pool};
use crate::output::StdoutClosed;

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        if e.chain().any(|c| c.is::<StdoutClosed>()) {
            // The reader went away (`| head -1`): it has what it wanted.
            std::process::exit(0);
        }
        // One line: the chain joined, newlines flattened.
        let msg = format!("{e:#}").replace('\n', " ");
        let _ = writeln!(std::io::stderr(), "canaryctl: {msg}");
        std::process::exit(1);
    }
}

/// Local check of a weight, with the daemon's rules (same function).
fn parse_percent(text: &str) -> Result<f64> {
    let text = text.trim().trim_end_matches('%');
    let percent: f64 = text
        .parse()
        .map_err(|_| anyhow::anyhow!("weight {text:?} is not a number (percent, 0 to 100)"))?;
    WeightBp::from_percent(percent)?;
    Ok(percent)
}

fn parse_addr(text: &str) -> Result<IpAddr> {
    text.parse().map_err(|_| {
        anyhow::anyhow!("malformed address {text:?}: expected an IPv4 or IPv6 address")
    })
}

async fn run(args: Args) -> Result<()> {
    let client = Client::new(&args.socket).with_timeout(args.timeout);
    let json = args.json;
    match args.command {
        Command::Status {
            service,
            watch,
            host,
        } => {
            if watch {
                return watch::run(&client, service.as_deref(), host.as_deref(), json).await;
            }
            let status = client.status().await?;
            if let Some(name) = &host {
                let h = render::fleet_host(&status, name)?;
                if json {
                    outln!("{}", serde_json::to_string_pretty(&h)?);
                } else {
                    out!("{}", render::render_fleet_host(&h));
                }
                return Ok(());
            }
            let shown = render::select(status, service.as_deref())?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                out!("{}", render::render_status(&shown, service.is_none()));
            }
            Ok(())
        }
        Command::SetWeight { service, percent } => {
            let percent = parse_percent(&percent)?;
            done(client.set_weight(&service, percent).await?, json)
        }
        Command::Rollback { service } => done(client.rollback(&service).await?, json),
        Command::Promote { service, finalize } => {
            let change = if finalize {
                client.rollout(&service, RolloutVerb::Finish).await?
            } else {
                client.promote(&service).await?
            };
            done(change, json)
        }
        Command::Backends {
            action,
            service,
            pool,
            addr,
        } => {
            let addr = parse_addr(&addr)?;
            let pool = match pool {
                Pool::Stable => Version::Stable,
                Pool::Canary => Version::Canary,
            };
            let add = matches!(action, BackendAction::Add);
            done(
                client.change_backend(&service, add, pool, addr).await?,
                json,
            )
        }
        Command::Explain {
            service,
            client: who,
        } => {
            parse_client(&who)?;
            let e = client.explain(&service, &who).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                outln!(
                    "{} -> {} {} ({})",
                    who,
                    e.version.name(),
                    e.backend,
                    e.decided_by
                );
                outln!("{}", e.reason);
                if let Some(c) = &e.cohort {
                    outln!("cohort: {c}");
                }
            }
            Ok(())
        }
        Command::Rollout { action, service } => {
            done(client.rollout(&service, action.verb()).await?, json)
        }
        Command::Events { follow } => {
            let mut after = 0;
            loop {
                let wait = if follow { 30_000 } else { 0 };
                let batch = tokio::select! {
                    b = client.events(after, wait) => b?,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                for e in &batch {
                    if json {
                        outln!("{}", serde_json::to_string(e)?);
                    } else {
                        outln!("{} {:<8} {:<10} {}", e.time, e.kind, e.service, e.message);
                    }
                    after = after.max(e.seq);
                }
                if !follow {
                    return Ok(());
                }
            }
        }
        Command::Reload => done(client.reload().await?, json),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            generate::completions(shell, &mut buf);
            out!("{}", String::from_utf8_lossy(&buf));
            Ok(())
        }
        Command::ManPages { dir } => {
            for f in generate::man_pages(&dir)? {
                outln!("{}", f.display());
            }
            Ok(())
        }
        Command::Teardown { yes } => {
            if !yes {
                bail!("teardown stops all forwarding through the VIPs; add --yes to do it");
            }
            done(client.teardown().await?, json)
        }
    }
}

fn done(change: Change, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(&change)?);
    } else if change.changes.is_empty() {
        outln!("no change");
    } else {
        for line in &change.changes {
            outln!("{line}");
        }
    }
    Ok(())
}
