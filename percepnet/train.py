"""Training: on-the-fly mixtures -> the runtime's features -> the PercepNet loss.

A worker process makes new mixtures continuously (new speech, noise, level, filter,
room and SNR every time) and turns them into features and oracle targets with the
same code the enhancer runs. Each batch mixes fresh segments with segments replayed
from a pool, so the network is not starved on two cores. Progress, checkpoints
(self-describing: config, weights, feature normalisation), resume, and dev quality
(PESQ on enhanced dev clips, not only loss) are built in; the best-by-dev checkpoint
is kept.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from percepnet.analysis import Frames
from percepnet.bands import BAND_CENTRES
from percepnet.constants import BIN_HZ, SAMPLE_RATE
from percepnet.enhancer import GainPair, enhance_signal
from percepnet.features import Example, compute_example
from percepnet.gains import release_gains
from percepnet.model import ModelConfig, PercepNet, widen

FloatArray = npt.NDArray[np.float64]
Mixture = tuple[FloatArray, FloatArray, float]
"""(clean target, noisy input, bandwidth in Hz) at 48 kHz."""
MixtureSourceFactory = Callable[[str, int], Callable[[], Mixture]]
"""(split, seed) -> a function returning a new mixture on each call."""

GAMMA = 0.5
QUARTIC_WEIGHT = 10.0


@dataclass(frozen=True)
class TrainConfig:
    minutes: float = 60.0
    batch_size: int = 16
    fresh_per_batch: int = 8
    pool_size: int = 1500
    segment_seconds: float = 4.0
    lr: float = 1e-3
    lr_final: float = 1e-4
    weight_decay: float = 1e-5
    grad_clip: float = 1.0
    eval_every_s: float = 600.0
    checkpoint_every_s: float = 300.0
    dev_clips: int = 12
    seed: int = 1
    workers: int = 1
    max_steps: int | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    mix: dict[str, Any] = field(default_factory=dict)
    """Changes to the augmentation recipe (MixConfig) this run trained with; recorded
    only: the mixture factory applies them."""
    under_suppression_weight: float = 1.0
    """Multiplies the gain error where the network passes more than the ideal gain
    (residual noise); 1 is the symmetric loss of DESIGN section 4."""
    target_release: float = 0.0
    """If > 0, the oracle gains of the targets fall by at most this factor per frame
    (percepnet.gains.release_gains); 0 keeps the oracle's own."""


def band_mask(bandwidth_hz: float) -> FloatArray:
    """1 for bands whose centre lies within the clip's real bandwidth, else 0."""
    mask = (bandwidth_hz >= BAND_CENTRES * BIN_HZ).astype(np.float64)
    mask[0] = 1.0
    return mask


def percepnet_loss(
    g_hat: torch.Tensor,
    r_hat: torch.Tensor,
    g: torch.Tensor,
    r: torch.Tensor,
    mask: torch.Tensor,
    under_suppression_weight: float = 1.0,
) -> torch.Tensor:
    """DESIGN section 4 loss, masked per band, averaged over valid band-frames.

    `under_suppression_weight` scales the gain error of band-frames whose predicted
    gain exceeds the ideal one: residual noise, which listeners (and DNSMOS BAK) judge
    more harshly than the same error the other way."""
    dg = g.clamp(min=0) ** GAMMA - g_hat.clamp(min=1e-8) ** GAMMA
    if under_suppression_weight != 1.0:
        dg = torch.where(dg < 0, dg * under_suppression_weight, dg)
    dr = (1 - r).clamp(min=0) ** GAMMA - (1 - r_hat).clamp(min=1e-8) ** GAMMA
    per = dg**2 + QUARTIC_WEIGHT * dg**4 + dr**2
    m = mask[:, None, :].expand_as(per)
    return (per * m).sum() / m.sum().clamp(min=1.0)


SILENT_BAND_ENERGY = 1e-12
"""A band-frame of the input below this energy (about -120 dB re a full-scale band) holds
nothing to remove: digital silence before, between and after the utterances of a
noise-free mixture. Its oracle gain is 0 only by the EPS in sqrt(E_x / (E_y + EPS)); as a
target that taught the model to cut quiet input, so there the target is pass-through
(g = 1, r = 0)."""


def training_targets(ex: Example, release: float = 0.0) -> tuple[FloatArray, FloatArray]:
    """The oracle's g (held by release_gains if `release` > 0) and r, with silent
    band-frames passed through (SILENT_BAND_ENERGY)."""
    silent = ex.E_y < SILENT_BAND_ENERGY
    gains = release_gains(ex.gains, release) if release > 0 else ex.gains
    return np.where(silent, 1.0, gains), np.where(silent, 0.0, ex.strengths)


