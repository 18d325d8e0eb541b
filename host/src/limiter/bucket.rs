//! One client's token bucket in a single atomic word.
//!
//! The word packs the tick at which the bucket was last settled (20 bits) and
//! its tokens in milli-tokens (44 bits), so check, take and refill are one
//! compare-and-swap. The refill ticker only advances a shared tick counter;
//! each bucket applies the ticks it missed when it is next touched, using an
//! exact formula on absolute ticks, so fractional rates never drift.

use std::sync::atomic::{AtomicU64, Ordering};

/// Token amounts are kept in thousandths so that 0.5 tokens/s is exact.
pub const MILLI: u64 = 1000;
const TICK_BITS: u32 = 20;
const TICK_MASK: u64 = (1 << TICK_BITS) - 1;
const TOKEN_BITS: u32 = 64 - TICK_BITS;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
/// Marks limits that come from a per-client override rather than the default.
const OVERRIDE_FLAG: u64 = 1 << 63;

/// Largest capacity accepted (fits the 44-bit milli-token field with room to spare).
pub const MAX_CAPACITY: u64 = 1_000_000_000;
/// Largest refill rate accepted, tokens per second.
pub const MAX_REFILL: f64 = 1_000_000.0;
/// Smallest refill rate accepted (one token every 1000 s).
pub const MIN_REFILL: f64 = 0.001;

/// A client's policy: bucket size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub capacity: u32,
    /// Tokens per second × 1000.
    pub refill_milli: u32,
    /// True when these limits come from the database rather than the default.
    pub is_override: bool,
}

impl Limits {
    /// Checks and converts user-supplied numbers; the error says what is allowed.
    pub fn new(capacity: i64, refill_per_second: f64) -> Result<Limits, String> {
        if capacity <= 0 || capacity as u64 > MAX_CAPACITY {
            return Err(format!(
                "capacity must be a whole number from 1 to {MAX_CAPACITY}, got {capacity}"
            ));
        }
        if !refill_per_second.is_finite() || !(MIN_REFILL..=MAX_REFILL).contains(&refill_per_second)
        {
            return Err(format!(
                "refill_per_second must be from {MIN_REFILL} to {MAX_REFILL}, got {refill_per_second}"
            ));
        }
        Ok(Limits {
            capacity: capacity as u32,
            refill_milli: (refill_per_second * MILLI as f64).round() as u32,
            is_override: false,
        })
    }

    pub fn overriding(self) -> Limits {
        Limits {
            is_override: true,
            ..self
        }
    }

    pub fn refill_per_second(&self) -> f64 {
        f64::from(self.refill_milli) / MILLI as f64
    }

    fn capacity_milli(&self) -> u64 {
        u64::from(self.capacity) * MILLI
    }

    pub(super) fn pack(self) -> u64 {
        let flag = if self.is_override { OVERRIDE_FLAG } else { 0 };
        flag | (u64::from(self.capacity) << 32) | u64::from(self.refill_milli)
    }

    pub(super) fn unpack(word: u64) -> Limits {
        Limits {
            capacity: ((word & !OVERRIDE_FLAG) >> 32) as u32,
            refill_milli: word as u32,
            is_override: word & OVERRIDE_FLAG != 0,
        }
    }

    /// Milli-tokens added between absolute ticks `from` and `to` (exact: the
    /// sum over any split of the interval equals the whole).
    fn refill_between(&self, from: u64, to: u64, tick_micros: u64) -> u64 {
        let at = |tick: u64| {
            u128::from(tick) * u128::from(tick_micros) * u128::from(self.refill_milli) / 1_000_000
        };
        (at(to) - at(from)).min(u128::from(TOKEN_MASK)) as u64
    }

    /// Whole seconds until `milli` more milli-tokens have been added (at least 1).
    pub fn seconds_for(&self, milli: u64) -> u64 {
        let rate = u64::from(self.refill_milli).max(1);
        milli.div_ceil(rate).max(1)
    }
}

