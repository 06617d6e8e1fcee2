"""Whole-file processing: any rate and channel count in, the same rate out, aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from percepnet.audio import AudioError, from_internal, read_audio, to_internal, write_audio
from percepnet.enhancer import GainSource, OracleSource, enhance_signal

FloatArray = npt.NDArray[np.float64]


def count_nonfinite(data: FloatArray) -> int:
    return int((~np.isfinite(data)).sum())


def oracle_file(
    clean_path: str | Path,
    noisy_path: str | Path,
    out_path: str | Path,
    *,
    pitch_filter: bool = True,
    postfilter: bool = True,
) -> dict[str, float]:
    """Enhance `noisy` with ideal gains from `clean`; write at the noisy file's rate."""
    clean_raw, clean_rate = read_audio(clean_path)
    noisy_raw, noisy_rate = read_audio(noisy_path)
    dur_c, dur_n = len(clean_raw) / clean_rate, len(noisy_raw) / noisy_rate
    if abs(dur_c - dur_n) > 1e-3:
        raise AudioError(
            f"clean and noisy differ in length: {dur_c:.3f} s ({clean_path}) "
            f"vs {dur_n:.3f} s ({noisy_path})"
        )
    clean = to_internal(clean_raw, clean_rate)
    noisy = to_internal(noisy_raw, noisy_rate)
    n = min(len(clean), len(noisy))
    source = OracleSource(clean[:n], use_pitch_filter=pitch_filter)
    out = enhance_file_signal(noisy[:n], source, postfilter=postfilter)
    write_audio(out_path, from_internal(out, noisy_rate, noisy_raw.shape[1]), noisy_rate)
    return {"seconds": n / 48_000, "nonfinite_input_samples": count_nonfinite(noisy_raw)}


def enhance_file_signal(
    x: FloatArray, source: GainSource, *, postfilter: bool = True
) -> FloatArray:
    return np.asarray(enhance_signal(x, source, use_postfilter=postfilter), dtype=np.float64)


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def collect_inputs(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input) for files and folders given on the command line."""
    out: list[tuple[Path, Path]] = []
    for item in inputs:
        if item.is_dir():
            for f in sorted(item.rglob("*")):
                if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES:
                    out.append((f, f.relative_to(item)))
        elif item.exists():
            out.append((item, Path(item.name)))
        else:
            raise AudioError(f"{item}: no such file or folder")
    return out


def enhance_paths(
    inputs: list[Path],
    out_dir: Path,
    *,
    model: str | Path | None = None,
    postfilter: bool = True,
    attenuation_limit_db: float | None = None,
    progress: bool = True,
) -> int:
    """Enhance files/folders with the model into out_dir (same names, input rate and channels)."""
    from tqdm import tqdm

    from percepnet.runtime import OnnxSource, load_model

    net = load_model(model)
    files = collect_inputs(inputs)
    for path, rel in tqdm(files, unit="file", disable=not progress or len(files) < 2):
        raw, rate = read_audio(path)
        x = to_internal(raw, rate)
        y = enhance_signal(
            x, OnnxSource(net), use_postfilter=postfilter, attenuation_limit_db=attenuation_limit_db
        )
        target = (out_dir / rel).with_suffix(
            ".wav" if path.suffix.lower() in (".ogg", ".mp3") else path.suffix
        )
        write_audio(target, from_internal(y, rate, raw.shape[1]), rate)
    return len(files)
