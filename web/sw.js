// Service worker: keeps the page's own files so the demo opens offline after the first visit. The
// model is cached separately by sha256 (wasm-pkg/source.js), so it is not fetched through here.
const SHELL = 'vigil-shell-v1';
const FILES = ['./', 'index.html', 'app.js', 'style.css', 'wasm-pkg/guard.js', 'wasm-pkg/host.js', 'wasm-pkg/worker.js',
  'wasm-pkg/source.js', 'wasm-pkg/vigil_runtime.js', 'wasm-pkg/vigil_runtime_bg.wasm'];

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(SHELL).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));

// Network first (a rebuilt page is picked up at once), the cached copy when offline.
self.addEventListener('fetch', (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== 'GET' || url.origin !== location.origin || url.pathname.endsWith('.gguf')) return;
  e.respondWith(
    fetch(e.request)
      .then((r) => {
        if (r.ok) {
          const copy = r.clone();
          caches.open(SHELL).then((c) => c.put(e.request, copy));
        }
        return r;
      })
      .catch(() => caches.match(e.request, { ignoreSearch: true }).then((r) => r || Response.error())),
  );
});
