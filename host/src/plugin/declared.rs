//! Headers a plugin names once (the `-with-headers` interfaces, WIT 0.1.2).
//!
//! Each `request.header` call is a trip into the host and back: the name
//! lifted into a host string, the answer copied into guest memory through a
//! call of the guest's allocator — about 2,500 instructions, more than the
//! rest of a small plugin's work. A plugin that reads the same headers on
//! every request names them when an instance starts; the host then passes
//! their values as one list argument of the call itself.

use super::state::PluginState;
use http::{HeaderMap, HeaderName};
use wasmtime::Store;

/// Most headers a plugin may name.
pub const MAX_DECLARED: usize = 16;

/// Why what a plugin's `headers` answered was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadDeclaration(String);

/// The header names one instance declared, checked and in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    names: Vec<HeaderName>,
}

impl Declared {
    /// Checks what the plugin's `headers` answered.
    pub fn new(names: Vec<String>) -> Result<Self, BadDeclaration> {
        if names.len() > MAX_DECLARED {
            return Err(BadDeclaration(format!(
                "`headers` named {} headers (at most {MAX_DECLARED})",
                names.len()
            )));
        }
        let names = names
            .into_iter()
            .map(|name| match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(valid) => Ok(valid),
                Err(_) => Err(BadDeclaration(format!(
                    "`headers` named {name:?}, not a header name"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Declared { names })
    }

    /// Runs `call` with the values of the declared headers of the request
    /// lent to `store`, in the declared order (`None`: absent or not UTF-8;
    /// all `None` when no request is lent).
    ///
    /// The values are copied into the store's reusable list, taken out for
    /// the call (the call needs the store, and the request stays in it for
    /// the plugin's other questions); a slot that held a value last time
    /// keeps its string, so a steady stream of requests allocates nothing.
    pub fn with_values<T>(
        &self,
        store: &mut Store<PluginState>,
        call: impl FnOnce(&mut Store<PluginState>, &[Option<String>]) -> T,
    ) -> T {
        let mut values = std::mem::take(&mut store.data_mut().values);
        values.resize(self.names.len(), None);
        let view = store.data().request.as_ref();
        for (slot, name) in values.iter_mut().zip(&self.names) {
            match (slot, view.and_then(|view| first_value(&view.headers, name))) {
                (Some(kept), Some(value)) => {
                    kept.clear();
                    kept.push_str(value);
                }
                (slot, value) => *slot = value.map(str::to_owned),
            }
        }
        let answer = call(store, &values);
        store.data_mut().values = values;
        answer
    }
}

/// The first value of header `name`, if it is valid UTF-8 (as
/// `state::first_value`, with the name parsed once: names in a `HeaderMap`
/// are lower case, so a parsed name compares without folding case).
fn first_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| std::str::from_utf8(v.as_bytes()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginsConfig;
    use crate::plugin::check::synthetic_request;
    use crate::plugin::runner::Sandbox;
    use crate::plugin::state::Shared;
    use http::HeaderValue;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn names_are_checked_and_lower_cased() {
        let declared = Declared::new(names(&["X-API-Key", "cookie"])).unwrap();
        let parsed: Vec<&str> = declared.names.iter().map(HeaderName::as_str).collect();
        assert_eq!(parsed, ["x-api-key", "cookie"]);
        assert!(Declared::new(Vec::new()).is_ok());
        let bad = Declared::new(names(&["x-ok", "bad name"]))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("\"bad name\", not a header name"), "{bad}");
        assert!(Declared::new(names(&[""])).is_err());
        let many = vec!["x-h".to_owned(); MAX_DECLARED + 1];
        let err = Declared::new(many).unwrap_err().to_string();
        assert!(err.contains("named 17 headers (at most 16)"), "{err}");
        assert!(Declared::new(vec!["x-h".to_owned(); MAX_DECLARED]).is_ok());
    }

    #[test]
    fn values_follow_the_declared_order_first_value_and_text_only() {
        let engine = wasmtime::Engine::default();
        let shared = Arc::new(Shared::new(HashMap::new(), Vec::new()));
        let sandbox = Sandbox::from_config(&PluginsConfig::default());
        let mut store = Store::new(&engine, PluginState::new(shared, &sandbox));
        let declared = Declared::new(names(&[
            "X-Canary",
            "x-missing",
            "x-api-key",
            "x-twice",
            "x-binary",
            "x-utf8",
        ]))
        .unwrap();
        let seen = |store: &mut Store<PluginState>| {
            declared.with_values(store, |_, values| values.to_vec())
        };
        assert_eq!(seen(&mut store), vec![None; 6], "no request lent");
        let mut view = synthetic_request();
        view.headers
            .append("x-twice", HeaderValue::from_static("one"));
        view.headers
            .append("x-twice", HeaderValue::from_static("two"));
        view.headers
            .append("x-binary", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        view.headers
            .append("x-utf8", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        store.data_mut().request = Some(view);
        let expected = vec![
            Some("1".to_owned()),
            None,
            Some("plugin-check-key".to_owned()),
            Some("one".to_owned()),
            None,
            Some("café".to_owned()),
        ];
        assert_eq!(seen(&mut store), expected);
        // The strings are kept for the next call, not allocated again.
        let kept = store.data().values[0].as_ref().map(|kept| kept.as_ptr());
        assert_eq!(seen(&mut store), expected);
        assert_eq!(
            store.data().values[0].as_ref().map(|kept| kept.as_ptr()),
            kept
        );
        assert!(kept.is_some());
    }
}