/// The result of one check against a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub allowed: bool,
    /// Milli-tokens left after this decision.
    pub remaining_milli: u64,
    pub limits: Limits,
}

/// A 64-bit atomic word: std's on the request path, loom's in the
/// model-checking tests, which explore every interleaving of the CAS loops.
pub trait Word: Send + Sync {
    fn new(value: u64) -> Self;
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
}

impl Word for AtomicU64 {
    fn new(value: u64) -> Self {
        AtomicU64::new(value)
    }
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order);
    }
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        AtomicU64::compare_exchange_weak(self, current, new, success, failure)
    }
}

#[derive(Debug)]
pub struct Bucket<W: Word = AtomicU64> {
    /// `settled tick (20 bits) | milli-tokens (44 bits)`.
    state: W,
    /// Packed [`Limits`]; replaced when the client's override changes.
    limits: W,
}

fn pack(tick: u64, tokens: u64) -> u64 {
    ((tick & TICK_MASK) << TOKEN_BITS) | (tokens & TOKEN_MASK)
}

impl<W: Word> Bucket<W> {
    /// A full bucket settled at `now`.
    pub fn new(limits: Limits, now: u64) -> Self {
        Bucket {
            state: W::new(pack(now, limits.capacity_milli())),
            limits: W::new(limits.pack()),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits::unpack(self.limits.load(Ordering::Relaxed))
    }

    /// Replaces the limits; tokens above a lowered capacity are dropped at the next touch.
    pub fn set_limits(&self, limits: Limits) {
        self.limits.store(limits.pack(), Ordering::Relaxed);
    }

    /// The state brought up to `now`: the tick it is settled at and its
    /// milli-tokens. A bucket already settled at or after `now` (another
    /// thread read a later tick and got here first) gains nothing and keeps
    /// its tick: the settled tick never moves backwards, so no tick is
    /// refilled twice. Ticks are compared in the 20-bit field's wrap-around
    /// order; the eviction pass settles every bucket about once a second,
    /// far inside the half range (2^19 ticks) that order can tell apart.
    fn current(state: u64, now: u64, limits: &Limits, tick_micros: u64) -> (u64, u64) {
        let settled = state >> TOKEN_BITS;
        let tokens = (state & TOKEN_MASK).min(limits.capacity_milli());
        let behind = now.wrapping_sub(settled) & TICK_MASK;
        if behind == 0 || behind > TICK_MASK / 2 {
            return (settled, tokens);
        }
        let added = limits.refill_between(now.saturating_sub(behind), now, tick_micros);
        (now, (tokens + added).min(limits.capacity_milli()))
    }

    /// Takes one token if there is one (see [`Bucket::take_n`]).
    pub fn take(&self, clock: &W, tick_micros: u64) -> Taken {
        self.take_n(clock, tick_micros, 1)
    }

    /// Takes `cost` tokens if there are that many: refill, check and take
    /// in one CAS. The clock is read after the state, inside the loop, so
    /// the tick used is never older than the one the observed state was
    /// settled at.
    #[inline]
    pub fn take_n(&self, clock: &W, tick_micros: u64, cost: u32) -> Taken {
        let limits = self.limits();
        let need = u64::from(cost) * MILLI;
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let now = clock.load(Ordering::Acquire);
            let (tick, tokens) = Self::current(state, now, &limits, tick_micros);
            let allowed = tokens >= need;
            let remaining = if allowed { tokens - need } else { tokens };
            let taken = Taken {
                allowed,
                remaining_milli: remaining,
                limits,
            };
            let next = pack(tick, remaining);
            if next == state {
                return taken;
            }
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return taken,
                Err(actual) => state = actual,
            }
        }
    }

    /// Applies pending refill without taking; true when the bucket is full
    /// (the client has been idle long enough to forget).
    pub fn settle(&self, clock: &W, tick_micros: u64) -> bool {
        let limits = self.limits();
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let now = clock.load(Ordering::Acquire);
            let (tick, tokens) = Self::current(state, now, &limits, tick_micros);
            let full = tokens >= limits.capacity_milli();
            let next = pack(tick, tokens);
            if next == state {
                return full;
            }
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return full,
                Err(actual) => state = actual,
            }
        }
    }

    /// Milli-tokens available at `now` (for inspection; does not write).
    #[cfg(test)]
    fn peek(&self, now: u64, tick_micros: u64) -> u64 {
        Self::current(
            self.state.load(Ordering::Acquire),
            now,
            &self.limits(),
            tick_micros,
        )
        .1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    const TICK: u64 = 100_000; // 100 ms

    /// A clock standing at tick `t`.
    fn at(t: u64) -> AtomicU64 {
        AtomicU64::new(t)
    }

    fn limits(capacity: i64, rate: f64) -> Limits {
        Limits::new(capacity, rate).unwrap()
    }

    #[test]
    fn a_new_bucket_allows_exactly_capacity() {
        let b = Bucket::new(limits(5, 1.0), 0);
        let allowed = (0..10).filter(|_| b.take(&at(0), TICK).allowed).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn refill_arrives_with_ticks() {
        let b = Bucket::new(limits(2, 10.0), 0);
        assert!(b.take(&at(0), TICK).allowed);
        assert!(b.take(&at(0), TICK).allowed);
        assert!(!b.take(&at(0), TICK).allowed);
        // 10/s at 100 ms ticks: one token per tick.
        assert!(b.take(&at(1), TICK).allowed);
        assert!(!b.take(&at(1), TICK).allowed);
    }

    #[test]
    fn fractional_rates_do_not_drift() {
        // 1/3 token per second (stored as 0.333/s), a million 100 ms ticks,
        // settled every tick: the total equals the closed form exactly.
        let l = limits(1_000_000_000, 0.333);
        let b = Bucket::new(l, 0);
        for _ in 0..1000 {
            assert!(b.take(&at(0), TICK).allowed);
        }
        let start = b.peek(0, TICK);
        let ticks = 1_000_000u64;
        for t in 1..=ticks {
            b.settle(&at(t), TICK);
        }
        let expected = ticks * TICK * 333 / 1_000_000;
        assert_eq!(
            b.peek(ticks, TICK) - start,
            expected.min(l.capacity_milli() - start)
        );
    }

    #[test]
    fn half_a_token_per_second_gives_one_token_every_two_seconds() {
        let b = Bucket::new(limits(1, 0.5), 0);
        assert!(b.take(&at(0), TICK).allowed);
        let mut granted = Vec::new();
        for t in 1..=60 {
            if b.take(&at(t), TICK).allowed {
                granted.push(t);
            }
        }
        assert_eq!(granted, vec![20, 40, 60]);
    }

    #[test]
    fn lowered_capacity_clamps_tokens() {
        let b = Bucket::new(limits(100, 1.0), 0);
        b.set_limits(limits(3, 1.0).overriding());
        let allowed = (0..10).filter(|_| b.take(&at(0), TICK).allowed).count();
        assert_eq!(allowed, 3);
        assert!(b.limits().is_override);
    }

    #[test]
    fn settle_reports_full_only_after_enough_idle_time() {
        let b = Bucket::new(limits(2, 10.0), 0);
        assert!(b.settle(&at(0), TICK));
        b.take(&at(0), TICK);
        assert!(!b.settle(&at(0), TICK));
        assert!(b.settle(&at(1), TICK));
    }

    #[test]
    fn tick_counter_wrap_is_harmless_when_settled_regularly() {
        let b = Bucket::new(limits(5, 1.0), TICK_MASK - 2);
        b.take(&at(TICK_MASK - 2), TICK);
        assert_eq!(b.peek(TICK_MASK + 8, TICK), 5000);
    }

    #[test]
    fn concurrent_takers_get_exactly_capacity() {
        for _ in 0..20 {
            let b = Arc::new(Bucket::new(limits(1000, 1.0), 7));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let b = Arc::clone(&b);
                    std::thread::spawn(move || {
                        (0..400).filter(|_| b.take(&at(7), TICK).allowed).count()
                    })
                })
                .collect();
            let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(total, 1000);
        }
    }

    #[test]
    fn limits_are_validated() {
        assert!(Limits::new(0, 1.0).is_err());
        assert!(Limits::new(-5, 1.0).is_err());
        assert!(Limits::new(10, 0.0).is_err());
        assert!(Limits::new(10, f64::NAN).is_err());
        assert!(Limits::new(10, 2e6).is_err());
        assert!(Limits::new(2_000_000_000, 1.0).is_err());
        assert_eq!(Limits::new(10, 0.5).unwrap().refill_milli, 500);
    }

    proptest! {
        #[test]
        fn tokens_stay_within_zero_and_capacity(
            capacity in 1i64..500,
            rate_milli in 1u32..100_000,
            ops in proptest::collection::vec((0u64..30, 0u32..20), 1..200),
        ) {
            let l = Limits::new(capacity, f64::from(rate_milli) / 1000.0).unwrap();
            let b = Bucket::new(l, 0);
            let mut now = 0;
            for (advance, takes) in ops {
                now += advance;
                for _ in 0..takes {
                    let t = b.take(&at(now), TICK);
                    prop_assert!(t.remaining_milli <= l.capacity_milli());
                }
                let tokens = b.peek(now, TICK);
                prop_assert!(tokens <= l.capacity_milli());
            }
        }

        #[test]
        fn allowed_count_matches_the_model(
            capacity in 1i64..50,
            rate in 1u32..20,
            pattern in proptest::collection::vec(0u32..5, 1..100),
        ) {
            // Model: integer tokens, `rate` tokens per tick (whole numbers keep it exact).
            let l = Limits::new(capacity, f64::from(rate) * 10.0).unwrap();
            let b = Bucket::new(l, 0);
            let mut model = capacity as u64;
            for (tick, takes) in pattern.iter().enumerate() {
                let tick = tick as u64;
                if tick > 0 {
                    model = (model + u64::from(rate)).min(capacity as u64);
                }
                for _ in 0..*takes {
                    let expect = model > 0;
                    if expect { model -= 1; }
                    prop_assert_eq!(b.take(&at(tick), TICK).allowed, expect);
                }
            }
        }
    }
}

