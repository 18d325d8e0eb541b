//! The decisions of a worker's concurrent requests, taken in one script call.
//!
//! Why: a pipelined connection already sends many decisions in one write,
//! but Redis still runs one `EVALSHA` per decision, and what it spends
//! entering the script (parsing the command, finding the script, setting up
//! Lua, reading `TIME`) is most of a small script's cost. Under load that
//! made Redis, not the network, the limit. So a worker collects the
//! decisions its requests ask for while its runtime goes around once, and
//! sends them as the keys and arguments of one call of a script that runs
//! the token bucket for each in turn. Redis runs a script atomically, so
//! every decision stays exact: two decisions for the same client in one
//! batch are taken one after the other, the second seeing the first's
//! tokens gone.
//!
//! How: the first decision on a thread opens a batch and spawns its sender;
//! the sender yields once (Tokio runs it again after the tasks already woken
//! and the next I/O poll), closes the batch and sends it. Decisions asked
//! for meanwhile on the same thread join the open batch. A request that
//! gives up (its client gone) leaves its entry to be decided anyway, as a
//! single call already sent would have been. A call gets the limiter's
//! timeout, as each request does: when Redis does not answer in time the
//! requests are decided by the failure policy, and a call still waiting
//! for its connection then (Redis restarting) is dropped unsent, so they
//! are not charged in Redis as well.
//!
//! In a Redis Cluster the keys of one script must share a slot, and the
//! buckets of different clients rarely do: there each decision is its own
//! call, as before.

use super::link::Link;
use prometheus_client::metrics::counter::Counter;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// KEYS: the buckets; ARGV: three per key, in order — capacity (tokens),
/// refill (milli-tokens per second), cost (milli-tokens one request takes).
/// Returns {allowed (0/1), milli-tokens left} for each key, flattened.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 3
  local cap = tonumber(ARGV[base + 1]) * 1000
  local rate = tonumber(ARGV[base + 2])
  local need = tonumber(ARGV[base + 3])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1])
  local ts = tonumber(state[2])
  if tokens == nil or ts == nil then
    tokens = cap
    ts = now
  end
  if tokens > cap then tokens = cap end
  if tokens >= cap then
    ts = now
  elseif now > ts then
    local elapsed = now - ts
    local full_after = math.ceil((cap - tokens) * 1000000 / rate)
    if elapsed >= full_after then
      tokens = cap
      ts = now
    else
      local added = math.floor(elapsed * rate / 1000000)
      tokens = tokens + added
      ts = math.min(now, ts + math.ceil(added * 1000000 / rate))
    end
  end
  local allowed = 0
  if tokens >= need then
    tokens = tokens - need
    allowed = 1
  end
  redis.call('HSET', key, 'tokens', string.format('%.0f', tokens), 'ts', string.format('%.0f', ts))
  redis.call('PEXPIRE', key, math.ceil((cap - tokens) / rate * 1000) + 1000)
  out[#out + 1] = allowed
  out[#out + 1] = tokens
end
return out
";

/// Most decisions in one call; more start the next batch.
const MAX_BATCH: usize = 256;

/// One decision to take: the bucket's Redis key and its arguments.
pub struct Ask {
    pub key: Vec<u8>,
    pub capacity: u32,
    pub refill_milli: u32,
    pub cost_milli: u64,
}

/// Whether the bucket allowed the request, and the milli-tokens left.
pub type Answer = Result<(bool, i64), String>;

struct Waiting {
    ask: Ask,
    answer: oneshot::Sender<Answer>,
}

/// A batch still taking decisions; `None` once its sender took them.
type Open = Mutex<Option<Vec<Waiting>>>;

thread_local! {
    /// This thread's open batch, by batcher id.
    static OPEN: RefCell<Vec<(usize, Arc<Open>)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// Takes decisions in Redis, batched per thread; clones share the batches.
#[derive(Clone)]
pub struct Batcher {
    inner: Arc<Inner>,
}

struct Inner {
    id: usize,
    link: Link,
    script: redis::Script,
    /// Longest wait for a call's answer. The requests in the batch wait as
    /// long and then decide without Redis; a call still waiting for its
    /// connection (Redis restarting) is then dropped unsent, so those
    /// requests are not charged in Redis too.
    timeout: Duration,
    /// Script calls sent (`gateway_ratelimit_shared_calls_total`).
    calls: Counter,
}

impl Batcher {
    pub fn new(link: Link, timeout: Duration) -> Batcher {
        Batcher {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                link,
                script: redis::Script::new(SCRIPT),
                timeout,
                calls: Counter::default(),
            }),
        }
    }

    /// Counts the script calls sent.
    pub fn calls(&self) -> Counter {
        self.inner.calls.clone()
    }

    /// Takes one decision. Must be called inside a Tokio runtime; the caller
    /// bounds the wait.
    pub async fn decide(&self, ask: Ask) -> Answer {
        let (answer, receiver) = oneshot::channel();
        let waiting = Waiting { ask, answer };
        if self.inner.link.is_cluster() {
            self.inner.send(vec![waiting]).await;
        } else if let Some(fresh) = self.join(waiting) {
            let inner = Arc::clone(&self.inner);
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                let batch = fresh
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .unwrap_or_default();
                inner.send(batch).await;
            });
        }
        receiver.await.unwrap_or_else(|_| Err(dropped()))
    }

    /// Adds the decision to this thread's open batch; if there is none (or
    /// it is full), opens one with it and returns it for the caller to send.
    fn join(&self, waiting: Waiting) -> Option<Arc<Open>> {
        let id = self.inner.id;
        OPEN.with_borrow_mut(|open| {
            let slot = match open.iter().position(|(own, _)| *own == id) {
                Some(at) => at,
                None => {
                    open.push((id, Arc::new(Mutex::new(None))));
                    open.len() - 1
                }
            };
            let mut waiting = Some(waiting);
            {
                let mut batch = open[slot].1.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(batch) = batch.as_mut().filter(|b| b.len() < MAX_BATCH) {
                    batch.extend(waiting.take());
                }
            }
            let waiting = waiting?;
            let fresh = Arc::new(Mutex::new(Some(vec![waiting])));
            open[slot].1 = Arc::clone(&fresh);
            Some(fresh)
        })
    }
}

