//! Memory per tracked client: heap bytes that `gateway::limiter::Limiter`
//! and governor's keyed limiter (`RateLimiter::dashmap`) retain after
//! 1 000 000 distinct clients have each made one request.
//!
//! Why: the limiter keeps state for every client seen recently, so bytes per
//! client times `max_clients` is the memory the operator signs up for.
//!
//! How: a counting global allocator wrapping `System` keeps the live heap
//! bytes (the sizes requested, not what malloc rounds them up to). Each key
//! (an IPv4 address string, as the gateway keys by client address) is built,
//! passed to `check` and dropped, so what is left is what the structure
//! itself retains. That is a fair comparison of the designs, not only of the
//! tables: ours stores a 64-bit hash of the key, governor stores a clone of
//! the `String` key, so its figure includes the key's own heap bytes (shown
//! separately). A third line runs governor keyed by `u64`, i.e. storing
//! what ours stores, to separate the table overhead from the key storage.
//! The figures depend on where 1M falls between the maps' resizes (ours
//! spreads clients over 64 shards, governor's map uses DashMap's default
//! shard count), so other client counts give somewhat different numbers.
//!
//! Run: `cargo bench -p gateway --bench limiter_memory`.

use gateway::limiter::{ClientKey, Limiter, Limits};
use governor::{Quota, RateLimiter};
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const CLIENTS: usize = 1_000_000;

/// Live and peak heap bytes of the whole process.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn key(i: usize) -> String {
    Ipv4Addr::from(0x0A00_0000 + i as u32).to_string()
}

/// Builds a structure with `make`, feeds it `CLIENTS` requests with `feed`,
/// checks with `count` that it tracks all of them and prints what it retains.
fn measure<T>(
    name: &str,
    make: impl FnOnce() -> T,
    feed: impl Fn(&T, usize),
    count: impl Fn(&T) -> usize,
) {
    let before = live();
    PEAK.store(before, Ordering::Relaxed);
    let structure = make();
    let start = Instant::now();
    for i in 0..CLIENTS {
        feed(&structure, i);
    }
    let elapsed = start.elapsed();
    let retained = live() - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let tracked = count(&structure);
    assert_eq!(tracked, CLIENTS, "{name}: every client must be tracked");
    drop(structure);
    let leftover = live().saturating_sub(before);
    println!(
        "{name:<32} {:>6.1} bytes/client retained, {:>6.1} bytes/client at peak, \
         {:>5.0} ns/insert ({tracked} clients, {:.1} MiB; {leftover} bytes left after drop)",
        retained as f64 / tracked as f64,
        peak as f64 / tracked as f64,
        elapsed.as_nanos() as f64 / tracked as f64,
        retained as f64 / (1024.0 * 1024.0),
    );
}

fn main() {
    let key_bytes: usize = (0..CLIENTS).map(|i| key(i).len()).sum();
    println!(
        "{CLIENTS} distinct clients, keys are IPv4 address strings averaging {:.2} bytes \
         (a cloned String key's heap buffer is exactly that long)",
        key_bytes as f64 / CLIENTS as f64
    );

    let limits = Limits::new(10, 1.0).expect("valid limits");
    measure(
        "ours (stores a u64 hash)",
        || Limiter::new(limits, Duration::from_millis(100), usize::MAX),
        |limiter, i| {
            // The gateway keys a client by its address, not by the string;
            // the string is still built and dropped so the insert times compare.
            drop(key(i));
            let ip = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i as u32));
            assert!(limiter.check(&ClientKey::address(ip, 64)).allowed);
        },
        Limiter::tracked,
    );

    let quota = Quota::per_second(NonZeroU32::new(10).expect("non-zero"));
    measure(
        "governor dashmap, String keys",
        || RateLimiter::<String, _, _>::dashmap(quota),
        |limiter, i| {
            assert!(limiter.check_key(&key(i)).is_ok());
        },
        |limiter| limiter.len(),
    );

    measure(
        "governor dashmap, u64 keys",
        || RateLimiter::<u64, _, _>::dashmap(quota),
        |limiter, i| {
            // A 64-bit key is what ours stores; the key string is still built
            // and dropped so that the insert times compare.
            drop(key(i));
            assert!(limiter.check_key(&(i as u64)).is_ok());
        },
        |limiter| limiter.len(),
    );
}
