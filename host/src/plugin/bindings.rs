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
