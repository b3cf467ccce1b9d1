#!/usr/bin/env python3
"""The Python `gguf` package (from the llama.cpp authors) as a referee for vigil's GGUF code.

Called by vigil's tests (models/tests/gguf_python.rs):
  dequant FILE OUTDIR NAME...   write each tensor dequantized as raw little-endian f32 to OUTDIR/NAME.f32
  quantize TYPE IN OUT          quantize raw f32 values from IN with gguf.quants, write the bytes to OUT
  read FILE [--no-sums]         print metadata and tensor infos of FILE as JSON (plus per-tensor f64 sums)
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize, quantize


def cmd_dequant(path, outdir, names):
    r = GGUFReader(path)
    by_name = {t.name: t for t in r.tensors}
    for n in names:
        t = by_name[n]
        vals = dequantize(t.data, t.tensor_type).astype("<f4").reshape(-1)
        vals.tofile(os.path.join(outdir, n + ".f32"))


def cmd_quantize(ty, src, dst):
    x = np.fromfile(src, dtype="<f4")
    qt = GGMLQuantizationType[ty]
    q = quantize(x.reshape(1, -1), qt)
    np.asarray(q).tofile(dst)


def to_py(field):
    types = field.types
    if types[0] == gguf.GGUFValueType.ARRAY:
        return {"array": [int(t) for t in types], "value": field.contents()}
    v = field.contents()
    if isinstance(v, float):
        return {"type": int(types[0]), "value": v}
    return {"type": int(types[0]), "value": v}


def cmd_read(path, *flags):
    sums = "--no-sums" not in flags
    r = GGUFReader(path)
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        meta[k] = to_py(f)
    tensors = []
    for t in r.tensors:
        vals = dequantize(t.data, t.tensor_type).astype(np.float64) if sums else np.zeros(1)
        tensors.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],
            "offset": int(t.data_offset),
            "sum": float(vals.sum()),
        })
    json.dump({"metadata": meta, "tensors": tensors}, sys.stdout)


def main():
    cmd, *args = sys.argv[1:]
    {"dequant": lambda: cmd_dequant(args[0], args[1], args[2:]),
     "quantize": lambda: cmd_quantize(*args),
     "read": lambda: cmd_read(*args)}[cmd]()


if __name__ == "__main__":
    main()
