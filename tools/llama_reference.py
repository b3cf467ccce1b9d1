#!/usr/bin/env python3
"""Produce llama.cpp reference fixtures for vigil's tests.

Writes (paths relative to the repository root):
  models/tests/fixtures/tokenizer_ids.json   token ids of >= 50 varied strings for SmolLM2 and Gemma 3
  tests/fixtures/golden_smollm2.json         greedy continuations + logits of SmolLM2-135M-Instruct Q4_1
                                             (llama.cpp with an f32 KV cache, so attention is f32 as in
                                             vigil; its default f16 cache moves logits by up to ~1.2)

llama.cpp is the referee. It is used through the ctypes bindings of the `llama-cpp-python` sdist, pointed
at a llama.cpp built from the same sdist (see anchors.md for the flags this CPU needs):

  pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
  cd llama_cpp_python-0.3.36/vendor/llama.cpp && cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
     -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=ON \
     "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
     "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" && cmake --build build -j2 --target llama
  pip install diskcache jinja2 numpy
  PYTHONPATH=llama_cpp_python-0.3.36 LLAMA_CPP_LIB_PATH=llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin \
     python3 tools/llama_reference.py --smollm2 PATH.gguf --gemma3 PATH.gguf
"""
import argparse
import json
import os
import sys

import numpy as np
from llama_cpp import Llama
import llama_cpp

# Varied strings: unicode, code, emoji, runs of spaces, numbers, control-token look-alikes.
STRINGS = [
    "",
    " ",
    "  ",
    "Hello world",
    " Hello world",
    "Hello  world   with    runs     of spaces",
    "trailing spaces   ",
    "\ttabs\tand\t\ttabs",
    "line one\nline two\n\nline four\n\n\n",
    "windows\r\nline endings\r\n",
    "How can I annihilate my competition in the market?",
    "How do I kill a zombie process in Linux?",
    "kill -9 $(pgrep -f 'python train.py')",
    "I'm sure you'll agree they've done what we'd hoped.",
    "DON'T SHOUT, it's RUDE",
    "3.14159265358979 and 2,718,281,828",
    "1234567890 12 123 1234 12345",
    "Call 555-0100 or +1 (202) 555-0148 before 10:30pm",
    "Prices: $19.99, €5, £3.50, ¥1000, ₹250",
    "naïve café résumé façade coöperate",
    "Größe Straße Äpfel Übung",
    "Ελληνικά κείμενα και ΚΕΦΑΛΑΙΑ",
    "Русский текст: привет, как дела?",
    "日本語のテキストと漢字、カタカナ。",
    "中文文本：你好，世界！",
    "한국어 텍스트입니다",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी पाठ का उदाहरण",
    "ไทย ภาษา",
    "Emoji: 😀😃😄 👍🏽 🇺🇸🇯🇵 👨‍👩‍👧‍👦 ❤️",
    "🔥🔥🔥 lit",
    "math: ∑_{i=1}^{n} x_i² ≤ √(∞) ± ∂f/∂x ≠ ∅",
    "arrows → ← ↑ ↓ ⇒ and boxes ┌─┐ │ └─┘",
    "zero\u200bwidth\u200cjoiners\u200d and\u00a0nbsp",
    "combining e\u0301 a\u0308 n\u0303",
    "def add(a, b):\n    return a + b\n",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}",
    "for (int i = 0; i < n; ++i) { sum += arr[i]; }",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%smith%';",
    "<div class=\"x\"><p>Hello</p></div>",
    "<table><tr><td>cell</td></tr></table>",
    "https://example.com/path?query=1&other=two#frag",
    "user@example.org wrote: >> quoted text",
    "{\"label\": \"unsafe\", \"policies\": [\"violence\"]}",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_end|> typed by a user stays text",
    "<end_of_turn> and <start_of_turn>model are text here",
    "<bos><eos><pad> look-alikes",
    "Classification: UNSAFE\nViolated policies: harassment, violence",
    "Reasoning:\nStep 1: The content asks about a metaphor.\nStep 2: No policy applies.",
    "<think>step</think>\n<proof>because</proof>\n<answer>SAFE</answer>",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "ALLCAPSWORDWITHOUTSPACES",
    "snake_case_identifier and camelCaseIdentifier and kebab-case-id",
    "!!!???...,,,;;;:::",
    "'quoted' \"double\" `backtick` «guillemets» „German“",
    "    indented four spaces",
    "\n\nleading newlines",
    "mixed 中文 and English and 😀 together 123",
]

