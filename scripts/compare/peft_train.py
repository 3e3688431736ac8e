#!/usr/bin/env python3
"""Training throughput of PyTorch + PEFT (LoRA) and plain PyTorch (full fine-tuning), compared with
`biomistral pretrain`.

By-hand comparison, not part of CI or `cargo test`: it needs a Python venv with torch, transformers and peft
(e.g. `/tmp/tref/bin/pip install torch transformers==4.57.6 peft accelerate safetensors`), a Hugging Face copy
of the model (`biomistral convert --model FIXTURE.gguf --out /tmp/cmp/smol-hf`) and a text file, and its
timings only mean something on a quiet machine or interleaved, as `bench` does (ours, theirs, ours).

The PyTorch side mirrors what `biomistral pretrain` does per optimizer step: documents (PubTator title and
abstract joined by a newline, as ours reads them) tokenized without BOS, joined with EOS and cut into blocks of
--seq-len tokens; a batch of --batch-size blocks; input = block[:-1], targets = block[1:], mean cross-entropy
over all targets, backward, global gradient-norm clipping at 1.0, torch.optim.AdamW (lr 2e-5, weight decay
0.01). Model in float32 (the bf16 weights upcast). LoRA: r=16, alpha=32, dropout 0, targets q,k,v,o,gate,up,
down projections (PEFT `LoraConfig`). Full: every parameter trains (the tied embedding / LM head once).
Documents are shuffled with Python's `random`, not ours' StdRng, so the blocks differ from ours; the amount
of work per step (batch x seq-len tokens) is the same. Tokens/s counts batch x seq-len tokens per step, as ours
does, over --steps steps after 2 warmup steps; peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss`.

Subcommands:

  run    PyTorch only; prints one JSON line {mode, batch, seq_len, steps, tokens_per_s, peak_rss_mib, ...}.
    python scripts/compare/peft_train.py run --model /tmp/cmp/smol-hf \
        --data /work/shared/data/pubmed_calib/ncbi_disease/NCBItrainset_corpus.txt \
        --mode lora --batch-size 2 --seq-len 64 --steps 10 --threads 2

  bench  ours, theirs, ours for each mode (lora, full) and shape; ours is
         `/usr/bin/time -v BIN pretrain --model M --data D --dtype f32 --threads T --batch-size B --seq-len S
          --max-steps 2+N --lr 2e-5 --eval-frac 0 [--lora --lora-r 16 --lora-alpha 32 --lora-dropout 0]`,
         whose tokens/s is recomputed from train_log.jsonl over the same steps 3..2+N (per step: tokens =
         B x S, seconds = tokens / tokens_per_s) and whose peak RSS is time's "Maximum resident set size".
    python scripts/compare/peft_train.py bench --bin target/release/biomistral --model /tmp/cmp/smol-hf \
        --data /work/shared/data/pubmed_calib/ncbi_disease/NCBItrainset_corpus.txt \
        --shapes 2x64,4x256 --modes lora,full --steps 10 --threads 2 --work /tmp/cmp/train-bench

On a shared, oversubscribed CPU, PyTorch's OpenMP threads spin-wait at barriers; export
`OMP_WAIT_POLICY=PASSIVE` to avoid most of that (the `run` child inherits the environment).
"""
import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def documents(path):
    """PubTator (`PMID|t|title`, `PMID|a|abstract`: one document per PMID, lines joined by '\\n'), else
    blank-line separated blocks; the same reading as `biomistral pretrain` for .txt files."""
    text = Path(path).read_text(encoding="utf-8")
    pubtator = re.compile(r"^\d+\|[ta]\|")
    lines = text.splitlines()
    if any(pubtator.match(l) for l in lines[:5]):
        docs, cur = [], []
        for l in lines:
            if pubtator.match(l):
                if l.split("|")[1] == "t" and cur:
                    docs.append("\n".join(cur))
                    cur = []
                cur.append(l.split("|", 2)[2].strip())
        if cur:
            docs.append("\n".join(cur))
    else:
        docs = [d.strip() for d in text.split("\n\n")]
    return [d for d in docs if d.strip()]


def run(args):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=TARGETS,
                         bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

    docs = documents(args.data)
    random.Random(args.seed).shuffle(docs)
    eos = tok.eos_token_id
    stream = []
    need = (args.steps + args.warmup) * args.batch_size * args.seq_len
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [eos]
        if len(stream) >= need:
            break
    blocks = [stream[i : i + args.seq_len] for i in range(0, len(stream) - args.seq_len + 1, args.seq_len)]
    if not blocks:
        raise SystemExit("not enough text for one block")

    tokens = args.batch_size * args.seq_len
    secs, losses = [], []
    for step in range(args.warmup + args.steps):
        rows = [blocks[(step * args.batch_size + j) % len(blocks)] for j in range(args.batch_size)]
        batch = torch.tensor(rows, dtype=torch.long)
        t = time.perf_counter()
        logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        losses.append(float(loss))
        if step >= args.warmup:
            secs.append(dt)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = dict(side="pytorch", mode=args.mode, batch=args.batch_size, seq_len=args.seq_len, steps=args.steps,
               threads=args.threads, tokens_per_s=tokens * len(secs) / sum(secs), step_s=sum(secs) / len(secs),
               peak_rss_mib=rss_mib, trainable_params=n_trainable, first_loss=losses[0], last_loss=losses[-1])
    print(json.dumps(res), flush=True)
    return res


