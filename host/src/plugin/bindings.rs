//! Host bindings generated from `wit/gateway.wit`: one module per world, the
//! shared interfaces generated once and reused. Exports are called
//! synchronously, as plain functions (see `no_wait` for WASI's blocking
//! calls under that arrangement).

/// The `key-plugin` world; also the home of the shared `types` and `host` interfaces.
pub mod key {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "key-plugin",
        imports: { default: trappable },
        with: {
            "gateway:plugin/types.request": crate::plugin::state::RequestView,
        },
    });
}

/// The `select-plugin` world.
pub mod select {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "select-plugin",
        imports: { default: trappable },
        with: {
            "gateway:plugin/types": crate::plugin::bindings::key::gateway::plugin::types,
            "gateway:plugin/host": crate::plugin::bindings::key::gateway::plugin::host,
        },
    });
}

/// The `key-plugin-with-headers` world (0.1.2).
pub mod key_with_headers {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "key-plugin-with-headers",
        imports: { default: trappable },
        with: {
            "gateway:plugin/types": crate::plugin::bindings::key::gateway::plugin::types,
            "gateway:plugin/host": crate::plugin::bindings::key::gateway::plugin::host,
        },
    });
}

/// The `select-plugin-with-headers` world (0.1.2).
pub mod select_with_headers {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "select-plugin-with-headers",
        imports: { default: trappable },
        with: {
            "gateway:plugin/types": crate::plugin::bindings::key::gateway::plugin::types,
            "gateway:plugin/host": crate::plugin::bindings::key::gateway::plugin::host,
        },
    });
}
