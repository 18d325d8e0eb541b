//! Round-robin, weighted the way nginx does it (smooth weighted round-robin),
//! without a lock: the whole weighted cycle is computed once and an atomic
//! counter walks it.

use super::{Backend, BackendSelection, Ctx, Tried, usable};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct RoundRobin {
    /// One full smooth-weighted cycle of backend indices (length = sum of weights / gcd).
    cycle: Vec<usize>,
    /// Position in `cycle` of the next pick; shared by all requests.
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        RoundRobin {
            cycle: smooth_cycle(weights),
            next: AtomicUsize::new(0),
        }
    }
}

impl BackendSelection for RoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], tried: &Tried, _ctx: &mut Ctx<'_>) -> Option<usize> {
        let len = self.cycle.len();
        for _ in 0..len {
            let index = self.cycle[self.next.fetch_add(1, Ordering::Relaxed) % len];
            if usable(backends, tried, index) {
                return Some(index);
            }
        }
        None
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// nginx's smooth weighted round-robin, unrolled: every step adds each weight
/// to its running score, picks the highest score and subtracts the total from it.
/// Weights `{5,1,1}` give `a a b a c a a` rather than `a a a a a b c`.
fn smooth_cycle(weights: &[u32]) -> Vec<usize> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by(|(ia, a), (ib, b)| a.cmp(b).then(ib.cmp(ia)))
            .unwrap_or((0, &0));
        current[best] -= total;
        cycle.push(best);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::{backends, with_ctx};

    fn picks(rr: &RoundRobin, set: &[Arc<Backend>], n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| with_ctx(|c| rr.pick(set, &Tried::default(), c)).unwrap())
            .collect()
    }

    #[test]
    fn equal_weights_rotate_exactly() {
        let set = backends(&[1, 1, 1]);
        let rr = RoundRobin::new(&[1, 1, 1]);
        assert_eq!(picks(&rr, &set, 7), vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn weights_are_interleaved_like_nginx() {
        assert_eq!(smooth_cycle(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_cycle(&[2, 4]), vec![1, 0, 1]);
    }

    #[test]
    fn unhealthy_backends_are_skipped() {
        let set = backends(&[1, 1, 1]);
        set[1].set_healthy(false);
        let rr = RoundRobin::new(&[1, 1, 1]);
        assert_eq!(picks(&rr, &set, 4), vec![0, 2, 0, 2]);
    }

    #[test]
    fn retry_moves_to_next_untried() {
        let set = backends(&[1, 1, 1]);
        let rr = RoundRobin::new(&[1, 1, 1]);
        let mut tried = Tried::default();
        let first = with_ctx(|c| rr.pick(&set, &tried, c)).unwrap();
        tried.insert(first);
        let second = with_ctx(|c| rr.pick(&set, &tried, c)).unwrap();
        tried.insert(second);
        let third = with_ctx(|c| rr.pick(&set, &tried, c)).unwrap();
        tried.insert(third);
        assert_eq!(vec![first, second, third], vec![0, 1, 2]);
        assert_eq!(with_ctx(|c| rr.pick(&set, &tried, c)), None);
    }

    #[test]
    fn nothing_healthy_yields_none() {
        let set = backends(&[1, 2]);
        for b in &set {
            b.set_healthy(false);
        }
        assert_eq!(
            with_ctx(|c| RoundRobin::new(&[1, 2]).pick(&set, &Tried::default(), c)),
            None
        );
    }
}
