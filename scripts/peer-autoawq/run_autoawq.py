"""Real AutoAWQ 0.2.9 on CPU in fp32: 4-bit, g64, zero_point, GEMM.
usage: run_autoawq.py N_DOCS OUT_DIR [--fix-alias]   (calibration = data/calibN.jsonl, max_calib_seq_len 512)"""
import json, sys, time, resource, os
import torch
torch.set_num_threads(1)
import transformers
from transformers import AutoTokenizer
import awq.quantize.quantizer as Q
from awq import AutoAWQForCausalLM

n, out = int(sys.argv[1]), sys.argv[2]
W = os.environ.get("AWQPEER", "awqpeer") + "/"
texts = [json.loads(l)["text"] for l in open(f"{W}data/calib{n}.jsonl") if l.strip()]
ref = json.load(open(f"{W}data/calib{n}.ids.json"))

# Check that AutoAWQ's own calibration construction yields exactly our token blocks.
_orig = Q.get_calib_dataset
def _checked(*a, **k):
    blocks = _orig(*a, **k)
    ids = torch.cat(blocks, dim=1)[0].tolist()
    print(f"AutoAWQ calib: {len(blocks)} blocks x {blocks[0].shape[1]}; identical to ours: {ids == ref['ids']}", flush=True)
    assert ids == ref["ids"]
    return blocks
Q.get_calib_dataset = _checked

# CPU fix (--fix-alias): _compute_best_scale saves `org_sd = {k: v.cpu() ...}` before the grid search. On CUDA
# .cpu() copies; on CPU it returns the same tensors, so the first grid step's in-place `fc.weight.mul_(scales)`
# overwrites the saved originals and every later step (and the final restore) starts from W * s(ratio=0).
class CloneSdQuantizer(Q.AwqQuantizer):
    def _compute_best_scale(self, x, w_mean, x_mean, module2inspect, linears2scale, fp16_output, kwargs={}):
        sd = module2inspect.state_dict
        module2inspect.state_dict = lambda *a, **k: {kk: v.clone() for kk, v in sd(*a, **k).items()}
        try:
            return super()._compute_best_scale(x, w_mean, x_mean, module2inspect, linears2scale, fp16_output, kwargs)
        finally:
            del module2inspect.state_dict
FIX = "--fix-alias" in sys.argv
print("fix-alias:", FIX, flush=True)

t0, c0 = time.time(), time.process_time()
model = AutoAWQForCausalLM.from_pretrained(W + "smol-bf16", torch_dtype=torch.float32, device_map="cpu")
tok = AutoTokenizer.from_pretrained(W + "smol-bf16")
qc = {"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"}
model.quantize(tok, quant_config=qc, calib_data=texts, max_calib_samples=n, max_calib_seq_len=512,
               n_parallel_calib_samples=None,
               **({"quantizer_cls": CloneSdQuantizer} if FIX else {}))
model.save_quantized(out)
tok.save_pretrained(out)
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": round(time.time() - t0, 1), "cpu_user_s": ru.ru_utime, "cpu_sys_s": ru.ru_stime,
                  "maxrss_mb": ru.ru_maxrss / 1024, "torch": torch.__version__, "transformers": transformers.__version__}))
