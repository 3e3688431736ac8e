#!/usr/bin/env python3
"""BioMistral's own MCQA evaluation loop in Hugging Face transformers, compared with `biomistral eval`.

By-hand comparison, not part of CI or `cargo test`: it needs a Python venv with torch + transformers
(e.g. `/tmp/tref/bin/pip install torch transformers==4.57.6 safetensors numpy`), a Hugging Face copy of the
model and the benchmark files, and its timings only mean something on an otherwise quiet machine (or
interleaved, as `bench` does).

The transformers side is the naive loop of the BioMistral protocol (docs/eval.md, and
shared/reference/hf/README.md section 4): one item at a time, shot set k of item i uses pool items
(i+1+3k+j) mod n (j=0..2), the full prompt is tokenized with `tokenizer(prompt)` (no BOS) and run in one
forward pass (`logits_to_keep=1`), softmax in f32 over the whole vocabulary at the last position, top-1
token, correct iff `decode([top1]).strip() == gold`. No KV cache is shared between prompts; our engine
reuses the KV cache of the prefix a prompt shares with the previous one, which is what the comparison shows.
Letter probabilities use the token after "(": the tail of encode("(" + L) after encode("("), as ours does.

Tasks: mmlu_clinical_knowledge, mmlu_medical_genetics, mmlu_anatomy, mmlu_professional_medicine,
mmlu_college_biology, mmlu_college_medicine (CSV, no header), medqa_4, medqa_5 (JSONL, gold `answer_idx`),
pubmedqa (test_set.json ordered by numeric PMID), medmcqa (dev.json, `cop` 1-based). `--limit N` keeps the
first N items, which then form the whole pool (shots included), as `biomistral eval --limit N` does.

Subcommands:

  run      transformers only; writes one JSONL record per (item, shot set): task, item, id, shot_set,
           shot_items, gold, top1_id, top1_str, top1_prob, correct, letter_probs, n_prompt_tokens,
           prompt_sha256; prints prompts/s.
    python scripts/compare/transformers_eval.py run --model /tmp/cmp/smol-hf --tasks all \
        --data-dir /work/shared/data --limit 20 --threads 2 --out /tmp/cmp/theirs.jsonl

  compare  a `biomistral eval` output folder (samples_<task>.jsonl) against a `run` JSONL: top-1 agreement,
           max |letter prob diff|, prompt hash agreement, accuracy of each side.
    python scripts/compare/transformers_eval.py compare --ours /tmp/cmp/ours1 --theirs /tmp/cmp/theirs.jsonl

  bench    the whole comparison, interleaved to cancel out load from other processes: ours, theirs, ours
           (ours = `BIN eval --model M --dtype f32 ... --no-progress` with RAYON_NUM_THREADS=THREADS, since
           `eval` has no --threads flag), then `compare`, and a table of prompts/s and the ratio.
    python scripts/compare/transformers_eval.py bench --bin target/release/biomistral \
        --model /tmp/cmp/smol-hf --tasks all --data-dir /work/shared/data --limit 20 --threads 2 \
        --work /tmp/cmp/eval-bench

On a shared, oversubscribed CPU, PyTorch's OpenMP threads spin-wait at barriers and 2 threads can be several
times slower than 1; `OMP_WAIT_POLICY=PASSIVE` in the environment (inherited by `run`) avoids most of that.
Rayon (ours) parks idle threads by itself.

"Items/s" below is (item, shot set) prompts per second. Times: `loop` is the transformers scoring loop only;
`wall` is the whole process (Python start, imports and model load included) for both sides.
"""
import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

INSTRUCTION = "The following are multiple choice questions (with answers) about medical knowledge. \n "
SEP = " \n "
MMLU = {
    "mmlu_clinical_knowledge": "clinical_knowledge",
    "mmlu_medical_genetics": "medical_genetics",
    "mmlu_anatomy": "anatomy",
    "mmlu_professional_medicine": "professional_medicine",
    "mmlu_college_biology": "college_biology",
    "mmlu_college_medicine": "college_medicine",
}
ALL_TASKS = list(MMLU) + ["medqa_4", "medqa_5", "pubmedqa", "medmcqa"]


