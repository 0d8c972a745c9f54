//! `cargo +nightly fuzz run reference`: see ociregistry::oci::fuzz::reference for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ociregistry::oci::fuzz::reference(data));
