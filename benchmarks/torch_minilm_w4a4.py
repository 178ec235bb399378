"""The bundled MiniLM in torch at W4A4: NVFP4 against the best mmquant codes.

Runs the bundled all-MiniLM-L6-v2 as a ``transformers`` ``BertModel`` (``mmquant.torch``), quantizes
the weights and the inputs of all 36 linear layers of the encoder (``quantize_``), and prints, per
configuration, the measured bits per weight and per activation entry, the cosine of the sentence
embeddings to the unquantized model (mean and worst) and the relative squared embedding error
``‖ê − e‖² / ‖e‖²`` on held-out sentences. WaterSIC uses Σ_X captured by the torch hooks on
calibration sentences (disjoint from the evaluation ones).

Run: ``python benchmarks/torch_minilm_w4a4.py [--sentences 64]`` (needs ``.[torch]`` and the model).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import mmquant as mq
from mmquant.models.calibration import calibration_sentences
from mmquant.torch import (
    bundled_bert,
    capture_covariances,
    embeddings,
    quantize_,
    sentence_batches,
)

CONFIGS = [
    ("NVFP4", "nvfp4", "nvfp4"),
    ("E8 (group=32)", "e8:group=32", "e8:group=32"),
    ("WaterSIC W + E8 A", "watersic:rate=4", "e8:group=32"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--weight-only", action="store_true", help="leave the activations alone")
    args = ap.parse_args()
    ref = bundled_bert(torch.float32)
    encoder = lambda n, m: n.startswith("encoder.")  # noqa: E731  (the 36 layers, not the pooler)
    ev = sentence_batches(calibration_sentences(args.sentences, split="evaluation"), batch_size=32)
    cal_b = sentence_batches(calibration_sentences(args.sentences), batch_size=32)
    cal = capture_covariances(ref, cal_b, modules=encoder)
    e_ref = embeddings(ref, ev).double()
    seen: list[torch.Tensor] = []
    h = ref.encoder.layer[0].intermediate.dense.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].detach())
    )
    embeddings(ref, ev[:1])
    h.remove()
    x_act = seen[0][ev[0]["attention_mask"].bool()]  # [tokens, 384] real activations
    print(
        f"{'config':<20} {'W bits':>7} {'A bits':>7} {'cos mean':>9} {'cos min':>9} "
        f"{'emb rel.err':>11} {'time s':>7}"
    )
    for label, w_spec, a_spec in CONFIGS:
        t0 = time.perf_counter()
        m = copy.deepcopy(ref)
        a_spec = None if args.weight_only else a_spec
        rep = quantize_(m, w_spec, activations=a_spec, modules=encoder, calib=cal)
        e = embeddings(m, ev).double()
        cos = torch.nn.functional.cosine_similarity(e, e_ref, dim=-1)
        rel = float(((e - e_ref) ** 2).sum() / (e_ref**2).sum())
        a_bits = mq.get(a_spec).encode(x_act).bits_per_entry if a_spec else 32.0
        print(
            f"{label:<20} {rep.bits_per_weight:7.3f} {a_bits:7.3f} {float(cos.mean()):9.5f} "
            f"{float(cos.min()):9.5f} {rel:11.2e} {time.perf_counter() - t0:7.1f}"
        )


if __name__ == "__main__":
    main()