def segment_example(mix: Mixture, release: float = 0.0) -> dict[str, torch.Tensor]:
    clean, noisy, bandwidth = mix
    ex = compute_example(noisy, clean)
    gains, strengths = training_targets(ex, release)
    return {
        "features": torch.from_numpy(ex.features.astype(np.float32)),
        "gains": torch.from_numpy(gains.astype(np.float32)),
        "strengths": torch.from_numpy(strengths.astype(np.float32)),
        "mask": torch.from_numpy(band_mask(bandwidth).astype(np.float32)),
    }


class ExampleStream(IterableDataset[dict[str, torch.Tensor]]):
    def __init__(self, factory: MixtureSourceFactory, seed: int, release: float = 0.0) -> None:
        self.factory = factory
        self.seed = seed
        self.release = release

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        wid = info.id if info is not None else 0
        make = self.factory("train", self.seed * 1000 + wid)
        while True:
            yield segment_example(make(), self.release)


def _collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    n = min(len(it["features"]) for it in items)
    return {
        k: torch.stack([it[k][:n] if it[k].dim() > 1 else it[k] for it in items]) for k in items[0]
    }


class TorchSource:
    """GainSource running the torch model block by block (for dev evaluation)."""

    def __init__(self, net: PercepNet) -> None:
        self.net = net
        self.reset()

    def reset(self) -> None:
        self._state: tuple[torch.Tensor, ...] | None = None

    @torch.no_grad()
    def __call__(self, frames: Frames) -> GainPair:
        feats = torch.from_numpy(frames.features.astype(np.float32))[None]
        out, self._state = self.net.forward_with_state(feats, self._state)
        return out.gains[0].double().numpy(), out.strengths[0].double().numpy()


def dev_quality(net: PercepNet, clips: list[Mixture]) -> float:
    """Mean PESQ-WB of the model's output on dev clips."""
    from percepnet.metrics import pesq_wb

    net.eval()
    scores = []
    for clean, noisy, _ in clips:
        est = enhance_signal(noisy, TorchSource(net))
        value = pesq_wb(clean, est, SAMPLE_RATE)
        if math.isfinite(value):
            scores.append(value)
    net.train()
    return float(np.mean(scores)) if scores else float("nan")


