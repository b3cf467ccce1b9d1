//! The guard engine: a base model (+ optional adapter) on a backend, classifying content.
//!
//! Inference flow: request → guard prompt → chat template → token ids → backend prefill → decode
//! loop → token stream → streaming parser → [`Verdict`]. Every request starts with the same system
//! prompt and policy definitions, so the KV state of the longest shared prefix is kept between
//! requests and only the new tokens are prefilled.

use std::ops::ControlFlow;
use std::time::Duration;

use vigil_models::chat::ChatTemplate;
use vigil_models::cpu::sampling::{Sampler, SamplingParams};
use vigil_models::gguf::Gguf;
use vigil_models::guard::{GuardRequest, Parsed, Section, StreamParser};
use vigil_models::lora::LoraAdapter;
use vigil_models::tokenizer::{TokenDecoder, Tokenizer};
use vigil_models::{Error, Result};

use crate::backend::Backend;
use crate::clock::Clock;

/// Per-request generation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassifyOptions {
    /// Most tokens to generate (reasoning + verdict).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop as soon as the verdict lines are complete.
    pub stop_at_verdict: bool,
    /// When the model stops (or loops) without a verdict, write `Classification:` for it and let
    /// it choose between the candidate continuations by likelihood (see [`Guard::classify`]).
    /// Off for evaluations that measure format compliance.
    pub force_verdict: bool,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        ClassifyOptions {
            max_tokens: 384,
            sampling: SamplingParams::greedy(),
            stop_at_verdict: true,
            force_verdict: true,
        }
    }
}

/// Tokens kept free for a forced verdict.
const FORCE_RESERVE: usize = 48;

/// Positions a request keeps free in the context.
fn reserve(opts: &ClassifyOptions) -> usize {
    if opts.force_verdict {
        FORCE_RESERVE
    } else {
        0
    }
}

/// Something that happened while classifying, reported as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// A generated token and the text it completed (may be empty mid-character).
    Token { id: u32, text: &'a str },
    /// New text of a section of the answer (reasoning, think, proof, answer, verdict).
    Text { section: Section, text: &'a str },
    /// Something the user should know, e.g. that the GPU failed and generation restarts on the CPU.
    Notice(&'a str),
}

/// Which compute backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// A hardware GPU when one is present; otherwise the CPU (a software GPU such as lavapipe or
    /// SwiftShader is slower than vigil's CPU path, so `auto` does not pick it).
    #[default]
    Auto,
    /// The GPU, whichever adapter there is (falls back to the CPU, with a notice, when none works).
    Gpu,
    Cpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model ended its turn.
    EndOfTurn,
    /// The verdict was complete (`stop_at_verdict`).
    Verdict,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The caller asked to stop.
    Cancelled,
    /// The context is full.
    Context,
    /// The model started repeating itself.
    Repetition,
}

/// Timings and counts of one request.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Prompt tokens served from the kept prefix (not prefilled again).
    pub reused_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// Time to the first generated token.
    pub ttft_ms: f64,
    pub decode_tok_s: f64,
}

/// The result of one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Parsed,
    /// Everything the model generated (and, if `forced`, the verdict written for it).
    pub raw: String,
    /// The verdict lines were written by the engine and chosen by likelihood, because the model
    /// did not write them itself.
    pub forced: bool,
    pub stop: StopReason,
    pub stats: Stats,
}

impl Outcome {
    /// The outcome as JSON (`vigil classify --json`, the browser API): label (`safe`, `unsafe` or
    /// `unparseable`), policies, reasoning, raw text, forced, stop, stats; `error` when unparseable.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match &self.verdict {
            Ok(v) => json!({
                "label": v.label.lower(),
                "policies": v.policies.iter().map(|p| p.name()).collect::<Vec<_>>(),
                "reasoning": v.reasoning,
                "raw": self.raw,
                "forced": self.forced,
                "stop": self.stop,
                "stats": self.stats,
            }),
            Err(e) => json!({
                "label": "unparseable",
                "policies": [],
                "reasoning": "",
                "raw": self.raw,
                "error": e.reason,
                "forced": self.forced,
                "stop": self.stop,
                "stats": self.stats,
            }),
        }
    }
}

