//! The `gateway` binary: parse the command line, dispatch, map outcomes to exit codes
//! (0 ok, 1 invalid input or config, 2 usage).

use clap::Parser;
use gateway::cli::{Cli, Command, ConfigArg, DemoArgs, PluginAction};
use gateway::config::{self, Config, LoadError, Overrides};
use gateway::server::{self, ConnLimits, Shutdown};
use std::process::ExitCode;
use std::sync::Arc;

/// Every request allocates a few small, short-lived objects (header maps,
/// futures, buffers); mimalloc's thread-local free lists serve those with
/// less work than glibc's bins (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Run(args) => {
            let over = Overrides {
                listen: args.listen.clone(),
                backends: args.backends.clone(),
                log_format: args.log_format.clone(),
                admin_listen: args.admin_listen.clone(),
                io: args.io.clone(),
                ..env_overrides()
            };
            match load(&args.config, &over) {
                Ok(config) => serve(config, None, source(&args.config, over)),
                Err(code) => code,
            }
        }
        Command::Demo(args) => demo(args),
        Command::Clients(args) => clients(args),
        Command::Plugin {
            action: PluginAction::Check { file, config },
        } => plugin_check(&file, config),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "gateway", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: cannot write the manual page: {error}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn plugin_check(file: &std::path::Path, config: Option<std::path::PathBuf>) -> ExitCode {
    // What the plugin prints (and logs with host.log) goes to stderr, so an
    // author sees it next to the verdict.
    let _log = gateway::logging::init(&config::LogConfig {
        level: "off,plugin=info".to_owned(),
        format: config::LogFormat::Pretty,
        access: false,
        access_file: None,
    });
    let (plugins, backends) = match config {
        None => (config::PluginsConfig::default(), None),
        Some(path) => {
            let arg = gateway::cli::ConfigArg { config: Some(path) };
            match load(&arg, &env_overrides()) {
                Ok(c) => {
                    // A selection plugin sees its pool's backends: those of the first pool.
                    let urls = c.pools.first().map(|pool| pool.backend_names());
                    (c.plugins, urls)
                }
                Err(code) => return code,
            }
        }
    };
    match gateway::plugin::check(file, &plugins, backends) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            println!("{}: rejected — {reason}", file.display());
            ExitCode::from(1)
        }
    }
}

/// Overrides that only come from the environment.
fn env_overrides() -> Overrides {
    Overrides {
        admin_token: std::env::var("GATEWAY_ADMIN_TOKEN").ok(),
        log_level: std::env::var("GATEWAY_LOG_LEVEL").ok(),
        ..Overrides::default()
    }
}

fn load(args: &ConfigArg, over: &Overrides) -> Result<Config, ExitCode> {
    let path = args.path();
    match config::load(&path, args.explicit(), over) {
        Ok(config) => Ok(config),
        Err(LoadError::Missing(path)) => {
            eprintln!(
                "error: config file {} not found; pass -c FILE, or --backend URL to run without a file",
                path.display()
            );
            Err(ExitCode::from(2))
        }
        Err(LoadError::Invalid(problems)) => {
            eprintln!("error: {} is not a valid configuration:", path.display());
            for problem in problems {
                eprintln!("  {problem}");
            }
            Err(ExitCode::from(1))
        }
        Err(error) => {
            eprintln!("error: {error}");
            Err(ExitCode::from(1))
        }
    }
}

