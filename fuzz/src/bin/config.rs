//! Fuzz target: the configuration loader (`config::Config::parse`): TOML syntax, the
//! typed tree, and the cross-key validation.
//!
//! Properties: no panic, whatever the text; an error always names a key, and a line number
//! it gives lies within the text.

use std::path::Path;

use tidegate::config::Config;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Err(e) = Config::parse(text, Path::new("fuzz.toml")) {
            assert!(!e.key.is_empty(), "an error without a key: {e}");
            if let Some(line) = e.line {
                let lines = text.matches('\n').count() + 1;
                assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
            }
            let _ = e.to_string();
        }
    });
}
