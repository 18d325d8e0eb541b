//! The command line: exit codes and messages.

use crate::support::run_cli_in as run;

#[test]
fn validate_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway.yaml");
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = run(&["validate", "-c", example], dir.path());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok"), "{text}");
    assert_eq!(
        text.trim().lines().count(),
        1,
        "summary is one line: {text}"
    );
}

#[test]
fn validate_reports_every_problem_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "listen: nowhere\nbackends:\n  - ftp://x:1\nproxy:\n  connect_timeout: soon\n  retries: 99\n",
    )
    .unwrap();
    let (code, text) = run(&["validate", "-c", file.to_str().unwrap()], dir.path());
    assert_eq!(code, Some(1), "{text}");
    for expected in [
        "bad.yaml:1:9: listen",
        "bad.yaml:3:5: backends[0].url",
        "bad.yaml:5:20: proxy.connect_timeout",
        "bad.yaml:6:12: proxy.retries",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn validate_refuses_bad_ports_clashing_listeners_and_a_backend_that_loops() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("loops.yaml");
    std::fs::write(
        &file,
        "listen: 0.0.0.0:8080\nadmin:\n  listen: 127.0.0.1:8080\nbackends:\n  - http://127.0.0.1:99999\n  - http://localhost:8080\n",
    )
    .unwrap();
    let (code, text) = run(&["validate", "-c", file.to_str().unwrap()], dir.path());
    assert_eq!(code, Some(1), "{text}");
    for expected in [
        "loops.yaml:5:5: backends[0].url: backend URL \"http://127.0.0.1:99999\" has an invalid port",
        "loops.yaml:6:5: backends[1].url: backend URL \"http://localhost:8080\" is the gateway's own listener",
        "admin.listen: admin.listen 127.0.0.1:8080 takes the same port as listen 0.0.0.0:8080",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn validate_names_the_unknown_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.yaml");
    std::fs::write(
        &file,
        "backends: [http://127.0.0.1:1]\nhealth_check:\n  intervall: 5s\n",
    )
    .unwrap();
    let (code, text) = run(&["validate", "-c", file.to_str().unwrap()], dir.path());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(":3:") && text.contains("intervall"), "{text}");
}

#[test]
fn run_without_config_or_backends_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = run(&["run"], dir.path());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("not found"), "{text}");
}

#[test]
fn unknown_flag_is_a_usage_error_and_help_works() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run(&["run", "--bogus"], dir.path()).0, Some(2));
    for cmd in [
        &["--help"][..],
        &["run", "--help"],
        &["validate", "--help"],
        &["demo", "--help"],
    ] {
        let (code, text) = run(cmd, dir.path());
        assert_eq!(code, Some(0), "{cmd:?}: {text}");
        assert!(text.contains("Usage"), "{text}");
    }
}

/// An admin API reachable from other hosts needs a real token: none, the
/// example's, or a short one is refused by `validate` and by `run`.
#[test]
fn an_exposed_admin_api_needs_a_real_token() {
    let dir = tempfile::tempdir().unwrap();
    for (token, weakness) in [
        ("", "no admin.token"),
        ("  token: change-me\n", "the example configuration's token"),
        ("  token: short-token\n", "shorter than 16 characters"),
    ] {
        let file = dir.path().join("exposed.yaml");
        std::fs::write(
            &file,
            format!("backends: [http://127.0.0.1:1]\nadmin:\n  listen: 0.0.0.0:0\n{token}"),
        )
        .unwrap();
        for command in ["validate", "run"] {
            let (code, text) = run(&[command, "-c", file.to_str().unwrap()], dir.path());
            assert_eq!(code, Some(1), "{command} with {token:?}: {text}");
            assert!(text.contains(weakness), "{command}: {text}");
            assert!(text.contains("admin.token"), "{text}");
        }
    }
    let file = dir.path().join("guarded.yaml");
    std::fs::write(
        &file,
        "backends: [http://127.0.0.1:1]\nadmin:\n  listen: 0.0.0.0:0\n  token: 9f8e7d6c5b4a39281706\n",
    )
    .unwrap();
    let (code, text) = run(&["validate", "-c", file.to_str().unwrap()], dir.path());
    assert_eq!(code, Some(0), "{text}");
}

/// `log.level: inof` would turn every log line off; it is refused.
#[test]
fn a_misspelt_log_level_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.yaml");
    std::fs::write(
        &file,
        "backends: [http://127.0.0.1:1]\nlog:\n  level: inof\n",
    )
    .unwrap();
    let (code, text) = run(&["validate", "-c", file.to_str().unwrap()], dir.path());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("typo.yaml:3:10: log.level"), "{text}");
    assert!(text.contains("neither a level"), "{text}");
}

