//! The clients being refused right now, for the status page: 429s per
//! client over the last minutes. Written only on the refusal path, bounded
//! so a flood of invented client keys cannot grow it without end.

use dashmap::DashMap;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Clients remembered at most.
const MAX_CLIENTS: usize = 10_000;
/// A client not refused for this long is forgotten.
pub const WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct Limited {
    clients: DashMap<String, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    policy: String,
    rejections: u64,
    last: Instant,
}

/// One limited client as `/limited` shows it.
#[derive(Debug, Serialize, PartialEq)]
pub struct LimitedView {
    pub client: String,
    pub policy: String,
    pub rejections: u64,
    pub seconds_since_last: u64,
}

impl Limited {
    /// Counts a refusal of `client` under `policy` at `now`.
    pub fn record(&self, client: &str, policy: &str, now: Instant) {
        if let Some(mut entry) = self.clients.get_mut(client) {
            if now.duration_since(entry.last) > WINDOW {
                entry.rejections = 0;
            }
            entry.rejections += 1;
            entry.last = now;
            entry.policy.clear();
            entry.policy.push_str(policy);
            return;
        }
        if self.clients.len() >= MAX_CLIENTS {
            self.clients
                .retain(|_, e| now.duration_since(e.last) <= WINDOW);
            if self.clients.len() >= MAX_CLIENTS {
                return;
            }
        }
        self.clients.insert(
            client.to_owned(),
            Entry {
                policy: policy.to_owned(),
                rejections: 1,
                last: now,
            },
        );
    }

    /// The `n` clients refused most within the window before `now`.
    pub fn top(&self, n: usize, now: Instant) -> Vec<LimitedView> {
        let mut list: Vec<LimitedView> = self
            .clients
            .iter()
            .filter(|e| now.duration_since(e.last) <= WINDOW)
            .map(|e| LimitedView {
                client: e.key().clone(),
                policy: e.policy.clone(),
                rejections: e.rejections,
                seconds_since_last: now.duration_since(e.last).as_secs(),
            })
            .collect();
        list.sort_by(|a, b| {
            b.rejections
                .cmp(&a.rejections)
                .then(a.client.cmp(&b.client))
        });
        list.truncate(n);
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_refused_recent_clients_come_first_and_old_ones_go() {
        let limited = Limited::default();
        let start = Instant::now();
        for _ in 0..3 {
            limited.record("ip:10.0.0.1", "default", start);
        }
        limited.record("ip:10.0.0.2", "api", start);
        let top = limited.top(10, start + Duration::from_secs(1));
        assert_eq!(top[0].client, "ip:10.0.0.1");
        assert_eq!(top[0].rejections, 3);
        assert_eq!(top[1].policy, "api");
        assert_eq!(top[1].seconds_since_last, 1);
        assert_eq!(limited.top(1, start).len(), 1);
        let later = start + WINDOW + Duration::from_secs(1);
        assert!(limited.top(10, later).is_empty());
        limited.record("ip:10.0.0.1", "default", later);
        assert_eq!(
            limited.top(10, later)[0].rejections,
            1,
            "a new spell starts at 1"
        );
    }

    #[test]
    fn a_flood_of_new_keys_stays_bounded() {
        let limited = Limited::default();
        let now = Instant::now();
        for i in 0..(MAX_CLIENTS + 500) {
            limited.record(&format!("header:x-key:{i}"), "default", now);
        }
        assert_eq!(limited.clients.len(), MAX_CLIENTS);
    }
}
