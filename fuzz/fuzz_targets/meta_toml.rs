//! The TOML meta reader (config/meta_file.rs: `[[tables]]` with typed fields), on arbitrary
//! text.
//!
//! Oracles: every diagnostic points inside the text; accepted tables have valid, unique names
//! and at least one field, and the store takes their definitions.
#![no_main]

use std::path::Path;

use gopher::config;
use gopher_fuzz::check_diagnostics;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let origin = Path::new("/usr/share/gopher-agent/extend_probes/x.meta.toml");
    match config::parse_meta_toml(text, origin) {
        Ok(tables) => gopher_fuzz::check_tables(&tables),
        Err(e) => check_diagnostics(&e, text, origin),
    }
});
