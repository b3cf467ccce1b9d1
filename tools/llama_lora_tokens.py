#!/usr/bin/env python3
"""Greedy tokens of a GGUF model with a GGUF LoRA adapter, as llama.cpp computes them: the
referee for vigil's adapter exports (tests/tests/lora_llama_cpp.rs runs this).

Reads JSON on stdin: {"model": PATH, "lora": PATH|null, "prompts": [[ids...], ...], "n": N}.
Writes JSON: {"results": [{"ids": [...], "margins": [...]}, ...]} where margins are llama.cpp's
top-1 minus top-2 logit at each step (near-ties explain legitimate disagreements).
f32 KV cache and no flash attention, so attention runs in f32 as in vigil.

Needs the llama-cpp-python sources on PYTHONPATH and LLAMA_CPP_LIB_PATH at a llama.cpp build
(scripts/build-llama-cpp makes both).
"""
import json
import sys

import numpy as np
from llama_cpp import Llama


def main():
    req = json.load(sys.stdin)
    extra = {"lora_path": req["lora"]} if req.get("lora") else {}
    m = Llama(req["model"], n_ctx=1024, n_threads=2, n_batch=512, verbose=False, logits_all=True, seed=0,
              type_k=0, type_v=0, flash_attn=False, **extra)
    out = []
    for prompt in req["prompts"]:
        m.reset()
        m.eval(prompt)
        ids, margins = [], []
        for step in range(req["n"]):
            logits = np.array(m.scores[m.n_tokens - 1], dtype=np.float64)
            order = np.argsort(-logits)[:2]
            ids.append(int(order[0]))
            margins.append(float(logits[order[0]] - logits[order[1]]))
            if step + 1 < req["n"]:
                m.eval([int(order[0])])
        out.append({"ids": ids, "margins": margins})
    json.dump({"results": out}, sys.stdout)


if __name__ == "__main__":
    main()
