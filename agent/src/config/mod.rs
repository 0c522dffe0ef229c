//! Configuration (`probes.toml`) and meta-file readers.