pub struct Guard {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    backend: Box<dyn Backend>,
    stop_ids: Vec<u32>,
    /// Tokens whose KV state the backend holds.
    held: Vec<u32>,
    arch: String,
    adapter: Option<String>,
    name: String,
    /// The model file and adapter, kept to rebuild a CPU backend if the GPU fails.
    source: Option<Gguf>,
    lora: Option<LoraAdapter>,
    context: usize,
    notices: Vec<String>,
}

impl Guard {
    /// A guard over an opened model file and a backend built from it.
    pub fn new(g: &Gguf, backend: Box<dyn Backend>) -> Result<Self> {
        let tokenizer = Tokenizer::from_gguf(g)?;
        let template = ChatTemplate::detect(g)?;
        template.check_vocabulary(&tokenizer, g.name())?;
        let cfg = vigil_models::arch::ArchConfig::from_gguf(g)?;
        if tokenizer.vocab_size() > cfg.vocab_size {
            return Err(Error::Tokenizer {
                file: g.name().into(),
                what: format!(
                    "the tokenizer has {} tokens but the model's output covers {} ({}.vocab_size / token_embd)",
                    tokenizer.vocab_size(),
                    cfg.vocab_size,
                    cfg.arch.name()
                ),
            });
        }
        let stop_ids = template.stop_ids(&tokenizer);
        if stop_ids.is_empty() {
            return Err(Error::Tokenizer {
                file: g.name().into(),
                what: format!(
                    "no end-of-turn token `{}` and no EOS: generation could not stop",
                    template.end_of_turn()
                ),
            });
        }
        Ok(Guard {
            tokenizer,
            template,
            stop_ids,
            held: Vec::new(),
            arch: g.str("general.architecture")?.to_string(),
            adapter: None,
            name: g.opt_str("general.name")?.unwrap_or(g.name()).to_string(),
            context: backend.context(),
            source: Some(g.clone()),
            lora: None,
            notices: Vec::new(),
            backend,
        })
    }

