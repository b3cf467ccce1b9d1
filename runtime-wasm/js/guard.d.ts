// Types for vigil's JavaScript API (guard.js).

export type Policy = 'hate_speech' | 'violence' | 'illegal' | 'self_harm' | 'harassment' | 'sexual';
export type Section = 'reasoning' | 'think' | 'proof' | 'answer' | 'verdict' | 'other';
export type ModelSource = string | URL | Blob | ArrayBuffer | ArrayBufferView;

export interface LoadProgress {
  id: number;
  what: 'model' | 'adapter';
  /** download → hash → cached (or cache-failed: kept in memory only); cache: read from the cache; read: a File/path; init: building the model. */
  stage: 'download' | 'hash' | 'cached' | 'cache-failed' | 'cache' | 'read' | 'init';
  loaded?: number;
  total?: number;
  sha256?: string;
  error?: string;
}

export interface LoadOptions {
  /** The base model GGUF. */
  base: ModelSource;
  /** A LoRA adapter GGUF (optional). */
  adapter?: ModelSource;
  /** auto: WebGPU on a hardware adapter, else the wasm CPU path (also over a software fallback adapter); gpu: WebGPU on any adapter. */
  backend?: 'auto' | 'gpu' | 'cpu';
  /** KV positions (default 2048). */
  context?: number;
  /** Cache fetched models by sha256 (Cache API) so they load offline later (default true). */
  cache?: boolean;
  onProgress?: (p: LoadProgress) => void;
  /** Run in a Web Worker (default: in browsers yes, in Node in-process). */
  worker?: boolean;
}

export interface ClassifyOptions {
  /** Assistant response to moderate (response mode); omit to classify the prompt alone. */
  response?: string;
  /** 'all' (default): one generation lists violated policies; or one policy: SAFE/UNSAFE for it. */
  mode?: 'all' | Policy;
  /** rsft (default) or dual (<think>/<proof>/<answer>). */
  format?: 'rsft' | 'dual';
  maxTokens?: number;
  /** 0 (default) = greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  /** When the model writes no verdict, choose SAFE/UNSAFE by likelihood (default true; flagged `forced`). */
  forceVerdict?: boolean;
  signal?: AbortSignal;
  onToken?: (text: string) => void;
  onReasoning?: (text: string, section: Section) => void;
  onText?: (section: Section, text: string) => void;
  /** E.g. the GPU failed and generation finishes on the CPU. */
  onNotice?: (message: string) => void;
}

export interface Stats {
  prompt_tokens: number;
  reused_tokens: number;
  generated_tokens: number;
  prefill_ms: number;
  decode_ms: number;
  ttft_ms: number;
  decode_tok_s: number;
}

export interface Verdict {
  label: 'safe' | 'unsafe' | 'unparseable';
  policies: Policy[];
  reasoning: string;
  /** Everything the model generated. */
  raw: string;
  /** The verdict lines were chosen by likelihood because the model wrote none. */
  forced: boolean;
  stop: 'end_of_turn' | 'verdict' | 'max_tokens' | 'cancelled' | 'context' | 'repetition';
  stats: Stats;
  /** Why the text is unparseable. */
  error?: string;
  backend: 'gpu' | 'cpu';
}

export interface ModelInfo {
  model: string;
  architecture: string;
  quantization: string;
  backend: 'gpu' | 'cpu';
  /** Adapter name and type, or the CPU. */
  device: string;
  kvCache: 'f16' | 'f32';
  dispatchesPerToken: number | null;
  context: number;
  adapter: string | null;
  notices: string[];
  loadMs: number;
  modelSource: 'network' | 'cache' | 'file' | 'memory';
  modelSha256: string | null;
  modelBytes: number;
  runtime: 'worker' | 'in-process';
}

export class GuardModel {
  static load(options: LoadOptions): Promise<GuardModel>;
  classify(text: string, options?: ClassifyOptions): Promise<Verdict>;
  info(): ModelInfo;
  greedyTokens(prompt: string, n: number, options?: { guard?: boolean }): Promise<number[]>;
  bench(promptTokens?: number, genTokens?: number): Promise<{ prefillMs: number; decodeMs: number; promptTokens: number; genTokens: number }>;
  dispose(): Promise<void>;
}

export function loadSource(
  src: ModelSource,
  opts?: { cache?: boolean; onProgress?: (p: LoadProgress) => void; what?: string },
): Promise<{ bytes: Uint8Array; name: string; sha256: string | null; from: string }>;
export function clearCache(): Promise<void>;
export function sha256Hex(bytes: BufferSource): Promise<string>;
