//! `rate_limit.shared: redis+cluster://…`: buckets spread over a real
//! three-node Redis Cluster that the test starts on loopback ports, exact
//! budgets across gateways, and a bucket whose slot moves to another node
//! mid-run (`MOVED`) keeping its tokens.

use crate::support::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Three `redis-server --cluster-enabled yes` primaries covering all slots;
/// killed on drop.
struct Cluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let children = ports
            .iter()
            .map(|port| {
                let node_dir = dir.path().join(port.to_string());
                std::fs::create_dir(&node_dir).unwrap();
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .arg("--dir")
                    .arg(&node_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server must be installed for the Redis Cluster tests")
            })
            .collect();
        let cluster = Cluster {
            ports,
            children,
            _dir: dir,
        };
        for &port in &cluster.ports {
            let deadline = Instant::now() + Duration::from_secs(5);
            while cli(port, &["ping"]) != "PONG" {
                assert!(
                    Instant::now() < deadline,
                    "redis-server on {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed for the Redis Cluster tests");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .ports
            .iter()
            .all(|&p| cli(p, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not form");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    fn url(&self, seeds: usize) -> String {
        let hosts: Vec<String> = self.ports[..seeds]
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The node holding `key`, by port.
    fn owner(&self, key: &str) -> u16 {
        let slot: u16 = cli(self.ports[0], &["cluster", "keyslot", key])
            .parse()
            .unwrap();
        *self
            .ports
            .iter()
            .find(|&&p| cli(p, &["cluster", "countkeysinslot", &slot.to_string()]) != "0")
            .unwrap_or_else(|| panic!("no node holds {key}"))
    }

    /// Moves `key`'s slot, with its keys, from `from` to `to` (what
    /// `redis-cli --cluster reshard` does for one slot).
    fn move_slot_of(&self, key: &str, from: u16, to: u16) {
        let slot = cli(from, &["cluster", "keyslot", key]);
        let from_id = cli(from, &["cluster", "myid"]);
        let to_id = cli(to, &["cluster", "myid"]);
        cli(to, &["cluster", "setslot", &slot, "importing", &from_id]);
        cli(from, &["cluster", "setslot", &slot, "migrating", &to_id]);
        let migrated = cli(
            from,
            &[
                "migrate",
                "127.0.0.1",
                &to.to_string(),
                "",
                "0",
                "5000",
                "keys",
                key,
            ],
        );
        assert_eq!(migrated, "OK");
        for &port in &self.ports {
            cli(port, &["cluster", "setslot", &slot, "node", &to_id]);
        }
    }

    /// The node holding the one key matching `pattern`.
    fn owner_of_pattern(&self, pattern: &str) -> u16 {
        *self
            .ports
            .iter()
            .find(|&&p| self.keys_on(p, pattern) == 1)
            .unwrap_or_else(|| panic!("no node holds {pattern}"))
    }

    fn keys_on(&self, port: u16, pattern: &str) -> usize {
        cli(port, &["--scan", "--pattern", pattern]).lines().count()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `redis-cli -p PORT ARGS…`, trimmed stdout.
fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed for the Redis Cluster tests");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn free_port() -> u16 {
    // Cluster nodes also listen on PORT + 10000 (the bus): keep both free.
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn yaml(
    backend: &TestBackend,
    url: &str,
    prefix: &str,
    db: &tempfile::TempDir,
    capacity: u32,
) -> String {
    format!(
        "backends:\n  - {}\nlog:\n  access: false\nrate_limit:\n  key: header:X-API-Key\n  unknown_keys: own\n  database: sqlite://{}\n  shared: {url}\n  shared_prefix: {prefix}\n  shared_timeout: 5s\n  on_shared_failure: deny\n  default:\n    capacity: {capacity}\n    refill_per_second: 0.001\n",
        backend.url(),
        db.path().join("l.db").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_spread_over_the_cluster_and_budgets_stay_exact_across_gateways() {
    let cluster = Cluster::start();
    let backend = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    // One gateway knows every node, the other one seed: it learns the rest.
    let one = Gateway::start(&yaml(&backend, &cluster.url(3), "spread", &db, 3));
    let two = Gateway::start(&yaml(&backend, &cluster.url(1), "spread", &db, 3));
    let client = client();
    let mut allowed = vec![0; 30];
    for round in 0..6 {
        for (c, count) in allowed.iter_mut().enumerate() {
            let gw = if (round + c) % 2 == 0 { &one } else { &two };
            match call_with_api_key(&client, gw, &format!("client-{c}")).await {
                200 => *count += 1,
                429 => {}
                other => panic!("client-{c}: status {other}"),
            }
        }
    }
    assert!(allowed.iter().all(|&n| n == 3), "{allowed:?}");
    let per_node: Vec<usize> = cluster
        .ports
        .iter()
        .map(|&p| cluster.keys_on(p, "gateway:spread:*"))
        .collect();
    assert_eq!(per_node.iter().sum::<usize>(), 30, "{per_node:?}");
    assert!(
        per_node.iter().all(|&n| n > 0),
        "buckets on every node: {per_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_whose_slot_moves_to_another_node_keeps_its_tokens() {
    let cluster = Cluster::start();
    let backend = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&yaml(&backend, &cluster.url(3), "moving", &db, 10));
    let client = client();
    for _ in 0..4 {
        assert_eq!(call_with_api_key(&client, &gw, "mover").await, 200);
    }
    let key = cli(
        cluster.owner_of_pattern("gateway:moving:*"),
        &["--scan", "--pattern", "gateway:moving:*"],
    );
    let from = cluster.owner(&key);
    let to = *cluster.ports.iter().find(|&&p| p != from).unwrap();
    cluster.move_slot_of(&key, from, to);
    assert_eq!(cluster.owner(&key), to);
    let mut allowed = 0;
    for _ in 0..10 {
        match call_with_api_key(&client, &gw, "mover").await {
            200 => allowed += 1,
            429 => {}
            other => panic!("status {other} after the slot moved"),
        }
    }
    assert_eq!(allowed, 6, "the moved bucket kept its 6 tokens");
    assert_eq!(cluster.keys_on(from, "gateway:moving:*"), 0);
    assert_eq!(cluster.keys_on(to, "gateway:moving:*"), 1);
}
