//! A call's budget, counted in the worker thread's CPU time.
//!
//! It has to cover time spent in host calls too (a plugin calling
//! `host.log` in a loop), which fuel would not count. Wasmtime's epoch
//! deadline catches both, but counts wall time: a worker thread the kernel preempts mid-call would
//! see a healthy plugin cut off on a busy machine. So the deadline is only
//! the trigger: when it passes, this callback reads the thread's CPU time
//! and lets the call go on while it has used less than its budget. Calls
//! shorter than a tick (nearly all) never reach the callback and cost
//! nothing; longer ones pay one clock read per tick.

use super::runtime::EPOCH_TICK;
use std::time::Duration;
use wasmtime::UpdateDeadline;

/// One call's budget, as the epoch callback sees it.
#[derive(Debug, Default)]
pub struct CpuDeadline {
    budget: Duration,
    /// Thread CPU time at the first tick of the call.
    first_tick: Option<Duration>,
}

impl CpuDeadline {
    /// A fresh budget; arm the store's epoch deadline one tick ahead with it.
    pub fn new(budget: Duration) -> Self {
        CpuDeadline {
            budget,
            first_tick: None,
        }
    }

    /// Called when the epoch deadline passes: go on for one more tick, or stop.
    pub fn tick(&mut self) -> UpdateDeadline {
        self.tick_at(thread_cpu_time())
    }

    fn tick_at(&mut self, now: Duration) -> UpdateDeadline {
        let Some(first) = self.first_tick else {
            self.first_tick = Some(now);
            return UpdateDeadline::Continue(1);
        };
        // Before the first tick the call ran at most one tick: count a whole one.
        if now.saturating_sub(first) + EPOCH_TICK >= self.budget {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Continue(1)
        }
    }
}

/// CPU time this thread has used.
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if !ok {
        return wall_time();
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    wall_time()
}

/// Fallback where the thread's CPU clock cannot be read: time since start.
fn wall_time() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(d: &mut CpuDeadline, now_ms: u64) -> bool {
        matches!(
            d.tick_at(Duration::from_millis(now_ms)),
            UpdateDeadline::Interrupt
        )
    }

    #[test]
    fn a_call_stops_once_its_cpu_time_reaches_the_budget() {
        let mut d = CpuDeadline::new(Duration::from_millis(5));
        assert!(!stops(&mut d, 100), "the first tick only records");
        assert!(!stops(&mut d, 101));
        assert!(!stops(&mut d, 103));
        assert!(
            stops(&mut d, 104),
            "3 ms since the first tick + 1 tick before it"
        );
    }

    #[test]
    fn time_the_thread_did_not_run_does_not_count() {
        // The wall clock moved on (ticks kept coming) while the thread was
        // preempted: its CPU time did not, so the call goes on.
        let mut d = CpuDeadline::new(Duration::from_millis(5));
        for _ in 0..50 {
            assert!(!stops(&mut d, 100));
        }
    }

    #[test]
    fn the_thread_clock_advances_with_work() {
        let start = thread_cpu_time();
        let mut x = 0u64;
        while thread_cpu_time() - start < Duration::from_millis(2) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(x > 0);
    }
}
