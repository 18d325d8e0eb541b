//! Command-line interface.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "Programmable HTTP load balancer and rate limiter"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: proxy requests to the configured backends.
    Run(RunArgs),
    /// Check a configuration file without serving.
    Validate(ConfigArg),
    /// Start echo backends on loopback and a gateway in front of them.
    Demo(DemoArgs),
    /// Manage per-client rate limits in the configured database.
    Clients(ClientsArgs),
    /// Inspect WebAssembly plugins.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// Print a shell completion script: `gateway completions bash > /etc/bash_completion.d/gateway`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (troff): `gateway man | man -l -`.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum PluginAction {
    /// Load a component, call each plugin interface it implements once with
    /// a synthetic request under the runtime's limits, and say what it
    /// answered, or why it is rejected.
    Check {
        /// The component (.wasm).
        file: PathBuf,
        /// Take the limits (`plugins.*`) and backends from this configuration
        /// file instead of the defaults.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ClientsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Database URL (default: `rate_limit.database` from the config file).
    #[arg(long, env = "GATEWAY_DATABASE", global = true)]
    pub database: Option<String>,
    #[command(subcommand)]
    pub action: ClientsAction,
}

#[derive(Debug, Subcommand)]
pub enum ClientsAction {
    /// List every client with its limits (JSON).
    List,
    /// Show one client's limits (JSON); exit 1 if absent.
    Get { key: String },
    /// Create or change a client's limits.
    Set {
        key: String,
        /// Bucket size in tokens (whole number ≥ 1).
        #[arg(long)]
        capacity: i64,
        /// Tokens added per second (may be fractional, e.g. 0.5).
        #[arg(long)]
        refill_per_second: f64,
    },
    /// Remove a client's override; exit 1 if absent.
    Delete { key: String },
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file [default: gateway.yaml].
    #[arg(short = 'c', long = "config", env = "GATEWAY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from("gateway.yaml"))
    }

    /// True when the user named the file (flag or environment) rather than relying on the default.
    pub fn explicit(&self) -> bool {
        self.config.is_some()
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Proxy listen address (overrides `listen`).
    #[arg(long, env = "GATEWAY_LISTEN")]
    pub listen: Option<String>,
    /// Backend URL; repeat for several (overrides `backends`).
    #[arg(long = "backend", env = "GATEWAY_BACKENDS", value_delimiter = ',')]
    pub backends: Vec<String>,
    /// Log format: pretty or json (overrides `log.format`).
    #[arg(long, env = "GATEWAY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Admin listen address (overrides `admin.listen`).
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Proxy I/O: epoll or io_uring (overrides `proxy.io`).
    #[arg(long, env = "GATEWAY_IO")]
    pub io: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Proxy listen address (overrides `listen`).
    #[arg(long, env = "GATEWAY_LISTEN")]
    pub listen: Option<String>,
    /// Admin API listen address (overrides `admin.listen`).
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Log format: pretty or json.
    #[arg(long, env = "GATEWAY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Number of echo backends.
    #[arg(long = "backends", default_value_t = 3)]
    pub count: u16,
    /// Port of the first echo backend; the others follow.
    #[arg(long, default_value_t = 9001)]
    pub base_port: u16,
    /// Start only the echo backends, no gateway.
    #[arg(long)]
    pub backends_only: bool,
}
