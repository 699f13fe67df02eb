//! Fuzz target: the spool file reader (`spool::parse_stored`, the footer and envelope
//! checks that `spool::read_stored` runs on every file in `msg/` at start-up).
//!
//! Properties: no panic and no huge allocation, whatever the bytes (a corrupt file is
//! set aside, never a reason not to start); what parses is consistent (the message octets
//! and the envelope record fill the file) and its envelope encodes to a trailer that parses
//! back to the same envelope.

use tidegate::spool::{QueueId, encode_trailer, parse_stored};

/// The queue ID every corpus file is named with.
const ID: &str = "0000000000000001";

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(id) = ID.parse::<QueueId>() else {
            return;
        };
        if let Ok((envelope, message_len)) = parse_stored(id, data) {
            assert!(message_len <= data.len() as u64);
            let message = &data[..message_len as usize];
            let mut file = message.to_vec();
            file.extend_from_slice(&encode_trailer(&envelope));
            let (again, len) = parse_stored(id, &file)
                .unwrap_or_else(|e| panic!("re-encoded envelope does not parse: {e}"));
            assert_eq!(len, message_len);
            assert_eq!(again, envelope);
        }
    });
}
