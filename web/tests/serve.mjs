// A static file server for the browser tests and the benchmark: GET only, correct MIME types for
// wasm and modules, CORS open (wasm-bindgen-test's page fetches the model from another port).
import { createServer } from 'node:http';
import { createReadStream, statSync } from 'node:fs';
import { extname, join, normalize, resolve } from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.wasm': 'application/wasm', '.json': 'application/json', '.png': 'image/png', '.gguf': 'application/octet-stream',
};

/** Serves `routes` ({urlPrefix: dir}) on 127.0.0.1:`port` (0 = any), adding `headers` to every
 * response. Resolves to {server, url}. */
export function serve(routes, port = 0, headers = {}) {
  const table = Object.entries(routes).map(([p, d]) => [p.replace(/\/$/, ''), resolve(d)]).sort((a, b) => b[0].length - a[0].length);
  const server = createServer((req, res) => {
    res.setHeader('Access-Control-Allow-Origin', '*');
    for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const hit = table.find(([p]) => path === p || path.startsWith(p + '/'));
    let file = hit && normalize(join(hit[1], path.slice(hit[0].length)));
    if (!hit || !file.startsWith(hit[1])) {
      res.writeHead(404).end();
      return;
    }
    try {
      if (statSync(file).isDirectory()) file = join(file, 'index.html');
      const size = statSync(file).size;
      res.writeHead(200, { 'Content-Type': TYPES[extname(file)] || 'application/octet-stream', 'Content-Length': size });
      createReadStream(file).pipe(res);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((ok) => server.listen(port, '127.0.0.1', () => ok({ server, url: `http://127.0.0.1:${server.address().port}` })));
}

// `node serve.mjs DIR [PORT]`: serve one directory (scripts/test-browser uses it for fixtures).
if (import.meta.url === `file://${process.argv[1]}`) {
  const { url } = await serve({ '/': process.argv[2] || '.' }, Number(process.argv[3] || 0));
  console.log(url);
}
