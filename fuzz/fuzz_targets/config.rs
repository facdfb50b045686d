//! The configuration reader: any text is a configuration or a list of
//! errors, each with a message; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = HashMap::from([("KEY".to_owned(), "fuzz-signing-key-0123456789".to_owned())]);
    match chirp::config::load_str(text, &env) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in errors {
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
