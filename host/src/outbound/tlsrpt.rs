//! SMTP TLS Reporting (RFC 8460): what happened to the TLS of MX deliveries, counted per
//! recipient domain and policy (MTA-STS `sts`, DANE `tlsa`, or `no-policy-found`), and
//! turned, once a reporting period is over, into the aggregate JSON report (§4) each
//! domain asks for in its `_smtp._tls` TXT record (`v=TLSRPTv1; rua=...`). Sending the
//! reports (HTTPS POST, mail through the queue) is `queue::tls_reports`' job; this module
//! counts, formats and parses, and bounds what it keeps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Policies counted per period (domains times their policies).
const MAX_POLICIES: usize = 10_000;
/// Distinct failure details kept per policy.
const MAX_FAILURE_DETAILS: usize = 100;
/// Reporting addresses used per domain (RFC 8460 §3: a few are expected).
const MAX_RUA: usize = 4;
/// The longest reason text kept.
const MAX_REASON: usize = 200;

/// The kind of policy a session was under (RFC 8460 §4.4 `policy-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyType {
    /// An MTA-STS policy.
    Sts,
    /// DANE TLSA records.
    Tlsa,
    /// Neither.
    NoPolicyFound,
}

impl PolicyType {
    fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The policy a delivery ran under, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    /// The recipient domain (the policy domain, whose `_smtp._tls` record is asked).
    pub domain: String,
    /// The kind of policy.
    pub policy_type: PolicyType,
    /// The policy itself: an MTA-STS policy's lines, or the TLSA records.
    pub policy_string: Vec<String>,
    /// The MX host a TLSA policy belongs to.
    pub mx_host: Option<String>,
}

/// One kind of failure at one host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FailureKey {
    result_type: &'static str,
    receiving_mx: String,
    receiving_ip: Option<IpAddr>,
    reason: String,
}

#[derive(Debug, Default)]
struct Counts {
    successes: u64,
    failures: u64,
    details: HashMap<FailureKey, u64>,
}

#[derive(Debug)]
struct Period {
    start: SystemTime,
    policies: HashMap<PolicyRef, Counts>,
}

/// The counts of the current reporting period.
#[derive(Debug)]
pub struct Collector {
    period: Mutex<Period>,
}

impl Default for Collector {
    fn default() -> Self {
        Collector {
            period: Mutex::new(Period {
                start: SystemTime::now(),
                policies: HashMap::new(),
            }),
        }
    }
}

/// One domain's part of a finished period.
#[derive(Debug)]
pub struct DomainReport {
    /// The policy domain.
    pub domain: String,
    /// Its policies and their counts, as the report's `policies` array.
    pub policies: Vec<Value>,
}

impl Collector {
    fn with_counts(&self, policy: &PolicyRef, f: impl FnOnce(&mut Counts)) {
        let mut period = self.period.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(counts) = period.policies.get_mut(policy) {
            f(counts);
            return;
        }
        if period.policies.len() >= MAX_POLICIES {
            return;
        }
        let mut counts = Counts::default();
        f(&mut counts);
        period.policies.insert(policy.clone(), counts);
    }

    /// A TLS session was established as the policy asks.
    pub fn success(&self, policy: &PolicyRef) {
        self.with_counts(policy, |counts| counts.successes += 1);
    }

    /// A session failed the policy (`result_type` from RFC 8460 §4.3).
    pub fn failure(
        &self,
        policy: &PolicyRef,
        result_type: &'static str,
        receiving_mx: &str,
        receiving_ip: Option<IpAddr>,
        reason: &str,
    ) {
        let key = FailureKey {
            result_type,
            receiving_mx: receiving_mx.trim_end_matches('.').to_ascii_lowercase(),
            receiving_ip,
            reason: reason.chars().take(MAX_REASON).collect(),
        };
        self.with_counts(policy, |counts| {
            counts.failures += 1;
            if let Some(n) = counts.details.get_mut(&key) {
                *n += 1;
            } else if counts.details.len() < MAX_FAILURE_DETAILS {
                counts.details.insert(key, 1);
            }
        });
    }

    /// Ends the period: its start, its end (now) and what each domain's report holds.
    pub fn take(&self) -> (SystemTime, SystemTime, Vec<DomainReport>) {
        let now = SystemTime::now();
        let period = {
            let mut period = self.period.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(
                &mut *period,
                Period {
                    start: now,
                    policies: HashMap::new(),
                },
            )
        };
        let mut by_domain: HashMap<String, Vec<Value>> = HashMap::new();
        for (policy, counts) in period.policies {
            let mut policy_json = json!({
                "policy-type": policy.policy_type.as_str(),
                "policy-domain": policy.domain,
            });
            if !policy.policy_string.is_empty() {
                policy_json["policy-string"] = json!(policy.policy_string);
            }
            if let Some(mx) = &policy.mx_host {
                policy_json["mx-host"] = json!([mx]);
            }
            let details: Vec<Value> = counts
                .details
                .iter()
                .map(|(key, n)| {
                    let mut detail = json!({
                        "result-type": key.result_type,
                        "receiving-mx-hostname": key.receiving_mx,
                        "failed-session-count": n,
                    });
                    if let Some(ip) = key.receiving_ip {
                        detail["receiving-ip"] = json!(ip.to_string());
                    }
                    if !key.reason.is_empty() {
                        detail["failure-reason-code"] = json!(key.reason);
                    }
                    detail
                })
                .collect();
            let mut entry = json!({
                "policy": policy_json,
                "summary": {
                    "total-successful-session-count": counts.successes,
                    "total-failure-session-count": counts.failures,
                },
            });
            if !details.is_empty() {
                entry["failure-details"] = json!(details);
            }
            by_domain.entry(policy.domain).or_default().push(entry);
        }
        let reports = by_domain
            .into_iter()
            .map(|(domain, policies)| DomainReport { domain, policies })
            .collect();
        (period.start, now, reports)
    }
}

