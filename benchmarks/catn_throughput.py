"""CATN throughput: training examples/s and inference users/s, batched vs per-aspect loop.

Question: how much faster is the aspect-batched model (one matmul for all M aspect gates)
than a straightforward version that loops over aspects in Python, running conv -> gate ->
attention per aspect as the authors' code does? Both share the same parameters and compute
the same function (checked in tests/catn/test_model.py). Reports medians over repeats, the
thread count, a human table and one JSON line.

    python benchmarks/catn_throughput.py            # paper-like sizes (doc 500, word dim 300)
    python benchmarks/catn_throughput.py --smoke    # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from catn.modules.model import CATN, SOURCE, TARGET, CATNConfig, FlowBatch


def _batch(domain: int, B: int, L: int, V: int, n_items: int, g: torch.Generator) -> FlowBatch:
    return FlowBatch(domain, torch.randint(1, V, (B, L), generator=g),
                     torch.randint(1, V, (B, L), generator=g),
                     torch.randint(1, V, (n_items, L), generator=g), torch.arange(B),
                     torch.randint(0, n_items, (B,), generator=g), torch.arange(B),
                     torch.randint(0, n_items, (B,), generator=g),
                     torch.rand(B, generator=g) * 4 + 1)


def measure(model: CATN, args, loop: bool) -> dict[str, float]:
    model.loop_over_aspects = loop
    g = torch.Generator().manual_seed(0)
    half = args.batch // 2
    fs = _batch(TARGET, half, args.doc_len, args.vocab, min(half, 64), g)
    ft = _batch(SOURCE, args.batch - half, args.doc_len, args.vocab, min(half, 64), g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    train, infer = [], []
    for rep in range(args.warmup + args.repeats):
        model.train()
        t = time.perf_counter()
        (ps, _), (pt, _) = model(fs, ft)  # (prediction, aspect term) per flow
        loss = ((ps - fs.ratings) ** 2).mean() + ((pt - ft.ratings) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t
        model.eval()
        with torch.no_grad():
            t = time.perf_counter()
            model.encode_user(ft.user_docs, ft.aux_docs, SOURCE)
            di = time.perf_counter() - t
        if rep >= args.warmup:
            train.append(args.batch / dt)
            infer.append(ft.user_docs.shape[0] / di)
    return {"train_examples_per_s": statistics.median(train),
            "inference_users_per_s": statistics.median(infer)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    a.warmup = 1
    if a.smoke:
        a.batch, a.doc_len, a.word_dim, a.vocab, a.repeats = 16, 32, 16, 200, 2
    else:
        a.batch, a.doc_len, a.word_dim, a.vocab = 64, 500, 300, 20001
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = CATNConfig(vocab_size=a.vocab, num_users=a.batch, num_items_source=64,
                     num_items_target=64, word_dim=a.word_dim)
    model = CATN(cfg)
    batched = measure(model, a, loop=False)
    looped = measure(model, a, loop=True)
    speed = {k: batched[k] / looped[k] for k in batched}
    print(f"CATN throughput, {a.threads} thread(s), batch {a.batch}, doc {a.doc_len}, "
          f"word dim {a.word_dim}, M={cfg.num_aspects}, medians of {a.repeats}")
    print(f"{'':<24}{'batched':>12}{'aspect loop':>14}{'speedup':>10}")
    for k in batched:
        print(f"{k:<24}{batched[k]:>12.1f}{looped[k]:>14.1f}{speed[k]:>9.2f}x")
    print(json.dumps({"benchmark": "catn_throughput", "threads": a.threads, "smoke": a.smoke,
                      "batched": batched, "aspect_loop": looped, "speedup": speed}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
