#![no_std]
// Exists so that the crate has a library target, as aya-build expects.
