//! The path routes match (`routes::match_path`): whatever the request path,
//! it is refused exactly when a `%` starts no escape, and otherwise the
//! result starts with `/`, has no empty, `.` or `..` segment, and
//! normalising it again changes nothing — so a route sees the path the
//! backend will act on, and two spellings of one path take one route.
#![no_main]

use gateway::routes::match_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = format!("/{text}");
    let bytes = path.as_bytes();
    let bad_escape = bytes.iter().enumerate().any(|(at, &b)| {
        b == b'%'
            && !bytes
                .get(at + 1..at + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    let Ok(matched) = match_path(&path) else {
        assert!(bad_escape, "{path:?} refused");
        return;
    };
    assert!(!bad_escape, "{path:?} accepted");
    assert!(matched.starts_with('/'), "{path:?} -> {matched:?}");
    assert!(!matched.contains("//"), "{path:?} -> {matched:?}");
    for segment in matched.split('/').skip(1) {
        let lower = segment.to_ascii_lowercase();
        assert!(lower != "." && lower != "..", "{path:?} -> {matched:?}");
    }
    assert_eq!(
        match_path(&matched).ok(),
        Some(matched.clone()),
        "not idempotent for {path:?}"
    );
});