def max_rss_mib(time_v_stderr):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_v_stderr)
    return int(m.group(1)) / 1024 if m else float("nan")


def bench(args):
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []

    def ours(mode, b, s, tag):
        out = work / f"ours-{mode}-{b}x{s}-{tag}"
        shutil.rmtree(out, ignore_errors=True)
        steps = args.warmup + args.steps
        cmd = ["/usr/bin/time", "-v", args.bin, "pretrain", "--model", args.model, "--data", args.data, "--dtype", "f32",
               "--threads", str(args.threads), "--batch-size", str(b), "--seq-len", str(s), "--max-steps", str(steps),
               "--lr", "2e-5", "--eval-frac", "0", "--out", str(out)]
        if mode == "lora":
            cmd += ["--lora", "--lora-r", str(args.lora_r), "--lora-alpha", str(args.lora_alpha), "--lora-dropout", "0"]
        print("$ " + " ".join(cmd), flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stderr[-3000:])
            raise SystemExit(f"ours failed ({p.returncode})")
        rows = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines() if l.strip()]
        timed = [r for r in rows if r["step"] > args.warmup]
        tok = b * s
        total_s = sum(tok / r["tokens_per_s"] for r in timed)
        summary = json.loads((out / "train_summary.json").read_text())
        res = dict(side="ours", mode=mode, batch=b, seq_len=s, steps=len(timed), tokens_per_s=tok * len(timed) / total_s,
                   peak_rss_mib=max_rss_mib(p.stderr), trainable_params=summary["trainable_params"],
                   first_loss=rows[0]["loss"], last_loss=rows[-1]["loss"])
        print(json.dumps(res), flush=True)
        return res

    def theirs(mode, b, s):
        cmd = [sys.executable, __file__, "run", "--model", args.model, "--data", args.data, "--mode", mode,
               "--batch-size", str(b), "--seq-len", str(s), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--lora-r", str(args.lora_r), "--lora-alpha", str(args.lora_alpha)]
        print("$ " + " ".join(cmd), flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stderr[-3000:])
            raise SystemExit(f"pytorch run failed ({p.returncode})")
        res = json.loads(p.stdout.strip().splitlines()[-1])
        print(json.dumps(res), flush=True)
        return res

    for shape in args.shapes.split(","):
        b, s = (int(x) for x in shape.split("x"))
        for mode in args.modes.split(","):
            o1 = ours(mode, b, s, "1")
            t = theirs(mode, b, s)
            o2 = ours(mode, b, s, "2")
            results.append(dict(mode=mode, batch=b, seq_len=s, ours=[o1, o2], theirs=t))
            (work / "bench.json").write_text(json.dumps(results, indent=2))

    print(f"\n{args.threads} threads, {args.steps} timed steps after {args.warmup} warmup steps, f32")
    hdr = f"{'mode':5} {'batch x seq':>11} {'ours tok/s (r1, r2)':>22} {'pytorch tok/s':>13} {'ratio':>6} {'ours RSS MiB':>13} {'pytorch RSS MiB':>15}"
    print(hdr)
    for r in results:
        o1, o2, t = r["ours"][0], r["ours"][1], r["theirs"]
        om = (o1["tokens_per_s"] + o2["tokens_per_s"]) / 2
        print(f"{r['mode']:5} {str(r['batch']) + 'x' + str(r['seq_len']):>11} {om:8.0f} ({o1['tokens_per_s']:.0f}, {o2['tokens_per_s']:.0f})"
              f" {t['tokens_per_s']:13.0f} {om / t['tokens_per_s']:5.2f}x {max(o1['peak_rss_mib'], o2['peak_rss_mib']):13.0f} {t['peak_rss_mib']:15.0f}")
    print("trainable params (ours / pytorch): " + ", ".join(
        f"{r['mode']} {r['ours'][0]['trainable_params']} / {r['theirs']['trainable_params']}" for r in results[:2]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--model", required=True, help="Hugging Face model folder")
        p.add_argument("--data", required=True, help="text file (PubTator or blank-line separated)")
        p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--lora-r", type=int, default=16)
        p.add_argument("--lora-alpha", type=float, default=32.0)

    p = sub.add_parser("run")
    common(p)
    p.add_argument("--mode", choices=["lora", "full"], default="lora")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=42)
    p = sub.add_parser("bench")
    common(p)
    p.add_argument("--bin", default="target/release/biomistral")
    p.add_argument("--shapes", default="2x64", help="comma-separated BATCHxSEQ, e.g. 2x64,4x256")
    p.add_argument("--modes", default="lora,full")
    p.add_argument("--work", required=True)
    a = ap.parse_args()
    run(a) if a.cmd == "run" else bench(a)


if __name__ == "__main__":
    main()
