//! The process metrics every Prometheus client library exports under the
//! same names (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`),
//! read from `/proc/self` at each scrape. Elsewhere than Linux they are
//! left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub struct Process {
    /// When the process started, seconds since the epoch.
    started: f64,
}

impl Process {
    /// Counts the process as started now (it is created at start-up).
    pub fn new() -> Process {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Process { started }
    }
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(now) = read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(now.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                now.resident_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                now.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                now.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                self.started,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

struct Reading {
    cpu_seconds: f64,
    resident_bytes: f64,
    open_fds: f64,
    max_fds: f64,
}

fn read() -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: f64 = fields.get(21)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let max_fds = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur as f64,
        _ => 0.0,
    };
    Some(Reading {
        cpu_seconds: (utime + stime) / ticks.max(1.0),
        resident_bytes: rss_pages * page,
        open_fds,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reads_itself() {
        let now = read().expect("/proc/self is readable on Linux");
        assert!(now.resident_bytes > 1_000_000.0);
        assert!(now.open_fds >= 3.0);
        assert!(now.max_fds >= now.open_fds);
        assert!(now.cpu_seconds >= 0.0);
    }
}
