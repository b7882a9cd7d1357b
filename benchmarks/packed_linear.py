"""The causal LM server's linear layers alone: transformers' nn.Linear against the same weights packed once for
oneDNN (tunelab/serve/packed_linear.py), at the row counts decoding and reading a prompt give.

The 210 weight matrices of SmolLM2-135M's 30 layers (q, k, v, o, gate, up, down; random values of their shapes)
and its 49152 x 576 output layer, multiplied by 1, 8 and 64 rows (one decoding step of 1 or 8 requests, a 64-token
prompt), in fp32 and bf16; each timing the best of 3 repeats of 10 passes. Keys:
<fp32|bf16>_rows<N>_ms_<plain|packed> (all 210 matrices), output_layer_rows<N>_ms_<plain|packed> (fp32),
and the speed-ups <...>_packed_speedup.

    .venv/bin/python benchmarks/packed_linear.py      # about 1 minute
"""

from __future__ import annotations

import time

import torch

from _common import write_results

SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)] * 30
OUTPUT = (49152, 576)


def best_ms(run, passes: int = 10) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(passes):
            run()
        times.append((time.perf_counter() - began) / passes * 1e3)
    return min(times)


def plain_and_packed(weights: list[torch.Tensor], rows: int) -> tuple[float, float]:
    from tunelab.serve.packed_linear import ROWS_HINT

    packed = [torch.ops.mkldnn._reorder_linear_weight(w, ROWS_HINT) for w in weights]
    inputs = {k: torch.randn(rows, k, dtype=weights[0].dtype) for k in {w.shape[1] for w in weights}}

    def plain():
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)

    def oned():
        for w, p in zip(weights, packed):
            torch.ops.mkldnn._linear_pointwise(inputs[w.shape[1]], p, None, "none", [], "")
    return best_ms(plain), best_ms(oned)


def main() -> None:
    torch.manual_seed(0)
    figures = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        weights = [(torch.randn(n, k) * 0.02).to(dtype) for n, k in SHAPES]
        for rows in (1, 8, 64):
            plain, packed = plain_and_packed(weights, rows)
            key = f"{name}_rows{rows}"
            figures.update({f"{key}_ms_plain": round(plain, 2), f"{key}_ms_packed": round(packed, 2),
                            f"{key}_packed_speedup": round(plain / packed, 2)})
            print(key, figures[f"{key}_packed_speedup"], flush=True)
    output = [torch.randn(*OUTPUT) * 0.02]
    for rows in (1, 8):
        plain, packed = plain_and_packed(output, rows)
        figures.update({f"output_layer_rows{rows}_ms_plain": round(plain, 2),
                        f"output_layer_rows{rows}_ms_packed": round(packed, 2),
                        f"output_layer_rows{rows}_packed_speedup": round(plain / packed, 2)})
    write_results("packed_linear", figures)


if __name__ == "__main__":
    main()
