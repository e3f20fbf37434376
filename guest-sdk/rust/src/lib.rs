//! Sluice guest SDK for Rust: write a message handler as a plain function plus one macro.
//!
//! ```ignore
//! use sluice_guest::{export_handler, HandlerError, Message, Output};
//!
//! fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
//!     let text = msg.payload_str()?;
//!     Ok(vec![Output::new(text.to_uppercase())])
//! }
//! export_handler!(handle);                    // or: export_handler!(handle, init = my_init);
//! ```
//!
//! The contract is `guest-sdk/wit/handler.wit`; this crate generates its bindings from that
//! folder with `wit-bindgen` (pinned), so it cannot drift from what the host expects.
//!
//! Layout:
//! - [`bindings`]: the raw `wit-bindgen` output (types, host imports, the export glue).
//! - [`Message`]: a message as a view into the host's buffers (no copy, no allocation).
//! - `types`: helpers on [`Output`], [`Header`], [`HandlerError`].
//! - `batch`: `handle-batch`, the batch's columns read as messages and each answer written
//!   into reused columns.
//! - [`config`]: the `init` config as a [`Config`] map, and [`config::parse_or`].
//! - [`log`]: `trace`/`debug`/`info`/`warn`/`error` through the host's log.
//! - [`kv`]: the plugin's small key/value store.
//! - [`export_handler!`]: turns the functions into the component's `init` and `handle` exports.
//!
//! Off `wasm32` (native `cargo test` of a handler) `log` prints to stderr and `kv` is an
//! in-memory map per thread, so handler logic can be unit-tested without a host.

// The generated export glue names this crate by an absolute path; this lets the same paths
// resolve inside the crate too.
extern crate self as sluice_guest;

mod batch;
pub mod config;
pub mod kv;
pub mod log;
mod message;
mod types;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

#[doc(hidden)]
pub use batch::__run_batch;
pub use bindings::sluice::handler::types::{HandlerError, Header, Output};
pub use config::Config;
pub use message::{Headers, Message, MessageHeader};

/// Raw bindings generated from `guest-sdk/wit` (world `batch-handler`: the `handler` world
/// plus the `columns` interface and `handle-batch`). Prefer the re-exports.
#[allow(clippy::too_many_arguments)] // generated ABI glue
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "batch-handler",
        // Paths as seen from the handler's crate, which depends on `sluice_guest` only.
        runtime_path: "::sluice_guest::__wit_bindgen::rt",
        default_bindings_module: "::sluice_guest::bindings",
        export_macro_name: "__export_world",
        pub_export_macro: true,
        // So handler unit tests can `assert_eq!` outputs and errors.
        additional_derives: [PartialEq, Eq],
    });
}

/// Exports `handle` (and optionally `init`) as the component's implementation of the world.
///
/// The component also exports `handle-batch`, which reads the batch's columns as one
/// [`Message`] view after another, runs `handle` on each in turn and hands every result to the
/// host before the next message starts, so the host pays its per-call cost once per batch
/// while each message keeps its own budgets and its own failure. Nothing about it shows in the
/// handler.
///
/// - `export_handler!(handle);` where `fn handle(Message) -> Result<Vec<Output>, HandlerError>`
///   (`Message` borrows the host's buffers for the call: copy what you keep).
/// - `export_handler!(handle, init = setup);` where `fn setup(Config) -> Result<(), String>`;
///   an `Err` refuses the plugin (the host will not load it).
///
/// Use it once, in the crate that is built as the `cdylib`. The crate must depend on this
/// one under its own name, `sluice-guest` (no `package =` rename).
#[macro_export]
macro_rules! export_handler {
    ($handle:path $(,)?) => {
        $crate::export_handler!($handle, init = $crate::config::accept_any);
    };
    ($handle:path, init = $init:path $(,)?) => {
        const _: () = {
            struct SluiceHandler;
            impl $crate::bindings::Guest for SluiceHandler {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__run_init(config, $init)
                }
                fn handle(
                    msg: $crate::bindings::sluice::handler::types::Message,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::Output>, $crate::HandlerError>
                {
                    $handle($crate::Message::of_record(&msg))
                }
                fn handle_batch(msgs: $crate::bindings::sluice::handler::columns::Batch) {
                    $crate::__run_batch(msgs, $handle)
                }
            }
    $crate::bindings::__export_world!(SluiceHandler with_types_in $crate::bindings);
        };
    };
}

/// What the generated `init` export runs: installs the panic hook, then the user's hook.
#[doc(hidden)]
pub fn __run_init(
    pairs: Vec<(String, String)>,
    init: impl FnOnce(Config) -> Result<(), String>,
) -> Result<(), String> {
    install_panic_hook();
    init(pairs.into_iter().collect())
}

/// A panic traps the instance (the host classes it `trap` and discards the instance); first
/// the panic message goes to the host log at `error`, since the sandbox has no stderr to read.
///
/// The hook then ends the instance through WASI `exit` instead of returning to the abort that
/// follows it: `abort` is wasm `unreachable`, a hardware trap the host's kernel turns into a
/// signal (~10 µs on a VM), while `exit` is a host call that unwinds without one. Either way
/// the instance is gone and the next message gets a fresh one.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let mut text = panic_line(info);
        if text.len() > 4096 {
            let mut end = 4096;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        log::error(&text);
        std::process::exit(101);
    }));
}

/// One line, as `format!("handler {info}")` with its line break made a space:
/// "handler panicked at src/lib.rs:6:9: <message>". Built without `core::fmt`,
/// whose calls through trait objects each cost a fresh instance a lazy
/// function-table entry (a panic is always on an instance's last call).
fn panic_line(info: &std::panic::PanicHookInfo<'_>) -> String {
    fn push_number(text: &mut String, n: u32) {
        let mut digits = [0u8; 10];
        let mut at = digits.len();
        let mut n = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[at..] {
            text.push(char::from(d));
        }
    }
    let mut text = String::with_capacity(128);
    text.push_str("handler panicked at ");
    if let Some(at) = info.location() {
        text.push_str(at.file());
        text.push(':');
        push_number(&mut text, at.line());
        text.push(':');
        push_number(&mut text, at.column());
    }
    if let Some(message) = info.payload_as_str() {
        text.push_str(": ");
        if message.contains('\n') {
            text.push_str(&message.replace('\n', " "));
        } else {
            text.push_str(message);
        }
    }
    text
}
