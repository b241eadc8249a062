"""The GPU check: one table of what embedflow does on one GPU, against the tools it must beat.

* text: MiniLM over ``--sentences`` (default 50,000) sentences of the benchmark corpus, repeated —
  embedflow (default GPU batching, bf16/fp16 autocast) vs sentence-transformers ``half()``
  ``encode(batch_size=256)`` vs the forward-only ceiling (pre-tokenized, sorted, fp16, batch 512)
* images: resnet50 (random weights) over ``--images`` (default 5,000) JPEGs tiled from the bundled
  photos at varied sizes — embedflow with decode on the device (nvJPEG) vs a 16-worker DataLoader
  loop (PIL + timm transform, channels_last, fp16) vs the forward-only ceiling
* GPU memory peak of each

Installs nothing, needs no network, takes a few minutes on an H100-class GPU. ``--device cpu
--smoke`` runs the same code on tiny sizes (to check the script without a GPU).

    benchmarks/gpu_check.sh                    # = python benchmarks/gpu_check.py
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, report, table

import embedflow as ef

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return time.perf_counter() - start, out, peak


def text_rows(n, device):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    corpus = (HERE.parent / "data" / "texts" / "python_docs.txt").read_text(encoding="utf-8").splitlines()
    texts = [corpus[i % len(corpus)] + ("" if i < len(corpus) else f" ({i})") for i in range(n)]
    path = ef.resolve_model(MINILM)
    chain = ef.dc(texts).text_embedding.transformers(model_name=MINILM, device=device, backend="torch").normalize().set_progress(False)
    ef.dc(texts[:64]).text_embedding.transformers(model_name=MINILM, device=device, backend="torch").to_list()  # warm-up
    st = SentenceTransformer(str(path), device=device)
    if device.startswith("cuda"):
        st.half()
    st.encode(texts[:64])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(device).eval()
    if device.startswith("cuda"):
        model.half()
    order = sorted(range(n), key=lambda i: len(texts[i]))
    batches = [
        tokenizer([texts[i] for i in order[s : s + 512]], padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
        for s in range(0, n, 512)
    ]

    def ceiling():
        with torch.inference_mode():
            return [model(**b).last_hidden_state.mean(1) for b in batches]

    results = {
        "text: embedflow": timed(chain.to_numpy),
        "text: sentence-transformers fp16, batch 256": timed(lambda: st.encode(texts, batch_size=256, normalize_embeddings=True)),
        "text: forward-only ceiling (pre-tokenized)": timed(ceiling),
    }
    cos = float((results["text: embedflow"][1] * results["text: sentence-transformers fp16, batch 256"][1]).sum(1).min())
    return n, results, f"min cosine embedflow vs sentence-transformers: {cos:.5f}"


def make_jpegs(n, folder):
    from PIL import Image

    photos = sorted((HERE.parent / "data" / "images").glob("*.jpg"))
    rng = random.Random(0)
    paths = []
    for i in range(n):
        img = Image.open(photos[i % len(photos)]).convert("RGB")
        side = rng.randint(300, 1200)
        img = img.resize((side, int(side * rng.uniform(0.6, 1.4))))
        path = Path(folder) / f"img_{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(str(path))
    return paths


def image_rows(n, device, workers):
    import timm
    from timm.data import create_transform, resolve_data_config

    with tempfile.TemporaryDirectory() as folder:
        paths = make_jpegs(n, folder)
        model = timm.create_model("resnet50", pretrained=False).to(device).eval().to(memory_format=torch.channels_last)
        transform = create_transform(**resolve_data_config({}, model=model))
        chain = ef.dc(paths).image_embedding.timm(model_name="resnet50", pretrained=False, device=device, backend="torch").set_progress(False)
        ef.dc(paths[:8]).image_embedding.timm(model_name="resnet50", pretrained=False, device=device, backend="torch").to_list()

        class Files(torch.utils.data.Dataset):
            def __len__(self):
                return len(paths)

            def __getitem__(self, i):
                from PIL import Image

                return transform(Image.open(paths[i]).convert("RGB"))

        def loader():
            out = []
            data = torch.utils.data.DataLoader(Files(), batch_size=128, num_workers=workers, pin_memory=device.startswith("cuda"))
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=device.startswith("cuda")):
                for batch in data:
                    batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    out.append(model.forward_head(model.forward_features(batch), pre_logits=True).float().cpu())
            return torch.cat(out).numpy()

        pixels = torch.randn(128, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)

        def ceiling():
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=device.startswith("cuda")):
                return [model(pixels) for _ in range(max(1, n // 128))]

        results = {
            "images: embedflow (decode on the device)": timed(chain.to_numpy),
            f"images: DataLoader({workers} workers) loop, fp16": timed(loader),
            "images: forward-only ceiling (random tensors)": timed(ceiling),
        }
    return n, results, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sentences", type=int, default=50_000)
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script itself (e.g. on the CPU)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --device cpu --smoke to check the script)", file=sys.stderr)
        return 2
    if args.smoke:
        args.sentences, args.images, args.workers = 256, 32, min(args.workers, 2)
    torch.backends.cudnn.benchmark = True
    rows, notes = [], []
    for n, results, note in (text_rows(args.sentences, args.device), image_rows(args.images, args.device, args.workers)):
        base = next(iter(results.values()))[0]
        for name, (seconds, _out, peak) in results.items():
            rows.append([name, f"{n}", f"{seconds:.2f}", f"{n / seconds:,.0f}", f"{seconds / base:.2f}", f"{peak:.1f}"])
        if note:
            notes.append(note)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    report(
        f"GPU check: {device}",
        table(["method", "items", "seconds", "items/s", "embedflow ×", "GPU peak GiB"], rows),
        [
            *notes,
            "targets: text ≥ 30,000 sentences/s (≥ 2.5× sentence-transformers fp16); images ≥ 5,000/s from JPEG files (≥ 9× the DataLoader loop)",
        ],
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    sys.exit(main())
