"""Per-stream cost of the enhancer when packets come at the real-time pace (a script).

bench/cost.py runs frames back to back, with code and weights hot in the caches. A
service core instead gets one 20 ms packet per stream and does other work (or
sleeps) in between, so every packet starts cold: on this machine the same packet
costs about 2-3x as much. Running B streams' packets together (server/batching.py)
pays the cold start once per batch. This measures it: for each batch size B, the
wall time of analyse -> model (one run per frame for all B) -> synthesis for B
streams' 20 ms packets, once back to back and once with a 20 ms sleep between
batches, per stream-packet and as % of one core per stream.

    python bench/batch_paced.py [--batches 1,2,4,8] [--packets 150]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cost import batched_streams
from percepnet.enhancer import warm_up
from percepnet.runtime import OnnxModel, load_model

PACKET = 960  # 20 ms at 48 kHz
PERIOD_S = 0.02


def batch_cost(model: OnnxModel, batch: int, packets: int, paced: bool) -> float:
    """Median wall seconds per batch of `batch` streams' packets."""
    step = batched_streams(model, batch)
    x = np.random.default_rng(0).standard_normal(PACKET * 200) * 0.05
    times = []
    for i in range(packets):
        p = x[(i % 200) * PACKET : (i % 200 + 1) * PACKET]
        start = time.perf_counter()
        step(p)
        times.append(time.perf_counter() - start)
        if paced:
            time.sleep(PERIOD_S)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--packets", type=int, default=150)
    args = ap.parse_args()
    model = load_model()
    warm_up()
    print("B  | back to back: ms/stream-packet | paced 20 ms: ms/stream-packet, % core/stream")
    for b in (int(s) for s in args.batches.split(",")):
        tight = batch_cost(model, b, args.packets, paced=False) / b
        paced = batch_cost(model, b, args.packets, paced=True) / b
        print(f"{b:<3}| {1e3 * tight:30.3f} | {1e3 * paced:10.3f}, {100 * paced / PERIOD_S:5.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
