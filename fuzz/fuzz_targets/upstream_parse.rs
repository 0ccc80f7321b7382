//! The upstream parser against any bytes: see `fuzz/property.rs` for what must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The parser is std-only, so it is compiled here on its own rather than with the whole exporter.
#[allow(dead_code)]
#[path = "../../src/upstream/parse.rs"]
mod parse;
#[path = "../property.rs"]
mod property;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = property::check(data) {
        panic!("{e}");
    }
});
