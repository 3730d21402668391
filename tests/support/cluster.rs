//! A small Redis Cluster for tests: three masters on free ports, the 16384
//! slots split between them, joined with `CLUSTER MEET`.
//!
//! Each node's cluster bus gets a free port of its own (`--cluster-port`):
//! Redis' default, the client port + 10000, does not exist for the quarter of
//! the kernel's ephemeral ports above 55535, and such a node exits at start.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;

pub struct RedisCluster {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    dir: TempDir,
}

const NODES: u16 = 3;
const SLOTS: u16 = 16384;

fn connection(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|c| c.get_connection())
        .expect("cluster node connection")
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Each free port is found on its own, so the kernel may hand the
        // same one out twice: keep asking until all of them differ.
        let mut taken: Vec<u16> = Vec::new();
        while taken.len() < 2 * usize::from(NODES) {
            let port = free_port();
            if !taken.contains(&port) {
                taken.push(port);
            }
        }
        let (ports, bus_ports) = taken.split_at(usize::from(NODES));
        let mut children = Vec::new();
        for (port, bus_port) in ports.iter().zip(bus_ports) {
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir(&node_dir).expect("node dir");
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&node_dir)
                .arg("--logfile")
                .arg(node_dir.join("redis.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed");
            children.push(child);
        }
        let mut cluster = Self {
            children,
            ports: ports.to_vec(),
            dir,
        };
        cluster.wait("every node answers", |port| {
            redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
        let share = SLOTS / NODES;
        for (i, port) in cluster.ports.iter().enumerate() {
            let first = share * i as u16;
            let last = if i as u16 == NODES - 1 {
                SLOTS - 1
            } else {
                first + share - 1
            };
            let () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query(&mut connection(*port))
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        let mut first = connection(cluster.ports[0]);
        for (port, bus_port) in ports.iter().zip(bus_ports).skip(1) {
            let () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(*port)
                .arg(*bus_port)
                .query(&mut first)
                .expect("CLUSTER MEET");
        }
        cluster.wait("cluster_state:ok on every node", |port| {
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query::<String>(&mut connection(port))
                .is_ok_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{NODES}"))
                })
        });
        cluster
    }

    /// Waits until `ready` holds on every node; a node that exited, or a
    /// wait past the deadline, fails with the nodes' logs, which say why.
    fn wait(&mut self, what: &str, ready: impl Fn(u16) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ports.iter().all(|p| ready(*p)) {
            let exited = self
                .children
                .iter_mut()
                .any(|c| c.try_wait().ok().flatten().is_some());
            assert!(
                !exited && Instant::now() < deadline,
                "{} waiting for {what}; the nodes' logs:\n{}",
                if exited { "a node exited" } else { "timed out" },
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        self.ports
            .iter()
            .map(|port| {
                let log = self.dir.path().join(port.to_string()).join("redis.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                format!("--- node {port}\n{text}")
            })
            .collect()
    }

    /// The seed URLs, with `user` if given (its password goes separately).
    pub fn urls(&self, user: Option<&str>) -> Vec<String> {
        let user = user.map(|u| format!("{u}@")).unwrap_or_default();
        self.ports
            .iter()
            .map(|p| format!("redis://{user}127.0.0.1:{p}/"))
            .collect()
    }

    /// Runs one `ACL …` line on every node (ACL users are per node).
    pub fn acl(&self, line: &str) {
        for port in &self.ports {
            let mut words = line.split_whitespace();
            assert_eq!(words.next(), Some("ACL"), "{line}");
            let mut cmd = redis::cmd("ACL");
            for word in words {
                cmd.arg(word);
            }
            let () = cmd.query(&mut connection(*port)).expect("ACL SETUSER");
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
