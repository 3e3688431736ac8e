"""Build calibration JSONLs (AutoAWQ's construction) and the 20 held-out docs JSONL."""
import json, os, sys
from transformers import AutoTokenizer

D = os.environ.get("BIOMISTRAL_DATA", "../shared/data") + "/pubmed_calib/ncbi_disease/"
W = os.environ.get("AWQPEER", "awqpeer") + "/"
OUT = W + "data/"
os.makedirs(OUT, exist_ok=True)
tok = AutoTokenizer.from_pretrained(W + "smol-bf16")

def pubtator_docs(path):
    docs, cur = [], {}
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        parts = line.split("|", 2)
        if len(parts) == 3 and parts[0].isdigit() and parts[1] in ("t", "a"):
            if parts[1] == "t":
                cur = {"pmid": parts[0], "t": parts[2]}
            else:
                cur["a"] = parts[2]
                docs.append(cur)
    return docs

# Held-out: first 20 test docs, title + " " + abstract verbatim (as the hf-reference ppl.json).
test = pubtator_docs(D + "NCBItestset_corpus.txt")[:20]
texts = [d["t"] + " " + d["a"] for d in test]
ref = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../tests/fixtures/hf-reference/ppl.json")))["docs"]
assert [r["text"] for r in ref] == texts, "held-out docs differ from ppl.json"
with open(OUT + "docs20.jsonl", "w") as f:
    f.write("\n".join(json.dumps({"text": t}) for t in texts))
with open(OUT + "docs4.jsonl", "w") as f:
    f.write("\n".join(json.dumps({"text": t}) for t in texts[:4]))

# Calibration: AutoAWQ get_calib_dataset: strip, encode, skip > max_seq_len, first n, concat, cut.
train = pubtator_docs(D + "NCBItrainset_corpus.txt")
for n in (4, 16):
    chosen, ids = [], []
    for d in train:
        t = (d["t"] + " " + d["a"]).strip()
        e = tok.encode(t)
        if len(e) > 512:
            continue
        chosen.append(t); ids.extend(e)
        if len(chosen) == n:
            break
    nb = len(ids) // 512
    with open(OUT + f"calib{n}.jsonl", "w") as f:
        f.write("\n".join(json.dumps({"text": t}) for t in chosen))
    json.dump({"n_docs": n, "tokens": len(ids), "blocks": nb, "ids": ids[: nb * 512]}, open(OUT + f"calib{n}.ids.json", "w"))
    print(f"calib{n}: {len(ids)} tokens -> {nb} x 512 blocks")
