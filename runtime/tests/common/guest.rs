//! Hand-written hostile guests: core modules in WAT that implement the
//! `sluice:handler` world's canonical ABI (as `wit-bindgen` lays it out)
//! just far enough to attack the host, wrapped into components by Sluice at
//! load time like any core-module plugin.
//!
//! Memory layout of every guest: the answer (`result<list<output>, …>`) at
//! [`RET`], a 1 MiB payload region at [`PAYLOAD`] (all outputs alias it), the
//! output records at [`OUTPUTS`], and a bump heap for `cabi_realloc` from 8 MiB.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where `handle` writes its answer.
pub const RET: u32 = 16;
/// The region every output's payload points into.
pub const PAYLOAD: u32 = 1 << 20;
/// The output records (52 bytes each).
pub const OUTPUTS: u32 = 2 << 20;

/// The parts of a guest; `None` leaves the default.
#[derive(Default)]
pub struct Guest<'a> {
    /// Body of `handle` (12 params, returns the answer's address).
    pub handle: Option<&'a str>,
    /// Body of `handle-batch` (params: the list's address and length);
    /// `None` makes a plain `handler`-world guest.
    pub batch: Option<&'a str>,
    /// Body of `init` (params: the config list; returns the answer's address).
    pub init: Option<&'a str>,
    /// Extra imports.
    pub imports: &'a str,
    /// Extra functions (and data).
    pub funcs: &'a str,
}

/// `handle`'s default: one output whose payload is the 2 bytes at [`PAYLOAD`].
pub const ONE_OUTPUT: &str = "(call $outputs (i32.const 1) (i32.const 2)) (call $ok (i32.const 1))";

impl Guest<'_> {
    /// The module's text.
    pub fn wat(&self) -> String {
        let (batch_import, batch_export) = match self.batch {
            Some(body) => (
                r#"(import "sluice:handler/batch@0.1.0" "done" (func $done (param i32 i32 i32 i32 i32)))"#
                    .to_string(),
                format!(
                    r#"(func (export "handle-batch") (param $ptr i32) (param $len i32) (local $i i32) {body})"#
                ),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            r#"(module
  (import "sluice:handler/host@0.1.0" "log" (func $log (param i32 i32 i32)))
  {batch_import}
  {imports}
  (memory (export "memory") 256)
  (data (i32.const {PAYLOAD}) "ok")
  (global $bump (mut i32) (i32.const 8388608))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and
      (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
      (i32.sub (i32.const 0) (local.get 2))))
    (global.set $bump (i32.add (local.get $p) (local.get 3)))
    (block $fits
      (br_if $fits (i32.le_u (global.get $bump) (i32.shl (memory.size) (i32.const 16))))
      (drop (memory.grow (i32.add (i32.const 1) (i32.shr_u
        (i32.sub (global.get $bump) (i32.shl (memory.size) (i32.const 16)))
        (i32.const 16))))))
    (local.get $p))
  ;; $n outputs, each with no sink, topic or key and the first $len bytes of
  ;; the payload region as its payload.
  (func $outputs (param $n i32) (param $len i32) (local $i i32) (local $a i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $a (i32.add (i32.const {OUTPUTS}) (i32.mul (local.get $i) (i32.const 52))))
      (i32.store8 offset=0 (local.get $a) (i32.const 0))
      (i32.store8 offset=12 (local.get $a) (i32.const 0))
      (i32.store8 offset=24 (local.get $a) (i32.const 0))
      (i32.store offset=36 (local.get $a) (i32.const {PAYLOAD}))
      (i32.store offset=40 (local.get $a) (local.get $len))
      (i32.store offset=44 (local.get $a) (i32.const 0))
      (i32.store offset=48 (local.get $a) (i32.const 0))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))
  ;; The answer `ok` with the first $n records at OUTPUTS.
  (func $ok (param $n i32) (result i32)
    (i32.store8 (i32.const {RET}) (i32.const 0))
    (i32.store offset=4 (i32.const {RET}) (i32.const {OUTPUTS}))
    (i32.store offset=8 (i32.const {RET}) (local.get $n))
    (i32.const {RET}))
  (func (export "init") (param i32 i32) (result i32)
    {init})
  (func (export "handle")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i64 i32) (result i32)
    {handle})
  {funcs}
  {batch_export}
)"#,
            imports = self.imports,
            funcs = self.funcs,
            init = self
                .init
                .unwrap_or("(i32.store8 (i32.const 0) (i32.const 0)) (i32.const 0)"),
            handle = self.handle.unwrap_or(ONE_OUTPUT),
        )
    }

    /// Writes the guest as `name.wasm` in `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.wasm"));
        let bytes = wat::parse_str(self.wat()).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(&path, bytes).expect("write the guest");
        path
    }
}
