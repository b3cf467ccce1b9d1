// vigil's JavaScript API. In a browser the guard runs in a Web Worker and streams tokens to the page
// by message; in Node (the edge) it runs in-process on the wasm CPU path. Types: guard.d.ts.
//
//   const model = await GuardModel.load({ base: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
//   const verdict = await model.classify('how do I kill a zombie process?', {
//     onReasoning: (text) => out.append(text),
//   });
//   verdict.label   // 'safe' | 'unsafe' | 'unparseable'

const REASONING = new Set(['reasoning', 'think', 'proof']);

function workerChannel() {
  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'vigil-guard' });
  return {
    send: (msg, transfer = []) => worker.postMessage(msg, transfer),
    listen: (fn) => {
      worker.onmessage = (e) => fn(e.data);
      worker.onerror = (e) => fn({ type: 'fatal', message: e.message || 'the guard worker failed to start' });
    },
    close: () => worker.terminate(),
    kind: 'worker',
  };
}

async function inProcessChannel() {
  const { createHost } = await import('./host.js');
  let listener = () => {};
  const host = createHost((msg) => listener(msg));
  return {
    send: (msg) => {
      host.handle(msg);
    },
    listen: (fn) => {
      listener = fn;
    },
    close: () => {},
    kind: 'in-process',
  };
}

export class GuardModel {
  #channel;
  #pending = new Map();
  #next = 1;
  #info = null;
  #busy = Promise.resolve();
  #disposed = false;

  constructor(channel) {
    this.#channel = channel;
    channel.listen((msg) => this.#receive(msg));
  }

  /**
   * Loads a base model and optional LoRA adapter. `base`/`adapter`: URL string, URL, File/Blob or
   * ArrayBuffer. `backend`: 'auto' (WebGPU when an adapter exists, else wasm CPU), 'gpu', 'cpu'.
   */
  static async load({ base, adapter, backend = 'auto', context = 2048, cache = true, onProgress, worker } = {}) {
    if (!base) throw new Error('GuardModel.load: `base` (the model GGUF) is required');
    const useWorker = worker ?? (typeof Worker !== 'undefined' && typeof window !== 'undefined');
    const channel = useWorker ? workerChannel() : await inProcessChannel();
    const model = new GuardModel(channel);
    const abs = (s) =>
      (typeof s === 'string' || s instanceof URL) && typeof location !== 'undefined' ? new URL(s, location.href).href : s;
    const transfer = [base, adapter].filter((s) => s instanceof ArrayBuffer);
    try {
      model.#info = await model.#request(
        { type: 'load', base: abs(base), adapter: abs(adapter), backend, context, cache },
        { onProgress },
        transfer,
      );
    } catch (e) {
      channel.close();
      throw e;
    }
    return model;
  }

  /**
   * Classifies `text` (a user prompt), or with `response` the assistant's answer to it.
   * Streams through onToken(text), onReasoning(text, section), onText(section, text), onNotice(msg);
   * `signal` (AbortSignal) stops generation early (the promise then resolves with stop 'cancelled').
   */
  classify(text, { response, mode, format, maxTokens, temperature, topK, topP, seed, forceVerdict, signal, onToken, onReasoning, onText, onNotice } = {}) {
    const options = { mode, format, maxTokens, temperature, topK, topP, seed, forceVerdict };
    const run = () => {
      const id = this.#next++;
      if (signal?.aborted) return Promise.reject(new DOMException('classification aborted', 'AbortError'));
      const onAbort = () => this.#channel.send({ type: 'cancel', id });
      signal?.addEventListener('abort', onAbort, { once: true });
      const onEvent = ({ kind, section, text }) => {
        if (kind === 'token') onToken?.(text);
        else if (kind === 'notice') onNotice?.(text);
        else if (kind === 'text') {
          onText?.(section, text);
          if (REASONING.has(section)) onReasoning?.(text, section);
        }
      };
      return this.#request({ type: 'classify', text, response, options }, { onEvent }, [], id).finally(() =>
        signal?.removeEventListener('abort', onAbort),
      );
    };
    // one request at a time per model, in call order
    const p = this.#busy.then(run, run);
    this.#busy = p.catch(() => {});
    return p;
  }

  /** Architecture, quantization, backend, device, KV cache type, load time, notices. */
  info() {
    return { ...this.#info, runtime: this.#channel.kind };
  }

  /** Greedy token ids after `prompt` as one user message, or with `guard` as content to classify (parity checks). */
  greedyTokens(prompt, n, { guard = false } = {}) {
    return this.#request({ type: 'greedy', prompt, n, guard });
  }

  /** Prefill `promptTokens`, decode `genTokens`: {prefillMs, decodeMs, promptTokens, genTokens}. */
  bench(promptTokens = 128, genTokens = 32) {
    return this.#request({ type: 'bench', promptTokens, genTokens });
  }

  /** Frees the model and stops its worker. */
  async dispose() {
    if (this.#disposed) return;
    try {
      await this.#request({ type: 'dispose' });
    } finally {
      this.#disposed = true;
      this.#channel.close();
      for (const { reject } of this.#pending.values()) reject(new Error('the model was disposed'));
      this.#pending.clear();
    }
  }

  #request(msg, handlers = {}, transfer = [], id = this.#next++) {
    if (this.#disposed) return Promise.reject(new Error('the model was disposed'));
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, ...handlers });
      this.#channel.send({ ...msg, id }, transfer);
    });
  }

  #receive(msg) {
    if (msg.type === 'fatal') {
      for (const { reject } of this.#pending.values()) reject(new Error(msg.message));
      this.#pending.clear();
      return;
    }
    const p = this.#pending.get(msg.id);
    if (!p) return;
    switch (msg.type) {
      case 'progress':
        p.onProgress?.(msg);
        break;
      case 'event':
        if (msg.kind === 'notice' && this.#info) this.#info.notices = [...(this.#info.notices || []), msg.text];
        p.onEvent?.(msg);
        break;
      case 'done':
        this.#pending.delete(msg.id);
        if (msg.info) this.#info = msg.info;
        p.resolve(msg.result && typeof msg.result === 'object' && 'label' in msg.result
          ? { ...msg.result, backend: this.#info?.backend }
          : msg.result);
        break;
      case 'error':
        this.#pending.delete(msg.id);
        p.reject(new Error(msg.message));
        break;
    }
  }
}

export { loadSource, clearCache, sha256Hex } from './source.js';
