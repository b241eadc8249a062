"""Text embedding speed: embedflow (torch and ONNX Runtime) vs sentence-transformers vs
fastembed vs hand-written loops (MiniLM).

Compares, side by side in one run, on 2,000 real sentences of varied length
(``data/texts/python_docs.txt``: sentences from Python's standard-library docstrings):

* embedflow: ``ef.dc(texts).text_embedding.transformers(..., backend=B).normalize().to_numpy()``
  with ``backend="torch"`` and, when the onnx extra is installed, ``backend="onnx"``
* sentence-transformers ``encode(batch_size=B, normalize_embeddings=True)``
* fastembed (when installed) on embedflow's ONNX export, through its custom-model API: as
  users call it (batches of 256 in input order), and with the input sorted by length, batch 16
* a hand-written torch loop: sort by token length, batch, forward, mean-pool, normalise
* a hand-written ONNX Runtime loop on the same export: sorted by length, batch 16
* a naive loop: one sentence at a time (on a subset: it is slow)

Model loading is excluded everywhere (each is warmed up once). Medians of ``--repeats``.

    python benchmarks/bench_text.py [--device cpu|cuda] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, interleaved, report, table, timed

import embedflow as ef

try:
    from embedflow_operators._onnx import available as onnx_available
except ImportError:  # pragma: no cover

    def onnx_available():
        return False


MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def hand_loop(tokenizer, model, texts, batch_size, device, fp16):
    """The loop a careful engineer writes: sort by length, batch, mean-pool, normalise."""
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer.tokenize(texts[i])))
    out = np.empty((len(texts), model.config.hidden_size), np.float32)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=1)
            out[idx] = pooled.cpu().numpy()
    return out


def ort_loop(session, tokenizer, texts, batch_size):
    """The ONNX Runtime loop a careful engineer writes: sorted batches, mean-pool, normalise."""
    enc = tokenizer(texts, truncation=True, max_length=256)
    order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))
    names = [i.name for i in session.get_inputs()]
    out = np.empty((len(texts), 384), np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(enc["input_ids"][i]) for i in idx)
        feed = {k: np.array([enc[k][i] + [0] * (width - len(enc[k][i])) for i in idx], np.int64) for k in names}
        hidden = session.run(None, feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return out


def fastembed_model(onnx_path, model_folder):
    """fastembed on embedflow's export, through its custom-model API (no download)."""
    import shutil
    import tempfile

    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    folder = Path(tempfile.mkdtemp(prefix="fastembed-"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json", "vocab.txt"):
        if (Path(model_folder) / name).exists():
            shutil.copy(Path(model_folder) / name, folder / name)
    shutil.copy(onnx_path, folder / "model.onnx")
    TextEmbedding.add_custom_model(
        model="embedflow/minilm-onnx",
        pooling=PoolingType.MEAN,
        normalization=True,
        sources=ModelSource(hf="embedflow/minilm-onnx"),
        dim=384,
        model_file="model.onnx",
    )
    return TextEmbedding(model_name="embedflow/minilm-onnx", specific_model_path=str(folder), threads=torch.get_num_threads())


def naive_loop(tokenizer, model, texts, device, fp16):
    rows = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=256, return_tensors="pt").to(device)
            pooled = model(**enc).last_hidden_state.mean(1).float()
            rows.append(torch.nn.functional.normalize(pooled, dim=1)[0].cpu().numpy())
    return np.stack(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-items", type=int, default=300, help="sentences for the slow per-item loop")
    parser.add_argument("--limit", type=int, default=2000)
    args = parser.parse_args()

    texts = (HERE.parent / "data" / "texts" / "python_docs.txt").read_text(encoding="utf-8").splitlines()[: args.limit]
    fp16 = args.device.startswith("cuda")
    bs = args.batch_size

    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    path = ef.resolve_model(MINILM)
    st = SentenceTransformer(path, device=args.device)
    if fp16:
        st.half()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(args.device).eval()

    def chain(backend):
        return (
            ef.dc(texts)
            .text_embedding.transformers(model_name=MINILM, batch_size=bs, device=args.device, backend=backend)
            .normalize()
            .set_progress(False)
        )

    dc = chain("torch")
    dc.to_numpy()  # warm-up: loads the model once (kept with the collection)
    st.encode(texts[:64], batch_size=bs)
    hand_loop(tokenizer, model, texts[:64], bs, args.device, fp16)
    methods = {
        "embedflow (torch)": dc.to_numpy,
        "sentence-transformers encode": lambda: st.encode(texts, batch_size=bs, normalize_embeddings=True),
        "hand loop, sorted by length": lambda: hand_loop(tokenizer, model, texts, bs, args.device, fp16),
    }
    notes = []
    if args.device == "cpu" and onnx_available():
        from embedflow.engines.replicas import cached

        dc_onnx = chain("onnx")
        dc_onnx.head(1).to_list()  # exports once (cached), loads the session
        session = cached(dc_onnx.plan.steps[0])["cpu"].session
        methods["embedflow (onnx)"] = dc_onnx.to_numpy
        methods["ONNX Runtime hand loop, sorted, batch 16"] = lambda: ort_loop(session.session, tokenizer, texts, 16)
        try:
            fe = fastembed_model(session.path, path)
            order = sorted(range(len(texts)), key=lambda i: len(tokenizer.tokenize(texts[i])))
            inverse = np.argsort(order)
            methods["fastembed as users call it (batch 256, input order)"] = lambda: np.array(list(fe.embed(texts)))
            methods["fastembed, input sorted by hand, batch 16"] = lambda: np.array(list(fe.embed([texts[i] for i in order], batch_size=16)))[inverse]
        except ImportError:
            notes.append("fastembed is not installed: not compared")
    notes.append("sentence-transformers' backend='onnx' needs optimum-onnx, which requires transformers<4.58 (this stack has 5.x): not compared")
    results = interleaved(methods, args.repeats)
    subset = texts[: args.naive_items]
    t_naive, v_naive = timed(lambda: naive_loop(tokenizer, model, subset, args.device, fp16), max(1, args.repeats - 1))

    reference = results["sentence-transformers encode"][1]
    rows = []
    rate_ours = len(texts) / results["embedflow (torch)"][0]
    for name, (seconds, vecs) in results.items():
        cos = float(((vecs * reference).sum(1)).min())
        rate = len(texts) / seconds
        rows.append([name, f"{seconds:.2f}", f"{rate:.1f}", f"{rate_ours / rate:.2f}", f"{cos:.7f}"])
    rate = len(subset) / t_naive
    cos = float((v_naive * reference[: len(subset)]).sum(1).min())
    rows.append([f"naive per-item loop ({len(subset)} sentences)", f"{t_naive:.2f}", f"{rate:.1f}", f"{rate_ours / rate:.2f}", f"{cos:.7f}"])
    text = table(["method", "seconds", "sentences/s", "embedflow ×", "min cosine vs ST"], rows)
    report(
        f"Text: MiniLM, {len(texts)} sentences, batch {bs}, {args.device}",
        text,
        [
            f"median of {args.repeats} runs, methods taking turns (naive: {max(1, args.repeats - 1)}); model loading and the ONNX export excluded",
            "'embedflow ×' is embedflow (torch)'s speed over the method's",
            *notes,
            "targets: torch ≥ 1.05× sentence-transformers, ≥ 0.95× the sorted hand loop, ≥ 2.5× naive, cosine > 0.9999; "
            "onnx ≥ 1.6× sentence-transformers, ≥ 0.95× the ONNX Runtime hand loop, ≥ 5× fastembed as users call it, cosine ≥ 0.99999",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
