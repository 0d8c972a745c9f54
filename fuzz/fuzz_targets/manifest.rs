//! `cargo +nightly fuzz run manifest`: see ociregistry::oci::fuzz::manifest for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ociregistry::oci::fuzz::manifest(data));
