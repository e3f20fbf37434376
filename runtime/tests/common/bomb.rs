//! Components that are valid but costly to compile: what a hostile plugin
//! does to a compiler without limits.
//!
//! Each function has many `i32` locals and a long body that reads and
//! writes them in a pseudo-random order, every few statements inside an
//! `if`. Cranelift turns the locals into SSA values that are all live
//! across every block (a block parameter per local per join), which hands
//! its register allocator thousands of long interleaved live ranges.
//! Measured with `sluice __compile` on a 2-core machine: [`SLOW`] takes
//! ~16 s (one function: more cores do not help) and peaks at 780 MB RSS;
//! [`HEAVY`] ~15 s and 2.2 GB, and needs 190 MB within its first second.

/// One long function: long to compile, memory growing slowly.
pub const SLOW: Shape = Shape {
    funcs: 1,
    locals: 500,
    statements: 60_000,
    if_every: 4,
};

/// One huge function: memory grows by gigabytes.
pub const HEAVY: Shape = Shape {
    funcs: 1,
    locals: 4000,
    statements: 10_000,
    if_every: 2,
};

/// How a bomb is built.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub funcs: usize,
    pub locals: usize,
    pub statements: usize,
    /// Every n-th statement sits inside an `if`.
    pub if_every: usize,
}

/// The component `(component (core module ...))` of `shape`, as bytes. It
/// does not implement the handler world (it would be refused after
/// compiling), so only a compile limit stops it early.
pub fn component(shape: Shape) -> Vec<u8> {
    use std::fmt::Write as _;
    let Shape {
        funcs,
        locals,
        statements,
        if_every,
    } = shape;
    let mut w = String::from("(component (core module\n");
    for f in 0..funcs {
        let _ = writeln!(w, "(func (export \"f{f}\") (param i32) (result i32)");
        w += "(local";
        for _ in 0..locals {
            w += " i32";
        }
        w += ")\n";
        let mut x: u64 = 12_345 + f as u64;
        for i in 0..statements {
            x = (x * 1_103_515_245 + 12_345) & 0x7fff_ffff;
            let (a, b, c) = (
                x as usize % locals + 1,
                (x >> 8) as usize % locals + 1,
                (x >> 16) as usize % locals + 1,
            );
            if i % if_every == 0 {
                let _ = writeln!(
                    w,
                    "(if (local.get {a}) (then (local.set {b} (i32.add (local.get {c}) (local.get 0)))))"
                );
            } else {
                let _ = writeln!(
                    w,
                    "(local.set {a} (i32.add (local.get {b}) (local.get {c})))"
                );
            }
        }
        // Every local stays live to the end.
        w += "(local.get 0)\n";
        for l in 1..=locals {
            let _ = writeln!(w, "(local.get {l}) i32.add");
        }
        w += ")\n";
    }
    w += "))\n";
    wat::parse_str(&w).expect("the bomb is valid WAT")
}
