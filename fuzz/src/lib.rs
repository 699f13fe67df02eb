//! Helpers shared by the fuzz targets in `src/bin/`: each target feeds AFL's bytes to one
//! of Tidegate's parsers and asserts the properties that must hold whatever the input.

/// Splits fuzz input into a flag byte and the rest, so one target can try several modes
/// (e.g. SMTPUTF8 on or off) with the same corpus.
pub fn flag_and_rest(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&flag, rest)) => (flag, rest),
        None => (0, data),
    }
}
