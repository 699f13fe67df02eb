//! Host bindings generated from the WIT contract in `plugin-sdk/wit/` (one source of
//! truth for both sides).

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "tidegate:plugin/message.message": crate::plugins::services::MessageHandle,
    },
});
