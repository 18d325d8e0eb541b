//! Least requests: the backend with the fewest in-flight requests per unit of weight.

use super::{Backend, BackendSelection, Ctx, Tried, usable};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct LeastRequests {
    /// Rotating scan start, so ties spread over backends instead of piling on the first.
    start: AtomicUsize,
}

impl LeastRequests {
    pub fn new() -> Self {
        Self::default()
    }
}

impl BackendSelection for LeastRequests {
    fn pick(&self, backends: &[Arc<Backend>], tried: &Tried, _ctx: &mut Ctx<'_>) -> Option<usize> {
        let len = backends.len();
        if len == 0 {
            return None;
        }
        let start = self.start.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u64, u64)> = None;
        for offset in 0..len {
            let index = (start + offset) % len;
            if !usable(backends, tried, index) {
                continue;
            }
            let load = backends[index].in_flight();
            let weight = u64::from(backends[index].weight);
            // load/weight < best_load/best_weight, compared without division.
            let better = match best {
                None => true,
                Some((_, best_load, best_weight)) => {
                    u128::from(load) * u128::from(best_weight)
                        < u128::from(best_load) * u128::from(weight)
                }
            };
            if better {
                best = Some((index, load, weight));
            }
        }
        best.map(|(index, _, _)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::{backends, with_ctx};

    #[test]
    fn picks_the_least_loaded() {
        let set = backends(&[1, 1, 1]);
        let _a = set[0].start();
        let _b = set[1].start();
        let _c = set[1].start();
        let lr = LeastRequests::new();
        for _ in 0..5 {
            assert_eq!(with_ctx(|c| lr.pick(&set, &Tried::default(), c)), Some(2));
        }
    }

    #[test]
    fn ties_rotate() {
        let set = backends(&[1, 1, 1]);
        let lr = LeastRequests::new();
        let mut seen: Vec<usize> = (0..3)
            .map(|_| with_ctx(|c| lr.pick(&set, &Tried::default(), c)).unwrap())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2]);
    }

    #[test]
    fn weight_scales_load() {
        let set = backends(&[1, 4]);
        let _g: Vec<_> = (0..3).map(|_| set[1].start()).collect();
        let _h = set[0].start();
        // backend 1 carries 3/4 per weight unit, backend 0 carries 1/1.
        assert_eq!(
            with_ctx(|c| LeastRequests::new().pick(&set, &Tried::default(), c)),
            Some(1)
        );
    }

    #[test]
    fn skips_tried_and_unhealthy() {
        let set = backends(&[1, 1, 1]);
        set[0].set_healthy(false);
        let mut tried = Tried::default();
        tried.insert(1);
        assert_eq!(
            with_ctx(|c| LeastRequests::new().pick(&set, &tried, c)),
            Some(2)
        );
    }
}
