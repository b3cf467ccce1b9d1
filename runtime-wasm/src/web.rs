//! The wasm32 API (wasm-bindgen): what `js/worker.js` (browser) and `js/guard.js` (Node) call.
//!
//! JavaScript owns fetching, caching and messaging; this side owns everything about the model:
//! bytes in, verdict out, tokens and section text reported through a callback as they come. The
//! public JS API (`GuardModel`, in `js/guard.js` with types in `js/guard.d.ts`) wraps this.

use std::cell::RefCell;
use std::ops::ControlFlow;
use std::rc::Rc;

use wasm_bindgen::prelude::*;

use vigil_models::gguf::Gguf;
use vigil_models::guard::{GuardRequest, Mode, OutputFormat, Policy};
use vigil_models::lora::LoraAdapter;

use crate::engine::{BackendChoice, ClassifyOptions, Event, Guard};

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A loaded guard. Methods that generate return promises; one request runs at a time.
#[wasm_bindgen]
pub struct WasmGuard {
    // Shared with the running request's future (wasm-bindgen futures must be 'static).
    guard: Rc<RefCell<Option<Guard>>>,
    info: serde_json::Value,
}

#[wasm_bindgen]
impl WasmGuard {
    /// Loads a base model (GGUF bytes) and an optional LoRA adapter (GGUF bytes) on `backend`
    /// (`auto` | `gpu` | `cpu`), with a KV context of `context` positions.
    pub async fn load(
        base: Vec<u8>,
        base_name: String,
        adapter: Option<Vec<u8>>,
        adapter_name: Option<String>,
        backend: String,
        context: usize,
    ) -> Result<WasmGuard, JsError> {
        let choice = match backend.as_str() {
            "auto" | "" => BackendChoice::Auto,
            "gpu" | "webgpu" => BackendChoice::Gpu,
            "cpu" | "wasm" => BackendChoice::Cpu,
            other => return Err(JsError::new(&format!("unknown backend `{other}` (use auto, gpu or cpu)"))),
        };
        let g = Gguf::from_bytes(base_name, base).map_err(js_err)?;
        let quantization = quantization(&g);
        let mut guard = Guard::load(g, choice, context).await.map_err(js_err)?;
        if let Some(bytes) = adapter {
            let name = adapter_name.unwrap_or_else(|| "adapter.gguf".into());
            let a = Gguf::from_bytes(name, bytes).and_then(|g| LoraAdapter::from_gguf(&g)).map_err(js_err)?;
            guard.set_adapter(Some(&a)).map_err(js_err)?;
        }
        let b = guard.backend_info();
        let info = serde_json::json!({
            "model": guard.model_name(),
            "architecture": guard.architecture(),
            "quantization": quantization,
            "backend": guard.backend_name(),
            "device": b.device,
            "kvCache": if b.kv_value_bytes == 2 { "f16" } else { "f32" },
            "dispatchesPerToken": b.dispatches_per_token,
            "context": guard.context(),
            "adapter": guard.adapter(),
            "notices": guard.notices(),
        });
        Ok(WasmGuard { guard: Rc::new(RefCell::new(Some(guard))), info })
    }

    /// Architecture, quantization, backend, device, notices — as a JS object.
    pub fn info(&self) -> Result<JsValue, JsError> {
        let mut info = self.info.clone();
        if let Ok(g) = self.guard.try_borrow() {
            if let Some(g) = g.as_ref() {
                // the backend can change mid-run (GPU failure → CPU)
                info["backend"] = g.backend_name().into();
                info["device"] = g.backend_info().device.into();
                info["notices"] = serde_json::json!(g.notices());
            }
        }
        to_js(&info)
    }

