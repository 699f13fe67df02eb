//! Shadow plugins: a new version runs beside the plugin it may replace, on a copy of the
//! same inputs at the same stages, and its answers are compared with what was enforced,
//! never applied.
//!
//! A shadow never costs a session anything but a copy of the stage's input: each session
//! that reaches a shadow hands its stages to a task of its own (through a short bounded
//! queue), and that task runs the shadow's instance under the shadow's own limits. At most
//! `shadow_max_sessions` sessions run a shadow at once; a session that finds them all busy,
//! or whose queue is full, skips the shadow for the rest of the session (its instance would
//! have missed a stage), and every skipped stage is counted. A shadow's failures are
//! counted, never applied.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tidegate_plugin_sdk::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::bindings::tidegate::plugin::types as w;
use super::chain::{Hook, Instance, LoadedPlugin, StageInput, shadow_call};
use super::engine::PluginEngine;
use super::limits::CallError;
use super::services::HostServices;
use crate::metrics::rollout::ShadowLabels;
use crate::metrics::{PluginFailureLabels, PluginHookLabels, PluginLabels};

/// Disagreeing transactions kept per shadow.
pub const MAX_SAMPLES: usize = 50;
/// Stages one session may have waiting for its shadow.
const SESSION_QUEUE: usize = 8;
/// The longest description of a stage's input in a sample.
const MAX_INPUT: usize = 400;
/// Edits described in a sample, per side.
const MAX_SAMPLE_EDITS: usize = 16;

/// A shadow, as attached to a chain.
#[derive(Debug, Clone)]
pub struct Shadow {
    /// The shadow version.
    pub plugin: Arc<LoadedPlugin>,
    /// Its primary's index in the chain's plugins; `None`: the chain's decision.
    pub primary: Option<usize>,
    /// What it has seen, over reloads.
    pub stats: Arc<ShadowStats>,
    /// Sessions that may run it at once.
    pub gate: Arc<Semaphore>,
}

/// What was enforced, or what a shadow answered, in comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The verdict's name (`continue`, `reject`, ..., or `failed`).
    pub verdict: &'static str,
    /// Its reply code, if it has one.
    pub code: Option<u16>,
    /// The edits, described.
    pub edits: Vec<String>,
}

impl Judged {
    /// A response, with or without its tag edits (a chain's decision carries none).
    pub fn of(response: &w::Response, with_tags: bool) -> Judged {
        let (verdict, code) = verdict_of(&response.verdict);
        let edits = response
            .edits
            .iter()
            .filter(|e| with_tags || !matches!(e, w::Edit::SetTag(_)))
            .map(describe_edit)
            .collect();
        Judged {
            verdict,
            code,
            edits,
        }
    }

    /// A verdict and the edits that went with it.
    pub fn new(verdict: &'static str, code: Option<u16>, edits: &[w::Edit]) -> Judged {
        Judged {
            verdict,
            code,
            edits: edits.iter().map(describe_edit).collect(),
        }
    }
}

/// A verdict's name and reply code.
pub fn verdict_of(verdict: &w::Verdict) -> (&'static str, Option<u16>) {
    match verdict {
        w::Verdict::Continue => ("continue", None),
        w::Verdict::Accept => ("accept", None),
        w::Verdict::Reject(r) => ("reject", Some(r.code)),
        w::Verdict::Tempfail(r) => ("tempfail", Some(r.code)),
        w::Verdict::Discard(_) => ("discard", None),
        w::Verdict::Quarantine(_) => ("quarantine", None),
        w::Verdict::Disconnect(r) => ("disconnect", Some(r.code)),
    }
}

fn describe_edit(edit: &w::Edit) -> String {
    let text = match edit {
        w::Edit::AddHeader((n, v)) => format!("add-header {n}: {v}"),
        w::Edit::ReplaceHeader((n, v)) => format!("replace-header {n}: {v}"),
        w::Edit::RemoveHeader(n) => format!("remove-header {n}"),
        w::Edit::SetSender(s) => format!("set-sender <{}>", s.as_deref().unwrap_or_default()),
        w::Edit::AddRecipient(r) => format!("add-recipient <{r}>"),
        w::Edit::RemoveRecipient(r) => format!("remove-recipient <{r}>"),
        w::Edit::RewriteRecipient((f, t)) => format!("rewrite-recipient <{f}> <{t}>"),
        w::Edit::SetTag((k, v)) => format!("set-tag {k}={v}"),
    };
    bounded(text, 200)
}

fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// What a stage gave its plugins, for a sample (never an AUTH password).
fn describe_input(input: &StageInput) -> String {
    let text = match input {
        StageInput::Connect(c) => format!("client {} listener {}", c.client_ip, c.listener),
        StageInput::Helo(h) => format!("helo {}", h.name),
        StageInput::Auth(a) => format!("auth {} user {}", a.mechanism, a.username),
        StageInput::MailFrom(m) => {
            format!("mail from <{}>", m.sender.as_deref().unwrap_or_default())
        }
        StageInput::RcptTo(r) => format!("rcpt to <{}>", r.recipient),
        StageInput::Data(envelope, message) => format!(
            "data from <{}> to {} subject {:?} ({} octets)",
            envelope.sender.as_deref().unwrap_or_default(),
            envelope
                .recipients
                .iter()
                .map(|r| format!("<{r}>"))
                .collect::<Vec<_>>()
                .join(","),
            bounded(message.header("subject").unwrap_or_default(), 120),
            message.raw_size()
        ),
    };
    bounded(text, MAX_INPUT)
}

/// One disagreeing transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// When (seconds since the epoch).
    pub at: u64,
    /// The message's queue ID, when it had one by then (on-data).
    pub queue_id: Option<String>,
    /// The hook.
    pub hook: String,
    /// What was enforced.
    pub enforced: String,
    /// What the shadow answered.
    pub shadow: String,
    /// The edits enforced.
    pub enforced_edits: Vec<String>,
    /// The edits the shadow asked for.
    pub shadow_edits: Vec<String>,
    /// The stage's input, summarised.
    pub input: String,
}

/// Disagreements of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    /// The hook.
    pub hook: String,
    /// What was enforced.
    pub enforced: String,
    /// What the shadow answered.
    pub shadow: String,
    /// How many times.
    pub count: u64,
}

/// What `/v1/plugins/{name}/shadow` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowReport {
    /// The shadow.
    pub plugin: String,
    /// What it is compared with: a plugin, or `None` for the chain's decision.
    pub shadow_of: Option<String>,
    /// Answers that matched.
    pub agreements: u64,
    /// Answers that differed, by kind.
    pub disagreements: Vec<Disagreement>,
    /// Stages it did not see (busy).
    pub skipped: u64,
    /// Its failed calls (only counted).
    pub failures: u64,
    /// The latest disagreeing transactions, oldest first.
    pub samples: Vec<Sample>,
}

/// A shadow's counts and samples, kept across reloads.
#[derive(Debug)]
pub struct ShadowStats {
    name: String,
    shadow_of: Option<String>,
    tally: Mutex<Tally>,
}

#[derive(Debug, Default)]
struct Tally {
    agreements: u64,
    disagreements: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    skipped: u64,
    failures: u64,
    samples: VecDeque<Sample>,
}

impl ShadowStats {
    /// Empty counts for a shadow.
    pub fn new(name: &str, shadow_of: Option<&str>) -> ShadowStats {
        ShadowStats {
            name: name.to_owned(),
            shadow_of: shadow_of.map(str::to_owned),
            tally: Mutex::new(Tally::default()),
        }
    }

    /// Whether these counts belong to a shadow of this primary.
    pub fn compares_with(&self, shadow_of: Option<&str>) -> bool {
        self.shadow_of.as_deref() == shadow_of
    }

    /// The counts and samples.
    pub fn report(&self) -> ShadowReport {
        let Ok(tally) = self.tally.lock() else {
            return ShadowReport {
                plugin: self.name.clone(),
                shadow_of: self.shadow_of.clone(),
                agreements: 0,
                disagreements: Vec::new(),
                skipped: 0,
                failures: 0,
                samples: Vec::new(),
            };
        };
        ShadowReport {
            plugin: self.name.clone(),
            shadow_of: self.shadow_of.clone(),
            agreements: tally.agreements,
            disagreements: tally
                .disagreements
                .iter()
                .map(|((hook, enforced, shadow), count)| Disagreement {
                    hook: (*hook).to_owned(),
                    enforced: (*enforced).to_owned(),
                    shadow: (*shadow).to_owned(),
                    count: *count,
                })
                .collect(),
            skipped: tally.skipped,
            failures: tally.failures,
            samples: tally.samples.iter().cloned().collect(),
        }
    }