impl Inner {
    /// One script call for the whole batch; every waiter gets its answer,
    /// or the call's error.
    async fn send(&self, batch: Vec<Waiting>) {
        if batch.is_empty() {
            return;
        }
        let mut invocation = self.script.prepare_invoke();
        for Waiting { ask, .. } in &batch {
            invocation
                .key(ask.key.as_slice())
                .arg(ask.capacity)
                .arg(ask.refill_milli)
                .arg(ask.cost_milli);
        }
        self.calls.inc();
        let answer: Result<Vec<i64>, String> =
            match tokio::time::timeout(self.timeout, self.link.invoke(&invocation)).await {
                Ok(answer) => answer.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            };
        let error = match answer {
            Ok(values) if values.len() == 2 * batch.len() => {
                for (waiting, pair) in batch.into_iter().zip(values.chunks_exact(2)) {
                    let _ = waiting.answer.send(Ok((pair[0] == 1, pair[1])));
                }
                return;
            }
            Ok(values) => format!(
                "Redis answered {} values for {} decisions",
                values.len(),
                batch.len()
            ),
            Err(error) => error,
        };
        for waiting in batch {
            let _ = waiting.answer.send(Err(error.clone()));
        }
    }
}

fn dropped() -> String {
    "the decision's batch was dropped before Redis answered".to_owned()
}

#[cfg(test)]
mod tests {
    use super::super::link::Target;
    use super::*;

    fn batcher() -> Option<Batcher> {
        let url = crate::test_env::redis()?;
        let link =
            Link::open(&Target::parse(&url).expect("URL"), Duration::from_secs(2)).expect("link");
        Some(Batcher::new(link, Duration::from_secs(2)))
    }

    /// A single-threaded runtime, as each proxy worker has.
    fn worker_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn ask(key: &str, capacity: u32) -> Ask {
        Ask {
            key: key.as_bytes().to_vec(),
            capacity,
            // A token each 10 s: none refills during the test, and the
            // keys expire a couple of minutes after it.
            refill_milli: 100,
            cost_milli: 1000,
        }
    }

    /// 300 decisions asked at once on one worker-like runtime, for three
    /// clients of capacity 10: exactly 10 allowed each, in fewer calls than
    /// decisions (more than `MAX_BATCH` were waiting, so at least two).
    #[test]
    fn concurrent_decisions_share_calls_and_stay_exact() {
        let Some(batcher) = batcher() else { return };
        let runtime = worker_runtime();
        let prefix = format!("gateway:test-batch-{}:", fastrand::u64(..));
        let answers = runtime.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..300 {
                let batcher = batcher.clone();
                let key = format!("{prefix}{}", i % 3);
                tasks.push(tokio::spawn(async move {
                    (i % 3, batcher.decide(ask(&key, 10)).await)
                }));
            }
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await.expect("task"));
            }
            answers
        });
        for client in 0..3 {
            let allowed = answers
                .iter()
                .filter(|(c, a)| *c == client && matches!(a, Ok((true, _))))
                .count();
            assert_eq!(allowed, 10, "client {client}: {answers:?}");
        }
        assert!(
            answers.iter().all(|(_, a)| a.is_ok()),
            "every decision answered: {answers:?}"
        );
        let calls = batcher.calls().get();
        assert!((2..=10).contains(&calls), "{calls} calls for 300 decisions");
    }

    /// A decision alone still goes out at once, answered by a call of its own.
    #[test]
    fn a_lone_decision_is_one_call() {
        let Some(batcher) = batcher() else { return };
        let runtime = worker_runtime();
        let key = format!("gateway:test-batch-{}:lone", fastrand::u64(..));
        let first = runtime.block_on(batcher.decide(ask(&key, 1)));
        assert_eq!(first, Ok((true, 0)));
        let second = runtime.block_on(batcher.decide(ask(&key, 1)));
        assert!(
            matches!(second, Ok((false, left)) if left < 1000),
            "{second:?}"
        );
        assert_eq!(batcher.calls().get(), 2);
    }
}
