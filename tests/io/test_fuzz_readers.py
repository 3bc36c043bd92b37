"""Seeded fuzz of medseg's readers: mutated real NIfTI, NRRD and DICOM files through ``medseg infer``.

Every input must end one of two ways: exit 0 with a label file on the input's exact grid (shape,
affine, qform/sform codes; nothing else left in the output folder), or exit 1 with one
``medseg: error:`` line that names the input, no traceback and no file written. Anything else
(a traceback, an "unexpected" error, a hang over 30 s, a partial file, a label file on another
grid) fails the test with the seed, the input's index and its mutations.

Options (environment variables):
    MEDSEG_FUZZ_N      total inputs over the three formats (default 2000)
    MEDSEG_FUZZ_SEED   seed (default 0); input ``i`` of a format uses ``default_rng((seed, kind, i))``
    MEDSEG_FUZZ_ONLY   ``kind:i`` runs one input (to reproduce a failure)
    MEDSEG_FUZZ_REPORT a path to write the tally JSON to (also written under pytest's basetemp)

Run ``python -m pytest -q -s tests/io/test_fuzz_readers.py`` to see the tally.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medseg.cli import main
from medseg.io.atomic import TMP_MARKER
from tests.io import fuzz_mutators as fm

pytestmark = pytest.mark.slow

FUZZ_N = int(os.environ.get("MEDSEG_FUZZ_N", "2000"))
FUZZ_SEED = int(os.environ.get("MEDSEG_FUZZ_SEED", "0"))
FUZZ_ONLY = os.environ.get("MEDSEG_FUZZ_ONLY", "")
#: share of the inputs per format
SHARES = {"nifti": 0.4, "nrrd": 0.25, "dicom": 0.35}
TIMEOUT_S = 30
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class FuzzTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so neither the CLI's error handler nor CliRunner swallows it."""


def _on_alarm(signum, frame):
    raise FuzzTimeout()


def reason_key(line: str, names: list[str]) -> str:
    """An error line without its file names, paths and numbers: the refusal's reason, for the tally."""
    text = line.removeprefix("medseg: error: ")
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(name, "")
    text = re.sub(r"^[:\s]+", "", text)
    text = re.sub(r"(?<![\w.])/[^\s\"')]+", "<path>", text)
    text = re.sub(r"\bseries [^\s:]+:", "series <id>:", text)
    text = re.sub(r"(?<!\w)'[^']*'", "'…'", text)
    text = re.sub(r"[-+]?\d[\d.]*(e[-+]?\d+)?", "#", text)
    return " ".join(text.split())[:90]


# --- reference geometry, computed without medseg ----------------------------------------------------


def _nifti_reference(path: Path):
    img = nib.load(str(path))
    h = img.header
    return {
        "shape": tuple(img.shape),
        "affine": img.affine,
        "qform_code": int(h["qform_code"]),
        "sform_code": int(h["sform_code"]),
        "fields": _nifti_geometry_fields(h),
    }


def _nifti_geometry_fields(header) -> np.ndarray:
    """The raw qform/sform fields (an unusable qform is compared as stored, not as a matrix)."""
    keys = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z")
    return np.concatenate([np.ravel(np.asarray(header[k], dtype=np.float64)) for k in keys] + [header["pixdim"][:4]])


def _nrrd_reference(path: Path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(image.GetOrigin())
    return {"shape": tuple(image.GetSize()), "affine": affine}


def _dicom_reference(path: Path):
    """The grid of the slices medseg used, from their headers: in-plane axes from
    ImageOrientationPatient x PixelSpacing, slice axis from the first to the last position
    (``--keep-tilt``, so no resampling), origin at the first slice; LPS -> RAS."""
    import pydicom

    from medseg.io import ReadOptions, read_volume

    volume = read_volume(path, ReadOptions(keep_tilt=True))
    frames = volume.meta["dicom"]["frames"]
    headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in {f["path"] for f in frames}}
    geometry = [_frame_geometry(headers[f["path"]], f["frame"]) for f in frames]
    first = headers[frames[0]["path"]]
    iop, spacing = geometry[0][1], geometry[0][2]
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    positions = sorted((g[0] for g in geometry), key=normal.dot)
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]
    lps[:3, 1] = col * spacing[0]
    lps[:3, 3] = positions[0]
    if len(positions) > 1:
        lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    shape = (int(first.Columns), int(first.Rows), len(positions))
    return {"shape": shape, "affine": affine, "single_slice": len(positions) == 1, "volume": volume}


