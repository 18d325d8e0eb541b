//! Log setup: one subscriber, pretty or JSON, written off the request path by a background thread.

use crate::config::{LogConfig, LogFormat, log_filter};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
/// Keep the guard alive: dropping it flushes what is still buffered.
pub fn init(config: &LogConfig) -> WorkerGuard {
    let filter = std::env::var("RUST_LOG")
        .map_err(|_| ())
        .and_then(|env| log_filter(&env).map_err(|_| ()))
        .or_else(|_| log_filter(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    // Colours only for a person at a terminal: a file or journald would
    // keep the escape codes as text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(writer);
    let installed = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    if let Err(error) = installed {
        eprintln!("logging was already set up: {error}");
    }
    guard
}
