//! Core wasm modules that implement the `sluice:handler` world's canonical ABI,
//! turned into components at load time.
//!
//! Tool chains that only emit core modules (C with clang, Go's
//! `//go:wasmexport`, Zig, AssemblyScript, hand-written glue) export `init`,
//! `handle`, `memory` and `cabi_realloc` and import the host functions from
//! `sluice:handler/host@0.1.0`, exactly as `wit-bindgen` lays them out; a
//! module that also exports `handle-batch` and imports
//! `sluice:handler/columns@0.1.0`.`answer` implements the `batch-handler` world.
//! Here the world's WIT (compiled into the runtime from `guest-sdk/wit`) is
//! embedded when the module does not carry its own `component-type` section,
//! the `wasi_snapshot_preview1` reactor adapter is added when the module
//! imports WASI preview 1, and `wit-component` wraps it all into a component.
//! The result is compiled and cached like any component, keyed by the digest
//! of the original file.

use std::collections::BTreeSet;

use wasmparser::{ExternalKind, Parser, Payload, TypeRef};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

use super::limits::guest_text;

/// The world every handler implements: the same file the host's bindings use.
const HANDLER_WIT: &str = include_str!("../../../guest-sdk/wit/handler.wit");

/// The import module of the world's host interface (canonical ABI names).
const HOST_MODULE: &str = "sluice:handler/host@0.1.0";

/// The host functions a module may import from [`HOST_MODULE`].
const HOST_FUNCS: [&str; 3] = ["log", "kv-get", "kv-set"];

/// The import module of the `batch-handler` world's `columns` interface.
const BATCH_MODULE: &str = "sluice:handler/columns@0.1.0";

/// Most of a module's names one error lists (imports the host does not
/// provide, exports found): a module may have millions.
const SHOWN_NAMES: usize = 8;

/// WASI preview 1, which the reactor adapter maps onto WASI preview 2.
const WASI_P1: &str = "wasi_snapshot_preview1";

/// Why a core module could not be turned into a handler component.
#[derive(Debug)]
pub enum ConvertError {
    /// The module does not implement the world: what is missing or foreign.
    World(String),
    /// The module is not valid wasm, or `wit-component` refused it.
    Encode(String),
}

/// Bumped whenever [`to_component`] builds a different component from the
/// same module (part of the compile cache's key).
pub(crate) const CONVERSION_VERSION: u32 = 5;

