//! The command line explains itself (issue 18, item 4): the real binary
//! against a real sidecar, as a user at a terminal or a script would run it.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use serde_json::Value;
use support::{Backend, Sidecar, TestEnv, BIN};

fn av(env: &TestEnv, args: &[&str]) -> Output {
    av_with(env, args, None, &[])
}

fn av_with(env: &TestEnv, args: &[&str], stdin: Option<&str>, vars: &[(&str, &str)]) -> Output {
    support::run_with_stdin(
        Command::new(BIN)
            .args(args)
            .env("AGENTVAULT_SOCKET", &env.sidecar.socket)
            .env_remove("AGENTVAULT_TOKEN")
            .envs(vars.iter().copied()),
        stdin.unwrap_or_default().as_bytes(),
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> String {
    support::assert_success("agentvault", &out);
    stdout(&out)
}

fn json(out: Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn denials_print_the_policys_reasons() {
    let env = TestEnv::start(Backend::Embedded);
    ok(av(
        &env,
        &["put", "lab/notes", "n", "--scope", "researcher"],
    ));
    // A read the caller may not make answers as a missing path (exit 3); a
    // refused write prints the policy's reasons (exit 4).
    let out = av(&env, &["get", "lab/notes"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("not_found"), "{}", stderr(&out));
    let out = av(&env, &["put", "lab/notes", "n2", "--scope", "writer"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("only role researcher may change this secret's scope"),
        "{}",
        stderr(&out)
    );

    ok(av(&env, &["put", "prod/key", "k", "--tier", "critical"]));
    let out = av(
        &env,
        &[
            "token",
            "create",
            "--scope",
            "secrets:read:prod/*",
            "--ttl",
            "10m",
        ],
    );
    let token = ok(out).trim().to_owned();
    let out = av_with(
        &env,
        &["get", "prod/key"],
        None,
        &[("AGENTVAULT_TOKEN", &token)],
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("the token is waiting for approval"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(&token), "the token is never echoed");
}

#[test]
fn put_prompts_without_echo_on_a_terminal() {
    let env = TestEnv::start(Backend::Embedded);
    // `script` gives the command a pseudo-terminal; the value is typed only
    // once the prompt is up, so any echo of it would show in the transcript.
    let command = format!("{BIN} put term/secret");
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("AGENTVAULT_SOCKET", &env.sidecar.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`script` (util-linux) is needed to give the CLI a terminal");
    let mut transcript = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("(not echoed): ") {
        assert!(Instant::now() < deadline, "no prompt: {seen:?}");
        let n = transcript.read(&mut buf).expect("read transcript");
        assert!(n > 0, "script ended before the prompt: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(b"typed-s3cret\n").expect("type the value");
    drop(input);
    let mut rest = String::new();
    transcript
        .read_to_string(&mut rest)
        .expect("read transcript");
    assert!(child.wait().expect("script").success(), "{rest}");
    assert!(rest.contains("term/secret version 1"), "{rest}");
    assert!(
        !rest.contains("typed-s3cret"),
        "the value was echoed: {rest}"
    );
    assert_eq!(ok(av(&env, &["get", "term/secret"])), "typed-s3cret\n");
}

#[test]
fn empty_stdin_is_an_error_not_an_empty_secret() {
    let env = TestEnv::start(Backend::Embedded);
    for args in [&["put", "x/empty"][..], &["put", "x/empty", "-"]] {
        let out = av_with(&env, args, Some(""), &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("stdin was empty"), "{}", stderr(&out));
    }
    let out = av_with(&env, &["put", "x/empty"], Some("\n"), &[]);
    assert_eq!(out.status.code(), Some(2), "a lone newline is empty too");
    assert_eq!(av(&env, &["get", "x/empty"]).status.code(), Some(3));
    // An empty value given as an argument is deliberate.
    ok(av(&env, &["put", "x/empty", ""]));
    assert_eq!(ok(av(&env, &["get", "x/empty"])), "\n");
}

#[test]
fn bad_paths_exit_with_the_bad_input_code() {
    let env = TestEnv::start(Backend::Embedded);
    for args in [
        &["get", "has space"][..],
        &["get", "a/../b"],
        &["put", "bad//path", "v"],
        &["rm", "ü/x"],
        &["versions", "a?b"],
    ] {
        let out = av(&env, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("invalid_request"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_missing_or_stale_socket_is_named_with_how_to_start_a_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for (socket, why) in [
        (&missing, "no such socket"),
        (&stale, "nothing listens on it"),
    ] {
        let out = Command::new(BIN)
            .arg("--socket")
            .arg(socket)
            .args(["get", "x"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(5));
        let err = stderr(&out);
        assert!(err.contains(&socket.display().to_string()), "{err}");
        assert!(err.contains(why), "{err}");
        assert!(
            err.contains(&format!("agentvault dev --socket {}", socket.display())),
            "{err}"
        );
    }
}

#[test]
fn json_on_every_command_that_prints_data() {
    let env = TestEnv::start(Backend::Embedded);
    let put = json(av(&env, &["put", "j/a", "v1", "--json"]));
    assert_eq!(
        (put["path"].as_str(), put["version"].as_u64()),
        (Some("j/a"), Some(1))
    );
    assert_eq!(json(av(&env, &["--json", "get", "j/a"]))["value"], "v1");
    let rotated = json(av(&env, &["rotate", "j/a", "v2", "--json"]));
    assert_eq!(rotated["new_version"], 2);
    assert_eq!(
        json(av(&env, &["rollback", "j/a", "1", "--json"]))["version"],
        1
    );
    let versions = json(av(&env, &["versions", "j/a", "--json"]));
    assert_eq!(versions.as_array().map(Vec::len), Some(2));
    let listed = json(av(&env, &["ls", "j/", "--json"]));
    assert_eq!(listed["items"][0]["path"], "j/a");
    let updated = json(av(&env, &["update", "j/a", "--tier", "standard", "--json"]));
    assert_eq!(updated["tier"], "standard");
    let dir = tempfile::tempdir().unwrap();
    let dotenv = dir.path().join(".env");
    std::fs::write(&dotenv, "A=1\nB=2\n").unwrap();
    let report = json(av(
        &env,
        &[
            "import",
            dotenv.to_str().unwrap(),
            "--namespace",
            "j/env",
            "--json",
        ],
    ));
    assert_eq!(report["created"], 2);
    let token = json(av(
        &env,
        &[
            "token",
            "create",
            "--scope",
            "secrets:read:j/*",
            "--ttl",
            "5m",
            "--json",
        ],
    ));
    assert!(token["token"].as_str().unwrap().starts_with("avt_"));
    let grant = json(av(&env, &["grant", "other-agent", "j/a", "--json"]));
    assert!(grant["grant_id"].is_string());
    assert!(json(av(&env, &["grants", "--json"])).is_array());
    assert!(json(av(&env, &["approvals", "--json"])).is_array());
    assert_eq!(json(av(&env, &["health", "--json"]))["status"], "ok");
    let keyring = dir.path().join("k.json");
    let made = json(av(&env, &["keygen", keyring.to_str().unwrap(), "--json"]));
    assert!(made["active_key"].is_string());
    let tenant_ring = dir.path().join("acme.json");
    let derived = json(av(
        &env,
        &[
            "keygen",
            "--tenant",
            "acme",
            "--master",
            keyring.to_str().unwrap(),
            tenant_ring.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(derived["tenant"], "acme");
    assert_eq!(derived["keys"].as_array().unwrap().len(), 1);
    let rotated = json(av(
        &env,
        &["rotate-kek", tenant_ring.to_str().unwrap(), "--json"],
    ));
    assert_eq!(rotated["keys"].as_array().unwrap().len(), 2);
    assert_ne!(rotated["active_key"], derived["active_key"]);
    let password = dir.path().join("acme.password");
    let acl = json(av(
        &env,
        &[
            "redis-acl",
            "--tenant",
            "acme",
            "--user",
            "acme-sidecar",
            "--password-file",
            password.to_str().unwrap(),
            "--json",
        ],
    ));
    assert!(acl["acl_setuser"]
        .as_str()
        .unwrap()
        .starts_with("ACL SETUSER acme-sidecar "));
    let audit = ok(av(&env, &["audit", "--limit", "5", "--json"]));
    for line in audit.lines() {
        let event: Value = serde_json::from_str(line).expect("one JSON event per line");
        assert!(event["event"].is_string());
    }
    assert_eq!(audit.lines().count(), 5);
}

#[test]
fn tables_have_headers() {
    let env = TestEnv::start(Backend::Embedded);
    ok(av(&env, &["put", "t/a", "v", "--tier", "critical"]));
    ok(av(&env, &["grant", "peer", "t/a"]));
    ok(av(
        &env,
        &[
            "token",
            "create",
            "--scope",
            "secrets:read:t/*",
            "--ttl",
            "5m",
        ],
    ));
    let first_line = |args: &[&str]| ok(av(&env, args)).lines().next().unwrap_or("").to_owned();
    let words = |line: String| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        words(first_line(&["ls", "-l"])),
        ["PATH", "VERSION", "TIER", "TYPE", "UPDATED", "EXPIRES"]
    );
    assert_eq!(
        words(first_line(&["versions", "t/a"])),
        ["VERSION", "CREATED", "ACTIVE", "EXPIRES"]
    );
    assert!(first_line(&["grants"]).starts_with("GRANT  "));
    assert!(first_line(&["approvals"]).starts_with("APPROVAL  "));
    assert!(first_line(&["audit"]).starts_with("TIME  "));
    let long = ok(av(&env, &["ls", "-l"]));
    let row: Vec<&str> = long.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["t/a", "1", "critical", "custom"]);
    // Plain `ls` stays one path per line, for scripts.
    assert_eq!(ok(av(&env, &["ls"])), "t/a\n");
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let env = TestEnv::start(Backend::Embedded);
    for i in 0..3 {
        ok(av(&env, &["put", &format!("p/{i}"), "v"]));
    }
    for args in [&["ls"][..], &["ls", "-l"], &["get", "p/0"], &["audit"]] {
        // The reader is gone before the command writes a byte.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .args(args)
            .env("AGENTVAULT_SOCKET", &env.sidecar.socket)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {:?} {}",
            out.status,
            stderr(&out)
        );
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = ok(out);
        assert!(script.contains("agentvault"), "{shell}");
        assert!(script.contains("rotate"), "{shell}: lists the commands");
        assert!(
            script.contains("critical"),
            "{shell}: lists the allowed tiers"
        );
    }
    let script = ok(Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agentvault.bash");
    std::fs::write(&file, script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", stderr(&check));
    let out = Command::new(BIN)
        .args(["completions", "tcsh-ish"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bash"), "names the allowed shells");
}

/// Every option and argument of every command says what it is, and options
/// with a fixed set of values list them.
#[test]
fn every_option_is_described_with_its_allowed_values() {
    fn walk(command: &clap::Command, trail: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{trail} {id}"));
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, &format!("{trail} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&agentvault::cli::Cli::command(), "agentvault", &mut missing);
    assert!(missing.is_empty(), "undescribed: {missing:#?}");

    let help = ok(Command::new(BIN).args(["put", "--help"]).output().unwrap());
    assert!(
        help.contains("[possible values: standard, sensitive, critical]"),
        "{help}"
    );
    assert!(help.contains("payment_credential"), "{help}");
    let help = ok(Command::new(BIN)
        .args(["import", "--help"])
        .output()
        .unwrap());
    assert!(
        help.contains("[possible values: standard, sensitive, critical]"),
        "{help}"
    );
    let out = Command::new(BIN)
        .args(["put", "x", "v", "--tier", "gold"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("standard"), "{}", stderr(&out));
}

/// `dev` prints a way to act as the approver, and the README's approval flow
/// goes through with it: one user requests, the approver link approves.
#[test]
fn dev_prints_an_approver_that_completes_the_approval_flow() {
    let env = TestEnv::start(Backend::Embedded);
    let logs = env.sidecar.logs();
    let line = logs
        .lines()
        .find(|l| l.trim_start().starts_with("approver:"))
        .unwrap_or_else(|| panic!("no approver line in:\n{logs}"));
    let approver = line
        .trim_start()
        .trim_start_matches("approver:")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    ok(av(
        &env,
        &["put", "prod/key", "the-value", "--tier", "critical"],
    ));
    let out = av(
        &env,
        &[
            "token",
            "create",
            "--scope",
            "secrets:read:prod/*",
            "--ttl",
            "10m",
            "--json",
        ],
    );
    let pending = json(out);
    let (token, id) = (
        pending["token"].as_str().unwrap().to_owned(),
        pending["approval_id"].as_str().unwrap().to_owned(),
    );
    let out = av(&env, &["approvals", "approve", &id]);
    assert_eq!(out.status.code(), Some(4), "the requester cannot approve");

    let out = Command::new(&approver)
        .args(["approvals", "approve", &id])
        .env("AGENTVAULT_SOCKET", &env.sidecar.socket)
        .output()
        .unwrap();
    assert!(stdout(&out).contains("approved"), "{}", stderr(&out));
    let out = av_with(
        &env,
        &["get", "prod/key"],
        None,
        &[("AGENTVAULT_TOKEN", &token)],
    );
    assert_eq!(ok(out), "the-value\n");

    // A role the user maps themselves replaces the link.
    let dir = tempfile::tempdir().unwrap();
    let own = Sidecar::dev(dir.path(), &["--role", "approver=uid:4242"]);
    assert!(!own.logs().contains("approver:"), "{}", own.logs());
}

#[test]
fn two_dev_sidecars_do_not_clash_on_the_metrics_port() {
    // Hold the default port (or find it held by someone else already).
    let _held = std::net::TcpListener::bind("127.0.0.1:9464");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("m.sock");
    let mut child = Command::new(BIN)
        .arg("dev")
        .arg("--socket")
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("AGENTVAULT_METRICS_ADDR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !banner.contains("Try:") && Instant::now() < deadline {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => banner.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        banner.contains("127.0.0.1:9464 is taken"),
        "started on a free port instead: {banner}"
    );

    // An address given explicitly is kept, and a clash names the flag.
    let out = Command::new(BIN)
        .arg("dev")
        .arg("--socket")
        .arg(dir.path().join("n.sock"))
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .args(["--metrics-addr", "127.0.0.1:9464"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--metrics-addr"), "{}", stderr(&out));
}

/// The harness's child runner (used for opa-eval and the CLI): a child that
/// exits without reading its input reports its status and stderr, not a
/// `BrokenPipe` panic of the writer.
#[test]
fn a_child_that_exits_early_reports_its_status_and_stderr() {
    let input = vec![b'x'; 4 << 20]; // far more than a pipe holds
    let out = support::run_with_stdin(
        Command::new("sh").args(["-c", "echo 'engine download failed' >&2; exit 3"]),
        &input,
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stderr(&out).trim(), "engine download failed");
    let failed = std::panic::catch_unwind(|| support::assert_success("opa-eval", &out));
    let message = failed
        .err()
        .and_then(|p| p.downcast::<String>().ok())
        .expect("assert_success panics on a failed child");
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(message.contains("engine download failed"), "{message}");
}
