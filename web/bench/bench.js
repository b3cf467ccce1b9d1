// The browser benchmark's page side (driven by run.mjs): the same GGUF, prompt length and number
// of generated tokens through vigil's GuardModel (WebGPU or wasm CPU, in its Web Worker) and
// through @wllama/wllama (llama.cpp compiled to wasm, also in a worker). Each engine does one
// warm-up run, then `runs` measured runs on fresh prompts (no prompt cache can help).
import { GuardModel } from '/wasm-pkg/guard.js';
import { Wllama } from '/wllama/index.js';

const log = (s) => {
  document.getElementById('log').textContent += s + '\n';
  console.log(s);
};

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** One vigil engine: {loadMs, ttftMs, decodeTokS, backend, device} (medians over runs). */
window.benchVigil = async ({ model, backend, promptTokens, genTokens, runs }) => {
  const t0 = performance.now();
  const m = await GuardModel.load({ base: model, backend, cache: false });
  const loadMs = performance.now() - t0;
  const info = m.info();
  await m.bench(promptTokens, Math.min(genTokens, 4)); // warm-up: pipelines, first allocations
  const ttft = [], tps = [];
  for (let i = 0; i < runs; i++) {
    const r = await m.bench(promptTokens, genTokens);
    // vigil's prefill step ends with the first generated token: that is the time to first token.
    ttft.push(r.prefillMs);
    tps.push(r.genTokens / (r.decodeMs / 1000));
  }
  await m.dispose();
  const out = { engine: `vigil ${info.backend}`, device: info.device ?? '', loadMs, ttftMs: median(ttft), decodeTokS: median(tps) };
  log(JSON.stringify(out));
  return out;
};

/** wllama: n_gpu_layers 0 (wasm CPU) or all layers (its WebGPU build); `threads` 1 or more. */
window.benchWllama = async ({ model, gpu, threads, promptTokens, genTokens, runs }) => {
  const w = new Wllama({ default: '/wllama/wasm/wllama.wasm' }, { suppressNativeLog: true });
  const t0 = performance.now();
  await w.loadModelFromUrl(model, { n_ctx: 1024, n_threads: threads, n_gpu_layers: gpu ? 999 : 0, useCache: false });
  const loadMs = performance.now() - t0;
  // A prompt of about `promptTokens` tokens, different each run so the prompt cache cannot help.
  const prompt = (i) => `Run ${i}: ` + 'The quick brown fox jumps over the lazy dog. '.repeat(Math.ceil(promptTokens / 10));
  const once = async (i, n) => {
    let first = null;
    let timings = null;
    const start = performance.now();
    await w.createCompletion({
      prompt: prompt(i), max_tokens: n, temperature: 0, ignore_eos: true, stream: true,
      onData: (chunk) => {
        if (first === null && chunk.choices?.[0]?.text) first = performance.now();
        if (chunk.timings) timings = chunk.timings;
      },
    });
    return { ttftMs: (first ?? performance.now()) - start, timings };
  };
  await once(-1, 4);
  const ttft = [], tps = [], promptN = [];
  for (let i = 0; i < runs; i++) {
    const r = await once(i, genTokens);
    ttft.push(r.ttftMs);
    if (r.timings) {
      tps.push(r.timings.predicted_per_second);
      promptN.push(r.timings.prompt_n);
    }
  }
  const out = {
    engine: `wllama ${gpu ? 'webgpu' : 'cpu'} ${w.isMultithread() ? w.getNumThreads() : 1}t`,
    device: '', loadMs, ttftMs: median(ttft), decodeTokS: tps.length ? median(tps) : NaN, promptTokens: median(promptN),
  };
  await w.exit();
  log(JSON.stringify(out));
  return out;
};

window.benchReady = true;
