//! A parsed message that answers the questions of the `message` resource.
//!
//! The host parses a message once with `mail-parser` and serves every plugin in the chain
//! from this value; the native test harness uses the very same code, so a plugin's unit
//! tests see exactly what it will see in a gateway.

use mail_parser::{HeaderValue, MessageParser, MimeHeaders, PartType};

use crate::{Attachment, Message};

/// The most the host hands out in one `raw-range` call.
pub const MAX_RANGE: u32 = 1024 * 1024;

/// A message parsed once, with its raw octets.
#[derive(Debug)]
pub struct ParsedMessage {
    parsed: mail_parser::Message<'static>,
    raw_len: u64,
}

impl ParsedMessage {
    /// Parses raw message octets. A message mail-parser cannot make sense of still yields a
    /// value (with no headers or parts), so plugins can apply their own rules to it.
    pub fn parse(raw: Vec<u8>) -> ParsedMessage {
        let raw_len = raw.len() as u64;
        let parsed = MessageParser::default()
            .parse(&raw)
            .map(|m| m.into_owned())
            .unwrap_or_default();
        ParsedMessage { parsed, raw_len }
    }

    /// The same message, saying it is `size` octets long: a message recorded cut short
    /// (see [`crate::record`]) still tells a replayed plugin its real size.
    pub fn with_size(mut self, size: u64) -> ParsedMessage {
        self.raw_len = size;
        self
    }

    /// The raw octets.
    pub fn raw(&self) -> &[u8] {
        self.parsed.raw_message()
    }

    fn header_text(&self, header: &mail_parser::Header<'_>) -> String {
        match &header.value {
            HeaderValue::Text(text) => text.to_string(),
            HeaderValue::TextList(list) => list.join(", "),
            _ => {
                // Structured fields (addresses, dates, content types): give the raw value,
                // unfolded, which is what policy rules usually match against.
                let raw = self.raw();
                let start = (header.offset_start as usize).min(raw.len());
                let end = (header.offset_end as usize).clamp(start, raw.len());
                let value = String::from_utf8_lossy(&raw[start..end]);
                value
                    .split(['\r', '\n'])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
    }
}

impl Message for ParsedMessage {
    fn raw_size(&self) -> u64 {
        self.raw_len
    }

    fn header(&self, name: &str) -> Option<String> {
        self.parsed
            .headers()
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
            .map(|h| self.header_text(h))
    }

    fn headers(&self, name: &str) -> Vec<String> {
        self.parsed
            .headers()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(name))
            .map(|h| self.header_text(h))
            .collect()
    }

    fn header_names(&self) -> Vec<String> {
        self.parsed
            .headers()
            .iter()
            .map(|h| h.name().to_owned())
            .collect()
    }

    fn text_parts(&self, max_bytes: u32) -> Vec<String> {
        let limit = max_bytes as usize;
        let clip = |text: &str| {
            let mut end = text.len().min(limit);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        };
        let mut parts = Vec::new();
        for part in self.parsed.text_bodies().chain(self.parsed.html_bodies()) {
            if let PartType::Text(text) | PartType::Html(text) = &part.body {
                let clipped = clip(text);
                if !parts.contains(&clipped) {
                    parts.push(clipped);
                }
            }
        }
        parts
    }

    fn attachments(&self) -> Vec<Attachment> {
        self.parsed
            .attachments()
            .map(|part| Attachment {
                name: part.attachment_name().map(str::to_owned),
                content_type: part
                    .content_type()
                    .map(|ct| match ct.subtype() {
                        Some(sub) => format!("{}/{}", ct.ctype(), sub),
                        None => ct.ctype().to_owned(),
                    })
                    .unwrap_or_else(|| "application/octet-stream".to_owned())
                    .to_ascii_lowercase(),
                size: part.contents().len() as u64,
            })
            .collect()
    }

    fn raw_range(&self, offset: u64, len: u32) -> Vec<u8> {
        let raw = self.raw();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(raw.len());
        let end = start
            .saturating_add(len.min(MAX_RANGE) as usize)
            .min(raw.len());
        raw[start..end].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIME: &str = "From: a@example.org\r\nTo: b@example.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nHello there\r\n--b\r\nContent-Type: application/x-msdownload\r\nContent-Disposition: attachment; filename=\"run.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b--\r\n";

    #[test]
    fn headers_text_and_attachments() {
        let message = ParsedMessage::parse(MIME.as_bytes().to_vec());
        assert_eq!(message.header("subject").as_deref(), Some("café"));
        assert_eq!(message.header("TO").as_deref(), Some("b@example.test"));
        assert_eq!(message.headers("x-none"), Vec::<String>::new());
        assert!(message.header_names().iter().any(|n| n == "Content-Type"));
        assert_eq!(message.text_parts(1000), vec!["Hello there".to_owned()]);
        assert_eq!(message.text_parts(5), vec!["Hello".to_owned()]);
        let attachments = message.attachments();
        assert_eq!(attachments.len(), 1);
        assert_eq!(attachments[0].name.as_deref(), Some("run.exe"));
        assert_eq!(attachments[0].content_type, "application/x-msdownload");
        assert_eq!(attachments[0].size, 12);
        assert_eq!(message.raw_range(0, 5), b"From:");
        assert_eq!(message.raw_size(), MIME.len() as u64);
        assert!(message.raw_range(u64::MAX, 10).is_empty());
    }
}
