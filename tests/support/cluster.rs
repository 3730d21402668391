//! A small Redis Cluster for tests: three masters on free ports, the 16384
//! slots split between them, joined with `CLUSTER MEET`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;

pub struct RedisCluster {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: TempDir,
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
        // same one out twice: keep asking until the nodes' ports differ.
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < usize::from(NODES) {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let mut children = Vec::new();
        for port in &ports {
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
        let cluster = Self {
            children,
            ports,
            _dir: dir,
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
        for port in &cluster.ports[1..] {
            let () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(*port)
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

    fn wait(&self, what: &str, ready: impl Fn(u16) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ports.iter().all(|p| ready(*p)) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
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
