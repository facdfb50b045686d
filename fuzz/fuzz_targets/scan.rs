//! The catch side's token finder over a message: header, JSON pointer, or a
//! scan of the body. Never a panic; what it finds is part of its input.
#![no_main]

use arbitrary::Arbitrary;
use chirp::canary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Message<'a> {
    header: Option<&'a str>,
    pointer: Option<&'a str>,
    body: &'a [u8],
}

fuzz_target!(|m: Message<'_>| {
    if let Some(found) = canary::scan(m.body) {
        assert!(found.starts_with("chirp1."));
        let at = m.body.windows(found.len()).position(|w| w == found.as_bytes());
        assert!(at.is_some(), "the scan found what the body does not hold");
    }
    let _ = canary::find(m.header, m.body, m.pointer);
});
