"""Whole-file processing: any rate and channel count in, the same rate out, aligned."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from percepnet.audio import AudioError, from_internal, read_audio, to_internal, write_audio
from percepnet.constants import SAMPLE_RATE
from percepnet.enhancer import GainSource, OracleSource, enhance_signal

if TYPE_CHECKING:
    from percepnet.runtime import OnnxModel

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
    for given in (clean_path, noisy_path):
        if Path(out_path).resolve() == Path(given).resolve() or (
            Path(out_path).exists() and _same_file(Path(out_path), Path(given))
        ):
            raise AudioError(f"{out_path} would overwrite the input {given}")
    clean_raw, clean_rate = read_input(clean_path)
    noisy_raw, noisy_rate = read_input(noisy_path)
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
    write_replacing(Path(out_path), from_internal(out, noisy_rate, noisy_raw.shape[1]), noisy_rate)
    return {"seconds": n / SAMPLE_RATE, "nonfinite_input_samples": count_nonfinite(noisy_raw)}


def enhance_file_signal(
    x: FloatArray, source: GainSource, *, postfilter: bool = True
) -> FloatArray:
    return np.asarray(enhance_signal(x, source, use_postfilter=postfilter), dtype=np.float64)


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
# Lossy inputs are written as 16-bit WAV: encoding the enhanced audio again with a lossy
# codec would add that codec's artefacts to it (README, "Offline use").
WRITTEN_AS_WAV = (".ogg", ".mp3")


class OutputConflict(AudioError):
    """Outputs that would overwrite an input, each other, or (without overwrite) a file."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Job:
    """One input file and the file its enhanced audio goes to."""

    source: Path
    target: Path


@dataclass(frozen=True)
class Outcome:
    job: Job
    error: str | None = None
    """None: written; otherwise why this file was skipped (one line)."""
    nonfinite_input_samples: int = 0


def read_input(path: str | Path) -> tuple[FloatArray, int]:
    """read_audio, with a plain message for a zero-byte file (libsndfile says only
    "Format not recognised")."""
    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        raise AudioError(f"{p}: empty file (0 bytes)")
    return read_audio(p)


def output_path(out_dir: Path, rel: Path) -> Path:
    """Where the enhanced `rel` goes: same relative path, .ogg/.mp3 written as .wav."""
    target = out_dir / rel
    return target.with_suffix(".wav") if rel.suffix.lower() in WRITTEN_AS_WAV else target


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def collect_inputs(inputs: list[Path], exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """(file, path relative to its input) for files and folders given on the command line.

    Files under `exclude` (the output folder, when it lies inside an input folder) are
    left out of folder searches, so a second run does not enhance the first run's output.
    """
    out: list[tuple[Path, Path]] = []
    for item in inputs:
        if item.is_dir():
            # An output folder that *is* the input folder is not skipped: every output
            # would then replace its input, which plan_outputs refuses by name.
            skip = exclude.resolve() if exclude is not None else None
            if skip == item.resolve():
                skip = None
            for f in sorted(item.rglob("*")):
                if skip is not None and _inside(f.resolve(), skip):
                    continue
                if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES:
                    out.append((f, f.relative_to(item)))
        elif item.exists():
            out.append((item, Path(item.name)))
        else:
            raise AudioError(f"{item}: no such file or folder")
    return out


def plan_outputs(inputs: list[Path], out_dir: Path, *, overwrite: bool = False) -> list[Job]:
    """One Job per input file; raises OutputConflict before anything is written when an
    output would replace an input (never allowed), collide with another output, or
    (without `overwrite`) replace an existing file. The same file given twice is one job."""
    jobs: list[Job] = []
    by_target: dict[Path, Job] = {}
    problems: list[str] = []
    if out_dir.exists() and not out_dir.is_dir():
        raise AudioError(f"{out_dir}: exists and is not a folder (-o names the output folder)")
    files = collect_inputs(inputs, exclude=out_dir)
    if not files:
        raise AudioError("no audio files found in " + " ".join(str(p) for p in inputs))
    sources = {f.resolve(): f for f, _ in files}
    for source, rel in files:
        real = source.resolve()
        target = output_path(out_dir, rel)
        key = target.resolve()
        if key in by_target and by_target[key].source.resolve() == real:
            continue  # the same file named twice (as a file and within its folder, say)
        if key in sources or (target.exists() and _same_file(target, source)):
            problems.append(f"{target} would overwrite the input {sources.get(key, source)}")
        elif key in by_target:
            problems.append(
                f"{by_target[key].source} and {source} would both be written to {target}"
            )
        elif target.is_dir():
            problems.append(f"{target} is a folder")
        elif target.exists() and not overwrite:
            problems.append(f"{target} exists (--overwrite replaces it)")
        job = Job(source, target)
        by_target.setdefault(key, job)
        jobs.append(job)
    if problems:
        raise OutputConflict(problems)
    return jobs


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_replacing(target: Path, data: FloatArray, rate: int) -> None:
    """Write next to `target`, then rename over it: an interrupted or failed write never
    leaves a truncated file under the output's name, nor destroys the one it replaces."""
    partial = target.with_name(f".{target.stem}.partial{target.suffix}")
    try:
        write_audio(partial, data, rate)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def enhance_files(
    jobs: Sequence[Job],
    net: OnnxModel,
    *,
    postfilter: bool = True,
    attenuation_limit_db: float | None = None,
) -> Iterator[Outcome]:
    """Enhance each job's file; a file that cannot be read or written is reported in its
    Outcome and the next one goes on."""
    from percepnet.runtime import OnnxSource

    for job in jobs:
        try:
            raw, rate = read_input(job.source)
        except AudioError as exc:
            yield Outcome(job, error=str(exc))
            continue
        y = enhance_signal(
            to_internal(raw, rate),
            OnnxSource(net),
            use_postfilter=postfilter,
            attenuation_limit_db=attenuation_limit_db,
        )
        try:
            write_replacing(job.target, from_internal(y, rate, raw.shape[1]), rate)
        except (OSError, RuntimeError) as exc:  # soundfile's errors are RuntimeErrors
            yield Outcome(job, error=f"{job.target}: cannot write ({exc})")
            continue
        yield Outcome(job, nonfinite_input_samples=count_nonfinite(raw))
