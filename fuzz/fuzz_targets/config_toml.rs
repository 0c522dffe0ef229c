//! The probes.toml reader (config/model.rs and its sections), with its diagnostics, on
//! arbitrary text.
//!
//! Oracles: every diagnostic points inside the text (line:column as an operator's editor
//! counts them) and prints; an accepted config reads the same when parsed again.
#![no_main]

use std::path::Path;

use gopher::config;
use gopher_fuzz::check_diagnostics;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let origin = Path::new("/etc/gopher-agent/probes.toml");
    match config::parse(text, origin) {
        Ok(c) => {
            let again = config::parse(text, origin).unwrap_or_else(|e| panic!("second parse refused: {e}"));
            assert_eq!(c, again, "parse is not deterministic");
        }
        Err(e) => check_diagnostics(&e, text, origin),
    }
});