/// Model checks of the CAS paths: loom runs each closure under every
/// interleaving of its threads (and every value a load may see), so a
/// schedule that refills a tick twice or loses a take is found if it exists.
#[cfg(test)]
mod model {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicU64 as LoomWord;
    use loom::thread;

    impl Word for LoomWord {
        fn new(value: u64) -> Self {
            LoomWord::new(value)
        }
        fn load(&self, order: Ordering) -> u64 {
            LoomWord::load(self, order)
        }
        fn store(&self, value: u64, order: Ordering) {
            LoomWord::store(self, value, order);
        }
        fn compare_exchange_weak(
            &self,
            current: u64,
            new: u64,
            success: Ordering,
            failure: Ordering,
        ) -> Result<u64, u64> {
            LoomWord::compare_exchange_weak(self, current, new, success, failure)
        }
    }

    /// 100 ms ticks at 10 tokens/s: one whole token per tick.
    const TICK: u64 = 100_000;

    fn one_per_tick(capacity: i64) -> Limits {
        Limits::new(capacity, 10.0).unwrap()
    }

    /// Every interleaving with up to three preemptions per execution (the
    /// bound keeps the runs to seconds; the bugs it looks for, a stale
    /// tick or a lost CAS, need one or two).
    fn explore(model: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(model);
    }

