//! The Tidegate plugin SDK: write mail policy in plain Rust, test it with `cargo test`,
//! compile it to a WebAssembly component for `wasm32-wasip2`, and drop it into a gateway.
//!
//! ```ignore
//! use tidegate_plugin_sdk::prelude::*;
//!
//! struct NoBlocked;
//!
//! impl Plugin for NoBlocked {
//!     fn init(_host: &dyn Host) -> Result<Self, String> { Ok(NoBlocked) }
//!     fn hooks(&self) -> Hooks { Hooks { rcpt_to: true, ..Hooks::default() } }
//!     fn on_rcpt_to(&mut self, _host: &dyn Host, info: &RcptToInfo) -> Response {
//!         if info.recipient == "blocked@example.test" {
//!             Verdict::reject(550, "5.1.1", "No such user").into()
//!         } else {
//!             Response::next()
//!         }
//!     }
//! }
//!
//! tidegate_plugin_sdk::export!(NoBlocked);
//! ```
//!
//! The contract itself is `wit/tidegate.wit`; this crate wraps the bindings generated from
//! it so plugin code sees ordinary Rust types ([`types`]), and [`testing`] runs a plugin
//! natively against an in-memory host.

// Lets the generated bindings name this crate by its public path from inside it too.
extern crate self as tidegate_plugin_sdk;

pub mod http;
pub mod net;
pub mod pattern;
pub mod types;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub mod check;
#[cfg(not(target_arch = "wasm32"))]
pub mod inspect;
#[cfg(not(target_arch = "wasm32"))]
pub mod record;

pub use http::{HttpError, HttpRequest, HttpResponse, Method};
pub use types::*;

/// The WIT contract, for tools that want to generate bindings of their own.
pub const WIT: &str = include_str!("../wit/tidegate.wit");

/// What the host offers a plugin. In a gateway these are calls into the host; under
/// [`testing`] they are served from memory.
pub trait Host {
    /// Writes a structured log line tagged with the plugin's name.
    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]);
    /// Looks up DNS records through the host's resolver.
    fn resolve(&self, name: &str, kind: RecordType) -> Result<Vec<String>, DnsError>;
    /// Reads a key from the plugin's key/value namespace. (The store may be in this gateway
    /// or in a Redis shared by a fleet; when it cannot answer, this and the other `kv_`
    /// calls fail the plugin's call, and its `on_error` applies.)
    fn kv_get(&self, key: &str) -> Option<Vec<u8>>;
    /// Writes a key with an optional time to live; fails when the key or value is too
    /// large or the plugin's namespace is at its quota.
    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError>;
    /// Adds to a counter key atomically; returns the new value (fails like `kv_set`).
    fn kv_incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError>;
    /// Deletes a key.
    fn kv_delete(&self, key: &str);
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Adds to a named counter in the host's metrics.
    fn counter_add(&self, name: &str, delta: u64);
    /// The plugin's `[plugin.config]` table as JSON text.
    fn config_json(&self) -> String;
    /// A transaction tag set by this or an earlier plugin or stage.
    fn tag(&self, key: &str) -> Option<String>;
    /// The session as the host knows it now: TLS facts, the authenticated identity (which
    /// no plugin can set or change), the HELO name.
    fn session(&self) -> SessionInfo;
    /// SPF, DKIM, DMARC and ARC as the gateway verified them for this transaction (SPF
    /// from on-mail-from on, the rest in on-data); empty where nothing is verified.
    fn auth_results(&self) -> Vec<AuthResult>;
    /// Several DNS lookups, answered in order; the gateway makes them concurrently, so a
    /// plugin asking several zones waits for the slowest, not for their sum.
    fn resolve_many(&self, queries: &[(&str, RecordType)]) -> Vec<Result<Vec<String>, DnsError>> {
        queries
            .iter()
            .map(|(name, kind)| self.resolve(name, *kind))
            .collect()
    }
    /// Makes an HTTP request to an origin the plugin's `http_allow` grants (see [`http`]
    /// for the helpers and the rules). A host that offers no HTTP refuses every call.
    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        let _ = request;
        Err(HttpError::NotAllowed("this host offers no HTTP".into()))
    }
    /// In on-delivery: the outcome's failure class and its destination's shaping state;
    /// `None` elsewhere.
    fn delivery_facts(&self) -> Option<OutcomeFacts> {
        None
    }
    /// In on-route: the `[[egress]]` pool this recipient's mail leaves from, with the route
    /// the hook returns; false elsewhere.
    fn choose_egress(&self, pool: &str) -> bool {
        let _ = pool;
        false
    }
    /// In on-delivery: stops delivering to this outcome's destination for `seconds` (at
    /// most a day), as a shaping reaction does; false elsewhere.
    fn suspend_destination(&self, seconds: u32, reason: &str) -> bool {
        let _ = (seconds, reason);
        false
    }
}

