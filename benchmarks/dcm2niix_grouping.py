"""medseg's grouping of DICOM against dcm2niix on every whole set of ../shared/data (the development set).

``tests/io/test_dcm2niix_grouping.py`` runs the same comparison on the cut-down copies in tests/data; this
script runs it by hand on the whole sets and prints what README.md ("medseg and dcm2niix") quotes: which sets
agree exactly and which differ (each unpaired volume with the ``DIFFERENCES`` row that explains it), how many of
dcm2niix's volumes pair with a medseg stack, and whether the anonymised copies group as their originals. The
comparison itself (running both tools, pairing, the table of differences) is
:mod:`tests.io.dcm2niix_pairing`, shared with the test.

    python benchmarks/dcm2niix_grouping.py [--data ../shared/data] [--no-anonymised]

Exit status 1 if anything is unexplained or a DIFFERENCES row no longer applies.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.io.dcm2niix_pairing import (  # noqa: E402 - after the path to the checkout
    ANONYMISED_SETS,
    DIFFERENCES,
    SETS,
    Comparison,
    compare,
    convert,
    dcm2niix_binary,
    same_volumes,
    source,
)


def _kind(case: str, item: str, side: int) -> str:
    """The DIFFERENCES row whose patterns (side 0: dcm2niix, 1: medseg) match an unpaired item."""
    for row in DIFFERENCES:
        if case in row.where and any(fnmatch.fnmatchcase(item, p) for p in row.where[case][side]):
            return row.kind
    return "UNEXPLAINED"


def _print_set(result: Comparison) -> None:
    n_vol = sum(o.data is not None for o in result.ours)
    status = "agrees exactly" if result.agrees_exactly else "differs"
    print(
        f"{result.case:64s} {status:14s}  dcm2niix {len(result.theirs):2d}, medseg {len(result.ours):2d} stacks "
        f"({n_vol:2d} volumes), paired {len(result.pairs):2d}"
    )
    for side, items in ((0, result.unpaired_d), (1, result.unpaired_m)):
        for item, n in Counter(items).items():
            who = "dcm2niix" if side == 0 else "medseg  "
            times = f" (x{n})" if n > 1 else ""
            print(f"    {who} only: {item}{times}  [{_kind(result.case, item, side)}]")
    for pattern in result.stale:
        print(f"    DIFFERENCES row no longer applies: {pattern}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="default: ../shared/data")
    parser.add_argument("--no-anonymised", action="store_true", help="skip the anonymised copies")
    args = parser.parse_args()
    binary = dcm2niix_binary()
    if binary is None:
        sys.exit("dcm2niix not installed (pip install dcm2niix, or the test extra)")
    missing = [case for case in SETS if not source(args.data, case).is_dir()]
    if missing:
        sys.exit(f"{args.data}: sets not found: {missing}")
    start = time.perf_counter()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="dcm2niix-grouping-") as tmp:
        work = Path(tmp)
        results: dict[str, Comparison] = {}
        print(f"dcm2niix ({binary}) and medseg on the {len(SETS)} DICOM sets of {args.data}\n")
        for i, case in enumerate(SETS):
            results[case] = compare(case, *convert(binary, args.data, case, work / f"set{i}"))
            _print_set(results[case])
            failures += not results[case].ok
        volumes = sum(len(r.theirs) for r in results.values())
        paired = sum(len(r.pairs) for r in results.values())
        exact = sum(r.agrees_exactly for r in results.values())
        plain = [m for r in results.values() for m in r.ours if m.label.endswith(": volume")]
        twins = sum(any(m is pm for r in results.values() for _, pm in r.pairs) for m in plain)
        print(
            f"\n{len(SETS)} shared DICOM sets: {exact} sets agree exactly; {paired} of dcm2niix's {volumes} volumes "
            f"pair with a medseg stack; {twins} of the {len(plain)} volumes medseg reads without a flag have their "
            "dcm2niix twin"
        )
        failures += twins != len(plain)
        if not args.no_anonymised:
            print(f"\nanonymised copies of {len(ANONYMISED_SETS)} sets (UIDs blank / missing):")
            same = {"medseg": 0, "dcm2niix": 0}
            for i, case in enumerate(ANONYMISED_SETS):
                theirs, ours = results[case].theirs, results[case].ours
                for how in ("blank", "missing"):
                    anon_theirs, anon_ours = convert(binary, args.data, case, work / f"anon{i}-{how}", how)
                    medseg = same_volumes(ours, anon_ours)
                    d2n = same_volumes(theirs, anon_theirs, exact=False)
                    same["medseg"] += not any(medseg)
                    same["dcm2niix"] += not any(d2n)
                    failures += any(medseg) + any(d2n)
                    note = "" if not any(medseg) and not any(d2n) else f"  medseg lost/gained {medseg}, dcm2niix {d2n}"
                    print(
                        f"  {case:62s} {how:8s} medseg {'same' if not any(medseg) else 'DIFFERENT'}, "
                        f"dcm2niix {'same' if not any(d2n) else 'different'}{note}"
                    )
            n = 2 * len(ANONYMISED_SETS)
            print(
                f"medseg: the same volumes, voxel for voxel, in {same['medseg']} of {n} copies; "
                f"dcm2niix: the same grouping in {same['dcm2niix']} of {n}"
            )
    print(f"\n{time.perf_counter() - start:.1f} s; {'all explained' if not failures else f'{failures} problem(s)'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
