"""Rung e of the INT8 ladder (:mod:`~edgetransfer.quantize.ladder`, whose docstring gives the
recipe and the measurements behind it): float fallback, one unit more per step, each candidate unit
quantized first to learn the nodes ONNX Runtime forces into float with it (and each pair of the
first few units too), the sets scored together against fp32 with the biases gated with their weights
(:class:`~edgetransfer.quantize.sensitivity.UnitScorer`, ``base_path``), the best few made and judged
on val."""

from __future__ import annotations

import hashlib
import itertools
import math
import time

from ..progress import log
from .graphstats import b1_ms, compute_nodes, float_node_times, node_ms
from .qat_rung import fallback_base

# Savings below this fraction of the whole file's INT8 b1 p50 are not told apart: the profiled saving of
# one node moved by 0.05-0.1 ms between runs on digits (block 0's depthwise conv 0.00-0.05 ms, the stem
# 0.00-0.10 ms, block 1's pwl conv 0.045-0.143 ms; INT8 b1 p50 6.3 ms idle, 16-18 ms loaded; 5 runs,
# 2026-12-07/08), and with the old 0.001 ms floor a unit whose saving read 0 outranked any other.
COST_RESOLUTION = 0.01


def closure(lad, base_float, ranges, want: list[str]) -> tuple[list[str], dict, str]:
    """Quantize ``base_float`` with ``want`` kept in float (``lad.td / "closure.onnx"``): (the exclusions with
    the nodes ONNX Runtime forces into float with them, requantized_by_ort: quantized, not guessed; those
    added, by node; the file's sha256, equal for two sets that give the same file)."""
    excl, added, _ = lad._quantize(base_float, lad.td / "closure.onnx", ranges, want)
    return excl, added, hashlib.sha256((lad.td / "closure.onnx").read_bytes()).hexdigest()


