"""The PyTorch + PEFT training anchor of `vigil bench train`, measured on this machine in the same run.

LoRA (rank r, alpha 2r, no dropout) on q, k, v, o, gate, up, down of the GGUF's model, dequantized to
fp32 by transformers' GGUF loader; AdamW; `--batch` sequences of `--seq` tokens, every token a target;
`--threads` intra-op threads. Prints one JSON line: median tokens/s over `--steps` timed steps (after
one warm-up step), peak RSS and the library versions. `vigil bench train --peft-python PY` runs it
with the interpreter PY (which needs torch, transformers, peft and gguf); it also runs alone:

    python3 tools/peft_train_anchor.py --model SmolLM2-135M-Instruct.Q4_1.gguf
"""

import argparse
import json
import os
import resource
import statistics
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="GGUF file of the base model")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = os.path.abspath(a.model)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    # fixed ordinary ids (the speed does not depend on them); labels = inputs, every token a target
    ids = (torch.arange(a.batch * a.seq).reshape(a.batch, a.seq) * 7919 + 11) % vocab

    times = []
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step > 0:  # the first step warms up
            times.append(time.perf_counter() - t0)
    tok_s = a.batch * a.seq / statistics.median(times)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print(
        json.dumps(
            {
                "tok_s": tok_s,
                "peak_rss_gb": peak_gb,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "threads": torch.get_num_threads(),
                "loss": loss.item(),
            }
        )
    )


if __name__ == "__main__":
    main()
