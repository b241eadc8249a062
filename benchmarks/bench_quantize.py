"""Is a quantized ONNX MiniLM good enough to ship? Fidelity and speed of dynamic int8
quantization (ONNX Runtime's ``quantize_dynamic``) against the fp32 export, on the 2,000
benchmark sentences (``data/texts/python_docs.txt``).

The bar (issue 13): min cosine >= 0.99 against fp32 on every sentence. Compared side by side in
one run, the same length-sorted batches of 16 and 2 intra-op threads for every variant:

* fp32: embedflow's export (fused attention, layer norms, GELUs)
* int8 weights per tensor; per channel; per channel on the MatMuls only
* per channel, the feed-forward MatMuls kept in fp32 (the layers with outlier activations)

    python benchmarks/bench_quantize.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, report, table

import embedflow as ef
from embedflow.engines.replicas import cached

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def embed(session, batches):
    """Mean-pooled, normalised vectors of every batch, and sentences per second."""
    names = [i.name for i in session.get_inputs()]
    out, start = [], time.perf_counter()
    for batch in batches:
        hidden = session.run(None, {n: batch[n].astype(np.int64) for n in names})[0]
        mask = batch["attention_mask"][..., None]
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    vectors = np.concatenate(out)
    return vectors, len(vectors) / (time.perf_counter() - start)


def feed_forward_matmuls(path):
    """Names of the MatMuls whose weights are (hidden, 4·hidden) or (4·hidden, hidden)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        dims = [shapes[x] for x in node.input if x in shapes]
        if node.op_type == "MatMul" and any(len(d) == 2 and max(d) == 4 * min(d) for d in dims):
            found.append(node.name)
    return found


def main() -> int:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoTokenizer

    texts = (HERE.parent / "data" / "texts" / "python_docs.txt").read_text(encoding="utf-8").splitlines()[:2000]
    chain = ef.dc(texts[:2]).text_embedding.transformers(model_name=MINILM, backend="onnx")
    chain.to_list()
    source = cached(chain.plan.steps[0])["cpu"].session.path
    tokenizer = AutoTokenizer.from_pretrained(ef.resolve_model(MINILM))
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer.tokenize(texts[i])))
    batches = [
        tokenizer([texts[i] for i in order[s : s + 16]], padding=True, truncation=True, max_length=256, return_tensors="np")
        for s in range(0, len(order), 16)
    ]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    def session(path):
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    variants = {
        "int8, per tensor": {"per_channel": False},
        "int8, per channel": {"per_channel": True},
        "int8, per channel, MatMuls only": {"per_channel": True, "op_types_to_quantize": ["MatMul"]},
        "int8, per channel, feed-forward kept fp32": {
            "per_channel": True,
            "op_types_to_quantize": ["MatMul"],
            "nodes_to_exclude": feed_forward_matmuls(source),
        },
    }
    reference, fp32_rate = embed(session(source), batches)
    rows = [["fp32 (embedflow's export)", f"{fp32_rate:.1f}", "1.00", "1.0000", "1.0000"]]
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in variants.items():
            target = Path(tmp) / "q.onnx"
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, **kwargs)
            vectors, rate = embed(session(target), batches)
            cos = (vectors * reference).sum(1)
            rows.append([name, f"{rate:.1f}", f"{rate / fp32_rate:.2f}", f"{cos.min():.4f}", f"{cos.mean():.4f}"])
    report(
        "Quantization: MiniLM ONNX export, dynamic int8 vs fp32, 2000 sentences, cpu",
        table(["variant", "sentences/s", "× fp32", "min cosine vs fp32", "mean cosine"], rows),
        ["one pass each, length-sorted batches of 16, 2 threads", "bar to ship a quantized mode: min cosine ≥ 0.99"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
