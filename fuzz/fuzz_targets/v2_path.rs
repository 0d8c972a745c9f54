//! `cargo +nightly fuzz run v2_path`: see ociregistry::oci::fuzz::v2_path for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ociregistry::oci::fuzz::v2_path(data));