    fn takes(bucket: &Bucket<LoomWord>, clock: &LoomWord, n: usize) -> u64 {
        (0..n)
            .map(|_| u64::from(bucket.take(clock, TICK).allowed))
            .sum()
    }

    /// Two takers and a ticker: refill is neither lost nor counted twice.
    /// The bucket starts empty with room to spare, so nothing is capped and
    /// the books must balance exactly: granted + left = refilled.
    #[test]
    fn two_takers_and_two_ticks_balance_exactly() {
        explore(|| {
            let clock = Arc::new(LoomWord::new(0));
            let bucket = Arc::new(Bucket {
                state: LoomWord::new(pack(0, 0)),
                limits: LoomWord::new(one_per_tick(10).pack()),
            });
            let takers: Vec<_> = [2, 1]
                .into_iter()
                .map(|n| {
                    let (bucket, clock) = (Arc::clone(&bucket), Arc::clone(&clock));
                    thread::spawn(move || takes(&bucket, &clock, n))
                })
                .collect();
            clock.fetch_add(1, Ordering::Release);
            clock.fetch_add(1, Ordering::Release);
            let granted: u64 = takers.into_iter().map(|t| t.join().unwrap()).sum();
            bucket.settle(&clock, TICK);
            let state = bucket.state.load(Ordering::Acquire);
            assert_eq!(state >> TOKEN_BITS, 2, "settled at the last tick");
            assert_eq!(granted * MILLI + (state & TOKEN_MASK), 2 * MILLI);
        });
    }

