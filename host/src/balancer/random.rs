//! Weighted random choice; no shared state at all on the request path.

use super::{Backend, BackendSelection, Ctx, Tried, usable};
use std::sync::Arc;

#[derive(Debug)]
pub struct Random {
    /// Running sums of the weights; a uniform draw below the total lands in one slot.
    cumulative: Vec<u64>,
}

impl Random {
    pub fn new(weights: &[u32]) -> Self {
        let mut sum = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                sum += u64::from(w);
                sum
            })
            .collect();
        Random { cumulative }
    }
}

impl BackendSelection for Random {
    fn pick(&self, backends: &[Arc<Backend>], tried: &Tried, _ctx: &mut Ctx<'_>) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let draw = fastrand::u64(0..total);
        let first = self.cumulative.partition_point(|&c| c <= draw);
        let len = backends.len();
        (0..len)
            .map(|offset| (first + offset) % len)
            .find(|&index| usable(backends, tried, index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::{backends, with_ctx};

    #[test]
    fn draws_follow_weights() {
        let set = backends(&[1, 3]);
        let r = Random::new(&[1, 3]);
        let mut counts = [0usize; 2];
        for _ in 0..40_000 {
            counts[with_ctx(|c| r.pick(&set, &Tried::default(), c)).unwrap()] += 1;
        }
        let share = counts[1] as f64 / 40_000.0;
        assert!(
            (0.72..0.78).contains(&share),
            "share of weight-3 backend: {share}"
        );
    }

    #[test]
    fn falls_through_to_a_usable_backend() {
        let set = backends(&[1, 1, 1]);
        set[0].set_healthy(false);
        set[2].set_healthy(false);
        let r = Random::new(&[1, 1, 1]);
        for _ in 0..50 {
            assert_eq!(with_ctx(|c| r.pick(&set, &Tried::default(), c)), Some(1));
        }
    }
}