/// Turns a core module implementing the handler world into a component.
pub fn to_component(module: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let shape = Shape::read(module).map_err(ConvertError::Encode)?;
    shape.check().map_err(ConvertError::World)?;

    let mut bytes = module.to_vec();
    if !shape.has_component_type {
        let mut resolve = Resolve::default();
        let pkg = resolve
            .push_str("handler.wit", HANDLER_WIT)
            .map_err(|e| ConvertError::Encode(format!("the built-in WIT: {e:#}")))?;
        let world = if shape.exports("handle-batch") {
            "batch-handler"
        } else {
            "handler"
        };
        let world = resolve
            .select_world(&[pkg], Some(world))
            .map_err(|e| ConvertError::Encode(format!("the built-in WIT: {e:#}")))?;
        wit_component::embed_component_metadata(&mut bytes, &resolve, world, StringEncoding::UTF8)
            .map_err(|e| ConvertError::Encode(format!("{e:#}")))?;
    }

    let mut encoder = ComponentEncoder::default()
        .validate(true)
        .module(&bytes)
        .map_err(|e| ConvertError::Encode(format!("{e:#}")))?;
    if shape.imports_wasi_p1 {
        encoder = encoder
            .adapter(
                WASI_P1,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
            .map_err(|e| ConvertError::Encode(format!("the WASI adapter: {e:#}")))?
            // The adapter's state and stack come from the guest's
            // `cabi_realloc_adapter` when it exports one (the Go SDK does: a
            // static region its heap never touches). Otherwise from
            // `memory.grow`, not the guest's `cabi_realloc`, which some
            // allocators cannot serve from inside a WASI call. (Go must not
            // get `memory.grow`: its heap assumes it owns every page past its
            // end and overwrites the adapter's state when it next grows.)
            .realloc_via_memory_grow(!shape.exported_funcs.contains("cabi_realloc_adapter"));
    }
    encoder
        .encode()
        .map_err(|e| ConvertError::Encode(format!("{e:#}")))
}

/// What a core module imports and exports, as far as the world cares.
#[derive(Debug, Default)]
struct Shape {
    exported_funcs: BTreeSet<String>,
    exported_memory: bool,
    /// `module`.`name` of the first [`SHOWN_NAMES`] imports the host does
    /// not provide.
    foreign_imports: Vec<String>,
    /// How many imports the host does not provide.
    foreign_count: usize,
    imports_wasi_p1: bool,
    /// Imports `answer` from [`BATCH_MODULE`].
    imports_batch_answer: bool,
    has_component_type: bool,
}

impl Shape {
    fn read(module: &[u8]) -> Result<Shape, String> {
        let mut shape = Shape::default();
        for payload in Parser::new(0).parse_all(module) {
            match payload.map_err(|e| format!("invalid core module: {e}"))? {
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.map_err(|e| format!("invalid import: {e}"))?;
                        shape.note_import(import.module, import.name, &import.ty);
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export.map_err(|e| format!("invalid export: {e}"))?;
                        match export.kind {
                            ExternalKind::Func => {
                                shape.exported_funcs.insert(export.name.to_string());
                            }
                            ExternalKind::Memory if export.name == "memory" => {
                                shape.exported_memory = true;
                            }
                            _ => {}
                        }
                    }
                }
                Payload::CustomSection(c) if c.name().starts_with("component-type") => {
                    shape.has_component_type = true;
                }
                _ => {}
            }
        }
        Ok(shape)
    }

    fn note_import(&mut self, module: &str, name: &str, ty: &TypeRef) {
        if module == WASI_P1 {
            self.imports_wasi_p1 = true;
            return;
        }
        // Under its legacy name or the newer `cm32p2|sluice:handler/columns@0.1` style.
        let batch = module == BATCH_MODULE || module.contains("|sluice:handler/columns@");
        if batch && name == "answer" && matches!(ty, TypeRef::Func(_)) {
            self.imports_batch_answer = true;
            return;
        }
        // Legacy names (`sluice:handler/host@0.1.0`.`log`) and the newer
        // `cm32p2|sluice:handler/host@0.1|log` style both name the interface.
        let host = module == HOST_MODULE
            || module.contains("|sluice:handler/host@")
            || module.starts_with("[export]")
            || module == "$root"
            || module.starts_with("cm32p2");
        if host && matches!(ty, TypeRef::Func(_)) {
            if module == HOST_MODULE && !HOST_FUNCS.contains(&name) {
                self.note_foreign(module, name);
            }
            return;
        }
        self.note_foreign(module, name);
    }

    /// Keeps the first few imports the host does not provide, named as a
    /// log may show them (the names are the guest's text); counts the rest.
    fn note_foreign(&mut self, module: &str, name: &str) {
        if self.foreign_imports.len() < SHOWN_NAMES {
            self.foreign_imports
                .push(format!("`{}`.`{}`", guest_text(module), guest_text(name)));
        }
        self.foreign_count += 1;
    }

    /// Whether an export of the world function `name` is present, under the
    /// legacy name or the `cm32p2||name` style.
    fn exports(&self, name: &str) -> bool {
        self.exported_funcs
            .iter()
            .any(|f| f == name || f.ends_with(&format!("|{name}")))
    }

    /// The missing pieces, all named at once.
    fn check(&self) -> Result<(), String> {
        let mut missing: Vec<String> = Vec::new();
        for f in ["init", "handle"] {
            if !self.exports(f) {
                missing.push(format!("missing export `{f}`"));
            }
        }
        if !self.exported_memory {
            missing.push("missing export `memory`".into());
        }
        // `init` and `handle` take lists, so the host must be able to
        // allocate in the guest.
        if !self.exports("cabi_realloc") && !self.exported_funcs.contains("cabi_realloc") {
            missing.push("missing export `cabi_realloc`".into());
        }
        // A batch handler reports each message's result through `answer`;
        // one without the other is half of the `batch-handler` world.
        match (self.exports("handle-batch"), self.imports_batch_answer) {
            (true, false) => missing.push(format!(
                "exports `handle-batch` but does not import `{BATCH_MODULE}`.`answer`, \
                 through which it must report each message's result"
            )),
            (false, true) => missing.push(format!(
                "imports `{BATCH_MODULE}`.`answer` but does not export `handle-batch`"
            )),
            _ => {}
        }
        if !self.foreign_imports.is_empty() {
            let more = self.foreign_count - self.foreign_imports.len();
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            missing.push(format!(
                "imports {}{more} (the host provides only {HOST_MODULE} ({}), \
                 {BATCH_MODULE} (answer) and {WASI_P1})",
                self.foreign_imports.join(", "),
                HOST_FUNCS.join(", ")
            ));
        }
        if missing.is_empty() {
            return Ok(());
        }
        let shown = self
            .exported_funcs
            .iter()
            .filter(|f| !f.starts_with("__") && !f.starts_with("cabi_post"));
        let mut found: Vec<String> = shown
            .clone()
            .take(SHOWN_NAMES)
            .map(|f| format!("`{}`", guest_text(f)))
            .collect();
        let more = shown.count().saturating_sub(SHOWN_NAMES);
        if more > 0 {
            found.push(format!("and {more} more"));
        }
        Err(format!(
            "core module: {} (it exports the functions: {})",
            missing.join(", "),
            if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(src: &str) -> Vec<u8> {
        wat::parse_str(src).expect("valid wat")
    }

    #[test]
    fn names_every_missing_export() {
        let m = wat(r#"(module (memory (export "memory") 1) (func (export "init")))"#);
        let Err(ConvertError::World(msg)) = to_component(&m) else {
            panic!("expected a world error");
        };
        assert!(msg.contains("missing export `handle`"), "{msg}");
        assert!(msg.contains("missing export `cabi_realloc`"), "{msg}");
        assert!(!msg.contains("`init`,"), "{msg}");
    }

    #[test]
    fn names_foreign_imports() {
        let m = wat(r#"(module (import "env" "socket" (func)) (memory (export "memory") 1))"#);
        let Err(ConvertError::World(msg)) = to_component(&m) else {
            panic!("expected a world error");
        };
        assert!(msg.contains("imports `env`.`socket`"), "{msg}");
    }

    /// A minimal module of the world — `init` answers ok (the result's
    /// discriminant byte is 0), `handle` an empty list — plus `imports` and
    /// `funcs`.
    fn minimal(imports: &str, funcs: &str) -> Vec<u8> {
        wat(&format!(
            r#"(module
            (import "sluice:handler/host@0.1.0" "log" (func (param i32 i32 i32)))
            {imports}
            (memory (export "memory") 1)
            (global $top (mut i32) (i32.const 1024))
            (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
              (local $p i32)
              global.get $top
              local.set $p
              global.get $top
              local.get 3
              i32.add
              i32.const 7
              i32.add
              i32.const -8
              i32.and
              global.set $top
              local.get $p)
            (func (export "init") (param i32 i32) (result i32)
              i32.const 16 i32.const 0 i32.store8 i32.const 16)
            (func (export "handle") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i64 i32) (result i32)
              i32.const 32 i32.const 0 i32.store8
              i32.const 36 i32.const 0 i32.store
              i32.const 40 i32.const 0 i32.store
              i32.const 32)
            {funcs}
        )"#
        ))
    }

    /// The names of a component's exports.
    fn component_exports(c: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for payload in Parser::new(0).parse_all(c) {
            if let Ok(Payload::ComponentExportSection(r)) = payload {
                names.extend(r.into_iter().flatten().map(|e| e.name.name.to_string()));
            }
        }
        names
    }

    const ANSWER: &str = r#"(import "sluice:handler/columns@0.1.0" "answer" (func (param i32 i32 i32 i32 i32 i32)))"#;
    const HANDLE_BATCH: &str =
        r#"(func (export "handle-batch") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32))"#;

    #[test]
    fn a_minimal_module_becomes_a_component() {
        let c = to_component(&minimal("", "")).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(&c[4..8], &[0x0d, 0, 1, 0]);
        let exports = component_exports(&c);
        assert!(exports.iter().any(|e| e == "handle"), "{exports:?}");
        assert!(!exports.iter().any(|e| e == "handle-batch"), "{exports:?}");
    }

    #[test]
    fn a_module_with_handle_batch_and_answer_becomes_a_batch_handler() {
        let c = to_component(&minimal(ANSWER, HANDLE_BATCH)).unwrap_or_else(|e| panic!("{e:?}"));
        let exports = component_exports(&c);
        for name in ["init", "handle", "handle-batch"] {
            assert!(exports.iter().any(|e| e == name), "{name}: {exports:?}");
        }
    }

    #[test]
    fn the_newer_import_naming_of_answer_counts_as_the_batch_import() {
        let answer = r#"(import "cm32p2|sluice:handler/columns@0.1" "answer" (func (param i32 i32 i32 i32 i32 i32)))"#;
        let shape = Shape::read(&minimal(answer, HANDLE_BATCH)).expect("a module");
        assert!(shape.imports_batch_answer && shape.foreign_imports.is_empty());
        assert_eq!(shape.check(), Ok(()));
    }

    #[test]
    fn half_of_the_batch_world_is_refused_with_what_is_missing() {
        let Err(ConvertError::World(msg)) = to_component(&minimal("", HANDLE_BATCH)) else {
            panic!("handle-batch without answer was accepted");
        };
        assert!(
            msg.contains(
                "exports `handle-batch` but does not import `sluice:handler/columns@0.1.0`.`answer`"
            ),
            "{msg}"
        );
        let Err(ConvertError::World(msg)) = to_component(&minimal(ANSWER, "")) else {
            panic!("answer without handle-batch was accepted");
        };
        assert!(
            msg.contains(
                "imports `sluice:handler/columns@0.1.0`.`answer` but does not export `handle-batch`"
            ),
            "{msg}"
        );
    }
}