    /// Three threads — two takers and one that ticks and settles (the
    /// eviction pass) — never grant more than capacity + one tick of refill.
    #[test]
    fn three_threads_with_settle_stay_within_the_budget() {
        explore(|| {
            let clock = Arc::new(LoomWord::new(0));
            let bucket = Arc::new(Bucket::<LoomWord>::new(one_per_tick(1), 0));
            let takers: Vec<_> = (0..2)
                .map(|_| {
                    let (bucket, clock) = (Arc::clone(&bucket), Arc::clone(&clock));
                    thread::spawn(move || takes(&bucket, &clock, 1))
                })
                .collect();
            let evictor = {
                let (bucket, clock) = (Arc::clone(&bucket), Arc::clone(&clock));
                thread::spawn(move || {
                    clock.fetch_add(1, Ordering::Release);
                    bucket.settle(&clock, TICK);
                })
            };
            let mut granted: u64 = takers.into_iter().map(|t| t.join().unwrap()).sum();
            evictor.join().unwrap();
            granted += takes(&bucket, &clock, 1);
            assert!(granted <= 2, "granted {granted} of capacity 1 + 1 tick");
            let state = bucket.state.load(Ordering::Acquire);
            assert_eq!(state >> TOKEN_BITS, 1, "the settled tick never moved back");
        });
    }

    /// A limit change racing with takes and a tick: tokens never exceed the
    /// larger capacity, grants never exceed it plus the tick's refill.
    #[test]
    fn a_limit_change_during_takes_keeps_the_bound() {
        explore(|| {
            let clock = Arc::new(LoomWord::new(0));
            let bucket = Arc::new(Bucket::<LoomWord>::new(one_per_tick(2), 0));
            let taker = {
                let (bucket, clock) = (Arc::clone(&bucket), Arc::clone(&clock));
                thread::spawn(move || takes(&bucket, &clock, 2))
            };
            let changer = {
                let (bucket, clock) = (Arc::clone(&bucket), Arc::clone(&clock));
                thread::spawn(move || {
                    bucket.set_limits(one_per_tick(1).overriding());
                    clock.fetch_add(1, Ordering::Release);
                })
            };
            let mut granted = taker.join().unwrap();
            changer.join().unwrap();
            granted += takes(&bucket, &clock, 2);
            assert!(granted <= 3, "granted {granted} of capacity 2 + 1 tick");
            assert!(bucket.limits().is_override);
            assert!(bucket.state.load(Ordering::Acquire) & TOKEN_MASK <= 2 * MILLI);
        });
    }
}