    /// Classifies `text` (and `response`, for response moderation). `options` is a JS object:
    /// `{ mode: "all" | POLICY, format: "rsft" | "dual", maxTokens, temperature, topK, topP, seed,
    /// forceVerdict }`. `on_event(kind, section, text)` is called for each `token`, `text` (with
    /// its section) and `notice`; returning `true` stops generation. Resolves to the outcome
    /// (label, policies, reasoning, raw, forced, stop, stats).
    pub fn classify(
        &self,
        text: String,
        response: Option<String>,
        options: JsValue,
        on_event: js_sys::Function,
    ) -> js_sys::Promise {
        let cell = self.guard.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let (req, opts) = request(text, response, &options).map_err(JsValue::from)?;
            let mut guard = cell
                .try_borrow_mut()
                .map_err(|_| JsValue::from(js_err("a request is already running on this model")))?
                .take()
                .ok_or_else(|| JsValue::from(js_err("the model was disposed")))?;
            let call = |kind: &str, section: &str, text: &str| -> ControlFlow<()> {
                let r = on_event.call3(&JsValue::NULL, &kind.into(), &section.into(), &text.into());
                match r {
                    Ok(v) if v.as_bool() == Some(true) => ControlFlow::Break(()),
                    _ => ControlFlow::Continue(()),
                }
            };
            let result = guard
                .classify_async(&req, &opts, |ev| match ev {
                    Event::Token { text, .. } => call("token", "", text),
                    Event::Text { section, text } => {
                        let name = serde_json::to_value(section).ok();
                        call("text", name.as_ref().and_then(|v| v.as_str()).unwrap_or(""), text)
                    }
                    Event::Notice(n) => call("notice", "", n),
                })
                .await;
            *cell.borrow_mut() = Some(guard);
            let outcome = result.map_err(|e| JsValue::from(js_err(e)))?;
            to_js(&outcome.to_json()).map_err(JsValue::from)
        })
    }

    /// Greedy token ids: `n` tokens after `prompt`, chat-templated as a user message, or with
    /// `guard` as the content of a guard request. For parity tests against the native backends
    /// (`vigil tokens`).
    pub fn greedy_tokens(&self, prompt: String, n: usize, as_guard_request: bool) -> js_sys::Promise {
        let cell = self.guard.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = cell.try_borrow_mut().map_err(|_| JsValue::from(js_err("busy")))?.take();
            let g = guard.as_mut().ok_or_else(|| JsValue::from(js_err("the model was disposed")))?;
            let ids = if as_guard_request { g.prompt_ids(&GuardRequest::new(prompt)) } else { g.chat_ids(&prompt) };
            let ids = ids.map_err(|e| JsValue::from(js_err(e)))?;
            let out = g.greedy_async(&ids, n).await;
            *cell.borrow_mut() = guard;
            let toks = out.map_err(|e| JsValue::from(js_err(e)))?;
            Ok(js_sys::Uint32Array::from(&toks[..]).into())
        })
    }

    /// Benchmark: prefill `prompt_tokens` tokens, then decode `gen_tokens` greedily. Resolves
    /// to `{ prefillMs, decodeMs, promptTokens, genTokens }`.
    pub fn bench(&self, prompt_tokens: usize, gen_tokens: usize) -> js_sys::Promise {
        let cell = self.guard.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = cell.try_borrow_mut().map_err(|_| JsValue::from(js_err("busy")))?.take();
            let g = guard.as_mut().ok_or_else(|| JsValue::from(js_err("the model was disposed")))?;
            let ids = g.chat_ids(&"The quick brown fox jumps over the lazy dog. ".repeat(prompt_tokens / 8 + 1));
            let r = match ids {
                Ok(ids) => g.run_tokens_async(&ids[..prompt_tokens.min(ids.len())], gen_tokens).await,
                Err(e) => Err(e),
            };
            *cell.borrow_mut() = guard;
            let (p, d) = r.map_err(|e| JsValue::from(js_err(e)))?;
            to_js(&serde_json::json!({
                "prefillMs": p.as_secs_f64() * 1000.0,
                "decodeMs": d.as_secs_f64() * 1000.0,
                "promptTokens": prompt_tokens,
                "genTokens": gen_tokens,
            }))
            .map_err(JsValue::from)
        })
    }

    /// Frees the model (its wasm memory and GPU buffers).
    pub fn dispose(&self) {
        if let Ok(mut g) = self.guard.try_borrow_mut() {
            g.take();
        }
    }
}

fn to_js(v: &serde_json::Value) -> Result<JsValue, JsError> {
    js_sys::JSON::parse(&v.to_string()).map_err(|_| JsError::new("could not build a JS value"))
}

/// The request and options from the JS call.
fn request(
    text: String,
    response: Option<String>,
    options: &JsValue,
) -> Result<(GuardRequest, ClassifyOptions), JsError> {
    let o: serde_json::Value = if options.is_undefined() || options.is_null() {
        serde_json::Value::Null
    } else {
        let s = js_sys::JSON::stringify(options).map_err(|_| JsError::new("options must be a plain object"))?;
        serde_json::from_str(&String::from(s)).map_err(js_err)?
    };
    let mode = match o.get("mode").and_then(|v| v.as_str()) {
        None | Some("all") => Mode::AllPolicies,
        Some(p) => Mode::PerPolicy(Policy::from_name(p).ok_or_else(|| {
            JsError::new(&format!(
                "unknown policy `{p}` for mode (use \"all\" or one of {})",
                Policy::ALL.map(|p| p.name()).join(", ")
            ))
        })?),
    };
    let format = match o.get("format").and_then(|v| v.as_str()) {
        None => OutputFormat::Rsft,
        Some(f) => OutputFormat::from_name(f)
            .ok_or_else(|| JsError::new(&format!("unknown format `{f}` (use \"rsft\" or \"dual\")")))?,
    };
    let req = GuardRequest::new(text).with_response(response).with_mode(mode).with_format(format);
    let mut opts = ClassifyOptions::default();
    if let Some(n) = o.get("maxTokens").and_then(|v| v.as_u64()) {
        opts.max_tokens = n as usize;
    }
    if let Some(f) = o.get("forceVerdict").and_then(|v| v.as_bool()) {
        opts.force_verdict = f;
    }
    if let Some(t) = o.get("temperature").and_then(|v| v.as_f64()) {
        opts.sampling.temperature = t as f32;
    }
    if let Some(k) = o.get("topK").and_then(|v| v.as_u64()) {
        opts.sampling.top_k = k as usize;
    }
    if let Some(p) = o.get("topP").and_then(|v| v.as_f64()) {
        opts.sampling.top_p = p as f32;
    }
    if let Some(s) = o.get("seed").and_then(|v| v.as_u64()) {
        opts.sampling.seed = s;
    }
    Ok((req, opts))
}

/// The quantization of the model's largest weight type (for `info()`).
fn quantization(g: &Gguf) -> String {
    let mut by_type: std::collections::HashMap<String, u64> = Default::default();
    for t in g.tensors() {
        *by_type.entry(format!("{:?}", t.ty)).or_default() += t.n_bytes;
    }
    by_type.into_iter().max_by_key(|(_, n)| *n).map(|(t, _)| t).unwrap_or_default()
}

/// Resolves after the event loop has run once (a message round trip, which unlike `setTimeout`
/// is not clamped): lets a worker receive a cancel message between CPU decode steps.
pub(crate) async fn yield_to_event_loop() {
    let Ok(channel) = web_sys::MessageChannel::new() else { return };
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        channel.port1().set_onmessage(Some(&resolve));
        let _ = channel.port2().post_message(&JsValue::NULL);
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    channel.port1().set_onmessage(None);
    channel.port1().close();
}