impl dyn Host + '_ {
    /// Deserialises the plugin's `[plugin.config]` table into `T`.
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.config_json()).map_err(|e| format!("plugin config: {e}"))
    }
}

/// Read access to the message in `on_data`.
pub trait Message {
    /// The size of the raw message in octets.
    fn raw_size(&self) -> u64;
    /// The decoded value of the first field with this name (case-insensitive).
    fn header(&self, name: &str) -> Option<String>;
    /// The decoded values of every field with this name.
    fn headers(&self, name: &str) -> Vec<String>;
    /// The names of all header fields, in order.
    fn header_names(&self) -> Vec<String>;
    /// The decoded text of each text part, at most `max_bytes` each.
    fn text_parts(&self, max_bytes: u32) -> Vec<String>;
    /// The attachments.
    fn attachments(&self) -> Vec<Attachment>;
    /// Raw octets from `offset`, at most `len`.
    fn raw_range(&self, offset: u64, len: u32) -> Vec<u8>;
}

/// A Tidegate plugin. Every hook has a default that changes nothing, so a plugin writes
/// only the hooks it declares in [`hooks`](Plugin::hooks).
///
/// One value serves one SMTP session at a time: fields may carry state from hook to hook.
/// The host runs later sessions in the same WebAssembly instance and calls
/// [`new_session`](Plugin::new_session) before each, so per-session state belongs in the
/// value (reset there), never in statics.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin, reading its configuration from the host. An error refuses the
    /// plugin at load time, leaving any previous version running.
    fn init(host: &dyn Host) -> Result<Self, String>;

    /// Prepares a value that served a session for the next one. The default builds a new
    /// value with [`init`](Plugin::init), which is always right; a plugin whose `init`
    /// does real work (parsing a large configuration, compiling rules) overrides this to
    /// reset only its per-session fields and keep the rest. Hooks come from
    /// [`hooks`](Plugin::hooks) afterwards, as after `init`.
    fn new_session(&mut self, host: &dyn Host) -> Result<(), String> {
        *self = Self::init(host)?;
        Ok(())
    }

    /// The stages this plugin wants to be called at.
    fn hooks(&self) -> Hooks;

    /// A client connected.
    fn on_connect(&mut self, _host: &dyn Host, _info: &ConnectInfo) -> Response {
        Response::next()
    }

    /// HELO/EHLO.
    fn on_helo(&mut self, _host: &dyn Host, _info: &HeloInfo) -> Response {
        Response::next()
    }

    /// AUTH.
    fn on_auth(&mut self, _host: &dyn Host, _info: &AuthInfo) -> Response {
        Response::next()
    }

    /// MAIL FROM.
    fn on_mail_from(&mut self, _host: &dyn Host, _info: &MailFromInfo) -> Response {
        Response::next()
    }

    /// RCPT TO.
    fn on_rcpt_to(&mut self, _host: &dyn Host, _info: &RcptToInfo) -> Response {
        Response::next()
    }

    /// The message data is complete.
    fn on_data(
        &mut self,
        _host: &dyn Host,
        _envelope: &Envelope,
        _message: &dyn Message,
    ) -> Response {
        Response::next()
    }

    /// Where a recipient goes next; `None` leaves it to others.
    fn on_route(&mut self, _host: &dyn Host, _recipient: &str) -> Option<Route> {
        None
    }

    /// The outcome of a delivery attempt.
    fn on_delivery(&mut self, _host: &dyn Host, _info: &DeliveryInfo) {}

    /// The session ended (declare `disconnect` in [`Hooks`] to be called).
    fn on_disconnect(&mut self, _host: &dyn Host, _summary: &SessionSummary) {}
}

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::http::{HttpError, HttpRequest, HttpResponse, Method};
    pub use crate::pattern::glob;
    pub use crate::types::*;
    pub use crate::{Host, Message, Plugin};
}

/// Exports a [`Plugin`] type as the component's `hooks`.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        type __TidegatePluginAdapter = $crate::guest::Adapter<$plugin>;
        $crate::guest::bindings::export!(__TidegatePluginAdapter with_types_in $crate::guest::bindings);
    };
}

/// Exports a [`Plugin`] type as the component's `hooks` (a no-op outside WebAssembly, so the
/// same crate builds natively for its tests).
#[cfg(not(target_arch = "wasm32"))]
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {};
}
