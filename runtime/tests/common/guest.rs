//! Hand-written hostile guests: core modules in WAT that implement the
//! `sluice:handler` world's canonical ABI (as `wit-bindgen` lays it out)
//! just far enough to attack the host, wrapped into components by Sluice at
//! load time like any core-module plugin.
//!
//! Memory layout of every guest: the answer (`result<list<output>, …>`) at
//! [`RET`], a 1 MiB payload region at [`PAYLOAD`] (all outputs of `handle`
//! alias it), the output records at [`OUTPUTS`], a batch answer's `layout`
//! at [`LAYOUT`], and a bump heap for `cabi_realloc` from 8 MiB.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where `handle` writes its answer.
pub const RET: u32 = 16;
/// The region every output's payload points into.
pub const PAYLOAD: u32 = 1 << 20;
/// The output records (52 bytes each).
pub const OUTPUTS: u32 = 2 << 20;
/// A batch answer's `layout` (20 bytes per output).
pub const LAYOUT: u32 = 5 << 20;

/// The parts of a guest; `None` leaves the default.
#[derive(Default)]
pub struct Guest<'a> {
    /// Body of `handle` (12 params, returns the answer's address).
    pub handle: Option<&'a str>,
    /// Body of `handle-batch` (params: the batch's columns, `$len` the
    /// number of messages; local `$i`). It answers through
    /// `$done(position, is_err, a, b, c)`, the old `done` import's flat
    /// arguments turned into columns: `is_err = 0` hands over `b` outputs
    /// of the payload length `$outputs` was last given, back to back from
    /// [`PAYLOAD`]; `is_err = 1` the error of variant `a` (0 retriable,
    /// 1 fatal) with the `c` bytes at `b` as its text. `None` makes a plain
    /// `handler`-world guest.
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
                format!(
                    r#"(import "sluice:handler/columns@0.1.0" "answer" (func $answer (param i32 i32 i32 i32 i32 i32)))
  ;; The old `done(position, result<list<output>, handler-error>)`, flattened,
  ;; as columns: ok ($err = 0) with $b outputs of the payload length
  ;; `$outputs` last set, their payloads back to back from PAYLOAD; an error
  ;; ($err = 1) of variant $a with the text of $c bytes at $b.
  (func $done (param $pos i32) (param $err i32) (param $a i32) (param $b i32) (param $c i32)
    (local $i i32) (local $e i32) (local $at i32)
    (if (local.get $err) (then
      (call $answer (local.get $pos) (i32.add (local.get $a) (i32.const 1))
        (local.get $b) (local.get $c) (i32.const 0) (i32.const 0))
      (return)))
    (block $end (loop $next
      (br_if $end (i32.ge_u (local.get $i) (local.get $b)))
      (local.set $e (i32.add (i32.const {LAYOUT}) (i32.mul (local.get $i) (i32.const 20))))
      (local.set $at (i32.mul (local.get $i) (global.get $out_len)))
      (i32.store offset=0 (local.get $e) (i32.const 0))
      (i32.store offset=4 (local.get $e) (local.get $at))
      (i32.store offset=8 (local.get $e) (local.get $at))
      (i32.store offset=12 (local.get $e) (local.get $at))
      (i32.store offset=16 (local.get $e) (i32.add (local.get $at) (global.get $out_len)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (call $answer (local.get $pos) (i32.const 0)
      (i32.const {PAYLOAD}) (i32.mul (local.get $b) (global.get $out_len))
      (i32.const {LAYOUT}) (i32.mul (local.get $b) (i32.const 5))))"#
                ),
                format!(
                    r#"(func (export "handle-batch")
    (param $bytes i32) (param $bytes_len i32) (param $ends i32) (param $ends_len i32)
    (param $shapes i32) (param $len i32) (param $ts i32) (param $ts_len i32)
    (param $attempts i32) (param $attempts_len i32) (local $i i32) {body})"#
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
  (global $out_len (mut i32) (i32.const 0))
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
    (global.set $out_len (local.get $len))
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
