"""`medseg plan` shows what `medseg infer` runs: for the same input, model and budgets, every field
of `plan --json` equals the sidecar's plan (window tuning and framework accounting included)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from medseg.cli import main
from tests.conftest import ROOT, save_nifti, write_tiny_model


def _plan_and_sidecar(tmp_path, scan, name, *options):
    runner = CliRunner()
    res = runner.invoke(main, ["plan", str(scan), "--json", *options])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    out = tmp_path / f"{name}_seg.nii.gz"
    res = runner.invoke(main, ["infer", str(scan), "-o", str(out), "-q", *options])
    assert res.exit_code == 0, res.output
    return doc, json.loads(out.with_name(f"{name}_seg.json").read_text())["plan"]


@pytest.fixture(scope="module")
def long_scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    data = np.random.default_rng(0).normal(0, 300, size=(64, 64, 400)).astype(np.int16)
    return save_nifti(folder / "long.nii.gz", data, np.diag([4.0, 4.0, 4.0, 1.0])), folder


CASES = {
    "sample, default budget": ("sample", []),
    "sample, 2GB host": ("sample", ["--host-memory", "2GB"]),
    "sample, 2D model, 3GB": ("sample", ["--model", "phantom-unet2d", "--host-memory", "3GB"]),
    "long scan, tight budget (streams)": ("long", ["--host-memory", "TIGHT"]),
    "long scan, overlap 0.5": ("long", ["--overlap", "0.5"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plan_json_equals_the_sidecar_plan(tmp_path, long_scan, case):
    which, options = CASES[case]
    if which == "sample":
        scan = ROOT / "sample_data" / "phantom_ct.nii.gz"
    else:
        scan, folder = long_scan
        model = write_tiny_model(folder / "m", out_channels=16, spacing=(4.0, 4.0, 4.0), roi=[32, 32, 32])
        options = ["--model", str(model), *options]
        if "TIGHT" in options:  # below the full buffer's plan: the run has to stream
            res = CliRunner().invoke(main, ["plan", str(scan), "--json", "--device", "cpu", "--model", str(model)])
            free = json.loads(res.output)
            assert free["slab_depth"] == 0, free
            tight = (free["predicted_bytes"]["host.peak"] >> 20) - 48  # the full buffer alone is ~105 MiB
            options[options.index("TIGHT")] = f"{tight}MB"
    doc, sidecar_plan = _plan_and_sidecar(tmp_path, scan, "case", "--device", "cpu", *options)
    assert doc["fits"]
    assert {k: doc[k] for k in sidecar_plan} == sidecar_plan
    if case.startswith("long scan, tight"):
        assert sidecar_plan["slab_depth"] > 0 and sidecar_plan["budget_bytes"]["host"] == int(options[-1][:-2]) << 20
