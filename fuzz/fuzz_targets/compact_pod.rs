//! The webhook's compact reading of a pod against any JSON: see `fuzz/inputs.rs` for what must
//! hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Each target uses one of the properties.
#[allow(dead_code)]
#[path = "../inputs.rs"]
mod inputs;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = inputs::compact_holds(data) {
        panic!("{e}");
    }
});
