//! Matching the simple patterns policy configurations use: `*` stands for any run of
//! characters (none included), everything else matches itself.

/// Whether `text` as a whole matches `pattern`, where `*` matches any run of characters.
/// Exact comparison: lowercase both sides first for a case-insensitive match.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn star_matches_any_run_and_the_rest_must_match_whole() {
        assert!(glob("*", ""));
        assert!(glob("*", "anything"));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a*c", "ac"));
        assert!(!glob("a*c", "abbb"));
        assert!(!glob("abc", "abcd"));
        assert!(glob("*cheap*meds*", "buy cheap pills and meds now"));
        assert!(!glob("*cheap*meds*", "buy meds, not cheap"));
        assert!(!glob("ab*ba", "aba"), "the pieces must not overlap");
        assert!(glob("*@example.test", "a@example.test"));
        assert!(glob("application/x-ms*", "application/x-msdownload"));
        assert!(!glob("a@x.test", "a@x.test.evil"));
        assert!(!glob("A*", "a"), "exact: case matters");
    }
}