def letter(i):
    return chr(ord("A") + i)


# ---------------------------------------------------------------- data


def load_task(task, data_dir):
    """Items as dicts {id, context, question, options, gold} in the protocol's order."""
    d = Path(data_dir)
    items = []
    if task in MMLU:
        path = d / "mmlu" / "test" / f"{MMLU[task]}_test.csv"
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.reader(f), 1):
                items.append(dict(id=f"{path.name}:{line}", context=None, question=row[0], options=row[1:-1], gold=row[-1].strip()))
    elif task in ("medqa_4", "medqa_5"):
        path = d / "medqa" / ("4_options/phrases_no_exclude_test.jsonl" if task == "medqa_4" else "5_options/test.jsonl")
        with open(path, encoding="utf-8") as f:
            for line, l in enumerate(f, 1):
                if not l.strip():
                    continue
                r = json.loads(l)
                opts = [t for _, t in sorted(r["options"].items())]
                items.append(dict(id=f"{path.name}:{line}", context=None, question=r["question"], options=opts, gold=r["answer_idx"]))
    elif task == "pubmedqa":
        data = json.load(open(d / "pubmedqa" / "test_set.json", encoding="utf-8"))
        for pmid in sorted(data, key=int):  # numeric order: PMIDs have 7 and 8 digits
            r = data[pmid]
            gold = {"yes": "A", "no": "B", "maybe": "C"}[r["final_decision"]]
            items.append(dict(id=pmid, context=" ".join(r["CONTEXTS"]), question=r["QUESTION"], options=["yes", "no", "maybe"], gold=gold))
    elif task == "medmcqa":
        with open(d / "medmcqa" / "dev.json", encoding="utf-8") as f:
            for l in f:
                if not l.strip():
                    continue
                r = json.loads(l)
                items.append(dict(id=r["id"], context=None, question=r["question"], options=[r["opa"], r["opb"], r["opc"], r["opd"]], gold=letter(r["cop"] - 1)))
    else:
        raise SystemExit(f"unknown task {task}")
    return items


def example(item, with_answer):
    s = ""
    if item["context"] is not None:
        s += item["context"] + SEP
    s += "**Question:** " + item["question"] + SEP
    s += SEP.join(f"({letter(i)}) {o}" for i, o in enumerate(item["options"])) + SEP
    s += "**Answer:**("
    if with_answer:
        s += item["gold"]
    return s


def build_prompt(shots, item):
    s = INSTRUCTION
    if shots:
        s += SEP.join(example(sh, True) for sh in shots) + SEP
    return s + example(item, False)


def parse_tasks(s):
    out = []
    for t in s.split(","):
        t = t.strip()
        for x in ALL_TASKS if t == "all" else [t]:
            if x not in ALL_TASKS:
                raise SystemExit(f"unknown task {x}")
            if x not in out:
                out.append(x)
    return out


# ---------------------------------------------------------------- transformers side


