"""First-call cost of attention kernels for new batch shapes (what scoring meets: every clip
length or prompt length is a new shape). Times torch's scaled_dot_product_attention with a
padding mask, the 7B's head layout, for sequence lengths it has not seen, per backend.

    python benchmarks/sdpa_new_shapes.py    # needs a CUDA GPU
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def first_and_repeat(backend, rows: int, kv: int, q: int) -> tuple[float, float]:
    shape = (rows, 32, q, 128)
    query = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    key = torch.randn((rows, 32, kv, 128), device="cuda", dtype=torch.bfloat16)
    value = torch.randn_like(key)
    mask = torch.ones((rows, 1, q, kv), device="cuda", dtype=torch.bool).tril(kv - q)
    times = []
    with sdpa_kernel([backend]):
        for _ in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return times[0], times[1]


def main() -> None:
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        rows = []
        for q in range(20, 28):  # prompt lengths after a cached audio prefix of 70 tokens
            try:
                rows.append(first_and_repeat(backend, 128, 70 + q, q))
            except RuntimeError as exc:
                rows = [str(exc)[:200]]
                break
        out[name] = {"first_call_s": [round(r[0], 4) for r in rows if isinstance(r, tuple)],
                     "repeat_s": [round(r[1], 5) for r in rows if isinstance(r, tuple)],
                     "error": rows[0] if rows and isinstance(rows[0], str) else None}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
