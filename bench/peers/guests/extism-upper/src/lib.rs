//! The bench map for Extism: the input in ASCII uppercase, as the output.
use extism_pdk::*;

#[plugin_fn]
pub fn upper(input: Vec<u8>) -> FnResult<Vec<u8>> {
    Ok(input.to_ascii_uppercase())
}
