//! Arbitrary bytes into the control-protocol decoder: it must never panic, never loop, and
//! whatever it accepts must round-trip through the encoder.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    risefront::__fuzz::decode(data);
});
