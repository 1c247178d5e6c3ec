//! Fuzz target: retry policies, ack rules, Retry-After, credentials, amounts.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_protocols::fuzzing::parse_any(data));
