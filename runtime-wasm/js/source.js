// Model bytes from a URL, File/Blob, ArrayBuffer or (Node) a file path, with a cache keyed by
// sha256 so that a model fetched once loads again with no network at all.
//
// Cache layout (Cache API, where the runtime has one: browsers and their workers):
//   https://vigil.cache/sha256/<hex>        the model bytes
//   https://vigil.cache/url/<encoded URL>   {"sha256": "<hex>", "name": "...", "size": N}
// A quota error keeps the bytes in memory only and says so through onProgress.

const CACHE = 'vigil-models-v1';
const KEY = 'https://vigil.cache/';

export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function basename(s) {
  const clean = String(s).split(/[?#]/)[0];
  return decodeURIComponent(clean.slice(clean.lastIndexOf('/') + 1)) || 'model.gguf';
}

async function openCache() {
  if (typeof caches === 'undefined') return null;
  try {
    return await caches.open(CACHE);
  } catch {
    return null; // e.g. an opaque origin
  }
}

// Reads a fetch Response body, reporting progress.
async function readBody(response, total, report) {
  if (!response.body) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    report({ stage: 'download', loaded, total });
  }
  const out = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/**
 * Resolves a model source to bytes.
 * @param {string|URL|Blob|ArrayBuffer|ArrayBufferView} src
 * @param {{cache?: boolean, onProgress?: (p: object) => void, what?: string}} opts
 * @returns {Promise<{bytes: Uint8Array, name: string, sha256: string|null, from: string}>}
 */
export async function loadSource(src, { cache = true, onProgress = () => {}, what = 'model' } = {}) {
  const report = (p) => onProgress({ what, ...p });
  if (src instanceof ArrayBuffer) return { bytes: new Uint8Array(src), name: `${what}.gguf`, sha256: null, from: 'memory' };
  if (ArrayBuffer.isView(src)) {
    const bytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
    return { bytes, name: `${what}.gguf`, sha256: null, from: 'memory' };
  }
  if (typeof Blob !== 'undefined' && src instanceof Blob) {
    report({ stage: 'read', loaded: 0, total: src.size });
    const bytes = new Uint8Array(await src.arrayBuffer());
    report({ stage: 'read', loaded: bytes.length, total: src.size });
    return { bytes, name: src.name || `${what}.gguf`, sha256: null, from: 'file' };
  }
  const url = String(src);
  const isNodePath = typeof process !== 'undefined' && process.versions?.node && !/^[a-z]+:\/\//i.test(url);
  if (isNodePath || url.startsWith('file:')) {
    const { readFile } = await import('node:fs/promises');
    const path = url.startsWith('file:') ? new URL(url) : url;
    const bytes = new Uint8Array(await readFile(path));
    report({ stage: 'read', loaded: bytes.length, total: bytes.length });
    return { bytes, name: basename(url), sha256: null, from: 'file' };
  }

  const store = cache ? await openCache() : null;
  const absolute = typeof location !== 'undefined' ? new URL(url, location.href).href : url;
  if (store) {
    const index = await store.match(KEY + 'url/' + encodeURIComponent(absolute));
    if (index) {
      const meta = await index.json();
      const hit = await store.match(KEY + 'sha256/' + meta.sha256);
      if (hit) {
        report({ stage: 'cache', loaded: 0, total: meta.size });
        const bytes = new Uint8Array(await hit.arrayBuffer());
        // the key is the content hash: a damaged entry is dropped and fetched again
        if ((await sha256Hex(bytes)) === meta.sha256) {
          report({ stage: 'cache', loaded: bytes.length, total: meta.size });
          return { bytes, name: meta.name, sha256: meta.sha256, from: 'cache' };
        }
        await store.delete(KEY + 'sha256/' + meta.sha256);
      }
    }
  }

  const response = await fetch(absolute);
  if (!response.ok) throw new Error(`fetching the ${what} ${absolute} failed: HTTP ${response.status}`);
  const total = Number(response.headers.get('content-length')) || 0;
  const bytes = await readBody(response, total, report);
  const name = basename(absolute);
  if (!store) return { bytes, name, sha256: null, from: 'network' };
  report({ stage: 'hash', loaded: bytes.length, total: bytes.length });
  const sha256 = await sha256Hex(bytes);
  try {
    await store.put(KEY + 'sha256/' + sha256, new Response(bytes));
    const meta = JSON.stringify({ sha256, name, size: bytes.length });
    await store.put(KEY + 'url/' + encodeURIComponent(absolute), new Response(meta));
    report({ stage: 'cached', loaded: bytes.length, total: bytes.length, sha256 });
  } catch (e) {
    // QuotaExceededError and friends: the model still loads, from memory only
    report({ stage: 'cache-failed', loaded: bytes.length, total: bytes.length, error: String(e) });
  }
  return { bytes, name, sha256, from: 'network' };
}

/** Removes every cached model. */
export async function clearCache() {
  if (typeof caches !== 'undefined') await caches.delete(CACHE);
}