def _frame_geometry(ds, frame: int | None):
    """(position, orientation, pixel spacing) of one image, from its own tags or, in an enhanced
    object, from the frame's functional groups (per-frame first, then shared)."""

    def find(sequence: str, keyword: str):
        if frame is None:
            return ds[keyword].value
        for groups in (ds.PerFrameFunctionalGroupsSequence[frame], ds.SharedFunctionalGroupsSequence[0]):
            if sequence in groups and keyword in groups[sequence][0]:
                return groups[sequence][0][keyword].value
        raise KeyError(keyword)

    def floats(sequence, keyword):
        return np.array([float(x) for x in find(sequence, keyword)])

    return (
        floats("PlanePositionSequence", "ImagePositionPatient"),
        floats("PlaneOrientationSequence", "ImageOrientationPatient"),
        floats("PixelMeasuresSequence", "PixelSpacing"),
    )


def check_grid(inp: fm.FuzzInput, out_path: Path) -> str | None:
    """None when the label file sits on the input's grid; else what differs."""
    out = nib.load(str(out_path))
    try:
        ref = {"nifti": _nifti_reference, "nrrd": _nrrd_reference, "dicom": _dicom_reference}[inp.kind](inp.path)
    except Exception as err:  # noqa: BLE001 - the reference reader refuses what medseg accepted
        return f"medseg wrote labels but the reference reader fails: {type(err).__name__}: {str(err)[:160]}"
    if tuple(out.shape) != ref["shape"]:
        return f"shape {tuple(out.shape)} != input {ref['shape']}"
    if inp.kind == "nifti":
        if not np.allclose(out.affine, ref["affine"], rtol=1e-6, atol=1e-6):
            return f"affine {out.affine.tolist()} != input {ref['affine'].tolist()}"
        for key in ("qform_code", "sform_code"):
            if int(out.header[key]) != ref[key]:
                return f"{key} {int(out.header[key])} != input {ref[key]}"
        if not np.allclose(_nifti_geometry_fields(out.header), ref["fields"], rtol=1e-6, atol=1e-6, equal_nan=True):
            return "qform/sform/pixdim fields differ from the input's"
        return None
    # NRRD and DICOM labels are new NIfTI files: float32 header fields, so ~1e-5 mm
    if not np.allclose(out.affine, ref["affine"], rtol=1e-6, atol=1e-4):
        return f"affine {np.round(out.affine, 5).tolist()} != input {np.round(ref['affine'], 5).tolist()}"
    if int(out.header["sform_code"]) == 0 and int(out.header["qform_code"]) == 0:
        return "label file has neither qform nor sform"
    if inp.kind == "dicom" and not np.allclose(out.affine, ref["volume"].affine, rtol=1e-6, atol=1e-4):
        return "label affine differs from the reader's Volume"
    return None


# --- one input --------------------------------------------------------------------------------------


def run_one(runner: CliRunner, inp: fm.FuzzInput, out_dir: Path) -> tuple[str, str]:
    """(outcome, detail): outcome is ``output``, ``refusal`` or ``failure``."""
    out_dir.mkdir()
    out_path = out_dir / "labels.nii.gz"
    args = ["infer", str(inp.path), "-o", str(out_path), "-q", "--device", "cpu", "--force-modality"]
    if inp.kind == "dicom":
        args.append("--keep-tilt")
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(TIMEOUT_S)
    try:
        result = runner.invoke(main, args)
    except FuzzTimeout:
        return "failure", f"no result within {TIMEOUT_S} s"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    output = result.output
    left = sorted(p.name for p in out_dir.iterdir())
    if "Traceback" in output:
        return "failure", f"traceback in output: {output[-600:]}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return "failure", f"uncaught {type(result.exception).__name__}: {result.exception}"
    if any(TMP_MARKER in name for name in left):
        return "failure", f"temporary file left behind: {left}"
    if result.exit_code == 0:
        lines = [line for line in output.splitlines() if line and not line.startswith("medseg: warning: ")]
        if len(lines) != 1 or " -> " not in lines[0]:  # medseg's warnings, then its one summary line
            return "failure", f"exit 0 with stray output: {lines[:4]}"
        if left != ["labels.json", "labels.nii.gz"]:
            return "failure", f"exit 0 but the output folder holds {left}"
        problem = check_grid(inp, out_path)
        return ("failure", f"label file off the input's grid: {problem}") if problem else ("output", "")
    if result.exit_code != 1:
        return "failure", f"exit code {result.exit_code}: {output[-400:]}"
    errors = [line for line in output.splitlines() if line.startswith("medseg: error:")]
    if len(errors) != 1:
        return "failure", f"{len(errors)} error lines: {output[-600:]}"
    others = [line for line in output.splitlines() if line and not line.startswith("medseg: ")]
    if others:
        return "failure", f"stray output besides the error: {others[:3]}"
    if left:
        return "failure", f"refused but left files: {left}"
    line = errors[0]
    names = [inp.path.name, *(f.name for f in inp.files)]
    if not any(name in line for name in names):
        return "failure", f"error does not name the input: {line}"
    if "error: unexpected " in line or "--debug" in line:
        return "failure", f"unexpected error: {line}"
    return "refusal", reason_key(line, [str(inp.path), *map(str, inp.files), *names])


