#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| edgeq_fuzz_host::calib_prepare(data));
