// The engine host: runs the wasm guard and speaks vigil's message protocol. worker.js wraps it in a
// Web Worker (browsers); guard.js calls it in-process where there are no Web Workers (Node).
//
// in:  {type: 'load', id, base, adapter, backend, context, cache}
//      {type: 'classify', id, text, response, options}   {type: 'cancel', id}
//      {type: 'greedy', id, prompt, n, guard}   {type: 'bench', id, promptTokens, genTokens}   {type: 'dispose'}
// out: {type: 'progress', id, ...}   {type: 'event', id, kind, section, text}
//      {type: 'done', id, result, info}   {type: 'error', id, message}

import init, { WasmGuard } from './vigil_runtime.js';
import { loadSource } from './source.js';

let wasmReady = null;

function initWasm() {
  wasmReady ??= (async () => {
    const url = new URL('./vigil_runtime_bg.wasm', import.meta.url);
    if (url.protocol === 'file:') {
      const { readFile } = await import('node:fs/promises');
      await init({ module_or_path: await readFile(url) });
    } else {
      await init({ module_or_path: url });
    }
  })();
  return wasmReady;
}

const now = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());

export function createHost(post) {
  let model = null;
  let loadInfo = {};
  const cancelled = new Set();

  const info = () => ({ ...(model ? model.info() : {}), ...loadInfo });

  async function load(msg) {
    const t0 = now();
    const onProgress = (p) => post({ type: 'progress', id: msg.id, ...p });
    const wasm = initWasm();
    const base = await loadSource(msg.base, { cache: msg.cache !== false, onProgress, what: 'model' });
    const adapter = msg.adapter
      ? await loadSource(msg.adapter, { cache: msg.cache !== false, onProgress, what: 'adapter' })
      : null;
    await wasm;
    onProgress({ stage: 'init' });
    model?.dispose();
    model = null;
    model = await WasmGuard.load(
      base.bytes,
      base.name,
      adapter ? adapter.bytes : undefined,
      adapter ? adapter.name : undefined,
      msg.backend || 'auto',
      msg.context || 2048,
    );
    loadInfo = {
      loadMs: now() - t0,
      modelSource: base.from,
      modelSha256: base.sha256,
      modelBytes: base.bytes.length,
      adapterSource: adapter ? adapter.from : null,
    };
    return info();
  }

  const loaded = () => {
    if (!model) throw new Error('no model is loaded (never loaded, or disposed)');
    return model;
  };

  async function classify(msg) {
    const { id } = msg;
    const result = await loaded().classify(msg.text, msg.response ?? undefined, msg.options ?? {}, (kind, section, text) => {
      post({ type: 'event', id, kind, section, text });
      return cancelled.has(id);
    });
    cancelled.delete(id);
    return result;
  }

  async function handle(msg) {
    try {
      let result;
      switch (msg.type) {
        case 'load':
          result = await load(msg);
          break;
        case 'classify':
          result = await classify(msg);
          break;
        case 'cancel':
          cancelled.add(msg.id);
          return;
        case 'greedy':
          result = Array.from(await loaded().greedy_tokens(msg.prompt, msg.n, !!msg.guard));
          break;
        case 'bench':
          result = await loaded().bench(msg.promptTokens, msg.genTokens);
          break;
        case 'dispose':
          model?.dispose();
          model = null;
          result = null;
          break;
        default:
          throw new Error(`unknown message type ${msg.type}`);
      }
      post({ type: 'done', id: msg.id, result, info: model ? info() : null });
    } catch (e) {
      post({ type: 'error', id: msg.id, message: e instanceof Error ? e.message : String(e) });
    }
  }

  return { handle };
}
