// How the tests and the benchmark start Debian's Chromium: headless, WebGPU on (SwiftShader when
// there is no GPU), nothing that talks to the network by itself.
export const CHROMIUM_ARGS = ['--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', '--disable-dev-shm-usage',
  '--no-first-run', '--disable-quic', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