def run_fallback_rung(lad, sens_images: int) -> None:
    """Rung e of the ladder ``lad`` (:class:`~edgetransfer.quantize.ladder.Ladder`), as its module
    docstring says: candidates appended to ``lad.rungs``, names ``e:float_fallback:STEP[.TRIAL]``;
    ``sens_images``: calibration images the unit scores are measured on."""
    from .ladder import _score

    best = fallback_base(lad)  # the best candidate, but not an AdaRound one (see qat_rung)
    steps = lad.budget.max_steps
    cap = math.floor(lad.cfg.max_float_share * lad.n_compute + 1e-9)
    if steps <= 0 or cap <= 0:
        lad.rungs.append({"rung": "e:float_fallback", "skipped": f"max_steps {steps}, float cap {cap} compute node(s) "
                           f"({lad.cfg.max_float_share:.0%} of {lad.n_compute})", "seconds": 0.0})
        return
    s0 = time.perf_counter()
    base = best.get("_base")  # the float model a bias-corrected base was corrected from
    sx, ranked = lad._ranking(best["_float"], best["_path"], sens_images, base=base)
    units = [u for u in ranked if any(n not in best["excluded_nodes"] for n in u.nodes)]
    t_fp32, t_int8 = b1_ms(best["_float"], sx), b1_ms(best["_path"], sx)
    if lad.preset.placement == "ort" and lad.cfg.host_is_target:  # this host's kernels are the target's
        from .placement import node_time_pairs

        fp, q8 = node_time_pairs(best["_float"], best["_path"], sx[:1])  # a node INT8 runs slower costs nothing
        cost = {n: fp[n] - q8.get(n, fp[n]) for n in fp}
        how = "fp32 - INT8 kernel ms of its nodes (ORT profiler, min of 3, this host)"
    else:  # other kernels: the fp32 kernel time x the whole file's INT8 saving measured here
        saving = max(1.0 - t_int8 / t_fp32, 0.0) if t_fp32 > 0 else 0.0
        cost = {n: v * saving for n, v in float_node_times(best["_float"], node_ms(best["_float"], sx)).items()}
        how = "fp32 kernel ms of its nodes x (1 - INT8/fp32 b1 p50 of the whole file, this host)"
    floor = max(COST_RESOLUTION * t_int8, 1e-3)
    for u in units:
        u.cost_ms = max(sum(cost.get(n, 0.0) for n in u.nodes), floor)  # type: ignore[attr-defined]
    units.sort(key=lambda u: -u.mse / u.cost_ms)  # type: ignore[attr-defined]
    ranking = {"images": int(len(sx)), "fp32_b1_ms": t_fp32, "int8_b1_ms": t_int8, "seconds": time.perf_counter() - s0,
               "metric": "mean squared logit error added by the unit alone / ms it costs in float", "cost_ms": how,
               "cost_floor_ms": floor, "cost_floor": f"{COST_RESOLUTION:.0%} of int8_b1_ms (profiler resolution), >= 0.001",
               "top_units": [{**u.to_dict(), "cost_ms": u.cost_ms} for u in units[:20]]}  # type: ignore[attr-defined]
    comp = set(compute_nodes(best["_float"]))
    base_float, scorer = base or best["_float"], lad._scorer(best["_float"], best["_path"], base)
    held = list(best["excluded_nodes"])
    err = scorer.error_without(frozenset(held))
    chosen: list[str] = []  # the units added by the steps so far
    for step in range(1, steps + 1):
        s1, options, over, held_set, alone = time.perf_counter(), [], [], set(held), {}
        cands = [u for u in units if not set(u.nodes) <= held_set][: lad.cfg.fallback_candidates]
        # a unit alone may be useless or force a consumer out where it and a neighbour together are
        # neither (digits: the stem's weight + block 0's depthwise weight, 2026-12-08): pairs of the first few
        tries = [[u] for u in cands] + [list(p) for p in itertools.combinations(cands[: lad.cfg.fallback_pairs], 2)]
        for us in tries:
            name = " + ".join(u.tensor for u in us)
            want = list(dict.fromkeys(held + [n for u in us for n in u.nodes]))
            n_want = sum(n in comp for n in want)
            if n_want > cap:  # the closure only adds nodes: over already
                over.append({"unit": name, "float_compute_nodes": n_want})
                continue
            excl, added, digest = closure(lad, base_float, best["_ranges"], want)
            n_comp = sum(n in comp for n in excl)
            if n_comp > cap:
                over.append({"unit": name, "float_compute_nodes": n_comp, "forced_by_ort": added})
                continue
            new = [n for n in excl if n not in held_set]
            # one option per file: e.g. the stem's weight and its input activation (one set), or the stem's and
            # block 0's depthwise weights, with or without the Clip between them (same file, ORT folds the Clip)
            same = next((o for o in options if set(o["nodes"]) == set(new) or o["_sha"] == digest), None)
            if same is not None:
                same.setdefault("same_set", []).append(name)
                alone[name] = same["gain_mse"]
                continue
            e = scorer.error_without(frozenset(excl))
            if len(us) > 1 and err - e <= max(alone.get(u.tensor, float("-inf")) for u in us):
                continue  # no better than one of the two alone: more float nodes for nothing
            alone[name] = err - e
            c = max(sum(cost.get(n, 0.0) for n in new), floor)
            options.append({"unit": name, "units": [u.tensor for u in us], "nodes": new, "_sha": digest,
                            "float_compute_nodes": n_comp, "mse_after": e, "gain_mse": err - e, "cost_ms": c,
                            "gain_per_ms": (err - e) / c,
                            **({"forced_by_ort": added} if added else {})})
        options.sort(key=lambda o: -o["gain_per_ms"])
        shown = [{k: v for k, v in o.items() if k != "_sha"} for o in options[:5]]  # for the manifest
        if not options or options[0]["gain_mse"] <= 0:
            lad.rungs.append({"rung": f"e:float_fallback:{step}", "skipped": (
                f"no further unit keeps at most {cap} compute node(s) in float (--max-float-share "
                f"{lad.cfg.max_float_share}) and lowers the logit error" + (
                    f"; {len(over)} would keep more than {cap} compute node(s) in float, the nodes ONNX Runtime"
                    " needs with them included" if over else "")),
                "options": shown, "over_cap": over, "seconds": time.perf_counter() - s1})
            break
        # the gated error is an estimate (the other layers' corrections are not made again, a few calibration
        # images): it ranks the options, and the first fallback_trials of those that lower it are made and judged
        # on val
        tried = []
        for j, opt in enumerate([o for o in options if o["gain_mse"] > 0][: lad.cfg.fallback_trials]):
            r = lad.corrected(f"e:float_fallback:{step}" + (f".{j + 1}" if j else ""), base_float, best["_ranges"],
                               list(dict.fromkeys(held + opt["nodes"])), units=chosen + opt["units"],
                               based_on=best["rung"], prep_seconds=time.perf_counter() - s1 if not j else 0.0,
                               **({"options": shown, "over_cap": over} if not j else {}),
                               **({"ranking": ranking} if step == 1 and not j else {}))
            # what the step's float nodes cost the whole file, Q/DQ around them included (the ranking's per-node
            # cost misses that); ONNX Runtime b1 median, measured after the base's int8_b1_ms, this host
            r["b1_ms"] = b1_ms(r["_path"], sx)
            r["b1_vs_base"] = r["b1_ms"] / t_int8 if t_int8 > 0 else None
            if r["float_compute_nodes"] > cap:  # a closure that moved between two quantizations: never chosen
                r.update(holds=False, _score_penalty=True, over_float_cap=(
                    f"{r['float_compute_nodes']} compute node(s) in float after the exclusions ONNX Runtime needs "
                    f"> cap {cap} (--max-float-share {lad.cfg.max_float_share}): measured, never chosen"))
                log(f"  INT8 rung {r['rung']}: {r['over_float_cap']}")
                continue
            tried.append((r, opt))
            if r.get("holds") or not r["num_dequantize_nodes"]:
                break
        if not tried:
            break
        r, opt = max(tried, key=lambda t: _score(t[0]))
        if r.get("holds") or not r["num_dequantize_nodes"]:
            break
        chosen += opt["units"]
        held, err = list(r["excluded_nodes"]), opt["mse_after"]