    fn skipped(&self, services: &HostServices) {
        if let Ok(mut tally) = self.tally.lock() {
            tally.skipped += 1;
        }
        services
            .metrics
            .rollout
            .shadow_skipped
            .get_or_create(&PluginLabels {
                plugin: self.name.clone(),
            })
            .inc();
    }

    fn failed(&self, services: &HostServices, hook: Hook, error: &CallError) {
        tracing::debug!(plugin = %self.name, hook = hook.name(), kind = error.kind.as_str(), error = %error, "shadow plugin failed (only counted)");
        if let Ok(mut tally) = self.tally.lock() {
            tally.failures += 1;
        }
        services
            .metrics
            .plugin_failures
            .get_or_create(&PluginFailureLabels {
                plugin: self.name.clone(),
                hook: hook.name().to_owned(),
                kind: error.kind.as_str(),
            })
            .inc();
    }

    fn compare(&self, services: &HostServices, job: &Job, shadow: &Judged) {
        let hook = job.hook.name();
        if *shadow == job.enforced {
            if let Ok(mut tally) = self.tally.lock() {
                tally.agreements += 1;
            }
            services
                .metrics
                .rollout
                .shadow_agreements
                .get_or_create(&PluginHookLabels {
                    plugin: self.name.clone(),
                    hook: hook.to_owned(),
                })
                .inc();
            return;
        }
        services
            .metrics
            .rollout
            .shadow_disagreements
            .get_or_create(&ShadowLabels {
                plugin: self.name.clone(),
                hook: hook.to_owned(),
                enforced: job.enforced.verdict,
                shadow: shadow.verdict,
            })
            .inc();
        let side = |j: &Judged| match j.code {
            Some(code) => format!("{} {code}", j.verdict),
            None => j.verdict.to_owned(),
        };
        let edits = |j: &Judged| j.edits.iter().take(MAX_SAMPLE_EDITS).cloned().collect();
        let sample = Sample {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            queue_id: job.queue_id.clone(),
            hook: hook.to_owned(),
            enforced: side(&job.enforced),
            shadow: side(shadow),
            enforced_edits: edits(&job.enforced),
            shadow_edits: edits(shadow),
            input: describe_input(&job.input),
        };
        if let Ok(mut tally) = self.tally.lock() {
            *tally
                .disagreements
                .entry((hook, job.enforced.verdict, shadow.verdict))
                .or_insert(0) += 1;
            if tally.samples.len() >= MAX_SAMPLES {
                tally.samples.pop_front();
            }
            tally.samples.push_back(sample);
        }
    }
}

/// One stage, handed to a session's shadow task.
struct Job {
    hook: Hook,
    input: StageInput,
    tags: BTreeMap<String, String>,
    session: Arc<w::SessionInfo>,
    auth_results: Arc<Vec<w::AuthResult>>,
    enforced: Judged,
    queue_id: Option<String>,
    /// Compare with the shadow's tag edits too (a plugin's answer has them, a chain's
    /// decision does not).
    with_tags: bool,
}

/// What a stage hands its shadows.
pub struct Offer<'a> {
    /// The stage's input.
    pub input: &'a StageInput,
    /// The tags as they were before the primary (or the chain) ran.
    pub tags: BTreeMap<String, String>,
    /// What `session` answers.
    pub session: &'a Arc<w::SessionInfo>,
    /// What `auth-results` answers.
    pub auth_results: &'a Arc<Vec<w::AuthResult>>,
    /// What was enforced.
    pub enforced: Judged,
    /// The message's queue ID, if known.
    pub queue_id: Option<String>,
}

enum Link {
    /// Not started in this session yet.
    Idle,
    /// Its task is running.
    Open(mpsc::Sender<Job>),
    /// Skipped for the rest of the session.
    Off,
}

/// A session's links to the shadows of its chain.
pub struct SessionShadows {
    shadows: Vec<Shadow>,
    links: Vec<Link>,
}

