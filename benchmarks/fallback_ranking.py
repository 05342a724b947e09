"""How well rung e's set error ranks float-fallback sets, against the val KL each set really gets.

    python benchmarks/fallback_ranking.py BUNDLE [--target x86-cpu] [--pairs 6] [--units 10]

BUNDLE: a finished bundle (e.g. runs/demo after ``make demo``); it is copied to a temp dir first
(the INT8 stage writes into its bundle), nothing of BUNDLE is changed. The INT8 ladder runs as
``edgetransfer quantize`` runs it up to rung e; rung e is replaced by this measurement: the first
``--units`` units of the ranking and each pair of the first ``--pairs`` give the candidate sets
within the float cap (the nodes ONNX Runtime forces out included, learnt by quantizing), one per
distinct file; each set's logit error reduction is measured by the gated scorer both ways,
``fp32_ref`` (:class:`edgetransfer.quantize.sensitivity.UnitScorer` with ``base_path``: what rung e
uses) and ``corrected_ref`` (without it: against the bias-corrected float model, a float node keeping
its correction; rung e before 2026-12-08), and then every set is made, bias-corrected and judged on
val as rung e does. Reported: per set both gains and its val mean KL / agreement; for each scorer the
Spearman rank correlation of gain with -KL and the rank it gives the set with the lowest KL (1 =
first: rung e judges its first 3). Prints one JSON line at the end.

Measured 2026-12-08 on a 2-CPU AMD EPYC (AVX2, no VNNI), ``make demo`` digits bundle, defaults
(7 distinct files within the 2-node cap, 450 s with another job on the 2 cores): the stem + block 0's
depthwise conv (val KL 0.0130; the other sets 0.0486-0.0631, no fallback 0.0500) ranked 1st by
``fp32_ref`` (gain 0.264, the next 0.124, every other set < 0; Spearman 0.64) and 6th of 7 by
``corrected_ref`` (0.603 against 1.970 first; Spearman 0.36).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import edgetransfer.quantize.ladder as ladder_mod
from edgetransfer.progress import set_quiet
from edgetransfer.quantize.graphstats import compute_nodes
from edgetransfer.quantize.fallback_rung import closure
from edgetransfer.quantize.qat_rung import fallback_base
from edgetransfer.quantize.sensitivity import UnitScorer


def _ranks(v: list[float]) -> np.ndarray:
    return np.argsort(np.argsort(-np.asarray(v, float))).astype(float)


def _spearman(a: list[float], b: list[float]) -> float:
    if len(a) < 3:
        return float("nan")
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def measure(lad, units_n: int, pairs_n: int, out: dict) -> None:
    best = fallback_base(lad)
    base = best.get("_base")
    cap = math.floor(lad.cfg.max_float_share * lad.n_compute + 1e-9)
    sx, ranked = lad._ranking(best["_float"], best["_path"], 8, base=base)
    new = lad._scorer(best["_float"], best["_path"], base)
    old = UnitScorer(best["_float"], best["_path"], sx, lad.input_name)
    base_float, comp, held = base or best["_float"], set(compute_nodes(best["_float"])), list(best["excluded_nodes"])
    units = [u for u in ranked if not set(u.nodes) <= set(held)]
    tries = [[u] for u in units[:units_n]] + [list(p) for p in itertools.combinations(units[:pairs_n], 2)]
    e_new0, e_old0 = new.error_without(frozenset(held)), old.error_without(frozenset(held))
    seen, rows = set(), []
    for us in tries:
        want = list(dict.fromkeys(held + [n for u in us for n in u.nodes]))
        if sum(n in comp for n in want) > cap:
            continue
        excl, _, digest = closure(lad, base_float, best["_ranges"], want)
        if sum(n in comp for n in excl) > cap or digest in seen:
            continue
        seen.add(digest)
        fe = frozenset(excl)
        r = lad.corrected("x:" + " + ".join(u.tensor for u in us), base_float, best["_ranges"], excl)
        rows.append({"units": [u.tensor for u in us], "nodes": [n for n in excl if n not in held],
                     "gain_fp32_ref": e_new0 - new.error_without(fe), "gain_corrected_ref": e_old0 - old.error_without(fe),
                     "val_mean_kl": r["judgement"]["fidelity"]["mean_kl"], "val_agreement": r["parity"]["agreement"]})
        print(json.dumps(rows[-1]), flush=True)
    kl = [-r["val_mean_kl"] for r in rows]
    best_i = int(np.argmax(kl)) if rows else None
    out.update(base_rung=best["rung"], base_val_mean_kl=best["judgement"]["fidelity"]["mean_kl"], float_cap=cap, sets=rows)
    for k in ("fp32_ref", "corrected_ref"):
        g = [r[f"gain_{k}"] for r in rows]
        out[f"spearman_{k}"] = _spearman(g, kl)
        out[f"best_set_rank_{k}"] = int(_ranks(g)[best_i]) + 1 if rows else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--target", default="x86-cpu")
    ap.add_argument("--units", type=int, default=10, help="single units tried (the first of the ranking)")
    ap.add_argument("--pairs", type=int, default=6, help="pairs of the first N units tried")
    args = ap.parse_args()
    from edgetransfer.errors import BudgetExceededError
    from edgetransfer.pipeline import stage_quantize
    from edgetransfer.targets import load_target

    out: dict = {"bundle": str(args.bundle), "target": args.target}
    ladder_mod.Ladder.rung_fallback = lambda self, s: measure(self, args.units, args.pairs, out)
    ladder_mod.Ladder.rung_qat = lambda self: None
    s0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fallback-ranking-") as td:
        b = Path(td) / "b"
        shutil.copytree(args.bundle, b, ignore=shutil.ignore_patterns("*.int8.*", "report.*", "app", "builds"))
        set_quiet(True)
        try:
            stage_quantize(b, load_target(args.target))
        except BudgetExceededError:
            pass  # expected: rung e and f are replaced by the measurement
    out["seconds"] = time.perf_counter() - s0
    if "sets" not in out:
        out["note"] = "rung e did not run: a rung a-c candidate held the budget (nothing to rank)"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
