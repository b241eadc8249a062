"""How fast the engine feeds a fast model: the CPU stand-in for a GPU, where the model is not the
bottleneck and the Python work around it is (benchmarks/RESULTS.md, "GPU check": MiniLM's
forward alone 62,115 texts/s on an H200, the whole chain 9,234/s).

A tiny BERT (2 layers, hidden 32: a forward of a few ms per batch, like a big GPU's) over
``--texts`` sentences, side by side in one run:

* the chain end to end (``text_embedding.transformers(...).normalize().to_numpy()``), and
  with the tokenizer in a worker process (``tokenizer_processes=1``)
* its parts alone: tokenizing (``preprocess_batch``), the forward loop alone (pre-tokenized
  batches, one thread), ``normalize`` per row (as before) and per chunk (its ``preprocess_batch``)

The chain's rate against the slowest part alone is the share of the work the pipeline hides;
what is left is the GIL shared by its threads.

    python benchmarks/bench_feed.py [--texts 30000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, report, table
from gpu_check import corpus

import embedflow as ef
from embedflow.engines.batching import ModelBatcher, make_replica
from embedflow.engines.failures import FailureLog
from embedflow.engines.replicas import cached
from embedflow.plan import lower
from embedflow_operators.normalize import Normalize


def tiny_bert(folder: Path) -> str:
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(ef.resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, texts = args.texts, corpus(args.texts)
    with tempfile.TemporaryDirectory() as folder:
        path = tiny_bert(Path(folder))
        chain = ef.dc(texts).text_embedding.transformers(model_name=path, backend="torch", batch_size=256).normalize().set_progress(False)
        chain.head(4).to_list()
        spawned = ef.dc(texts).text_embedding.transformers(model_name=path, backend="torch", batch_size=256, tokenizer_processes=1)
        spawned = spawned.normalize().set_progress(False)
        spawned.head(4).to_list()
        op = next(iter(cached(chain.plan.steps[0]).values()))
        replica = make_replica("cpu", op, None)
        batcher = ModelBatcher(lower(chain.plan).model_stages[0], op, FailureLog())
        items = op.preprocess_batch([(t,) for t in texts])
        order = sorted(range(n), key=lambda i: len(items[i]["input_ids"]))
        batches = [op.collate([items[i] for i in order[s : s + 256]]) for s in range(0, n, 256)]
        vectors = [(v,) for v in chain.to_list()]
        normalize = Normalize()

        def forward_alone():
            for b in batches:
                batcher.finish(replica, *batcher.launch(replica, b), len(b["input_ids"]))

        results = interleaved(
            {
                "the chain end to end (tokenize, batch, forward, normalize)": chain.to_numpy,
                "the chain, tokenizing in 1 worker process (tokenizer_processes=1)": spawned.to_numpy,
                "tokenize alone (preprocess_batch, one call)": lambda: op.preprocess_batch([(t,) for t in texts]),
                "forward alone (pre-tokenized batches of 256, one thread)": forward_alone,
                "normalize alone, row by row (preprocess)": lambda: [normalize.preprocess(v) for (v,) in vectors],
                "normalize alone, per chunk of 256 (preprocess_batch)": lambda: [
                    normalize.preprocess_batch(vectors[s : s + 256]) for s in range(0, n, 256)
                ],
            },
            args.repeats,
        )
    rows = [[name, f"{seconds:.3f}", f"{n / seconds:,.0f}"] for name, (seconds, _out) in results.items()]
    chain_rate = n / results["the chain end to end (tokenize, batch, forward, normalize)"][0]
    slowest = min(n / results[k][0] for k in list(results)[2:4])
    row_wise = np.stack(results["normalize alone, row by row (preprocess)"][1])
    chunked = np.concatenate([np.stack(c) for c in results["normalize alone, per chunk of 256 (preprocess_batch)"][1]])
    report(
        "Feeding a fast model (tiny BERT on the CPU)",
        table(["part", "seconds (median)", "texts/s"], rows),
        [
            f"the chain runs at {chain_rate / slowest:.2f}x its slowest part alone (tokenize or forward)",
            f"normalize per chunk equals row by row bit for bit: {bool(np.array_equal(row_wise, chunked))}",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
