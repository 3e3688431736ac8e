"""Per-document perplexity with transformers (same protocol as `biomistral perplexity --jsonl --max-tokens 512`).
usage: hf_ppl.py MODEL_DIR DOCS.jsonl [--awq-dequant AWQ_DIR]
With --awq-dequant, MODEL_DIR supplies the float model and the AutoAWQ checkpoint's qweight/qzeros/scales are
dequantized with numpy (GEMM packing order [0,2,4,6,1,3,5,7]) and written over the projection weights."""
import json, math, sys, time, os
import numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of a packed int32 holds column AWQ_ORDER[i] of each 8

def unpack_gemm(packed):  # int32 [R, C/8] -> int [R, C]
    p = packed.astype(np.uint32)
    R, C8 = p.shape
    out = np.empty((R, C8 * 8), dtype=np.int32)
    for i, col in enumerate(AWQ_ORDER):
        out[:, col::8] = (p >> (4 * i)) & 0xF
    return out

def dequant_awq_dir(awq_dir):
    from safetensors.numpy import load_file
    cfg = json.load(open(os.path.join(awq_dir, "config.json")))
    gs = cfg["quantization_config"].get("group_size") or cfg["quantization_config"].get("q_group_size")
    t = {}
    for f in sorted(os.listdir(awq_dir)):
        if f.endswith(".safetensors"):
            t.update(load_file(os.path.join(awq_dir, f)))
    W = {}
    for k in t:
        if k.endswith(".qweight"):
            base = k[: -len(".qweight")]
            q = unpack_gemm(t[k])                      # [in, out]
            z = unpack_gemm(t[base + ".qzeros"])       # [in/gs, out]
            s = t[base + ".scales"].astype(np.float32)  # [in/gs, out]
            zf = np.repeat(z, gs, axis=0); sf = np.repeat(s, gs, axis=0)
            W[base + ".weight"] = ((q - zf) * sf).T.copy()  # [out, in]
    return W, t, gs

def main():
    model_dir, jsonl = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    if "--awq-dequant" in sys.argv:
        W, raw, gs = dequant_awq_dir(sys.argv[sys.argv.index("--awq-dequant") + 1])
        sd = model.state_dict()
        n = 0
        with torch.no_grad():
            for k, w in W.items():
                assert sd[k].shape == w.shape, (k, sd[k].shape, w.shape)
                sd[k].copy_(torch.from_numpy(w)); n += 1
            # non-quantized tensors (norms, embeddings) from the AWQ checkpoint too
            for k, v in raw.items():
                if k in sd and not k.endswith((".qweight", ".qzeros", ".scales")):
                    sd[k].copy_(torch.from_numpy(v.astype(np.float32)))
        print(f"dequantized {n} modules (group {gs})", file=sys.stderr)
    docs = [json.loads(l)["text"] for l in open(jsonl) if l.strip()]
    tot_nll, tot_n, per = 0.0, 0, []
    t0 = time.time()
    with torch.no_grad():
        for d in docs:
            ids = tok(d, add_special_tokens=False)["input_ids"][:512]
            x = torch.tensor([ids])
            logits = model(x).logits[0].float()
            lp = torch.log_softmax(logits[:-1], dim=-1)
            nll = -lp.gather(1, x[0, 1:, None]).double().sum().item()
            tot_nll += nll; tot_n += len(ids) - 1; per.append(math.exp(nll / (len(ids) - 1)))
    print(json.dumps({"ppl": math.exp(tot_nll / tot_n), "n_docs": len(docs), "predicted": tot_n,
                      "doc_ppl": per, "secs": round(time.time() - t0, 1)}))

main()
