"""Image embedding speed: embedflow vs a DataLoader loop vs the forward-only and decode ceilings.

Compares, side by side in one run, on 300 real JPEGs of varied sizes (300–1200 px, made once
from the bundled sample photos by random crops and resizes into ``benchmarks/data/images``):

* embedflow: ``ef.glob(...).image_decode().image_embedding.timm(model_name=..., backend=B).to_numpy()``
  with ``backend="torch"`` and, when the onnx extra is installed, ``backend="onnx"``
* a ``torch.utils.data.DataLoader(num_workers=cores)`` loop with timm's transform
* the same loop with the model in the channels-last layout (what embedflow uses for conv nets)
* the forward-only ceiling: the model (channels-last) on pre-decoded, pre-transformed tensors,
  and the same with ONNX Runtime on embedflow's export
* the decode-only ceiling: PIL decode + timm transform on ``cores`` threads, no model

Random weights (``pretrained=False``): speed does not depend on them. Medians of ``--repeats``.

    python benchmarks/bench_images.py [--model resnet18] [--device cpu|cuda] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, interleaved, report, table

import embedflow as ef

try:
    from embedflow_operators._onnx import available as onnx_available
except ImportError:  # pragma: no cover

    def onnx_available():
        return False


PHOTOS = HERE.parent / "data" / "images"


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs with sides between 300 and 1200 px, cut from the sample photos."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= count:
        return existing[:count]
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg")) if "_" not in p.stem]
    for i in range(count):
        img = rng.choice(sources)
        w, h = img.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        side = rng.randint(300, 1200)
        scale = side / max(cw, ch)
        crop = img.crop((x, y, x + cw, y + ch)).resize((max(1, int(cw * scale)), max(1, int(ch * scale))))
        crop.save(folder / f"img_{i:05d}.jpg", quality=90)
    return sorted(folder.glob("*.jpg"))[:count]


class Files(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def main() -> int:
    import timm
    from timm.data import create_transform, resolve_data_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0))
    paths = make_images(HERE / "data" / "images", args.count)
    fp16 = args.device.startswith("cuda")
    bs = args.batch_size

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    checkpoint = HERE / "data" / f"{args.model}-random.pth"
    torch.save(model.state_dict(), checkpoint)  # the same random weights for every method
    model = model.to(args.device)
    transform = create_transform(**resolve_data_config({}, model=model))

    def chain(backend):
        return (
            ef.glob(str(HERE / "data" / "images" / "*.jpg"))
            .head(args.count)
            .image_decode()
            .image_embedding.timm(
                model_name=args.model, pretrained=False, checkpoint_path=str(checkpoint), batch_size=bs, device=args.device, backend=backend
            )
            .set_progress(False)
        )

    dc = chain("torch")
    dc.to_numpy()  # warm-up; the model is set up once and kept

    def dataloader_loop():
        loader = torch.utils.data.DataLoader(Files(paths, transform), batch_size=bs, num_workers=cores, pin_memory=fp16)
        out = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            for batch in loader:
                feats = model.forward_head(model.forward_features(batch.to(args.device, non_blocking=True)), pre_logits=True)
                out.append(feats.float().cpu().numpy())
        return np.concatenate(out)

    with ThreadPoolExecutor(cores) as pool:
        tensors = list(pool.map(lambda p: transform(Image.open(p).convert("RGB")), paths))

    fast = timm.create_model(args.model, pretrained=False, checkpoint_path=str(checkpoint)).eval()
    fast = fast.to(args.device, memory_format=torch.channels_last)  # the model at its fastest

    def dataloader_channels_last():
        loader = torch.utils.data.DataLoader(Files(paths, transform), batch_size=bs, num_workers=cores, pin_memory=fp16)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            for batch in loader:
                batch = batch.to(args.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                fast.forward_head(fast.forward_features(batch), pre_logits=True).float().cpu()

    def forward_only():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            for start in range(0, len(tensors), bs):
                batch = torch.stack(tensors[start : start + bs]).to(args.device).contiguous(memory_format=torch.channels_last)
                fast.forward_head(fast.forward_features(batch), pre_logits=True).float().cpu()

    def decode_only():
        with ThreadPoolExecutor(cores) as pool:
            return sum(1 for _ in pool.map(lambda p: transform(Image.open(p).convert("RGB")), paths))

    methods = {
        "embedflow": dc.to_numpy,
        "dataloader": dataloader_loop,
        "dataloader_cl": dataloader_channels_last,
        "forward": forward_only,
        "decode": decode_only,
    }
    onnx = args.device == "cpu" and onnx_available()
    if onnx:
        from embedflow.engines.replicas import cached

        dc_onnx = chain("onnx")
        dc_onnx.head(1).to_list()  # exports once (cached), loads the session
        session = cached(dc_onnx.plan.steps[-1])["cpu"].session

        def onnx_forward_only():
            for start in range(0, len(tensors), bs):
                session({"pixels": torch.stack(tensors[start : start + bs]).numpy()})

        methods["embedflow_onnx"] = dc_onnx.to_numpy
        methods["onnx_forward"] = onnx_forward_only
    timings = interleaved(methods, args.repeats)
    (t_ef, v_ef), (t_dl, v_dl), (t_dlc, _), (t_fw, _), (t_dec, _) = list(timings.values())[:5]
    n = len(paths)
    diff = float(np.abs(v_ef - v_dl).max())
    rows = [
        ["embedflow (glob → image_decode → image_embedding.timm), torch", f"{t_ef:.2f}", f"{n / t_ef:.1f}", "1.00"],
        [f"DataLoader(num_workers={cores}) loop", f"{t_dl:.2f}", f"{n / t_dl:.1f}", f"{t_dl / t_ef:.2f}"],
        [f"DataLoader(num_workers={cores}) loop, channels_last model", f"{t_dlc:.2f}", f"{n / t_dlc:.1f}", f"{t_dlc / t_ef:.2f}"],
        ["forward-only ceiling (pre-decoded tensors, channels_last)", f"{t_fw:.2f}", f"{n / t_fw:.1f}", f"{t_fw / t_ef:.2f}"],
        [f"decode-only ceiling (PIL + transform, {cores} threads)", f"{t_dec:.2f}", f"{n / t_dec:.1f}", f"{t_dec / t_ef:.2f}"],
    ]
    notes = []
    if onnx:
        (t_on, v_on), (t_ofw, _) = timings["embedflow_onnx"], timings["onnx_forward"]
        rows.insert(1, ["embedflow, backend='onnx'", f"{t_on:.2f}", f"{n / t_on:.1f}", f"{t_on / t_ef:.2f}"])
        rows.append(["forward-only ceiling, ONNX Runtime (embedflow's export)", f"{t_ofw:.2f}", f"{n / t_ofw:.1f}", f"{t_ofw / t_ef:.2f}"])
        unit = np.linalg.norm(v_on, axis=1) * np.linalg.norm(v_ef, axis=1)
        cos = float(((v_on * v_ef).sum(1) / unit).min())
        notes.append(
            f"embedflow onnx: {t_dl / t_on:.2f}x the DataLoader loop, {t_ef / t_on:.2f}x embedflow torch; min cosine onnx vs torch vectors {cos:.7f}"
        )
    text = table(["method", "seconds", "images/s", "embedflow speed ×"], rows)
    report(
        f"Images: {args.model} (random weights), {n} JPEGs 300–1200 px, batch {bs}, {args.device}",
        text,
        [
            f"median of {args.repeats} runs, methods taking turns; model set-up excluded; largest difference embedflow vs DataLoader vectors: {diff:.2e}",
            f"embedflow reaches {t_fw / t_ef:.0%} of the forward-only ceiling and {t_dec / t_ef:.0%} of the decode-only ceiling",
            "embedflow's timm operator runs conv nets channels_last by default; the DataLoader loop is shown both as people usually write it and with the same layout",
            *notes,
            "targets: ≥ 1.0× the DataLoader loop; report the fraction of the forward-only ceiling; onnx ≥ 1.6× the DataLoader loop",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
