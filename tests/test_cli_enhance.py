"""`percepnet enhance` as a user meets it: outputs never lost, bad files skipped, clear
errors, validated arguments, --version and documented defaults (issue 18)."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from percepnet.cli import EXIT_ERROR, EXIT_FILES_FAILED, build_parser, main
from server.ops.config import build_parser as server_parser
from tests.signals import add_noise, speechlike

REPO = Path(__file__).resolve().parent.parent
RATE = 16_000


def noisy_clip(seed: int, seconds: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # made at 48 kHz; its first third, taken as 16 kHz audio, is still speech plus noise
    return add_noise(speechlike(seconds, rng), 0.0, rng)[: int(seconds * RATE)]


def write(path: Path, seed: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, noisy_clip(seed), RATE, subtype=subtype)
    return path


def test_colliding_output_names_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = write(tmp_path / "a" / "x.wav", 1), write(tmp_path / "b" / "x.wav", 2)
    out = tmp_path / "out"
    assert main(["enhance", str(a), str(b), "-o", str(out)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert f"{a} and {b} would both be written to {out / 'x.wav'}" in err
    assert not out.exists() or not any(out.iterdir())


def test_ogg_and_wav_of_the_same_name_collide(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    write(folder / "x.wav", 1)
    sf.write(folder / "x.ogg", noisy_clip(2), RATE, format="OGG", subtype="VORBIS")
    assert main(["enhance", str(folder), "-o", str(tmp_path / "out")]) == EXIT_ERROR
    assert "would both be written to" in capsys.readouterr().err


@pytest.mark.parametrize("as_folder", [True, False])
def test_an_input_is_never_overwritten_even_with_overwrite(
    tmp_path: Path, capsys, as_folder: bool
) -> None:
    x = write(tmp_path / "in" / "x.wav", 3)
    before = x.read_bytes()
    given = x.parent if as_folder else x
    for extra in ([], ["--overwrite"]):
        rc = main(["enhance", str(given), "-o", str(x.parent), *extra])
        assert rc == EXIT_ERROR
        assert f"{x} would overwrite the input {x}" in capsys.readouterr().err
        assert x.read_bytes() == before


def test_existing_outputs_need_overwrite(tmp_path: Path, capsys) -> None:
    x = write(tmp_path / "in" / "x.wav", 4)
    out = tmp_path / "out"
    target = out / "x.wav"
    target.parent.mkdir()
    target.write_bytes(b"an earlier result")
    assert main(["enhance", str(x), "-o", str(out)]) == EXIT_ERROR
    assert f"{target} exists (--overwrite replaces it)" in capsys.readouterr().err
    assert target.read_bytes() == b"an earlier result"
    assert main(["enhance", str(x), "-o", str(out), "--overwrite"]) == 0
    y, rate = sf.read(target)
    assert rate == RATE and len(y) == len(sf.read(x)[0])
    assert not list(out.glob(".*partial*"))  # the temporary file was renamed into place


def test_the_same_file_named_twice_is_enhanced_once(tmp_path: Path, capsys) -> None:
    x = write(tmp_path / "in" / "x.wav", 5)
    assert main(["enhance", str(x), str(x.parent), "-o", str(tmp_path / "out")]) == 0
    assert "enhanced 1 of 1 file(s)" in capsys.readouterr().out


def test_bad_files_are_reported_on_their_own_line_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    good = [write(folder / "a.wav", 6), write(folder / "sub" / "z.flac", 7)]
    (folder / "b_empty.wav").write_bytes(b"")
    (folder / "c_corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk-not-audio")
    sf.write(folder / "d_no_samples.wav", np.zeros(0), RATE)  # a header and no audio
    out = tmp_path / "out"
    assert main(["enhance", str(folder), "-o", str(out)]) == EXIT_FILES_FAILED
    captured = capsys.readouterr()
    assert "enhanced 2 of 5 file(s)" in captured.out
    for g in good:  # the files after the bad ones were still enhanced
        assert (out / g.relative_to(folder)).is_file()
    assert not (out / "b_empty.wav").exists() and not (out / "c_corrupt.wav").exists()
    # each failure on a line of its own (tqdm's carriage returns redraw the bar before it)
    lines = [line.split("\r")[-1] for line in captured.err.splitlines()]
    skipped = [line for line in lines if line.startswith("skipped: ")]
    assert len(skipped) == 3, captured.err
    assert any("b_empty.wav: empty file (0 bytes)" in s for s in skipped)
    assert any("c_corrupt.wav: unreadable audio" in s for s in skipped)
    assert any("d_no_samples.wav: contains no samples" in s for s in skipped)
    assert "3 file(s) failed:" in lines
    assert "Traceback" not in captured.err


def test_output_folder_inside_the_input_folder_is_not_read_back(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    write(folder / "a.wav", 8)
    write(folder / "b.wav", 9)
    out = folder / "enhanced"
    assert main(["enhance", str(folder), "-o", str(out)]) == 0
    assert main(["enhance", str(folder), "-o", str(out), "--overwrite"]) == 0
    outs = capsys.readouterr().out.splitlines()
    assert outs == [f"enhanced 2 of 2 file(s) into {out}"] * 2
    assert sorted(p.name for p in out.rglob("*.wav")) == ["a.wav", "b.wav"]


def test_ogg_input_is_written_as_wav_at_its_rate_and_channels(tmp_path: Path) -> None:
    src = tmp_path / "in" / "talk.ogg"
    src.parent.mkdir()
    stereo = np.stack([noisy_clip(10), noisy_clip(11)], axis=1)
    sf.write(src, stereo, RATE, format="OGG", subtype="VORBIS")
    out = tmp_path / "out"
    assert main(["enhance", str(src), "-o", str(out)]) == 0
    info = sf.info(out / "talk.wav")
    assert (info.format, info.samplerate, info.channels) == ("WAV", RATE, 2)
    assert not (out / "talk.ogg").exists()


@pytest.mark.parametrize("kind", ["missing", "corrupt", "not-a-percepnet-model"])
def test_model_problems_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    x = write(tmp_path / "x.wav", 12)
    model = tmp_path / "m.onnx"
    if kind == "corrupt":
        model.write_bytes(b"\x08\x07 this is not a protobuf model at all")
    elif kind == "not-a-percepnet-model":
        onnx = pytest.importorskip("onnx")
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Identity", ["a"], ["b"])],
            "other",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
        )
        onnx.save(helper.make_model(graph), model)
    rc = main(["enhance", str(x), "-o", str(tmp_path / "out"), "--model", str(model)])
    assert rc == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(model) in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["-5", "100.5", "nan", "loud"])
def test_attenuation_limit_out_of_range_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["enhance", "x.wav", "-o", str(tmp_path), "--attenuation-limit", value])
    assert exc.value.code == 2
    assert "argument --attenuation-limit" in capsys.readouterr().err


def test_attenuation_limit_range_ends_are_taken() -> None:
    parser = build_parser()
    for value in ("0", "100"):
        args = parser.parse_args(["enhance", "x.wav", "-o", "o", "--attenuation-limit", value])
        assert args.attenuation_limit == float(value)


@pytest.mark.parametrize("option", [["--minutes", "0"], ["--batch", "0"], ["--workers", "-1"]])
def test_train_ranges_are_validated(option: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--out", "run", *option])
    assert exc.value.code == 2


def _project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def test_version_on_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from server.__main__ import main as server_main

    for prog, entry in (("percepnet", main), ("percepnet-server", server_main)):
        with pytest.raises(SystemExit) as exc:
            entry(["--version"])
        assert exc.value.code == 0
        assert capsys.readouterr().out.strip() == f"{prog} {_project_version()}"


def _options(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.Action]]:
    """Every option of a parser and its subcommands, with the command path."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _options(sub, f"{path} {name}")
        elif action.option_strings and not isinstance(
            action, argparse._HelpAction | argparse._VersionAction
        ):
            out.append((path, action))
    return out


