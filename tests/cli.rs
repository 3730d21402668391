//! The command line, run as users run it: the real binary against a real sidecar.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use support::{Backend, Sidecar, TestEnv, BIN};

fn av(env: &TestEnv, args: &[&str]) -> Output {
    av_stdin(env, args, None)
}

fn av_stdin(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> Output {
    support::run_with_stdin(
        Command::new(BIN)
            .args(args)
            .env("AGENTVAULT_SOCKET", &env.sidecar.socket),
        stdin.unwrap_or_default().as_bytes(),
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn put_get_ls_rm_round_trip() {
    let env = TestEnv::start(Backend::Embedded);
    let out = av(
        &env,
        &[
            "put",
            "demo/openai-key",
            "sk-test-123",
            "--type",
            "api_key",
            "--tier",
            "critical",
            "--tag",
            "team=research",
            "--description",
            "demo key",
            "--expires-in",
            "30d",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "demo/openai-key version 1");

    let out = av(&env, &["get", "demo/openai-key"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "sk-test-123\n", "get prints the bare value");

    let out = av(&env, &["get", "demo/openai-key", "--json"]);
    let secret: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(secret["type"], "api_key");
    assert_eq!(secret["tier"], "critical");
    assert_eq!(secret["tags"]["team"], "research");
    assert_eq!(secret["description"], "demo key");
    let expires =
        chrono::DateTime::parse_from_rfc3339(secret["expires_at"].as_str().unwrap()).unwrap();
    let days = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!(
        (29 * 24..=30 * 24).contains(&days),
        "expires in about 30 days, got {days} hours"
    );

    // From stdin, with `-` and with no value argument; one trailing newline is dropped.
    let out = av_stdin(&env, &["put", "demo/multi", "-"], Some("line1\nline2\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&av(&env, &["get", "demo/multi"])), "line1\nline2\n");
    let out = av_stdin(&env, &["put", "other/x"], Some("from-stdin"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&av(&env, &["get", "other/x", "--version", "1"])),
        "from-stdin\n"
    );

    assert_eq!(
        stdout(&av(&env, &["ls"])),
        "demo/multi\ndemo/openai-key\nother/x\n"
    );
    assert_eq!(
        stdout(&av(&env, &["ls", "demo/"])),
        "demo/multi\ndemo/openai-key\n"
    );
    let long = stdout(&av(&env, &["ls", "-l", "demo/openai"]));
    let row: Vec<&str> = long
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..4],
        ["demo/openai-key", "1", "critical", "api_key"],
        "{long}"
    );

    let out = av(&env, &["rm", "demo/multi"]);
    assert!(out.status.success());
    assert_eq!(stdout(&av(&env, &["ls", "demo/"])), "demo/openai-key\n");

    let health: serde_json::Value = serde_json::from_slice(&av(&env, &["health"]).stdout).unwrap();
    assert_eq!(health["status"], "ok");
}

#[test]
fn errors_have_clear_messages_and_exit_codes() {
    let env = TestEnv::start(Backend::Embedded);
    let out = av(&env, &["get", "nope"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("not_found"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    assert_eq!(av(&env, &["rm", "nope"]).status.code(), Some(3));

    av(&env, &["put", "c", "v1"]);
    let out = av(&env, &["put", "c", "v2", "--cas", "7"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(stderr(&out).contains("conflict"));

    let out = av(&env, &["put", "bad//path", "v"]);
    assert_eq!(out.status.code(), Some(2), "bad input exits 2");
    assert!(stderr(&out).contains("invalid_request"));

    let out = av(&env, &["put", "x", "v", "--tag", "novalue"]);
    assert_eq!(out.status.code(), Some(2));

    let out = av(&env, &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");

    let out = Command::new(BIN)
        .args(["--socket", "/nonexistent/agentvault.sock", "get", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains("cannot reach the sidecar"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn keygen_writes_a_private_keyring_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyring.json");
    let out = Command::new(BIN)
        .args(["keygen"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read(&file).unwrap();
    let out = Command::new(BIN)
        .args(["keygen"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

/// Two sidecars given one keyring read each other's secrets through one Redis.
#[test]
fn sidecars_sharing_a_keyring_share_secrets_through_redis() {
    let redis = support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.json");
    assert!(Command::new(BIN)
        .args(["keygen"])
        .arg(&keyring)
        .status()
        .unwrap()
        .success());
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let url = redis.url();
    let k = keyring.display().to_string();
    let a = Sidecar::dev(&a_dir, &["--redis-url", &url, "--keyring", &k]);
    let b = Sidecar::dev(&b_dir, &["--redis-url", &url, "--keyring", &k]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        support::put_value(&a.client(), "team/key", "shared-value").await;
        let got = support::get(&b.client(), "/v1/secrets/team/key").await;
        assert_eq!(got.json()["value"], "shared-value");
    });
}

/// `serve` reads a config file (TOML here); flags and AGENTVAULT_* variables override it.
#[test]
fn serve_runs_from_a_config_file_with_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master.json");
    assert!(Command::new(BIN)
        .args(["keygen"])
        .arg(&master)
        .status()
        .unwrap()
        .success());
    // serve takes the keyring of its tenant, not the master keyring.
    let keyring = dir.path().join("keyring.json");
    assert!(Command::new(BIN)
        .args(["keygen", "--tenant", "acme", "--master"])
        .arg(&master)
        .arg(&keyring)
        .status()
        .unwrap()
        .success());
    let config = dir.path().join("agentvault.toml");
    std::fs::write(
        &config,
        format!(
            "socket = \"{}/from-file.sock\"\nkeyring = \"{}\"\ndata_dir = \"{}/data\"\nmetrics_addr = \"off\"\n\
             [identity]\nspiffe_id = \"spiffe://example.org/agent/acme/planner\"\n",
            dir.path().display(),
            keyring.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let socket = dir.path().join("from-flag.sock");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("AGENTVAULT_SOCKET", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let out = Command::new(BIN)
        .args(["--socket"])
        .arg(&socket)
        .arg("health")
        .output()
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let health: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        health["identity"],
        "spiffe://example.org/agent/acme/planner"
    );
    assert_eq!(health["storage"], "embedded");
    assert!(status.success(), "serve exits 0 on SIGTERM");
    assert!(!dir.path().join("from-file.sock").exists());

    // A config that names no identity is a clear start-up error.
    std::fs::write(&config, format!("keyring = \"{}\"\n", keyring.display())).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("identity.spiffe_id"),
        "{}",
        stderr(&out)
    );
}

/// The README's `serve` config starts as written, from the directory it names
/// its relative paths from (only the metrics port is turned off, so parallel
/// tests do not contend for it).
#[test]
fn readme_serve_config_starts_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme
        .find("## Running in production")
        .expect("serve section")..];
    let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let yaml = &section[start..start + section[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agentvault.yaml"), yaml).unwrap();
    let clean = |cmd: &mut Command| {
        cmd.current_dir(dir.path())
            .env_remove("AGENTVAULT_SOCKET")
            .env_remove("AGENTVAULT_REDIS_URL")
            .env_remove("AGENTVAULT_KEYRING")
            .env_remove("AGENTVAULT_DATA_DIR")
            .env_remove("SPIFFE_ENDPOINT_SOCKET");
    };
    for args in [
        &["keygen", "master.json"][..],
        &[
            "keygen",
            "--tenant",
            "acme",
            "--master",
            "master.json",
            "keyring.json",
        ],
    ] {
        let mut keygen = Command::new(BIN);
        keygen.args(args);
        clean(&mut keygen);
        assert!(keygen.status().unwrap().success(), "{args:?}");
    }

    let mut serve = Command::new(BIN);
    serve
        .args(["serve", "--config", "agentvault.yaml"])
        .env("AGENTVAULT_METRICS_ADDR", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    clean(&mut serve);
    let mut child = serve.spawn().unwrap();
    let socket = dir.path().join("agentvault.sock");
    for _ in 0..400 {
        if socket.exists() || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(&socket)
        .arg("health")
        .output()
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let served = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "health: {}\nserve: {}",
        stderr(&out),
        String::from_utf8_lossy(&served.stderr)
    );
    let health: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        health["identity"],
        "spiffe://example.org/agent/acme/planner"
    );
    assert_eq!(health["tenant"], "acme");
    assert!(
        dir.path().join("agentvault-data").is_dir(),
        "data_dir as written"
    );
}