CHATML_PROMPTS = [
    # (system, user) pairs rendered with the model's ChatML template.
    ("You are a helpful AI assistant named SmolLM, trained by Hugging Face", "What is the capital of France?"),
    ("You are a content safety classifier.", "How can I annihilate my competition in the market?"),
    ("You are a helpful AI assistant named SmolLM, trained by Hugging Face",
     "Write a short poem about the sea. <|im_end|> stays text."),
]
RAW_PROMPTS = ["The quick brown fox", "def fibonacci(n):"]
# Appended later (indices above stay stable): more prompts make "≥ 3 prompts identical for ≥ 32
# tokens" robust to the near-tie flips that 8-bit activation rounding causes.
MORE_CHATML = [
    ("You are a content safety classifier.", "How do I kill a zombie process in Linux?"),
    ("You are a helpful assistant.", "Explain how photosynthesis works in two sentences."),
    ("You are a helpful assistant.", "List three tips for learning a new language."),
]
MORE_RAW = ["Once upon a time, in a small village by the sea,", "import numpy as np\n\ndef mean(xs):"]
N_GEN = 48


def chatml(system, user):
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def load(path, logits_all=False, f32_attention=False):
    # f32_attention: f32 KV cache and no flash attention, so attention runs in f32 like vigil's
    # reference decoder. llama.cpp's defaults (f16 KV cache, flash attention accumulating P.V in
    # f16 on CPU) move SmolLM2's logits by up to ~1 against an exact float64 forward pass.
    extra = dict(type_k=0, type_v=0, flash_attn=False) if f32_attention else {}
    return Llama(path, n_ctx=1024, n_threads=2, n_batch=512, verbose=False, logits_all=logits_all, seed=0, **extra)


def tokenizer_fixture(paths):
    out = {"llama_cpp_python": llama_cpp.__version__, "models": {}}
    for name, path in paths.items():
        m = load(path)
        cases = []
        for s in STRINGS:
            b = s.encode("utf-8")
            cases.append({
                "text": s,
                "ids": m.tokenize(b, add_bos=False, special=False),
                "ids_special": m.tokenize(b, add_bos=False, special=True),
            })
        out["models"][name] = {"file": os.path.basename(path), "cases": cases}
        del m
    return out


def golden_fixture(path, f32_attention):
    m = load(path, logits_all=True, f32_attention=f32_attention)
    prompts = [{"kind": "chatml", "system": s, "user": u, "text": chatml(s, u)} for s, u in CHATML_PROMPTS]
    prompts += [{"kind": "raw", "text": t} for t in RAW_PROMPTS]
    prompts += [{"kind": "chatml", "system": s, "user": u, "text": chatml(s, u)} for s, u in MORE_CHATML]
    prompts += [{"kind": "raw", "text": t} for t in MORE_RAW]
    results = []
    for p in prompts:
        toks = m.tokenize(p["text"].encode(), add_bos=False, special=(p["kind"] == "chatml"))
        m.reset()
        m.eval(toks)
        first = np.array(m.scores[len(toks) - 1], dtype=np.float64)
        top = np.argsort(-first)[:64]
        rng = np.random.default_rng(0)
        sample = sorted(rng.choice(len(first), size=256, replace=False).tolist())
        gen, margins = [], []
        for step in range(N_GEN):
            logits = np.array(m.scores[m.n_tokens - 1], dtype=np.float64)
            order = np.argsort(-logits)[:2]
            nxt = int(order[0])
            gen.append(nxt)
            margins.append(float(logits[order[0]] - logits[order[1]]))
            if step + 1 < N_GEN:
                m.eval([nxt])
        results.append({
            **p,
            "prompt_ids": toks,
            "generated": gen,
            "top1_margins": margins,
            "first_logits_top": [[int(i), float(first[i])] for i in top],
            "first_logits_sample": [[int(i), float(first[i])] for i in sample],
            "first_logits_mean": float(first.mean()),
            "first_logits_std": float(first.std()),
        })
    return {"llama_cpp_python": llama_cpp.__version__, "model": os.path.basename(path), "n_gen": N_GEN,
            "attention": "f32 KV cache, no flash attention" if f32_attention else "llama.cpp defaults (f16 KV cache)",
            "note": "greedy; prompt evaluated as one batch, then one token per step (llama.cpp CPU, 2 threads)",
            "prompts": results}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2", required=True)
    ap.add_argument("--gemma3", required=True)
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    a = ap.parse_args()
    tok = tokenizer_fixture({"smollm2": a.smollm2, "gemma3": a.gemma3})
    gold = golden_fixture(a.smollm2, f32_attention=True)
    for rel, obj in [("models/tests/fixtures/tokenizer_ids.json", tok), ("tests/fixtures/golden_smollm2.json", gold)]:
        p = os.path.join(a.root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print("wrote", p, file=sys.stderr)


if __name__ == "__main__":
    main()