def test_every_option_help_gives_its_default() -> None:
    options = _options(build_parser(), "percepnet") + _options(server_parser(), "percepnet-server")
    assert len(options) > 30
    missing = [
        f"{path} {action.option_strings[-1]}: {action.help!r}"
        for path, action in options
        if not action.help or not ("default" in action.help or "(required)" in action.help)
    ]
    assert not missing, "\n".join(missing)


def test_output_that_is_a_file_is_refused(tmp_path: Path, capsys) -> None:
    x = write(tmp_path / "x.wav", 13)
    not_a_folder = tmp_path / "out.wav"
    not_a_folder.write_bytes(b"keep me")
    assert main(["enhance", str(x), "-o", str(not_a_folder)]) == EXIT_ERROR
    assert "exists and is not a folder" in capsys.readouterr().err
    assert not_a_folder.read_bytes() == b"keep me"


def test_oracle_never_overwrites_its_inputs(tmp_path: Path, capsys) -> None:
    clean, noisy = write(tmp_path / "clean.wav", 14), write(tmp_path / "noisy.wav", 15)
    before = noisy.read_bytes(), clean.read_bytes()
    for target in (noisy, clean):
        rc = main(["oracle", "--clean", str(clean), "--noisy", str(noisy), "-o", str(target)])
        assert rc == EXIT_ERROR
        assert f"{target} would overwrite the input" in capsys.readouterr().err
    assert (noisy.read_bytes(), clean.read_bytes()) == before
