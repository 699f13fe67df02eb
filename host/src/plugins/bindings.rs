//! Host bindings generated from the WIT contract in `plugin-sdk/wit/` (one source of
//! truth for both sides), and from the previous version of the contract in
//! `plugin-sdk/wit-0.1.0/`, so plugins built against it keep loading (see [`super::compat`]).

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "tidegate:plugin/message.message": crate::plugins::services::MessageHandle,
    },
});

/// The contract as of `tidegate:plugin@0.1.0`.
pub mod v1 {
    wasmtime::component::bindgen!({
        path: "../plugin-sdk/wit-0.1.0",
        world: "plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "tidegate:plugin/message.message": crate::plugins::services::MessageHandle,
        },
    });
}
