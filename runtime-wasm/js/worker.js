// The Web Worker that runs the guard off the page's main thread (module worker).
import { createHost } from './host.js';

const host = createHost((msg) => self.postMessage(msg));
self.onmessage = (e) => host.handle(e.data);
