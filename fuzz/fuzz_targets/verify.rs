//! Fuzz target: every profile's verifier and explainer on arbitrary requests.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_protocols::fuzzing::verify_any(data));