impl SessionShadows {
    /// No task yet: one starts at the first stage a shadow sees.
    pub fn new(shadows: &[Shadow]) -> SessionShadows {
        SessionShadows {
            shadows: shadows.to_vec(),
            links: shadows.iter().map(|_| Link::Idle).collect(),
        }
    }

    /// Whether a shadow of `primary` (`None`: of the chain) wants this stage, so that the
    /// caller copies the tags before anything changes them.
    pub fn wants(&self, primary: Option<usize>, hook: Hook) -> bool {
        self.shadows.iter().zip(&self.links).any(|(s, l)| {
            s.primary == primary && s.plugin.subscribes(hook) && !matches!(l, Link::Off)
        })
    }

    /// Hands a stage to every shadow of `primary` that wants it.
    pub fn offer(
        &mut self,
        primary: Option<usize>,
        hook: Hook,
        offer: Offer<'_>,
        engine: &Arc<PluginEngine>,
        services: &Arc<HostServices>,
    ) {
        for (shadow, link) in self.shadows.iter().zip(self.links.iter_mut()) {
            if shadow.primary != primary || !shadow.plugin.subscribes(hook) {
                continue;
            }
            if matches!(link, Link::Idle) {
                *link = match Arc::clone(&shadow.gate).try_acquire_owned() {
                    Ok(permit) => {
                        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
                        tokio::spawn(serve(
                            shadow.clone(),
                            rx,
                            permit,
                            Arc::clone(engine),
                            Arc::clone(services),
                        ));
                        Link::Open(tx)
                    }
                    Err(_) => Link::Off,
                };
            }
            let Link::Open(tx) = link else {
                shadow.stats.skipped(services);
                continue;
            };
            let job = Job {
                hook,
                input: offer.input.clone(),
                tags: offer.tags.clone(),
                session: Arc::clone(offer.session),
                auth_results: Arc::clone(offer.auth_results),
                enforced: offer.enforced.clone(),
                queue_id: offer.queue_id.clone(),
                with_tags: primary.is_some(),
            };
            if tx.try_send(job).is_err() {
                // Its instance would miss this stage: the rest of the session is skipped.
                *link = Link::Off;
                shadow.stats.skipped(services);
            }
        }
    }
}

/// A session's shadow task: one instance, the session's stages in order, each call under
/// the shadow's own limits; ends when the session does.
async fn serve(
    shadow: Shadow,
    mut jobs: mpsc::Receiver<Job>,
    _permit: OwnedSemaphorePermit,
    engine: Arc<PluginEngine>,
    services: Arc<HostServices>,
) {
    let plugin = &shadow.plugin;
    let mut instance: Option<Instance> = None;
    while let Some(job) = jobs.recv().await {
        let started = Instant::now();
        if instance.is_none() {
            match plugin.check_out(&engine, &services).await {
                Ok(fresh) => instance = Some(fresh),
                // No instance free: the pool belongs to enforcing plugins first, and
                // this stage goes uncompared.
                Err(error) if error.kind == super::limits::Failure::PoolFull => {
                    shadow.stats.skipped(&services);
                    continue;
                }
                Err(error) => {
                    shadow.stats.failed(&services, job.hook, &error);
                    continue;
                }
            }
        }
        let Some(live) = instance.as_mut() else {
            continue;
        };
        let result = tokio::time::timeout(
            plugin.limits.time,
            shadow_call(
                plugin,
                live,
                &job.input,
                &job.tags,
                &job.session,
                &job.auth_results,
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(CallError::new(
                super::limits::Failure::Time,
                format!(
                    "no answer within time_limit_ms ({} ms)",
                    plugin.config.time_limit_ms
                ),
            ))
        });
        let labels = PluginHookLabels {
            plugin: plugin.name.to_string(),
            hook: job.hook.name().to_owned(),
        };
        services.metrics.plugin_calls.get_or_create(&labels).inc();
        services
            .metrics
            .plugin_call_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(response) => {
                let judged = Judged::of(&response, job.with_tags);
                shadow.stats.compare(&services, &job, &judged);
            }
            Err(error) => {
                // A trap or an abandoned call leaves the instance unusable.
                instance = None;
                shadow.stats.failed(&services, job.hook, &error);
            }
        }
    }
    if let Some(instance) = instance {
        plugin.check_in(instance, &services.metrics);
    }
}
