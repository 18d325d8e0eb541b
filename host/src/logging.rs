//! Log setup: one subscriber, pretty or JSON, written off the request path
//! by a background thread; with `log.access_file`, access lines go to that
//! file instead (same format), which SIGUSR1 reopens after a logrotate.

use crate::config::{LogConfig, LogFormat, log_filter};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Keeps the log writers' threads alive; dropping it flushes what is buffered.
pub struct Guards {
    _writers: Vec<WorkerGuard>,
}

/// The access file being written, for [`reopen_access_file`].
static ACCESS_FILE: OnceLock<Arc<AccessFile>> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
pub fn init(config: &LogConfig) -> Guards {
    let access_file = config
        .access_file
        .as_deref()
        .and_then(|path| match AccessFile::open(path) {
            Ok(file) => Some(file),
            Err(error) => {
                eprintln!(
                    "warning: log.access_file {}: {error}; access lines go to the log",
                    path.display()
                );
                None
            }
        });
    let level = std::env::var("RUST_LOG")
        .ok()
        .filter(|env| log_filter(env).is_ok())
        .unwrap_or_else(|| config.level.clone());
    // Access lines leave the main log when they have a file of their own.
    let level = match access_file {
        Some(_) => format!("{level},access=off"),
        None => level,
    };
    let filter = log_filter(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let mut guards = Vec::new();
    let (writer, guard) = tracing_appender::non_blocking(io::stderr());
    guards.push(guard);
    // Colours only for a person at a terminal: a file or journald would
    // keep the escape codes as text.
    let colour = io::IsTerminal::is_terminal(&io::stderr());
    let mut layers = vec![
        layer(config.format, writer, colour)
            .with_filter(filter)
            .boxed(),
    ];
    if let Some(file) = access_file {
        let (writer, guard) = tracing_appender::non_blocking(Writer(Arc::clone(&file)));
        guards.push(guard);
        let _ = ACCESS_FILE.set(file);
        let access = layer(config.format, writer, false)
            .with_filter(filter_fn(|meta| meta.target() == "access"));
        layers.push(access.boxed());
    }
    let installed = tracing_subscriber::registry().with(layers).try_init();
    if let Err(error) = installed {
        eprintln!("logging was already set up: {error}");
    }
    Guards { _writers: guards }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

fn layer<W>(format: LogFormat, writer: W, colour: bool) -> BoxedLayer
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(colour);
    match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
        LogFormat::Pretty => fmt.compact().boxed(),
    }
}

/// Closes and opens the access file again (after logrotate moved it), so
/// lines go to a file at the configured path. Nothing when there is none.
pub fn reopen_access_file() -> io::Result<()> {
    match ACCESS_FILE.get() {
        Some(file) => file.reopen(),
        None => Ok(()),
    }
}

/// The access file, appended to; swapped whole on reopen.
struct AccessFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl AccessFile {
    fn open(path: &Path) -> io::Result<Arc<AccessFile>> {
        Ok(Arc::new(AccessFile {
            path: path.to_owned(),
            file: Mutex::new(append(path)?),
        }))
    }

    fn reopen(&self) -> io::Result<()> {
        let fresh = append(&self.path)?;
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = file.flush();
        *file = fresh;
        Ok(())
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// What the background thread writes access lines with.
struct Writer(Arc<AccessFile>);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut file = self.0.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
    }
}