/// The RFC 8460 §4.3 result type of a failed STARTTLS or handshake, from its error text.
pub fn result_type(error: &str) -> &'static str {
    let lower = error.to_ascii_lowercase();
    if lower.contains("dane:") || lower.contains("tlsa") {
        "tlsa-invalid"
    } else if lower.contains("does not offer starttls")
        || lower.contains("starttls") && lower.contains("refus")
    {
        "starttls-not-supported"
    } else if lower.contains("expired") {
        "certificate-expired"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        "certificate-host-mismatch"
    } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        "certificate-not-trusted"
    } else {
        "validation-failure"
    }
}

/// Where a domain wants its reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// Mail to this address.
    Mailto(String),
    /// POST to this URL.
    Https(String),
}

/// The reporting addresses of a `_smtp._tls` TXT record (`v=TLSRPTv1; rua=a,b`), or
/// none when it is not one. Addresses are checked: a mailbox of printable characters
/// with one `@`, an `https://` URL without spaces.
pub fn parse_record(text: &str) -> Vec<Rua> {
    let mut fields = text.split(';').map(str::trim);
    if fields.next() != Some("v=TLSRPTv1") {
        return Vec::new();
    }
    let Some(rua) = fields.find_map(|f| f.strip_prefix("rua=")) else {
        return Vec::new();
    };
    rua.split(',')
        .map(str::trim)
        .filter_map(|uri| {
            if let Some(address) = uri.strip_prefix("mailto:") {
                let address = address.split('?').next().unwrap_or_default();
                let valid = address.len() <= 254
                    && address.matches('@').count() == 1
                    && !address.starts_with('@')
                    && !address.ends_with('@')
                    && address
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>');
                valid.then(|| Rua::Mailto(address.to_owned()))
            } else if uri.starts_with("https://") {
                let valid = uri.len() <= 2048 && uri.bytes().all(|b| b.is_ascii_graphic());
                valid.then(|| Rua::Https(uri.to_owned()))
            } else {
                None
            }
        })
        .take(MAX_RUA)
        .collect()
}

/// RFC 3339 in UTC, as the report's dates are written.
fn datetime(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// The report (RFC 8460 §4.4) for one domain.
pub fn report_json(
    organization: &str,
    contact: &str,
    report_id: &str,
    start: SystemTime,
    end: SystemTime,
    report: &DomainReport,
) -> Value {
    json!({
        "organization-name": organization,
        "date-range": {
            "start-datetime": datetime(start),
            "end-datetime": datetime(end),
        },
        "contact-info": contact,
        "report-id": report_id,
        "policies": report.policies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(domain: &str, policy_type: PolicyType) -> PolicyRef {
        PolicyRef {
            domain: domain.into(),
            policy_type,
            policy_string: Vec::new(),
            mx_host: None,
        }
    }

    #[test]
    fn records_name_mailto_and_https_addresses_only() {
        assert_eq!(
            parse_record("v=TLSRPTv1; rua=mailto:tls@example.test,https://r.example.test/x"),
            vec![
                Rua::Mailto("tls@example.test".into()),
                Rua::Https("https://r.example.test/x".into())
            ]
        );
        assert!(parse_record("v=TLSRPTv2; rua=mailto:a@b").is_empty());
        assert!(parse_record("v=TLSRPTv1; rua=http://plain.test/").is_empty());
        assert!(parse_record("v=TLSRPTv1; rua=mailto:<evil>@x,mailto:@x").is_empty());
    }

    #[test]
    fn a_period_counts_per_policy_and_starts_over() {
        let collector = Collector::default();
        let sts = policy("a.test", PolicyType::Sts);
        collector.success(&sts);
        collector.success(&sts);
        collector.failure(&sts, "starttls-not-supported", "MX.a.test.", None, "");
        collector.failure(&sts, "starttls-not-supported", "mx.a.test", None, "");
        collector.success(&policy("b.test", PolicyType::NoPolicyFound));
        let (start, end, reports) = collector.take();
        assert!(start <= end);
        assert_eq!(reports.len(), 2);
        let a = reports.iter().find(|r| r.domain == "a.test").unwrap();
        let json = report_json("org", "c", "id", start, end, a);
        let entry = &json["policies"][0];
        assert_eq!(entry["policy"]["policy-type"], "sts");
        assert_eq!(entry["summary"]["total-successful-session-count"], 2);
        assert_eq!(entry["summary"]["total-failure-session-count"], 2);
        assert_eq!(entry["failure-details"][0]["failed-session-count"], 2);
        assert_eq!(
            entry["failure-details"][0]["receiving-mx-hostname"],
            "mx.a.test"
        );
        assert!(
            json["date-range"]["start-datetime"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        assert!(collector.take().2.is_empty());
    }

    #[test]
    fn error_texts_become_result_types() {
        assert_eq!(
            result_type("DANE: no TLSA record matches the certificate"),
            "tlsa-invalid"
        );
        assert_eq!(
            result_type("mx does not offer STARTTLS and TLS is required"),
            "starttls-not-supported"
        );
        assert_eq!(
            result_type("invalid peer certificate: Expired"),
            "certificate-expired"
        );
        assert_eq!(
            result_type("invalid peer certificate: NotValidForName"),
            "certificate-host-mismatch"
        );
        assert_eq!(
            result_type("invalid peer certificate: UnknownIssuer"),
            "certificate-not-trusted"
        );
        assert_eq!(result_type("handshake eof"), "validation-failure");
    }
}
