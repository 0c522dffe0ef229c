//! The libconfig reader (config/libconfig.rs) behind gala-gopher's `gala-gopher.conf` and its
//! `.meta` files, on arbitrary text.
//!
//! Oracles: every diagnostic points inside the text; a gala-gopher.conf that reads cleanly
//! converts (`gopher convert`) to probes.toml text that the TOML reader accepts, so the
//! converter never hands an operator a file the agent then refuses.
#![no_main]

use std::path::Path;

use gopher::config;
use gopher_fuzz::check_diagnostics;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let conf = Path::new("/etc/gala-gopher/gala-gopher.conf");
    match config::parse_gala(text, conf) {
        Ok(_) => {
            let toml = config::convert_gala(text, conf)
                .unwrap_or_else(|e| panic!("parse_gala accepted but convert_gala refused: {e}"));
            let out = Path::new("/etc/gopher-agent/probes.toml");
            if let Err(e) = config::parse(&toml, out) {
                panic!("converted config is refused:\n{e}\n--- converted:\n{toml}");
            }
        }
        Err(e) => check_diagnostics(&e, text, conf),
    }
    let meta = Path::new("/opt/gala-gopher/extend_probes/x.meta");
    match config::parse_meta_libconfig(text, meta) {
        Ok(tables) => gopher_fuzz::check_tables(&tables),
        Err(e) => check_diagnostics(&e, text, meta),
    }
});
