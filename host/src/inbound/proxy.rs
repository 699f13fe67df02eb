//! The PROXY protocol (HAProxy's, v1 text and v2 binary) in front of a listener: behind a
//! TCP load balancer every connection comes from the balancer, and the header it sends
//! first names the real client. That address, not the balancer's, is what relay control,
//! connection limits, plugins, logs and the `Received:` field must see.
//!
//! Only proxies in the listener's `proxy_trusted` networks may speak for clients: a
//! connection from anywhere else, a header that does not parse, or none at all, closes
//! the connection. Exactly the header's octets are consumed (peeked first, then read), so
//! what follows it, a TLS ClientHello on an `smtps` listener, reaches the session intact.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The largest header accepted (a v2 header with TLVs; v1 is at most 107 octets).
const MAX_HEADER: usize = 4096;
/// How long a proxy may take to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection was closed before its session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    /// The connection is not from a trusted proxy.
    #[error("{0} is not a trusted proxy (proxy_trusted)")]
    Untrusted(IpAddr),
    /// What arrived is not a PROXY header.
    #[error("not a PROXY protocol header: {0}")]
    Malformed(String),
    /// The header did not arrive in time, or the connection closed first.
    #[error("no PROXY protocol header: {0}")]
    Missing(String),
}

/// Whether `peer` may send a PROXY header.
pub fn trusted(peer: IpAddr, networks: &[ipnet::IpNet]) -> bool {
    let peer = peer.to_canonical();
    networks.iter().any(|net| net.contains(&peer))
}

/// What a complete header says: the real client (`None` for a proxy's own connection,
/// `LOCAL` or `UNKNOWN`, such as a health check), and its length.
fn decode(input: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, String> {
    let header = HeaderResult::parse(input);
    if header.is_incomplete() {
        return Ok(None);
    }
    match header {
        HeaderResult::V1(Ok(header)) => {
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => None,
            };
            Ok(Some((source, header.header.len())))
        }
        HeaderResult::V2(Ok(header)) => {
            let source = match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            };
            Ok(Some((source, header.len())))
        }
        HeaderResult::V1(Err(e)) => Err(e.to_string()),
        HeaderResult::V2(Err(e)) => Err(e.to_string()),
    }
}

/// Reads the PROXY header at the start of `stream`; returns the real client's address,
/// or `peer` itself for a proxy's own connection.
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyError> {
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let n = stream
            .peek(&mut buf)
            .await
            .map_err(|e| ProxyError::Missing(e.to_string()))?;
        if n == 0 {
            return Err(ProxyError::Missing("the connection closed".into()));
        }
        match decode(&buf[..n]).map_err(ProxyError::Malformed)? {
            Some((source, len)) => {
                let mut header = vec![0u8; len];
                stream
                    .read_exact(&mut header)
                    .await
                    .map_err(|e| ProxyError::Missing(e.to_string()))?;
                return Ok(source.unwrap_or(peer));
            }
            None if n == buf.len() => {
                return Err(ProxyError::Malformed(format!(
                    "longer than {MAX_HEADER} octets"
                )));
            }
            // Part of a header: wait for the rest (peeking again returns the same octets
            // until more arrive).
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_name_the_client_and_their_length() {
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO x\r\n";
        let (source, len) = decode(v1).unwrap().unwrap();
        assert_eq!(source, Some("192.0.2.7:40000".parse().unwrap()));
        assert_eq!(&v1[len..], b"EHLO x\r\n");
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(decode(unknown).unwrap().unwrap(), (None, unknown.len()));

        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12]);
        v2.extend_from_slice(&[203, 0, 113, 9, 198, 51, 100, 1]);
        v2.extend_from_slice(&[0x9c, 0x40, 0, 25]);
        v2.extend_from_slice(b"\x16\x03\x01");
        let (source, len) = decode(&v2).unwrap().unwrap();
        assert_eq!(source, Some("203.0.113.9:40000".parse().unwrap()));
        assert_eq!(&v2[len..], b"\x16\x03\x01", "what follows is the session's");
    }

    #[test]
    fn partial_garbage_and_untrusted_headers_are_told_apart() {
        assert_eq!(decode(b"PROXY TCP4 192.0.2.7").unwrap(), None);
        assert!(decode(b"EHLO client.example\r\n").is_err());
        assert!(decode(b"PROXY TCP4 not-an-address 198.51.100.1 1 2\r\n").is_err());
        let nets: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(trusted("10.1.2.3".parse().unwrap(), &nets));
        assert!(trusted("::ffff:10.1.2.3".parse().unwrap(), &nets));
        assert!(!trusted("192.0.2.1".parse().unwrap(), &nets));
    }
}
