//! The `Received:` trace header (RFC 5321 §4.4) prepended to every accepted message.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a trace header records.
#[derive(Debug)]
pub struct Trace<'a> {
    /// The name the client gave in HELO/EHLO (already checked to be printable).
    pub helo: &'a str,
    /// The client's address.
    pub client: SocketAddr,
    /// This gateway's host name.
    pub hostname: &'a str,
    /// The `with` keyword: SMTP, ESMTP, ESMTPS, ESMTPSA, UTF8SMTP... (RFC 3848, RFC 6531).
    pub protocol: &'a str,
    /// The TLS version and cipher, when the session is encrypted.
    pub tls: Option<&'a str>,
    /// The queue ID.
    pub id: &'a str,
    /// The recipient, named only when there is exactly one (naming several would disclose
    /// the other recipients to each of them).
    pub single_recipient: Option<&'a str>,
    /// When the message was received.
    pub time: SystemTime,
}

impl Trace<'_> {
    /// Appends the header, folded over several lines, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let literal = match self.client.ip().to_canonical() {
            IpAddr::V4(ip) => format!("[{ip}]"),
            IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
        };
        let mut header = format!("Received: from {} ({})", self.helo, literal);
        if let Some(tls) = self.tls {
            header.push_str(&format!("\r\n\t(using {tls})"));
        }
        header.push_str(&format!(
            "\r\n\tby {} (Tidegate) with {} id {}",
            self.hostname, self.protocol, self.id
        ));
        if let Some(rcpt) = self.single_recipient {
            header.push_str(&format!("\r\n\tfor <{rcpt}>"));
        }
        header.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(self.time)));
        out.extend_from_slice(header.as_bytes());
    }
}

/// Formats a time as an RFC 5322 date in UTC, e.g. `Thu, 26 Nov 2026 12:04:05 +0000`.
pub fn rfc5322_date(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`), to avoid a date-library dependency for
/// the two places that format dates (trace headers, certificate validity).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_formatted_per_rfc5322() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(rfc5322_date(at(0)), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(at(1_795_694_645)),
            "Thu, 26 Nov 2026 12:04:05 +0000"
        );
    }

    #[test]
    fn trace_header_names_client_and_id() {
        let trace = Trace {
            helo: "client.test",
            client: "[2001:db8::1]:4000".parse().unwrap(),
            hostname: "relay.example.test",
            protocol: "ESMTP",
            tls: None,
            id: "0000000000000001",
            single_recipient: Some("a@example.test"),
            time: UNIX_EPOCH,
        };
        let mut out = Vec::new();
        trace.write_to(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from client.test ([IPv6:2001:db8::1])\r\n\tby relay.example.test (Tidegate) with ESMTP id 0000000000000001\r\n\tfor <a@example.test>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
