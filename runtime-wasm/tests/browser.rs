//! The runtime in a real browser (headless Chromium, wasm-bindgen-test): on the real SmolLM2,
//! the WebGPU path (SwiftShader in CI) and the wasm CPU path each give the native CPU backend's
//! greedy tokens; on a tiny random Gemma 3, WebGPU (its q/k head norms, post norms, GeGLU and
//! sliding windows compiled by the browser's WGSL compiler) gives the wasm CPU decoder's logits.
//!
//! Run by `scripts/test-browser`, which serves the model and `expected.json` (tokens from
//! `vigil tokens`) at `VIGIL_TEST_SERVER` (read at compile time) and points wasm-bindgen-test at
//! Chromium. Natively this file compiles to nothing.
#![cfg(target_arch = "wasm32")]

use js_sys::{Array, Function, Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

use vigil_models::gguf::Gguf;
use vigil_models::guard::GuardRequest;
use vigil_runtime::{BackendChoice, Guard};

// In a dedicated worker, as the runtime runs in the page: a long synchronous step (building the
// GPU pipelines, a CPU prefill) must not block the main thread the test runner talks to.
wasm_bindgen_test_configure!(run_in_dedicated_worker);

const SERVER: Option<&str> = option_env!("VIGIL_TEST_SERVER");
const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

async fn fetch(path: &str) -> Result<JsValue, JsValue> {
    let base = SERVER.ok_or("VIGIL_TEST_SERVER was not set when this test was compiled (use scripts/test-browser)")?;
    let global = js_sys::global();
    let fetch: Function = Reflect::get(&global, &"fetch".into())?.dyn_into()?;
    let resp = JsFuture::from(fetch.call1(&global, &format!("{base}/{path}").into())?.dyn_into::<Promise>()?).await?;
    if !Reflect::get(&resp, &"ok".into())?.as_bool().unwrap_or(false) {
        return Err(format!("GET {base}/{path} failed").into());
    }
    Ok(resp)
}

async fn fetch_bytes(path: &str) -> Vec<u8> {
    let resp = fetch(path).await.expect("fetch");
    let ab: Function = Reflect::get(&resp, &"arrayBuffer".into()).unwrap().dyn_into().unwrap();
    let buf = JsFuture::from(ab.call0(&resp).unwrap().dyn_into::<Promise>().unwrap()).await.unwrap();
    Uint8Array::new(&buf).to_vec()
}

/// `expected.json`: {"n": N, "prompts": [..], "cpu": [[ids]..], "dense": [[ids]..]}.
async fn expected() -> serde_json::Value {
    serde_json::from_slice(&fetch_bytes("expected.json").await).expect("expected.json")
}

/// `prompts`: how many of the expected prompts to run (SwiftShader, a CPU emulating a GPU, takes
/// minutes per guard prompt).
async fn check(choice: BackendChoice, backend: &str, reference: &str, prompts: usize) {
    let exp = expected().await;
    let t0 = js_sys::Date::now();
    let g = Gguf::from_bytes(MODEL, fetch_bytes(MODEL).await).expect("the model parses");
    let mut guard = Guard::load(g, choice, 1024).await.expect("the model loads");
    assert_eq!(guard.backend_name(), backend, "notices: {:?}", guard.notices());
    let n = exp["n"].as_u64().unwrap() as usize;
    assert!(n >= 16);
    let prompts = &exp["prompts"].as_array().unwrap()[..prompts];
    for (i, p) in prompts.iter().enumerate() {
        let ids = guard.prompt_ids(&GuardRequest::new(p.as_str().unwrap())).unwrap();
        let got = guard.greedy_async(&ids, n).await.unwrap();
        let want: Vec<u32> = serde_json::from_value(exp[reference][i].clone()).unwrap();
        assert_eq!(got, want, "{backend} vs native {reference}, prompt {p}");
    }
    let secs = (js_sys::Date::now() - t0) / 1e3;
    let log = Array::of1(
        &format!("{backend}: {} prompts × {n} greedy tokens = native {reference} ({secs:.1} s)", prompts.len()).into(),
    );
    web_sys_console_log(&log);
}

fn web_sys_console_log(args: &Array) {
    let console = Reflect::get(&js_sys::global(), &"console".into()).unwrap();
    let log: Function = Reflect::get(&console, &"log".into()).unwrap().dyn_into().unwrap();
    let _ = log.apply(&console, args);
}

#[wasm_bindgen_test]
async fn wasm_cpu_gives_the_native_cpu_tokens() {
    check(BackendChoice::Cpu, "cpu", "cpu", 3).await;
}

#[wasm_bindgen_test]
async fn webgpu_gives_the_native_dense_cpu_tokens() {
    check(BackendChoice::Gpu, "gpu", "dense", 1).await;
}

/// Generated here (no download): a tiny Gemma 3 on WebGPU against the wasm CPU decoder with
/// dense f32 weights, prefill past the sliding window and a few decode steps.
#[wasm_bindgen_test]
async fn webgpu_runs_gemma3_like_the_wasm_cpu() {
    use vigil_models::cpu::WeightMode;
    use vigil_models::gguf::GgmlType;
    use vigil_runtime::backend::{cpu::CpuBackend, gpu::GpuBackend, Backend};
    let g = Gguf::from_bytes("tiny-gemma3.gguf", vigil_models::tiny::tiny_gemma3(GgmlType::Q8_0, 3)).unwrap();
    let gpu = vigil_kernels::Gpu::new().await.expect("a WebGPU adapter");
    let mut gb = GpuBackend::load(std::sync::Arc::new(gpu), &g, 256).expect("the GPU backend loads gemma3");
    let mut cb = CpuBackend::load_mode(&g, 256, WeightMode::Dense(candle_core::DType::F32)).unwrap();
    let prompt: Vec<u32> = (0..40).map(|i| ((i * 37 + 11) % 250) as u32).collect();
    let mut steps = vec![prompt];
    steps.extend((0..4u32).map(|i| vec![i * 13 + 1]));
    for (i, ids) in steps.iter().enumerate() {
        let a = gb.forward_async(ids).await.unwrap();
        let b = cb.forward_async(ids).await.unwrap();
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        // f16 KV where the adapter has it: keys and values rounded to 11 bits
        let tol = if gb.kv_f16() { 3e-2 } else { 2e-3 };
        assert!(d < tol, "step {i}: WebGPU and wasm CPU logits differ by {d}");
    }
    web_sys_console_log(&Array::of1(&format!("tiny gemma3: WebGPU = wasm CPU (f16 KV {})", gb.kv_f16()).into()));
}
