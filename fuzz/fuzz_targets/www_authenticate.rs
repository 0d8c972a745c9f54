//! `cargo +nightly fuzz run www_authenticate`: see ociregistry::upstream::fuzz_www_authenticate for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ociregistry::upstream::fuzz_www_authenticate(data));