#[test]
fn completions_and_a_manual_page_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = run(&["completions", "bash"], dir.path());
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("_gateway()") && text.contains("validate"),
        "{text}"
    );
    let (code, text) = run(&["completions", "zsh"], dir.path());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("#compdef gateway"), "{text}");
    let (code, text) = run(&["man"], dir.path());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(".TH gateway"), "{text}");
    assert!(text.contains("rate limiter"), "{text}");
    let (code, _) = run(&["completions", "tcsh"], dir.path());
    assert_eq!(code, Some(2));
}

/// `demo --admin-listen` (or GATEWAY_ADMIN_LISTEN) moves the admin API, so
/// a demo starts beside another gateway holding 9091.
#[test]
fn the_demo_takes_its_admin_address_from_the_command_line() {
    use std::io::{BufRead, BufReader};
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_port = taken.local_addr().unwrap().port();
    drop(taken);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = std::process::Command::new(crate::support::BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--backends", "1", "--base-port", &base_port.to_string()])
        .args(["--log-format", "json"])
        .current_dir(&root)
        .env_remove("GATEWAY_ADMIN_LISTEN")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut listening = None;
    for line in stderr.lines().map_while(Result::ok) {
        if line.contains(r#""event":"listening""#) {
            listening = Some(line);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = listening.expect("the demo started");
    let started: serde_json::Value = serde_json::from_str(&line).unwrap();
    let admin: std::net::SocketAddr = started["admin"].as_str().unwrap().parse().unwrap();
    assert_ne!(admin.port(), 9091, "{line}");
}

/// `demo --backends-only` runs no admin API, so admin settings that would
/// refuse a gateway's start (a container's 0.0.0.0 listener with the
/// example token) do not stop it.
#[test]
fn demo_backends_only_ignores_the_admin_settings() {
    use std::io::{Read, Write};
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = std::process::Command::new(crate::support::BIN)
        .args([
            "demo",
            "-c",
            "gateway.yaml",
            "--backends-only",
            "--backends",
            "1",
        ])
        .args(["--base-port", &port.to_string()])
        .current_dir(&root)
        .env("GATEWAY_ADMIN_LISTEN", "0.0.0.0:9091")
        .env_remove("GATEWAY_ADMIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut answer = String::new();
    for _ in 0..100 {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
                .unwrap();
            stream.read_to_string(&mut answer).unwrap();
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(exited, None, "the backends-only demo exited");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("demo-1"), "{answer}");
}

/// `gateway clients`: no database is made up, an empty id is refused,
/// options go before or after the action, `delete` answers JSON.
#[test]
fn clients_cli_refuses_guesses_and_answers_json() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = run(&["clients", "list"], dir.path());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no database named"), "{text}");
    assert!(
        !dir.path().join("gateway.db").exists(),
        "no database created"
    );
    let missing = format!("sqlite://{}/typo.db", dir.path().display());
    let (code, text) = run(&["clients", "list", "--database", &missing], dir.path());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no such file"), "{text}");
    assert!(!dir.path().join("typo.db").exists());

    let db = dir.path().join("limits.db");
    std::fs::File::create(&db).unwrap();
    let url = format!("sqlite://{}", db.display());
    let (code, text) = run(&["clients", "get", " ", "--database", &url], dir.path());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("must not be empty"), "{text}");
    let set = [
        "clients",
        "set",
        "10.0.0.1",
        "--capacity",
        "5",
        "--refill-per-second",
        "1",
        "--database",
        &url,
    ];
    let (code, text) = run(&set, dir.path());
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(
        &["clients", "delete", "10.0.0.1", "--database", &url],
        dir.path(),
    );
    assert_eq!(code, Some(0), "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(answer["deleted"], "ip:10.0.0.1");
}

/// Pretty logs written to a pipe or a file carry no colour codes.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad-plugin.yaml");
    std::fs::write(
        &file,
        "backends: [http://127.0.0.1:1]\nlisten: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nrate_limit:\n  database: sqlite://DB\n  key: plugin\n  key_plugin: /nonexistent/plugin.wasm\n"
            .replace("DB", &dir.path().join("l.db").display().to_string()),
    )
    .unwrap();
    let (code, text) = run(&["run", "-c", file.to_str().unwrap()], dir.path());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("INFO") || text.contains("error:"), "{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in: {text:?}");
    assert_eq!(
        text.matches("/nonexistent/plugin.wasm").count(),
        1,
        "the fatal error once: {text}"
    );
}

/// A PostgreSQL server that is not there is reported as such, not as a pool timeout.
#[test]
fn clients_cli_says_connection_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let (code, text) = run(&["clients", "list", "--database", &url], dir.path());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("connection refused"), "{text}");
}