# --- the suite --------------------------------------------------------------------------------------


TALLY: dict[str, dict] = {}


@pytest.fixture(scope="module")
def fuzz_bases(test_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-bases")
    return {
        "nifti": fm.nifti_bases(test_data),
        "nrrd": fm.nrrd_bases(test_data, folder),
        "dicom": fm.dicom_bases(test_data),
    }


@pytest.fixture(scope="module", autouse=True)
def fuzz_report(tmp_path_factory):
    yield
    if not TALLY:
        return
    total = {
        "seed": FUZZ_SEED,
        "n": FUZZ_N,
        "inputs": sum(t["inputs"] for t in TALLY.values()),
        "outputs": sum(t["outputs"] for t in TALLY.values()),
        "refusals": sum(t["refusals"] for t in TALLY.values()),
        "failures": sum(t["failures"] for t in TALLY.values()),
        "seconds": round(sum(t["seconds"] for t in TALLY.values()), 1),
        "by_kind": TALLY,
    }
    text = json.dumps(total, indent=1)
    (tmp_path_factory.getbasetemp() / "fuzz_tally.json").write_text(text)
    if os.environ.get("MEDSEG_FUZZ_REPORT"):
        Path(os.environ["MEDSEG_FUZZ_REPORT"]).write_text(text)
    print(f"\nfuzzed readers (seed {FUZZ_SEED}): {text}")


def _indices(kind: str) -> list[int]:
    if FUZZ_ONLY:
        only_kind, _, index = FUZZ_ONLY.partition(":")
        return [int(index)] if only_kind == kind else []
    return list(range(int(round(FUZZ_N * SHARES[kind]))))


@pytest.mark.parametrize("kind", fm.KINDS)
def test_fuzzed_inputs_give_labels_on_their_grid_or_one_line_errors(kind, fuzz_bases, tmp_path):
    indices = _indices(kind)
    if not indices:
        pytest.skip(f"MEDSEG_FUZZ_ONLY={FUZZ_ONLY}")
    make = {"nifti": fm.make_nifti, "nrrd": fm.make_nrrd, "dicom": fm.make_dicom}[kind]
    bases = fuzz_bases[kind]
    runner = CliRunner()
    counts, reasons, failures, by_base = Counter(), Counter(), [], Counter()
    slowest = (0.0, -1)
    start = time.perf_counter()
    for i in indices:
        rng = np.random.default_rng((FUZZ_SEED, fm.KINDS.index(kind), i))
        case = tmp_path / f"c{i}"
        case.mkdir()
        inp = make(bases[int(rng.integers(len(bases)))], rng, case, i)
        tick = time.perf_counter()
        outcome, detail = run_one(runner, inp, case / "out")
        slowest = max(slowest, (time.perf_counter() - tick, i))
        counts[outcome] += 1
        if outcome == "refusal":
            reasons[detail] += 1
        elif outcome == "output":
            by_base[inp.base] += 1
        else:
            failures.append(f"{inp.describe()}: {detail}")
            keep = tmp_path.parent / f"fuzz-failures-{kind}" / f"c{i}"
            shutil.copytree(case, keep, dirs_exist_ok=True)
        shutil.rmtree(case, ignore_errors=True)
    seconds = time.perf_counter() - start
    TALLY[kind] = {
        "inputs": len(indices),
        "outputs": counts["output"],
        "refusals": counts["refusal"],
        "failures": counts["failure"],
        "seconds": round(seconds, 1),
        "slowest_input": {"index": slowest[1], "seconds": round(slowest[0], 2)},
        "outputs_by_base": dict(by_base.most_common()),
        "refusals_by_reason": dict(reasons.most_common()),
        "failure_details": failures[:200],
    }
    print(f"\n{kind}: {json.dumps(TALLY[kind], indent=1)}")
    repro = f"MEDSEG_FUZZ_SEED={FUZZ_SEED} MEDSEG_FUZZ_ONLY={kind}:<index>"
    assert not failures, f"{len(failures)} of {len(indices)} {kind} inputs failed ({repro}):\n" + "\n".join(
        failures[:25]
    )
