//! The one `bindgen!` site: host bindings generated from `guest-sdk/wit`.

wasmtime::component::bindgen!({
    world: "handler",
    path: "../guest-sdk/wit",
    exports: { default: async },
});

pub use self::sluice::handler::host::Level;
pub use self::sluice::handler::types::{
    HandlerError as WitHandlerError, Header as WitHeader, Message as WitMessage,
    Output as WitOutput,
};
