#!/usr/bin/env python3
"""Independent reference for one training step of biomistral-rs (full fine-tuning and LoRA).

Reads what `tests/train.rs` writes when BIOMISTRAL_TRAIN_REF_DIR is set (a tiny random
Mistral model in Hugging Face layout, a PEFT adapter and a batch), re-implements the decoder
from scratch in PyTorch float64 (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU,
LoRA), and takes one optimizer step with torch.optim.AdamW and clip_grad_norm_.

Usage: python scripts/train_reference.py REF_DIR OUT_DIR
Writes OUT_DIR/reference_full.json and OUT_DIR/reference_lora.json.
"""
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

torch.set_default_dtype(torch.float64)


def rms_norm(x, w, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(cfg, t):
    hd = cfg["head_dim"]
    # The Rust side computes these in float32 (as transformers does) and casts.
    inv = 1.0 / (torch.tensor(float(cfg["rope_theta"]), dtype=torch.float32) ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.arange(t, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = freqs.cos().double(), freqs.sin().double()
    return torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)


def rotate(x, cos, sin):
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], -1)
    return x * cos + rot * sin


def linear(x, w, name, lora):
    y = x @ w.T
    if lora is not None and name in lora["A"]:
        y = y + lora["scale"] * ((x @ lora["A"][name].T) @ lora["B"][name].T)
    return y


def forward(cfg, W, ids, lora=None):
    """Logits [T, V] for one unpadded sequence."""
    t = len(ids)
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    x = W["model.embed_tokens.weight"][torch.tensor(ids)]
    cos, sin = rope_tables(cfg, t)
    causal = torch.full((t, t), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        lin = lambda h, n: linear(h, W[f"{p}.{n}.weight"], f"{p}.{n}", lora)
        h = rms_norm(x, W[f"{p}.input_layernorm.weight"], eps)
        q = lin(h, "self_attn.q_proj").view(t, nh, hd).transpose(0, 1)
        k = lin(h, "self_attn.k_proj").view(t, nkv, hd).transpose(0, 1)
        v = lin(h, "self_attn.v_proj").view(t, nkv, hd).transpose(0, 1)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k = k.repeat_interleave(nh // nkv, 0)
        v = v.repeat_interleave(nh // nkv, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + causal, -1)
        o = (att @ v).transpose(0, 1).reshape(t, nh * hd)
        x = x + lin(o, "self_attn.o_proj")
        h = rms_norm(x, W[f"{p}.post_attention_layernorm.weight"], eps)
        m = torch.nn.functional.silu(lin(h, "mlp.gate_proj")) * lin(h, "mlp.up_proj")
        x = x + lin(m, "mlp.down_proj")
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    return x @ head.T


def loss_fn(cfg, W, batch, lora=None):
    """Sum of target NLLs over the batch divided by the number of targets."""
    total, n = 0.0, 0
    for ex in batch:
        ids, tgt = ex["ids"], ex["target"]
        logp = torch.log_softmax(forward(cfg, W, ids[:-1], lora), -1)
        for i in range(1, len(ids)):
            if tgt[i]:
                total = total - logp[i - 1, ids[i]]
                n += 1
    return total / n


def step(params, decay_flags, loss_closure, hp):
    groups = [
        {"params": [p for p, d in zip(params, decay_flags) if d], "weight_decay": hp["weight_decay"]},
        {"params": [p for p, d in zip(params, decay_flags) if not d], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=(0.9, 0.999), eps=1e-8)
    loss = loss_closure()
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(params, hp["clip"])
    opt.step()
    return loss.item(), gn.item()


def summary(name, before, after):
    d = (after - before).flatten()
    return {
        "shape": list(after.shape),
        "sum": after.sum().item(),
        "delta_sum": d.sum().item(),
        "delta_abs_sum": d.abs().sum().item(),
        "delta_head": d[:16].tolist(),
    }


def main():
    ref, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((ref / "model/config.json").read_text())
    batch = json.loads((ref / "batch.json").read_text())
    hp = json.loads((ref / "hparams.json").read_text())
    base = {k: v.double() for k, v in load_file(str(ref / "model/model.safetensors")).items()}

    # Full fine-tuning: every tensor trains; 1-D (norm) weights get no weight decay.
    W = {k: v.clone().requires_grad_(True) for k, v in base.items()}
    names = sorted(W)
    loss, gn = step([W[k] for k in names], [W[k].dim() > 1 for k in names], lambda: loss_fn(cfg, W, batch), hp)
    res = {"loss": loss, "grad_norm": gn, "params": {k: summary(k, base[k], W[k].detach()) for k in names}}
    (out / "reference_full.json").write_text(json.dumps(res, indent=1))

    # LoRA: base frozen, A and B train (all 2-D, all decayed).
    acfg = json.loads((ref / "adapter/adapter_config.json").read_text())
    ad = {k: v.double() for k, v in load_file(str(ref / "adapter/adapter_model.safetensors")).items()}
    lora = {"A": {}, "B": {}, "scale": acfg["lora_alpha"] / acfg["r"]}
    pnames = sorted(ad)
    P = {k: ad[k].clone().requires_grad_(True) for k in pnames}
    for k in pnames:
        mod = k[len("base_model.model."):].rsplit(".lora_", 1)[0]
        lora["A" if ".lora_A." in k else "B"][mod] = P[k]
    loss, gn = step([P[k] for k in pnames], [True] * len(pnames), lambda: loss_fn(cfg, base, batch, lora), hp)
    res = {"loss": loss, "grad_norm": gn, "params": {k: summary(k, ad[k], P[k].detach()) for k in pnames}}
    (out / "reference_lora.json").write_text(json.dumps(res, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
