//! The one `bindgen!` site: host bindings generated from `guest-sdk/wit`.

wasmtime::component::bindgen!({
    world: "handler",
    path: "../guest-sdk/wit",
    exports: { default: async },
    // The message is lowered straight from the host's own buffers: no owned
    // copy of its topic, key, payload and headers per call.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub use self::sluice::handler::host::Level;
pub use self::sluice::handler::types::{
    HandlerError as WitHandlerError, HeaderParam as WitHeader, Message as WitMessage,
    Output as WitOutput,
};