def save_checkpoint(path: Path, net: PercepNet, extra: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"config": net.config.to_dict(), "state_dict": net.state_dict(), **extra}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> tuple[PercepNet, dict[str, Any]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    net = PercepNet(ModelConfig(**ckpt["config"]))
    net.load_state_dict(ckpt["state_dict"])
    return net, ckpt


def feature_statistics(
    examples: list[dict[str, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.cat([e["features"] for e in examples])
    return feats.mean(dim=0), feats.std(dim=0)


def train(
    out_dir: Path,
    factory: MixtureSourceFactory,
    cfg: TrainConfig,
    *,
    resume: bool = True,
    init: Path | None = None,
    grow: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Path:
    """Train for cfg.minutes of wall time (in total, across resumes). Returns best.pt.

    `init`: a checkpoint whose network (settings, weights and feature normalisation)
    a new run starts from; ignored when the run resumes. With `grow`, that network is
    first widened to cfg.model's sizes (model.widen: same function, more units).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.workers > 0:
        torch.set_num_threads(1)  # one core trains, the data workers take the others
    rng = random.Random(cfg.seed)
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    net = PercepNet(cfg.model)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state: dict[str, Any] = {
        "step": 0,
        "wall_s": 0.0,
        "audio_s": 0.0,
        "best_pesq": -1.0,
        "history": [],
    }
    fine_tune = False
    if init is not None and not (resume and last.exists()):
        net, _ = load_checkpoint(init)
        if grow:
            net = widen(net, cfg.model)
        cfg = replace(cfg, model=net.config)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        state["init"] = str(init)
        fine_tune = True
        log(f"starting from the weights of {init}" + (f", widened to {net.config}" if grow else ""))
    if resume and last.exists():
        net, ckpt = load_checkpoint(last)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["train_state"]
        log(f"resumed from {last} at step {state['step']} ({state['wall_s'] / 60:.1f} min)")

    dev_make = factory("dev", 12345)
    dev_clips = [dev_make() for _ in range(cfg.dev_clips)]
    dev_examples = [segment_example(m, cfg.target_release) for m in dev_clips]
    dev_batch = _collate(dev_examples)

    loader = DataLoader(
        ExampleStream(factory, cfg.seed + state["step"], cfg.target_release),
        batch_size=None,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
        prefetch_factor=8 if cfg.workers > 0 else None,
    )
    stream = iter(loader)
    pool: list[dict[str, torch.Tensor]] = []
    if state["step"] == 0:
        warm = [next(stream) for _ in range(max(cfg.batch_size, 32))]
        if not fine_tune:  # a fine-tuned network keeps the normalisation it learned with
            mean, std = feature_statistics(warm + dev_examples)
            net.set_normalisation(mean, std)
        pool.extend(warm)

    def dev_loss() -> float:
        net.eval()
        with torch.no_grad():
            out = net(dev_batch["features"])
            val = percepnet_loss(
                out.gains,
                out.strengths,
                dev_batch["gains"],
                dev_batch["strengths"],
                dev_batch["mask"],
                cfg.under_suppression_weight,
            )
        net.train()
        return float(val)

    def evaluate() -> None:
        dl = dev_loss()
        pesq = dev_quality(net, dev_clips[: max(1, cfg.dev_clips // 2)])
        entry = {
            "step": state["step"],
            "wall_min": state["wall_s"] / 60,
            "train_loss": running,
            "dev_loss": dl,
            "dev_pesq": pesq,
            "audio_h": state["audio_s"] / 3600,
        }
        state["history"].append(entry)
        log(json.dumps(entry))
        with (out_dir / "log.jsonl").open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        # Every evaluation's weights are kept, so a benchmark can choose among them.
        save_checkpoint(
            out_dir / f"step{state['step']:06d}.pt",
            net,
            {"train_state": dict(state), "train_config": _cfg_dict(cfg)},
        )
        if pesq > state["best_pesq"]:
            state["best_pesq"] = pesq
            save_checkpoint(best, net, {"train_state": dict(state), "train_config": _cfg_dict(cfg)})

    running: float | None = None
    if state["step"] == 0:
        evaluate()  # the untrained baseline
    total_s = cfg.minutes * 60.0
    start = time.monotonic() - state["wall_s"]
    last_eval = last_ckpt = time.monotonic()
    seg_s = cfg.segment_seconds
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(total_s), unit="s", desc="train", initial=int(state["wall_s"]))
    net.train()
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= total_s or (cfg.max_steps is not None and state["step"] >= cfg.max_steps):
            break
        fresh = [next(stream) for _ in range(cfg.fresh_per_batch)]
        pool.extend(fresh)
        if len(pool) > cfg.pool_size:
            del pool[: len(pool) - cfg.pool_size]
        replay = rng.sample(pool, min(len(pool), cfg.batch_size - len(fresh)))
        batch = _collate(fresh + replay)
        frac = min(elapsed / total_s, 1.0)
        lr = cfg.lr * (cfg.lr_final / cfg.lr) ** frac
        for group in opt.param_groups:
            group["lr"] = lr
        out = net(batch["features"])
        loss = percepnet_loss(
            out.gains,
            out.strengths,
            batch["gains"],
            batch["strengths"],
            batch["mask"],
            cfg.under_suppression_weight,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        state["step"] += 1
        state["audio_s"] += len(fresh) * seg_s
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        now = time.monotonic()
        state["wall_s"] = now - start
        if bar is not None:
            bar.n = int(state["wall_s"])
            bar.set_postfix(
                step=state["step"], loss=f"{running:.4f}", hours=f"{state['audio_s'] / 3600:.1f}"
            )
        done = state["wall_s"] >= total_s or (
            cfg.max_steps is not None and state["step"] >= cfg.max_steps
        )
        if now - last_eval >= cfg.eval_every_s or done:
            evaluate()
            last_eval = time.monotonic()
        if now - last_ckpt >= cfg.checkpoint_every_s:
            save_checkpoint(
                last,
                net,
                {
                    "optimizer": opt.state_dict(),
                    "train_state": state,
                    "train_config": _cfg_dict(cfg),
                },
            )
            last_ckpt = now
    save_checkpoint(
        last,
        net,
        {"optimizer": opt.state_dict(), "train_state": state, "train_config": _cfg_dict(cfg)},
    )
    if not best.exists():
        save_checkpoint(best, net, {"train_state": dict(state), "train_config": _cfg_dict(cfg)})
    if bar is not None:
        bar.close()
    return best


def _cfg_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["model"] = cfg.model.to_dict()
    return d
