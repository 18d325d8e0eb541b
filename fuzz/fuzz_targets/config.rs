//! The configuration loader on arbitrary text: a configuration or a list
//! of problems, never a panic.
#![no_main]

use gateway::config::{Overrides, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse(text, &Overrides::default());
    }
});
