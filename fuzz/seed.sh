#!/usr/bin/env bash
# Seeds for the GGUF fuzz target: the committed hand-made file, plus the first 200 kB of the real
# SmolLM2 header when the model is in the cache.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/gguf_reader
cp seeds/*.gguf corpus/gguf_reader/
model="${VIGIL_CACHE:-$HOME/.cache/vigil}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$model" ] && head -c 200000 "$model" > corpus/gguf_reader/smollm2-head.gguf
echo "seeded $(ls corpus/gguf_reader | wc -l) files"
