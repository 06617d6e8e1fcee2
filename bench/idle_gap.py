"""What a packet costs after the core did something else for a while (a script, not a test).

In the service a stream's packet arrives every 20 ms; between two packets the core
runs other streams, aiortc, or nothing. This measures the CPU time of one 20 ms
packet when the previous one ran GAP ms earlier, for GAP = 0 (back to back, as
bench/cost.py measures) up to 20 ms, with the core kept busy during the gap by a
spin loop (so it is not the CPU sleeping or clocking down). One more column runs each
packet right after reading --read-mb MB of memory instead (no gap): how much of the
effect evicting the data caches alone explains.

Systems:

- the enhancer on one stream (analysis, two model runs, synthesis);
- B streams batched as a service worker runs them (per stream), for each B of
  --batches (server/batching.py pays a packet's cold start once per batch);
- the model alone, one run of one stream;
- ONNX Runtime's fixed cost of a run: a graph of one Add node (needs `onnx`);
- aiortc's Opus decode + encode of the packet (the codec part of a pass-through);
- a packet's FFTs (4 forward, 2 inverse) through scipy.fft, and through percepnet.stft
  (which calls pocketfft's entry points directly where it can).

    python -m bench.idle_gap [--packets 200] [--gaps 0,1,2,5,10,20] [--batches 8] [--out F.json]

The gaps are interleaved (every gap in turn, repeatedly), so drift of the machine's
speed hits them alike. Times are thread CPU time (time.thread_time_ns), medians.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.fft

from bench.common import REPO, markdown, noisy_speech, packets
from bench.cost import batched_streams, opus_passthrough
from percepnet import stft
from percepnet.constants import NB_FEATURES, WINDOW_SIZE
from percepnet.enhancer import Enhancer, warm_up
from percepnet.runtime import OnnxSource, load_model

ROUNDS = 5
"""Each gap is measured in this many separate slices of the run."""


def spin(seconds: float) -> None:
    """Keep the core busy (no sleep, no frequency drop) for `seconds`."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def one_node_run() -> Callable[[np.ndarray], object] | None:
    """session.run of a one-node graph: what any ONNX Runtime run costs before its nodes."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        return None
    import onnxruntime as ort

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "one_add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 160])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 160])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    x = np.zeros((1, 160), np.float32)
    return lambda _p: session.run(["y"], {"x": x})


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packets", type=int, default=200, help="per system and gap")
    parser.add_argument("--gaps", default="0,1,2,5,10,20", help="ms between packets")
    parser.add_argument("--batches", default="8", help="batch sizes B of the batched rows")
    parser.add_argument("--read-mb", type=float, default=16.0, help="0: no read column")
    parser.add_argument("--model", default=str(REPO / "models" / "percepnet-int8.onnx"))
    parser.add_argument("--out", help="write the medians as JSON here")
    args = parser.parse_args()
    gaps = [float(g) for g in args.gaps.split(",")]
    junk = np.ones(int(args.read_mb * 2**20 / 8))
    # (column label, what runs before each packet)
    conditions: list[tuple[str, Callable[[], object]]] = [
        (f"{g:g} ms", functools.partial(spin, g / 1e3)) for g in gaps
    ]
    if args.read_mb > 0:
        conditions.append((f"{args.read_mb:g} MB read", junk.sum))
    labels = [label for label, _ in conditions]
    cut = packets(noisy_speech(8.0, snr_db=5.0, level=0.3))

    warm_up()
    model = load_model(args.model)
    one = Enhancer(OnnxSource(model))
    state = [model.initial_state()]
    feats = np.zeros((1, NB_FEATURES), np.float32)

    def model_run(_p: np.ndarray) -> object:
        _, _, state[0] = model.step(feats, state[0])
        return None

    # (name, step, streams per call)
    systems: list[tuple[str, Callable[[np.ndarray], object], int]] = [
        ("enhancer, 1 stream", lambda p: one.process_frames(p.reshape(-1)), 1),
        *(
            (f"enhancer, {b} streams batched (per stream)", batched_streams(model, b), b)
            for b in (int(v) for v in args.batches.split(","))
        ),
        ("model alone, 1 run of 1 stream", model_run, 1),
        ("aiortc Opus decode + encode", opus_passthrough(), 1),
    ]
    windows = np.ascontiguousarray(np.tile(stft.WINDOW, (4, 1)))  # 2 steps x (newest, comb)
    systems += [
        ("a packet's FFTs (4 forward, 2 inverse), scipy.fft",
         lambda _p: scipy.fft.irfft(scipy.fft.rfft(windows)[:2], n=WINDOW_SIZE), 1),
        ("the same FFTs, as percepnet.stft calls them",
         lambda _p: stft.inverse(stft.spectra(windows)[:2]), 1),
    ]  # fmt: skip
    tiny = one_node_run()
    if tiny is not None:
        systems.insert(len(systems) - 3, ("ONNX Runtime, a run of a 1-node graph", tiny, 1))
    costs: dict[tuple[str, str], list[float]] = {(n, c): [] for n, _, _ in systems for c in labels}
    per_slice = max(1, args.packets // ROUNDS)
    k = 0
    for _ in range(ROUNDS):
        for label, before in conditions:
            for name, step, streams in systems:
                for _ in range(per_slice):
                    before()
                    p = cut[k % len(cut)]
                    k += 1
                    t = time.thread_time_ns()
                    step(p)
                    costs[(name, label)].append((time.thread_time_ns() - t) / 1e3 / streams)

    med = {key: statistics.median(v) for key, v in costs.items()}
    first, last = labels[0], labels[len(gaps) - 1]
    print("CPU us per 20 ms packet (median), by the time since the previous packet\n")
    header = ["system", *labels, f"{last} / {first}"]
    rows = [
        [
            name,
            *(f"{med[(name, c)]:.0f}" for c in labels),
            f"{med[(name, last)] / med[(name, first)]:.2f}",
        ]
        for name, _, _ in systems
    ]
    opus = "aiortc Opus decode + encode"
    ratio = [f"{med[('enhancer, 1 stream', c)] / med[(opus, c)]:.2f}" for c in labels]
    rows.append(["enhancer (1 stream) / Opus", *ratio, ""])
    print(markdown(header, rows))
    if args.out:
        records = [
            {"system": n, "before": c, "median_us": med[(n, c)], "samples": len(costs[(n, c)])}
            for n, _, _ in systems
            for c in labels
        ]
        Path(args.out).write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
