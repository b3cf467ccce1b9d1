#!/usr/bin/env python3
"""Exact float64 forward pass of a llama-architecture GGUF, written independently in numpy.

It dequantizes the weights with the Python `gguf` package and runs the decoder in float64 with no
activation quantization, so it is the mathematically exact output of the model as stored. vigil's
decoder with dequantized (dense f32) weights must agree with it to f32 rounding: this checks the
decoder's arithmetic independently of llama.cpp's 8-bit activation noise.

Writes tests/fixtures/f64_smollm2.json:
  python3 tools/f64_reference.py MODEL.gguf tests/fixtures/golden_smollm2.json tests/fixtures/f64_smollm2.json
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main(model, golden_path, out_path):
    r = GGUFReader(model)
    tensors = {t.name: t for t in r.tensors}
    meta = lambda k: r.fields[k].contents()
    n_layer = meta("llama.block_count")
    d = meta("llama.embedding_length")
    n_head = meta("llama.attention.head_count")
    n_kv = meta("llama.attention.head_count_kv")
    eps = meta("llama.attention.layer_norm_rms_epsilon")
    base = meta("llama.rope.freq_base")
    hd = d // n_head

    def w(name, cols=None):
        t = tensors[name]
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        return a.reshape(-1, cols) if cols else a

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(v, pos):  # v [n, heads, hd]; GGUF llama rotates adjacent pairs
        ang = pos[:, None] * base ** (-np.arange(0, hd, 2) / hd)[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = np.empty_like(v)
        out[..., 0::2] = v[..., 0::2] * c - v[..., 1::2] * s
        out[..., 1::2] = v[..., 0::2] * s + v[..., 1::2] * c
        return out

    emb = w("token_embd.weight", d)
    layers = []
    for i in range(n_layer):
        p = f"blk.{i}."
        layers.append({k: w(p + k + ".weight", None if k.endswith("norm") else (d if k not in ("attn_output", "ffn_down") else None))
                       for k in ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]})
        layers[-1]["attn_output"] = layers[-1]["attn_output"].reshape(d, -1)
        layers[-1]["ffn_down"] = layers[-1]["ffn_down"].reshape(d, -1)
    out_norm = w("output_norm.weight")

    def forward(ids):
        n = len(ids)
        x = emb[ids]
        pos = np.arange(n, dtype=np.float64)
        mask = np.triu(np.full((n, n), -np.inf), 1)
        rep = n_head // n_kv
        for L in layers:
            h = rms(x, L["attn_norm"])
            q = rope((h @ L["attn_q"].T).reshape(n, n_head, hd), pos)
            k = rope((h @ L["attn_k"].T).reshape(n, n_kv, hd), pos)
            v = (h @ L["attn_v"].T).reshape(n, n_kv, hd)
            att = np.zeros((n, n_head, hd))
            for hh in range(n_head):
                s = q[:, hh] @ k[:, hh // rep].T / np.sqrt(hd) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                s /= s.sum(-1, keepdims=True)
                att[:, hh] = s @ v[:, hh // rep]
            x = x + att.reshape(n, -1) @ L["attn_output"].T
            h = rms(x, L["ffn_norm"])
            g = h @ L["ffn_gate"].T
            x = x + ((g / (1 + np.exp(-g))) * (h @ L["ffn_up"].T)) @ L["ffn_down"].T
        return rms(x, out_norm)[-1] @ emb.T

    golden = json.load(open(golden_path))
    cases = []
    # prompt 3 (short raw prompt) as a prefill, and prompt 2 (chat) extended by 8 of its greedy
    # tokens: vigil prefills the prompt and decodes those 8 one by one through its KV cache.
    for pi, extra in [(3, 0), (2, 8)]:
        p = golden["prompts"][pi]
        ids = p["prompt_ids"] + p["generated"][:extra]
        logits = forward(ids)
        top = np.argsort(-logits)[:64]
        rng = np.random.default_rng(1)
        sample = sorted(rng.choice(len(logits), size=256, replace=False).tolist())
        cases.append({"prompt_ids": p["prompt_ids"], "decoded_ids": p["generated"][:extra],
                      "logits_top": [[int(i), float(logits[i])] for i in top],
                      "logits_sample": [[int(i), float(logits[i])] for i in sample]})
    with open(out_path, "w") as f:
        json.dump({"model": model.split("/")[-1], "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
