#!/usr/bin/env bash
# Time a SLERP and a TIES merge of random ~1 GB bf16 Mistral-shaped models and report peak RSS.
#   scripts/bench-merge.sh [WORKDIR]
# Env: BIN (default target/release/biomistral, built if missing), LAYERS (default 10 -> ~1.2 GB
# per model), THREADS (default: all cores). Needs python3 with numpy to generate the inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d /tmp/bench-merge.XXXXXX)}
BIN=${BIN:-target/release/biomistral}
LAYERS=${LAYERS:-10}
THREADS_ARG=${THREADS:+--threads $THREADS}
[ -x "$BIN" ] || cargo build --release --bin biomistral
mkdir -p "$WORK"

python3 - "$WORK" "$LAYERS" <<'PY'
import json, os, struct, sys
import numpy as np
work, layers = sys.argv[1], int(sys.argv[2])
H, I, V, KV = 2048, 5632, 32000, 512
shapes = [("model.embed_tokens.weight", (V, H))]
for l in range(layers):
    p = f"model.layers.{l}."
    shapes += [(p + "self_attn.q_proj.weight", (H, H)), (p + "self_attn.k_proj.weight", (KV, H)),
               (p + "self_attn.v_proj.weight", (KV, H)), (p + "self_attn.o_proj.weight", (H, H)),
               (p + "mlp.gate_proj.weight", (I, H)), (p + "mlp.up_proj.weight", (I, H)),
               (p + "mlp.down_proj.weight", (H, I)), (p + "input_layernorm.weight", (H,)),
               (p + "post_attention_layernorm.weight", (H,))]
shapes += [("model.norm.weight", (H,)), ("lm_head.weight", (V, H))]
def bf16(a):  # round-to-nearest-even f32 -> bf16 bits
    u = a.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
base_rng = lambda: np.random.default_rng(0)
for name, noise in [("base", None), ("a", 1), ("b", 2)]:
    d = os.path.join(work, name)
    if os.path.exists(os.path.join(d, "model.safetensors")):
        continue
    os.makedirs(d, exist_ok=True)
    header, off = {}, 0
    for n, s in shapes:
        size = int(np.prod(s)) * 2
        header[n] = {"dtype": "BF16", "shape": list(s), "data_offsets": [off, off + size]}
        off += size
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    r0 = base_rng()
    rn = np.random.default_rng(noise) if noise else None
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for n, s in shapes:
            x = r0.standard_normal(s, dtype=np.float32) * np.float32(0.02)
            if rn is not None:
                x += rn.standard_normal(s, dtype=np.float32) * np.float32(0.005)
            f.write(bf16(x).tobytes())
    cfg = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": V, "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": layers, "num_attention_heads": 16,
           "num_key_value_heads": 4, "torch_dtype": "bfloat16"}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    print(f"wrote {d} ({off / 1e9:.2f} GB)")
PY

cat > "$WORK/slerp.yml" <<YML
slices:
  - sources:
      - model: $WORK/base
        layer_range: [0, $LAYERS]
      - model: $WORK/a
        layer_range: [0, $LAYERS]
merge_method: slerp
base_model: $WORK/base
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
YML
cat > "$WORK/ties.yml" <<YML
models:
  - model: $WORK/base
  - model: $WORK/a
    parameters: {density: 0.5, weight: 0.5}
  - model: $WORK/b
    parameters: {density: 0.5, weight: 0.5}
merge_method: ties
base_model: $WORK/base
dtype: bfloat16
YML

for m in slerp ties; do
  rm -rf "$WORK/out-$m"
  /usr/bin/time -v "$BIN" merge "$WORK/$m.yml" --out "$WORK/out-$m" --seed 1 $THREADS_ARG 2> "$WORK/$m.time" >/dev/null
  wall=$(grep "Elapsed (wall clock)" "$WORK/$m.time" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$WORK/$m.time" | awk '{print $NF}')
  echo "$m: wall $wall, peak RSS $((rss / 1024)) MiB (largest tensor: 131 MB bf16)"
done
echo "inputs and outputs in $WORK"
