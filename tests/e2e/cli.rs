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