    /// Loads a model file on the chosen backend (native). With `Auto` or `Gpu`, a missing or
    /// failing GPU falls back to the CPU and says why in [`Guard::notices`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>, choice: BackendChoice, context: usize) -> Result<Self> {
        pollster::block_on(Self::load(Gguf::open(path)?, choice, context))
    }

    /// Builds a guard over an opened model file on the chosen backend (native and browser).
    /// With `Auto` or `Gpu`, a missing or failing GPU falls back to the CPU and says why in
    /// [`Guard::notices`].
    pub async fn load(g: Gguf, choice: BackendChoice, context: usize) -> Result<Self> {
        let mut notices = Vec::new();
        let backend: Box<dyn Backend> = match choice {
            BackendChoice::Cpu => Box::new(crate::backend::cpu::CpuBackend::load(&g, context)?),
            BackendChoice::Auto | BackendChoice::Gpu => match Self::gpu_backend(&g, choice, context).await {
                Ok(b) => b,
                Err(why) => {
                    notices.push(why);
                    Box::new(crate::backend::cpu::CpuBackend::load(&g, context)?)
                }
            },
        };
        let mut guard = Self::new(&g, backend)?;
        guard.notices = notices;
        Ok(guard)
    }

    /// A GPU backend, or why there is none.
    async fn gpu_backend(
        g: &Gguf,
        choice: BackendChoice,
        context: usize,
    ) -> std::result::Result<Box<dyn Backend>, String> {
        let gpu = vigil_kernels::Gpu::new().await.map_err(|e| format!("{e}; using the CPU backend"))?;
        // vigil's CPU path beats a software GPU: natively lavapipe; in the browser a fallback
        // adapter (SwiftShader), which ran a guard prompt ~10× slower than the wasm CPU path.
        if choice == BackendChoice::Auto && gpu.info.device_type == vigil_kernels::wgpu::DeviceType::Cpu {
            return Err(format!(
                "the only GPU adapter, {}, is a software renderer; using the CPU backend (backend `gpu` forces it)",
                gpu.describe()
            ));
        }
        let name = gpu.describe();
        crate::backend::gpu::GpuBackend::load(std::sync::Arc::new(gpu), g, context)
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .map_err(|e| format!("the GPU backend could not load the model on {name} ({e}); using the CPU backend"))
    }

    /// What the user should know about how this guard runs (fallbacks and why).
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// Loads a model file on the CPU backend (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_cpu(path: impl AsRef<std::path::Path>, context: usize) -> Result<Self> {
        Self::open(path, BackendChoice::Cpu, context)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn template(&self) -> ChatTemplate {
        self.template
    }
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }
    pub fn backend_info(&self) -> crate::backend::BackendInfo {
        self.backend.info()
    }
    pub fn architecture(&self) -> &str {
        &self.arch
    }
    pub fn model_name(&self) -> &str {
        &self.name
    }
    pub fn adapter(&self) -> Option<&str> {
        self.adapter.as_deref()
    }
    pub fn context(&self) -> usize {
        self.backend.context()
    }

    /// Attaches (or with `None` removes) a LoRA adapter; the base model stays loaded.
    pub fn set_adapter(&mut self, adapter: Option<&LoraAdapter>) -> Result<()> {
        self.backend.set_adapter(adapter)?;
        self.held.clear();
        self.adapter = adapter.map(|a| a.name.clone());
        self.lora = adapter.cloned();
        Ok(())
    }

    /// Replaces a failed GPU backend by the CPU one (same model and adapter).
    fn fall_back_to_cpu(&mut self, why: &str) -> Result<String> {
        let g = self.source.as_ref().ok_or_else(|| Error::Device(why.to_string()))?;
        let mut cpu = crate::backend::cpu::CpuBackend::load(g, self.context)?;
        cpu.set_adapter(self.lora.as_ref())?;
        self.backend = Box::new(cpu);
        self.held.clear();
        let notice = format!("{why}; continuing on the CPU backend");
        self.notices.push(notice.clone());
        Ok(notice)
    }

    /// The prompt token ids of a request.
    pub fn prompt_ids(&self, req: &GuardRequest) -> Result<Vec<u32>> {
        Ok(self.template.encode(&self.tokenizer, &req.messages(), true)?.ids)
    }

    /// Classifies one request, reporting tokens and section text to `on_event` as they are
    /// generated. Return `ControlFlow::Break` from the callback to stop early.
    ///
    /// If the GPU fails on the way, the request restarts on the CPU backend: an
    /// [`Event::Notice`] says so, and the events that follow are the new attempt's.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn classify(
        &mut self,
        req: &GuardRequest,
        opts: &ClassifyOptions,
        on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Outcome> {
        pollster::block_on(self.classify_async(req, opts, on_event))
    }

    /// [`Guard::classify`] as a future: the form the browser needs, where a GPU step completes
    /// only once the event loop has run.
    pub async fn classify_async(
        &mut self,
        req: &GuardRequest,
        opts: &ClassifyOptions,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Outcome> {
        match self.classify_once(req, opts, &mut on_event).await {
            Err(Error::Device(why)) if self.backend.name() == "gpu" && self.source.is_some() => {
                let notice = self.fall_back_to_cpu(&why)?;
                let _ = on_event(&Event::Notice(&notice));
                self.classify_once(req, opts, &mut on_event).await
            }
            other => other,
        }
    }

    async fn classify_once(
        &mut self,
        req: &GuardRequest,
        opts: &ClassifyOptions,
        on_event: &mut impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Outcome> {
        let ids = self.checked_prompt(req, opts)?;
        let reserve = reserve(opts);
        let ctx = self.backend.context();
        let clock = Clock::start();
        // Reuse the KV state of the prefix shared with what the backend holds.
        let common = shared_prefix(&self.held, &ids);
        self.backend.truncate(common);
        self.held.truncate(common);
        let mut sampler = Sampler::new(opts.sampling);
        let mut gen = Generation::new(req, ids.len(), common);
        let rules = Rules { tokenizer: &self.tokenizer, stop_ids: &self.stop_ids, opts, reserve, ctx };

        let mut next = self.backend.forward_sample_async(&ids[common..], &mut sampler).await?;
        self.held.extend_from_slice(&ids[common..]);
        gen.stats.prefill_ms = clock.ms();
        gen.stats.ttft_ms = gen.stats.prefill_ms;
        let decode_start = clock.ms();
        let stop = loop {
            if let Some(stop) = gen.take(next, &rules, self.backend.position(), on_event) {
                break stop;
            }
            let cur = [next];
            yield_now().await;
            next = self.backend.forward_sample_async(&cur, &mut sampler).await?;
            self.held.push(cur[0]);
        };
        let (updates, mut verdict) = gen.finish();
        for u in updates {
            let _ = on_event(&Event::Text { section: u.section, text: &u.text });
        }
        let mut forced = false;
        if verdict.is_err() && opts.force_verdict && stop != StopReason::Cancelled {
            // The last sampled token is part of the text unless it ended the turn.
            let pending: Vec<u32> = if stop == StopReason::EndOfTurn { vec![] } else { vec![next] };
            let suffix = self.force_verdict(req, &pending).await?;
            let mut updates = gen.parser.push(&suffix);
            let (rest, v) = gen.parser.finish();
            updates.extend(rest);
            for u in updates {
                let _ = on_event(&Event::Text { section: u.section, text: &u.text });
            }
            verdict = v;
            forced = true;
        }
        gen.stats.decode_ms = clock.ms() - decode_start;
        gen.stats.set_decode_rate();
        Ok(Outcome { verdict, raw: gen.parser.text().to_string(), forced, stop, stats: gen.stats })
    }

    /// The prompt ids of a request that can run: content present, room in the context for the
    /// prompt, `max_tokens` and a forced verdict.
    fn checked_prompt(&self, req: &GuardRequest, opts: &ClassifyOptions) -> Result<Vec<u32>> {
        if req.content.trim().is_empty() {
            return Err(Error::Input("the content to classify is empty".into()));
        }
        if req.response.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err(Error::Input(
                "the response to classify is empty (omit it to classify the prompt alone)".into(),
            ));
        }
        let ids = self.prompt_ids(req)?;
        let ctx = self.backend.context();
        if ids.len() + opts.max_tokens + reserve(opts) > ctx {
            return Err(Error::Input(format!(
                "the request is {} tokens and needs room for {} more, but the context holds {ctx}: vigil refuses rather than \
                 cutting the content (a cut could drop the unsafe part). Shorten it, split it, or lower --max-tokens.",
                ids.len(),
                opts.max_tokens
            )));
        }
        Ok(ids)
    }

    /// Classifies `reqs` side by side, up to `lanes` at a time, and returns each one's outcome (or
    /// its own error, such as an over-long request) in order; `done(i)` is called as request `i`
    /// finishes. On a backend with lanes (the CPU) every decoding step feeds one token of each
    /// running request through the decoder together, so the weights are read once per step rather
    /// than once per request; a finished request's lane takes the next one and keeps the KV state
    /// of their shared prompt prefix. Greedy outcomes equal [`Guard::classify`]'s one by one
    /// (the timings aside); a request that needs a forced verdict is run again alone to force it.
    /// Backends without lanes run the requests one by one. An error of the backend ends the call.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn classify_batch(
        &mut self,
        reqs: &[GuardRequest],
        opts: &ClassifyOptions,
        lanes: usize,
        mut done: impl FnMut(usize),
    ) -> Result<Vec<Result<Outcome>>> {
        let mut out: Vec<Option<Result<Outcome>>> = (0..reqs.len()).map(|_| None).collect();
        if !self.backend.has_lanes() || lanes <= 1 {
            for (i, req) in reqs.iter().enumerate() {
                out[i] = Some(match self.checked_prompt(req, opts) {
                    Err(e) => Err(e),
                    Ok(_) => Ok(self.classify(req, opts, |_| ControlFlow::Continue(()))?),
                });
                done(i);
            }
            return Ok(out.into_iter().flatten().collect());
        }
        /// A request running in a lane.
        struct Job {
            index: usize,
            gen: Generation,
            sampler: Sampler,
            /// Tokens to feed next, after the lane's first `keep` positions.
            feed: Vec<u32>,
            clock: Clock,
            decode_start: Option<f64>,
        }
        let mut held: Vec<Vec<u32>> = vec![Vec::new(); lanes.min(reqs.len())];
        let mut jobs: Vec<Option<Job>> = (0..held.len()).map(|_| None).collect();
        let mut queue = 0..reqs.len();
        let ctx = self.backend.context();
        loop {
            for (lane, job) in jobs.iter_mut().enumerate().filter(|(_, j)| j.is_none()) {
                for index in queue.by_ref() {
                    match self.checked_prompt(&reqs[index], opts) {
                        Err(e) => {
                            out[index] = Some(Err(e));
                            done(index);
                        }
                        Ok(ids) => {
                            let keep = shared_prefix(&held[lane], &ids);
                            held[lane].truncate(keep);
                            *job = Some(Job {
                                index,
                                gen: Generation::new(&reqs[index], ids.len(), keep),
                                sampler: Sampler::new(opts.sampling),
                                feed: ids[keep..].to_vec(),
                                clock: Clock::start(),
                                decode_start: None,
                            });
                            break;
                        }
                    }
                }
            }
            let running: Vec<usize> = (0..jobs.len()).filter(|&l| jobs[l].is_some()).collect();
            if running.is_empty() {
                break;
            }
            let steps: Vec<(usize, usize, &[u32])> = running
                .iter()
                .map(|&l| (l, held[l].len(), jobs[l].as_ref().map_or(&[][..], |j| &j.feed[..])))
                .collect();
            let logits = self.backend.forward_lanes(&steps)?;
            let rules =
                Rules { tokenizer: &self.tokenizer, stop_ids: &self.stop_ids, opts, reserve: reserve(opts), ctx };
            for (&lane, logits) in running.iter().zip(logits) {
                let Some(job) = jobs[lane].as_mut() else { continue };
                held[lane].append(&mut job.feed);
                let next = job.sampler.sample(&logits);
                let decode_start = *job.decode_start.get_or_insert_with(|| {
                    job.gen.stats.prefill_ms = job.clock.ms();
                    job.gen.stats.ttft_ms = job.gen.stats.prefill_ms;
                    job.clock.ms()
                });
                match job.gen.take(next, &rules, held[lane].len(), &mut |_| ControlFlow::Continue(())) {
                    None => job.feed.push(next),
                    Some(stop) => {
                        let Some(mut job) = jobs[lane].take() else { continue };
                        let (_, verdict) = job.gen.finish();
                        job.gen.stats.decode_ms = job.clock.ms() - decode_start;
                        job.gen.stats.set_decode_rate();
                        let raw = job.gen.parser.text().to_string();
                        out[job.index] = Some(Ok(Outcome { verdict, raw, forced: false, stop, stats: job.gen.stats }));
                        done(job.index);
                    }
                }
            }
        }
        let mut results: Vec<Result<Outcome>> = out.into_iter().flatten().collect();
        for (req, r) in reqs.iter().zip(results.iter_mut()) {
            let unforced = matches!(r, Ok(o) if o.verdict.is_err() && o.stop != StopReason::Cancelled);
            if opts.force_verdict && unforced {
                *r = Ok(self.classify(req, opts, |_| ControlFlow::Continue(()))?);
            }
        }
        Ok(results)
    }

    /// Writes the verdict lines after whatever the model generated, choosing each open value by
    /// the model's own likelihood: SAFE vs UNSAFE, then (all-policies mode, UNSAFE) the most likely
    /// policy. `pending` are generated tokens not yet fed to the backend. Returns the added text.
    async fn force_verdict(&mut self, req: &GuardRequest, pending: &[u32]) -> Result<String> {
        use vigil_models::guard::{Mode, OutputFormat, Policy};
        let (open, close) = match req.format {
            OutputFormat::Rsft => ("\n\nClassification:", ""),
            OutputFormat::DualStream => ("\n</think>\n<answer>\nClassification:", "\n</answer>"),
        };
        let labels = [" SAFE", " UNSAFE"];
        let mut feed = pending.to_vec();
        feed.extend(self.tokenizer.encode(open)?);
        let label = self.choose(&feed, &labels).await?;
        let mut text = format!("{open}{}", labels[label]);
        if req.mode == Mode::AllPolicies {
            if label == 1 {
                // the backend now holds everything up to "Classification:"; continue from there
                let feed = self.tokenizer.encode(" UNSAFE\nViolated policies:")?;
                let names: Vec<String> = Policy::ALL.iter().map(|p| format!(" {}", p.name())).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let best = self.choose(&feed, &refs).await?;
                text.push_str(&format!("\nViolated policies:{}", names[best]));
            } else {
                text.push_str("\nViolated policies: none");
            }
        }
        text.push_str(close);
        Ok(text)
    }

    /// Feeds `prefix`, then scores each candidate continuation by its summed log-probability and
    /// returns the index of the best one. The backend is left holding `prefix` (nothing more).
    async fn choose(&mut self, prefix: &[u32], candidates: &[&str]) -> Result<usize> {
        let logits = self.backend.forward_async(prefix).await?;
        self.held.extend_from_slice(prefix);
        let base = self.backend.position();
        let mut best = (f64::NEG_INFINITY, 0);
        for (ci, c) in candidates.iter().enumerate() {
            let toks = self.tokenizer.encode(c)?;
            let mut lp = log_softmax_at(&logits, toks[0]);
            for w in toks.windows(2) {
                let l = self.backend.forward_async(&w[..1]).await?;
                lp += log_softmax_at(&l, w[1]);
            }
            self.backend.truncate(base);
            if lp > best.0 {
                best = (lp, ci);
            }
        }
        Ok(best.1)
    }

    /// The prompt ids of one user message in the chat template (no guard prompt): for parity
    /// tests and benchmarks.
    pub fn chat_ids(&self, user: &str) -> Result<Vec<u32>> {
        let msgs = [vigil_models::chat::Message::user(user)];
        Ok(self.template.encode(&self.tokenizer, &msgs, true)?.ids)
    }

    /// `n` greedy tokens after `prompt`, from a fresh state (parity tests across backends).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn greedy(&mut self, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
        pollster::block_on(self.greedy_async(prompt, n))
    }

    /// [`Guard::greedy`] as a future.
    pub async fn greedy_async(&mut self, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
        self.backend.truncate(0);
        self.held.clear();
        let mut sampler = Sampler::new(SamplingParams::greedy());
        let mut out = vec![self.backend.forward_sample_async(prompt, &mut sampler).await?];
        while out.len() < n {
            let cur = [out[out.len() - 1]];
            out.push(self.backend.forward_sample_async(&cur, &mut sampler).await?);
        }
        self.backend.truncate(0);
        Ok(out)
    }

    /// Runs a fixed token sequence (for benchmarks): prefill `prompt`, then `n` greedy steps.
    /// Returns (prefill time, decode time).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_tokens(&mut self, prompt: &[u32], n: usize) -> Result<(Duration, Duration)> {
        pollster::block_on(self.run_tokens_async(prompt, n))
    }

    /// [`Guard::run_tokens`] as a future (the browser benchmark).
    pub async fn run_tokens_async(&mut self, prompt: &[u32], n: usize) -> Result<(Duration, Duration)> {
        self.backend.truncate(0);
        self.held.clear();
        let mut sampler = Sampler::new(SamplingParams::greedy());
        let clock = Clock::start();
        let mut next = self.backend.forward_sample_async(prompt, &mut sampler).await?;
        let prefill = clock.elapsed();
        for _ in 0..n {
            let cur = [next];
            next = self.backend.forward_sample_async(&cur, &mut sampler).await?;
        }
        let total = clock.elapsed();
        self.backend.truncate(0);
        Ok((prefill, total - prefill))
    }
}

