//! The `Date` field every response carries (RFC 9110 §6.6.1), formatted at
//! most once a second per thread instead of once a response.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT` is 29 bytes.
const LEN: usize = 29;

thread_local! {
    static CACHE: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
}

/// Calls `f` with the current date in IMF-fixdate form.
pub fn with_now<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == LEN {
                cache.1.copy_from_slice(text.as_bytes());
                cache.0 = second;
            }
        }
        f(&cache.1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_parses_back_to_now() {
        let text = with_now(|date| String::from_utf8(date.to_vec()).unwrap());
        let parsed = httpdate::parse_http_date(&text).unwrap();
        let now = SystemTime::now();
        let age = now.duration_since(parsed).unwrap();
        assert!(age.as_secs() <= 1, "{text} is {age:?} old");
    }
}
