"""The README's examples on the shipped samples run verbatim: every ``medseg ...`` line of README.md that names
``sample_data/`` (the quick start's commands, the prompt examples, the review example) runs, in the README's order,
in a copy of ``sample_data/``, and exits 0."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from medseg.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_sample_commands(text: str) -> list[list[str]]:
    """The argument lists of the README's ``medseg`` commands on ``sample_data/``, in order: lines of fenced or
    indented code blocks, a command after ``&&`` in a chain (the quick start's installs), comments removed."""
    commands = []
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if not (in_fence or line.startswith("    ")):
            continue
        for part in line.split("&&"):
            if not part.strip().startswith("medseg ") or "sample_data" not in part:
                continue
            words = shlex.split(part, comments=True)
            if any(w == "sample_data" or w.startswith("sample_data/") for w in words):
                commands.append(words[1:])
    return commands


def test_the_extractor_finds_the_quick_start():
    commands = readme_sample_commands(README.read_text())
    assert ["infer", "sample_data/chest_ct.nii.gz", "--stats", "--preview"] == commands[0]  # command 1
    names = {c[0] for c in commands}
    for name in ("infer", "plan", "prompt", "batch", "evaluate", "series", "convert", "view"):
        assert name in names, name
    assert ["models"] not in commands  # `medseg models` names no sample file: run below on its own


@pytest.fixture
def samples(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped scans (the models are found in the checkout, as for an installed clone)."""
    dest = tmp_path / "sample_data"
    shutil.copytree(ROOT / "sample_data", dest, ignore=shutil.ignore_patterns("models"))
    monkeypatch.chdir(tmp_path)
    return dest


def test_readme_examples_run_verbatim_on_the_samples(samples, tmp_path):
    commands = readme_sample_commands(README.read_text())
    have_napari = _importable("napari")
    ran = []
    for args in commands:
        if args[0] == "view":  # a window: the same command writes a screenshot and exits
            if not have_napari:
                continue
            args = [*args, "--screenshot", str(tmp_path / "view.png")]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, f"medseg {shlex.join(args)}:\n{result.output}"
        ran.append(args[0])
    assert CliRunner().invoke(main, ["models"]).exit_code == 0
    assert (samples / "chest_ct_seg.nii.gz").is_file() and (samples / "chest_ct_seg_preview.png").is_file()
    assert (tmp_path / "right_lung.nii.gz").is_file() and (tmp_path / "results" / "batch_summary.json").is_file()
    assert not have_napari or (tmp_path / "view.png").is_file()
    assert len(ran) == len(commands) - (0 if have_napari else sum(c[0] == "view" for c in commands))


def test_prompt_examples_fit_the_sample():
    """Each --voxel of a README example lies inside the sample scan it names (the 64 x 64 x 50 chest CT)."""
    import nibabel as nib

    for args in readme_sample_commands(README.read_text()):
        for flag, value in zip(args, args[1:]):
            if flag in ("--voxel", "--negative"):
                scan = next(a for a in args if a.startswith("sample_data/"))
                shape = nib.load(ROOT / scan).shape
                index = [int(v) for v in re.split(r"[, ]+", value)]
                assert all(0 <= i < n for i, n in zip(index, shape)), (args, shape)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