/// Tokens at the start of `ids` whose KV state `held` already has; at least one token of `ids`
/// is always left to feed, since the next token's logits come from feeding one.
fn shared_prefix(held: &[u32], ids: &[u32]) -> usize {
    let common = held.iter().zip(ids).take_while(|(a, b)| a == b).count();
    common.min(ids.len().saturating_sub(1))
}

/// What ends a generation, shared by every request of a call.
struct Rules<'a> {
    tokenizer: &'a Tokenizer,
    stop_ids: &'a [u32],
    opts: &'a ClassifyOptions,
    /// Positions kept free for a forced verdict.
    reserve: usize,
    /// Positions the backend holds at most.
    ctx: usize,
}

/// One request's generation: the tokens so far, their text through the streaming parser, stats.
struct Generation {
    parser: StreamParser,
    decoder: TokenDecoder,
    generated: Vec<u32>,
    stats: Stats,
}

impl Generation {
    fn new(req: &GuardRequest, prompt_tokens: usize, reused_tokens: usize) -> Self {
        Generation {
            parser: StreamParser::new(req.format, req.mode),
            decoder: TokenDecoder::new(),
            generated: Vec::new(),
            stats: Stats { prompt_tokens, reused_tokens, ..Stats::default() },
        }
    }

    /// Takes the next sampled token (not yet fed back; the backend holds `position` positions),
    /// reports it and its text, and says why generation stops here, if it does.
    fn take(
        &mut self,
        next: u32,
        rules: &Rules,
        position: usize,
        on_event: &mut impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Option<StopReason> {
        if rules.stop_ids.contains(&next) {
            return Some(StopReason::EndOfTurn);
        }
        self.stats.generated_tokens += 1;
        self.generated.push(next);
        let text = self.decoder.push(rules.tokenizer, next);
        let mut flow = on_event(&Event::Token { id: next, text: &text });
        for u in self.parser.push(&text) {
            if flow.is_continue() {
                flow = on_event(&Event::Text { section: u.section, text: &u.text });
            }
        }
        if flow.is_break() {
            Some(StopReason::Cancelled)
        } else if rules.opts.stop_at_verdict && self.parser.is_complete() {
            Some(StopReason::Verdict)
        } else if self.stats.generated_tokens >= rules.opts.max_tokens {
            Some(StopReason::MaxTokens)
        } else if position + 1 + rules.reserve > rules.ctx {
            Some(StopReason::Context)
        } else if repeating(&self.generated) {
            Some(StopReason::Repetition)
        } else {
            None
        }
    }

    /// The text still held by the decoder and parser, and the verdict.
    fn finish(&mut self) -> (Vec<vigil_models::guard::Update>, Parsed) {
        let tail = self.decoder.finish();
        let mut updates = self.parser.push(&tail);
        let (rest, verdict) = self.parser.finish();
        updates.extend(rest);
        (updates, verdict)
    }
}

impl Stats {
    fn set_decode_rate(&mut self) {
        if self.generated_tokens > 1 && self.decode_ms > 0.0 {
            self.decode_tok_s = (self.generated_tokens - 1) as f64 / (self.decode_ms / 1000.0);
        }
    }
}

/// Lets the event loop run between decode steps in the browser, so a worker sees a cancel
/// message while the CPU path generates (its steps never wait on anything). A no-op natively.
async fn yield_now() {
    #[cfg(target_arch = "wasm32")]
    crate::web::yield_to_event_loop().await;
}

/// log softmax(logits)[id], in f64.
fn log_softmax_at(logits: &[f32], id: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    logits[id as usize] as f64 - lse
}

/// True when the last tokens are one block of 1–48 tokens repeated at least three times over
/// (a small model stuck in a loop).
fn repeating(tokens: &[u32]) -> bool {
    (1..=48).any(|p| {
        let n = tokens.len();
        n >= 3 * p && n >= 12 && (0..2 * p).all(|i| tokens[n - 1 - i] == tokens[n - 1 - i - p])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_needs_three_copies() {
        let cycle = [5u32, 6, 7, 8, 9];
        let mut t: Vec<u32> = vec![1, 2, 3];
        t.extend(cycle.iter().cycle().take(10));
        assert!(!repeating(&t), "two copies are not a loop");
        t.extend(cycle);
        assert!(repeating(&t));
        assert!(!repeating(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]));
        assert!(repeating(&[7; 12]));
    }

    #[test]
    fn log_softmax_is_normalised() {
        let l = [1.0f32, 2.0, 3.0];
        let total: f64 = (0..3).map(|i| log_softmax_at(&l, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }
}