def run(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t0
    base = tok.encode("(", add_special_tokens=False)
    n_total, loop_s = 0, 0.0
    with open(args.out, "w") as out, torch.no_grad():
        for task in parse_tasks(args.tasks):
            items = load_task(task, args.data_dir)
            if args.limit:
                items = items[: args.limit]
            n = len(items)
            letters = [letter(i) for i in range(max(len(it["options"]) for it in items))]
            letter_ids = {}
            for L in letters:
                ids = tok.encode("(" + L, add_special_tokens=False)
                assert ids[: len(base)] == base and len(ids) == len(base) + 1, (L, ids)
                letter_ids[L] = ids[-1]
            ts = time.perf_counter()
            correct = [0] * args.shot_sets
            for i, item in enumerate(items):
                for k in range(args.shot_sets):
                    shot_idx = [(i + 1 + args.shots * k + j) % n for j in range(args.shots)]
                    prompt = build_prompt([items[s] for s in shot_idx], item)
                    enc = tok(prompt, return_tensors="pt")
                    logits = model(**enc, logits_to_keep=1).logits[0, -1].float()
                    probs = torch.softmax(logits, -1)
                    top1 = int(torch.argmax(probs))
                    top1_str = tok.decode([top1])
                    ok = top1_str.strip() == item["gold"]
                    correct[k] += ok
                    rec = dict(
                        task=task, item=i, id=item["id"], shot_set=k, shot_items=shot_idx, gold=item["gold"],
                        top1_id=top1, top1_str=top1_str, top1_prob=float(probs[top1]), correct=ok,
                        letter_probs={L: float(probs[letter_ids[L]]) for L in letters[: len(item["options"])]},
                        n_prompt_tokens=int(enc["input_ids"].shape[1]),
                        prompt_sha256=hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
                    )
                    out.write(json.dumps(rec) + "\n")
            dt = time.perf_counter() - ts
            loop_s += dt
            n_total += n * args.shot_sets
            accs = " ".join(f"{c / n:.3f}" for c in correct)
            print(f"{task}: {n} items x {args.shot_sets} sets in {dt:.1f} s ({n * args.shot_sets / dt:.3f} items/s), acc {accs}", flush=True)
    print(f"transformers: {n_total} prompts, loop {loop_s:.1f} s = {n_total / loop_s:.3f} items/s (model load {load_s:.1f} s)")
    return dict(n=n_total, loop_s=loop_s, load_s=load_s)


# ---------------------------------------------------------------- comparison


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def compare(ours_dir, theirs_path, quiet=False):
    theirs = read_jsonl(theirs_path)
    by_task = {}
    for r in theirs:
        by_task.setdefault(r["task"], {})[(r["item"], r["shot_set"])] = r
    rows, tot = [], dict(n=0, top1=0, sha=0, maxdiff=0.0, miss=0)
    for task, th in by_task.items():
        path = Path(ours_dir) / f"samples_{task}.jsonl"
        ours = {(r["item"], r["shot_set"]): r for r in read_jsonl(path)} if path.exists() else {}
        n = same = sha = miss = 0
        maxdiff, acc_o, acc_t, diffs = 0.0, 0, 0, []
        for key, t in sorted(th.items()):
            o = ours.get(key)
            if o is None:
                miss += 1
                continue
            n += 1
            same += o["top1_id"] == t["top1_id"]
            sha += o.get("prompt_sha256") == t["prompt_sha256"]
            acc_o += bool(o["correct"])
            acc_t += bool(t["correct"])
            d = max(abs(o["letter_probs"][L] - t["letter_probs"][L]) for L in t["letter_probs"])
            maxdiff = max(maxdiff, d)
            if o["top1_id"] != t["top1_id"]:
                diffs.append((key, o["top1_id"], t["top1_id"], o["top1_prob"], t["top1_prob"]))
        rows.append((task, n, same, sha, maxdiff, acc_o, acc_t, miss, diffs))
        tot["n"] += n
        tot["top1"] += same
        tot["sha"] += sha
        tot["miss"] += miss
        tot["maxdiff"] = max(tot["maxdiff"], maxdiff)
    if not quiet:
        print(f"{'task':28} {'n':>5} {'top1 equal':>11} {'prompt sha =':>12} {'max|dP letter|':>15} {'acc ours':>9} {'acc theirs':>10}")
        for task, n, same, sha, md, ao, at, miss, diffs in rows:
            extra = f"  ({miss} missing in ours)" if miss else ""
            print(f"{task:28} {n:5d} {100 * same / max(n, 1):10.1f}% {sha:6d}/{n:<5d} {md:15.2e} {ao / max(n, 1):9.3f} {at / max(n, 1):10.3f}{extra}")
            for key, oi, ti, op, tp in diffs:
                print(f"    differs at item {key[0]} set {key[1]}: ours {oi} (p={op:.4f}) vs theirs {ti} (p={tp:.4f})")
        n = max(tot["n"], 1)
        print(f"{'all':28} {tot['n']:5d} {100 * tot['top1'] / n:10.1f}% {tot['sha']:6d}/{tot['n']:<5d} {tot['maxdiff']:15.2e}")
    return tot


def bench(args):
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))

    def ours(tag):
        out = work / f"ours{tag}"
        shutil.rmtree(out, ignore_errors=True)  # a re-run would resume and skip everything
        cmd = [args.bin, "eval", "--model", args.model, "--dtype", "f32", "--tasks", args.tasks, "--data-dir", args.data_dir,
               "--out", str(out), "--shots", str(args.shots), "--shot-sets", str(args.shot_sets), "--no-progress"]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        print("$ RAYON_NUM_THREADS=%d %s" % (args.threads, " ".join(cmd)), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t, out

    def theirs():
        out = work / "theirs.jsonl"
        cmd = [sys.executable, __file__, "run", "--model", args.model, "--tasks", args.tasks, "--data-dir", args.data_dir,
               "--out", str(out), "--threads", str(args.threads), "--shots", str(args.shots), "--shot-sets", str(args.shot_sets)]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        print("$ " + " ".join(cmd), flush=True)
        t = time.perf_counter()
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t
        sys.stdout.write(res.stdout)
        loop = float(res.stdout.strip().splitlines()[-1].split(" loop ")[1].split(" s")[0])
        return wall, loop, out

    o1, dir1 = ours("1")
    tw, tl, tpath = theirs()
    o2, dir2 = ours("2")
    n = len(read_jsonl(tpath))
    print()
    tot = compare(dir1, tpath)
    print("\nours run 2 vs theirs:")
    tot2 = compare(dir2, tpath, quiet=True)
    print(f"  top1 equal {tot2['top1']}/{tot2['n']}, max|dP letter| {tot2['maxdiff']:.2e}")
    print(f"\n{n} prompts, {args.threads} threads")
    print(f"{'':34} {'seconds':>8} {'items/s':>8}")
    print(f"{'ours run 1 (wall)':34} {o1:8.1f} {n / o1:8.3f}")
    print(f"{'transformers (wall)':34} {tw:8.1f} {n / tw:8.3f}")
    print(f"{'transformers (loop only)':34} {tl:8.1f} {n / tl:8.3f}")
    print(f"{'ours run 2 (wall)':34} {o2:8.1f} {n / o2:8.3f}")
    om = (o1 + o2) / 2
    print(f"ratio ours/theirs items/s: wall {tw / om:.2f}x (runs {tw / o1:.2f}x, {tw / o2:.2f}x); vs theirs' loop only {tl / om:.2f}x")
    summary = dict(n=n, threads=args.threads, ours_s=[o1, o2], theirs_wall_s=tw, theirs_loop_s=tl, agreement=tot, agreement_run2=tot2)
    (work / "bench.json").write_text(json.dumps(summary, indent=2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--model", required=True, help="Hugging Face model folder")
        p.add_argument("--tasks", default="all")
        p.add_argument("--data-dir", default="../shared/data")
        p.add_argument("--limit", type=int, default=None)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--shots", type=int, default=3)
        p.add_argument("--shot-sets", type=int, default=3)

    p = sub.add_parser("run")
    common(p)
    p.add_argument("--out", required=True, help="JSONL of per-prompt records")
    p = sub.add_parser("compare")
    p.add_argument("--ours", required=True, help="biomistral eval output folder")
    p.add_argument("--theirs", required=True, help="JSONL written by `run`")
    p = sub.add_parser("bench")
    common(p)
    p.add_argument("--bin", default="target/release/biomistral")
    p.add_argument("--work", required=True, help="folder for both sides' outputs")
    a = ap.parse_args()
    if a.cmd == "run":
        run(a)
    elif a.cmd == "compare":
        compare(a.ours, a.theirs)
    else:
        bench(a)


if __name__ == "__main__":
    main()
