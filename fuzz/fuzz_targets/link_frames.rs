#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshage::fuzzing::link_frames(data));
