//! The handler author's loop: `sluice new` writes a handler project from the
//! templates ([`new`]), `sluice test` runs a handler against cases in a
//! fixtures file, alone or through a pipeline's policy with injected faults
//! ([`fixtures`], [`harness`], [`report`]), and `sluice replay` sends
//! dead-letter records back through a pipeline ([`replay`]).

pub mod fixtures;
pub mod harness;
pub mod new;
pub mod replay;
pub mod report;
