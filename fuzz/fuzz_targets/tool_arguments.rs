#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestra::fuzzing::tool_arguments(data));