fn validate(args: &ConfigArg) -> ExitCode {
    let path = args.path();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("error: cannot read {}: {error}", path.display());
            return ExitCode::from(1);
        }
    };
    let parsed = config::parse(&text, &env_overrides()).and_then(|c| {
        gateway::routing::load_plugins(&c)
            .map(|plugins| (c, plugins))
            .map_err(|reason| vec![config::Problem::new("plugins", reason)])
    });
    match parsed {
        Ok((c, plugins)) => {
            let backends: usize = c.pools.iter().map(|p| p.backends.len()).sum();
            let pools = match c.pools.as_slice() {
                [pool] => format!("pool {}", pool.name),
                all => format!("{} pools", all.len()),
            };
            println!(
                "{}: ok — listen {}, {} backend(s) in {pools}, {} route(s), admin {}",
                path.display(),
                c.listen,
                backends,
                c.routes.len(),
                c.admin.listen
            );
            for line in plugins.describe() {
                println!("  {line}");
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            println!("{}: {} problem(s)", path.display(), problems.len());
            for problem in problems {
                println!("  {}:{problem}", path.display());
            }
            ExitCode::from(1)
        }
    }
}

fn clients(args: gateway::cli::ClientsArgs) -> ExitCode {
    let Ok(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    match runtime.block_on(gateway::clients_cli::run(args)) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Where a reload reads the configuration again.
fn source(args: &ConfigArg, overrides: Overrides) -> gateway::reload::Source {
    gateway::reload::Source {
        path: args.path(),
        explicit: args.explicit(),
        overrides,
    }
}

fn serve(
    config: Config,
    before: Option<DemoBackends>,
    source: gateway::reload::Source,
) -> ExitCode {
    let _log = gateway::logging::init(&config.log);
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async move {
        if let Some(backends) = before {
            backends.start().await?;
        }
        gateway::app::run(config, source).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Once, on stderr; the log (often the same stream) gets no copy.
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Echo backends to start before (or instead of) the gateway.
struct DemoBackends {
    count: u16,
    base_port: u16,
}

impl DemoBackends {
    async fn start(&self) -> anyhow::Result<()> {
        let (_stop, signal) = tokio::sync::watch::channel(false);
        let (done, _drained) = tokio::sync::mpsc::channel(1);
        let shutdown = Shutdown { signal, done };
        let limits = ConnLimits {
            max_header_bytes: 64 * 1024,
            header_read_timeout: std::time::Duration::from_secs(10),
        };
        for (listener, backend) in gateway::demo::bind(self.count, self.base_port).await? {
            tracing::info!(event = "demo_backend", addr = %listener.local_addr()?, "echo backend started");
            let backend = Arc::clone(&backend);
            tokio::spawn(server::serve(
                listener,
                move |request, peer| {
                    let backend = Arc::clone(&backend);
                    async move { backend.handle(request, peer).await }
                },
                limits,
                shutdown.clone(),
            ));
        }
        // The demo backends live as long as the process; keep their shutdown channel open.
        std::mem::forget(_stop);
        Ok(())
    }
}

fn demo(args: DemoArgs) -> ExitCode {
    let backends = DemoBackends {
        count: args.count,
        base_port: args.base_port,
    };
    let urls = (0..args.count)
        .map(|i| format!("http://127.0.0.1:{}", args.base_port + i))
        .collect();
    let mut over = Overrides {
        listen: args.listen.clone(),
        backends: urls,
        log_format: args.log_format.clone(),
        admin_listen: args.admin_listen.clone(),
        ..env_overrides()
    };
    if args.backends_only {
        // Only the echo backends run: the admin settings (a container's
        // 0.0.0.0 with the example token, say) must not refuse the start.
        over.admin_listen = Some("127.0.0.1:0".to_owned());
        over.admin_token = Some("unused-with-backends-only".to_owned());
    }
    let mut config = match load(&args.config, &over) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if args.backends_only {
        let _log = gateway::logging::init(&config.log);
        let Ok(runtime) = runtime() else {
            return ExitCode::from(1);
        };
        return match runtime.block_on(async {
            backends.start().await?;
            tokio::signal::ctrl_c().await?;
            anyhow::Ok(())
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(1)
            }
        };
    }
    let token = config.admin.token.get_or_insert_with(|| "demo".to_owned());
    // A reload reads the file again: the demo token stays as it is.
    let over = Overrides {
        admin_token: Some(token.clone()),
        ..over
    };
    serve(config, Some(backends), source(&args.config, over))
}
