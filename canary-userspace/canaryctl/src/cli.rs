//! canaryctl's command line, as clap reads it. Kept apart from what the
//! commands do so the man pages and shell completions are generated from
//! the same definitions (`canaryctl completions`, `canaryctl man-pages`).

use canary_control::api::{RolloutVerb, DEFAULT_SOCKET};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "canaryctl",
    version,
    about = "Control canaryd: weights, backends, status, explain"
)]
pub struct Args {
    /// canaryd's control socket.
    #[arg(long, env = "CANARY_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    /// Print the daemon's JSON answer instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long canaryd may take to answer a call (e.g. 10s, 500ms; 0 waits
    /// for ever). `events --follow` waits this long beyond its 30 s poll.
    #[arg(
        long,
        env = "CANARY_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Weights, counters, rates and backends of every service (or one).
    Status {
        service: Option<String>,
        /// Repeat every second until interrupted.
        #[arg(long)]
        watch: bool,
        /// In a fleet: one host's own view (what it applies, its counters,
        /// its probe verdicts), from its latest report.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
    },
    /// Set the canary weight of a service, in percent (0 to 100, two
    /// decimals). Applies to new connections; open ones keep their backend.
    SetWeight { service: String, percent: String },
    /// Canary weight 0: every new connection goes to stable.
    Rollback { service: String },
    /// Canary weight 100: every new connection goes to canary.
    Promote {
        service: String,
        /// Finish the release instead (as `rollout finish`): the canary
        /// pool becomes the stable pool, the canary pool is emptied, weight 0.
        #[arg(long)]
        finalize: bool,
    },
    /// Add or remove a backend of a pool (run-time; kept across restarts
    /// until the config file changes that pool).
    Backends {
        #[arg(value_enum)]
        action: BackendAction,
        service: String,
        #[arg(value_enum)]
        pool: Pool,
        addr: String,
    },
    /// Which version and backend a client gets, and why.
    Explain {
        service: String,
        /// Client address, optionally with its source port (IP:PORT,
        /// [IPv6]:PORT).
        client: String,
    },
    /// Run the service's rollout plan (config `rollout:`): start, pause,
    /// resume, or abort (abort rolls back: canary weight 0); finish ends a
    /// release: the canary pool becomes the stable pool, the canary pool is
    /// emptied, weight 0, open connections kept (former stable backends drain).
    Rollout {
        #[arg(value_enum)]
        action: RolloutAction,
        service: String,
    },
    /// The daemon's events (rollout steps, rollbacks, health changes, weight and backend changes, reloads).
    Events {
        /// Keep printing new events until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Re-read the config file; a config that fails validation changes
    /// nothing and the reason is printed.
    Reload,
    /// Detach the data plane, remove its pins and stop canaryd. Every
    /// connection through the VIPs breaks.
    Teardown {
        /// Required: this interrupts all traffic to the VIPs.
        #[arg(long)]
        yes: bool,
    },
    /// Print a shell completion script: `source <(canaryctl completions
    /// bash)`, or install it where your shell looks (the Debian package
    /// does for bash, zsh and fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write canaryctl's man pages (canaryctl.1 and one per command) into
    /// DIR; the package build uses it.
    #[command(hide = true)]
    ManPages { dir: PathBuf },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum BackendAction {
    Add,
    Remove,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum RolloutAction {
    Start,
    Pause,
    Resume,
    Abort,
    Finish,
}

impl RolloutAction {
    pub fn verb(self) -> RolloutVerb {
        match self {
            RolloutAction::Start => RolloutVerb::Start,
            RolloutAction::Pause => RolloutVerb::Pause,
            RolloutAction::Resume => RolloutVerb::Resume,
            RolloutAction::Abort => RolloutVerb::Abort,
            RolloutAction::Finish => RolloutVerb::Finish,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Pool {
    Stable,
    Canary,
}
