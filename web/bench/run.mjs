// The browser benchmark (not a test): in headless Chromium on this machine, decode tok/s and
// time to first token of vigil's WebGPU and wasm CPU paths vs @wllama/wllama (llama.cpp in wasm)
// on the same GGUF, printed as ratios; results in target/bench/browser.json.
//
//   node web/bench/run.mjs [--prompt 128] [--gen 32] [--runs 3] [--only vigil-cpu,wllama-cpu-1t,...]
//
// Needs target/wasm-pkg (scripts/build-wasm) and web/node_modules (npm ci); scripts/bench-browser
// does both. Pages are cross-origin isolated (COOP/COEP) so wllama may use its threaded build.
import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, resolve, basename } from 'node:path';
import { parseArgs } from 'node:util';
import { serve } from '../tests/serve.mjs';
import { CHROMIUM_ARGS } from '../tests/chromium.mjs';

const root = resolve(import.meta.dirname, '../..');
const { values: a } = parseArgs({
  options: {
    prompt: { type: 'string', default: '128' }, gen: { type: 'string', default: '32' }, runs: { type: 'string', default: '3' },
    model: { type: 'string', default: `${process.env.VIGIL_CACHE || `${process.env.HOME}/.cache/vigil`}/models/SmolLM2-135M-Instruct.Q4_1.gguf` },
    only: { type: 'string', default: '' }, timeout: { type: 'string', default: '900' },
  },
});
const promptTokens = Number(a.prompt), genTokens = Number(a.gen), runs = Number(a.runs);
if (!existsSync(a.model)) throw new Error(`${a.model}: no such model (vigil fetch-model smollm2-135m-instruct)`);
if (!existsSync(resolve(root, 'target/wasm-pkg/guard.js'))) throw new Error('target/wasm-pkg is not built (scripts/build-wasm)');

const engines = [
  { id: 'vigil-gpu', fn: 'benchVigil', args: { backend: 'gpu' } },
  { id: 'vigil-cpu', fn: 'benchVigil', args: { backend: 'cpu' } },
  { id: 'wllama-cpu-1t', fn: 'benchWllama', args: { gpu: false, threads: 1 } },
  { id: 'wllama-cpu-2t', fn: 'benchWllama', args: { gpu: false, threads: 2 } },
  { id: 'wllama-gpu', fn: 'benchWllama', args: { gpu: true, threads: 1 } },
].filter((e) => !a.only || a.only.split(',').includes(e.id));

const { server, url } = await serve({
  '/': resolve(root, 'web/bench'), '/wasm-pkg': resolve(root, 'target/wasm-pkg'),
  '/wllama': resolve(root, 'web/node_modules/@wllama/wllama/esm'), '/models': dirname(a.model),
}, 0, { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' });
const model = `${url}/models/${basename(a.model)}`;
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
const results = [];
try {
  for (const e of engines) {
    // a fresh page per engine: nothing one leaves behind (workers, GPU buffers) slows the next
    const page = await browser.newPage();
    page.on('pageerror', (err) => console.log(`${e.id}: page error: ${err.message}`));
    await page.goto(`${url}/index.html`);
    await page.waitForFunction(() => window.benchReady === true);
    process.stdout.write(`${e.id} … `);
    try {
      const r = await page.evaluate(([fn, args]) => window[fn](args), [e.fn, { ...e.args, model, promptTokens, genTokens, runs }], { timeout: Number(a.timeout) * 1000 });
      results.push({ id: e.id, ...r });
      console.log(`ttft ${r.ttftMs.toFixed(0)} ms, decode ${r.decodeTokS.toFixed(1)} tok/s ${r.device ? `(${r.device})` : ''}`);
    } catch (err) {
      results.push({ id: e.id, error: String(err.message || err).split('\n')[0] });
      console.log(`failed: ${String(err.message || err).split('\n')[0]}`);
    }
    await page.close();
  }
} finally {
  await browser.close();
  server.close();
}

const by = Object.fromEntries(results.map((r) => [r.id, r]));
console.log(`\nSmolLM2-135M-Instruct Q4_1, prompt ${promptTokens} tokens, ${genTokens} generated, median of ${runs} runs, headless Chromium ${browser.version?.() ?? ''}`);
console.log('engine            load ms   TTFT ms   decode tok/s');
for (const r of results) {
  if (r.error) console.log(`${r.id.padEnd(16)}  failed: ${r.error}`);
  else console.log(`${r.id.padEnd(16)}  ${r.loadMs.toFixed(0).padStart(7)}   ${r.ttftMs.toFixed(0).padStart(7)}   ${r.decodeTokS.toFixed(1).padStart(12)}`);
}
const ratio = (ours, theirs) => {
  const o = by[ours], t = by[theirs];
  if (!o || !t || o.error || t.error) return;
  console.log(`${ours} / ${theirs}: decode ×${(o.decodeTokS / t.decodeTokS).toFixed(2)}, TTFT ×${(t.ttftMs / o.ttftMs).toFixed(2)} (>1 = vigil faster)`);
};
console.log('');
for (const ours of ['vigil-gpu', 'vigil-cpu']) for (const theirs of ['wllama-cpu-1t', 'wllama-cpu-2t', 'wllama-gpu']) ratio(ours, theirs);
mkdirSync(resolve(root, 'target/bench'), { recursive: true });
writeFileSync(resolve(root, 'target/bench/browser.json'), JSON.stringify({ promptTokens, genTokens, runs, results }, null, 2));
console.log('\nwritten: target/bench/browser.json');
