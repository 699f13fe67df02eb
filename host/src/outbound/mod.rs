//! The outbound side: finding the next hop ([`lookup`]), speaking SMTP to it
//! ([`client`], reusing connections through [`pool`], from the local addresses of
//! [`egress`] pools), and the local maildir transport ([`maildir`]).

pub mod client;
pub mod dane;
pub mod egress;
pub mod lookup;
pub mod loops;
pub mod maildir;
pub mod mta_sts;
pub mod pool;
pub mod tlsrpt;
