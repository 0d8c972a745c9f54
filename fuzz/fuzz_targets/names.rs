//! `cargo +nightly fuzz run names`: see ociregistry::oci::fuzz::names for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ociregistry::oci::fuzz::names(data));
