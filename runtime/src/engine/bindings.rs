//! The `bindgen!` sites: host bindings generated from `guest-sdk/wit`, for the
//! `handler` world and for `batch-handler` (the same plus `handle-batch`).

wasmtime::component::bindgen!({
    world: "handler",
    path: "../guest-sdk/wit",
    exports: { default: async },
    // The message is lowered straight from the host's own buffers: no owned
    // copy of its topic, key, payload and headers per call.
    ownership: Borrowing { duplicate_if_necessary: true },
});

/// Bindings of the `batch-handler` world. Its types and `host` interface are
/// the ones above; its `columns.answer` import is linked by hand in
/// `host/columns.rs`, since it reads the answer's lists in place in the guest's
/// memory and re-arms the store's budgets, and a generated import sees only
/// the store's data and owned copies of the lists.
pub mod batch {
    wasmtime::component::bindgen!({
        world: "batch-handler",
        path: "../guest-sdk/wit",
        exports: { default: async },
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "sluice:handler/types": super::sluice::handler::types,
            "sluice:handler/host": super::sluice::handler::host,
        },
    });
}

pub use self::batch::sluice::handler::columns::{Batch as WitBatch, Status as WitStatus};
pub use self::batch::{BatchHandler, BatchHandlerPre};
pub use self::sluice::handler::host::Level;
pub use self::sluice::handler::types::{
    HandlerError as WitHandlerError, HeaderParam as WitHeader, Message as WitMessage,
    Output as WitOutput,
};
