//! Dot-segment removal: whatever the path, the result starts with `/` and
//! has no `.` or `..` segment left (plain or percent-encoded), so a backend
//! prefix put in front of it is never left.
#![no_main]

use gateway::http1::path::remove_dot_segments;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = format!("/{text}");
    let resolved = remove_dot_segments(&path);
    assert!(resolved.starts_with('/'));
    for segment in resolved.split('/').skip(1) {
        let decoded = segment.replace("%2e", ".").replace("%2E", ".");
        assert!(decoded != "." && decoded != "..", "{path} -> {resolved}");
    }
});
