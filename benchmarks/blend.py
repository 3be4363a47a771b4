"""Optimal-ratio blending against FedAvg: a paired comparison over seeds.

Datasets: (i) UCI heart disease by hospital (FLamby's Fed-Heart-Disease protocol: Linear(13->1),
SGD lr 0.001, batch 4, 100 local steps, 15 rounds); (ii) MNIST over 10 sites by Dirichlet(alpha),
alpha in {0.1, 0.3, 1.0} (McMahan 2NN MLP, SGD lr 0.05, batch 32, one local epoch, 20 rounds,
1,000 examples per site). For each seed, three federations are trained:

A. FedAvg on train + validation together (``val_fraction = 0``), the fair baseline. Uniform
   weights are applied to its final-round updates (they need no validation data).
B. FedAvg with a validation split held out at every site; at the last round each blend variant
   searches the same final updates: the n^tau family (power space, TPE), and the default tilt
   space with every searcher (tpe = the package default blend). Each adopts its blend only if it
   passes the acceptance test.
C. The every-round recipe (``examples/heart_blend.toml``): blend every round, power space with a
   global step factor gamma in [0.5, 4], 16 candidates.
D. With ``--oracle``, on B's final updates: upper bounds that use the TEST labels (rows marked
   †, not methods): every mix on a grid of the simplex (or Dirichlet draws for more than 5 sites)
   is scored on the test splits and the best by mean-of-sites accuracy and by log-loss are kept.
   Up to the grid's resolution, no end-of-training blend with one set of ratios and no gamma can
   beat them (with more than 5 sites the draws only estimate that bound).

Every method is scored on the test splits: pooled log-loss, pooled accuracy, mean-of-sites and
worst-site accuracy. Differences to A are paired by seed: mean, standard error and a 95%
bootstrap interval.

    python benchmarks/blend.py --dataset heart --seeds 20 --json
    python benchmarks/blend.py --dataset mnist --alphas 0.1 --seeds 20 --workers 2
    python benchmarks/blend.py --merge results/a.json results/b.json   # summarize runs together
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

SEARCHERS = ("tpe", "cmaes", "gp", "random", "grid", "evolutionary")
RECIPE = {"schedule": "every_round", "space": "power", "gamma": True, "gamma_range": [0.5, 4.0], "budget": 16}
FLAMBY = {"fedavg": 0.685, "best_single_hospital": 0.722, "pooled": 0.735}
METRICS = ("test_loss", "test_acc", "test_acc_mean_sites", "test_acc_worst_site")


def job_for(
    dataset: str,
    seed: int,
    alpha: float | None,
    val_fraction: float,
    blend: dict | None,
    data_dir: str | None,
    strategy: str = "fedavg",
) -> Any:
    from fedblend.jobs import parse_job

    d: dict[str, Any] = {"val_fraction": val_fraction, **({"dir": data_dir} if data_dir else {})}
    if dataset == "heart":
        raw: dict[str, Any] = {
            "rounds": 15,
            "data": {"dataset": "heart_disease", "partition": "natural", **d},
            "model": {"name": "logreg"},
            "train": {"optimizer": "sgd", "lr": 0.001, "batch_size": 4, "local_steps": 100, "loss": "bce"},
        }
        if strategy != "fedavg":  # FLamby's tuned server optimizer and client lr (benchmarks/flamby_heart.py)
            from flamby_heart import STRATEGIES as FLAMBY_STRATEGIES

            params, client_lr = {k.lower(): v for k, v in FLAMBY_STRATEGIES.items()}[strategy]
            raw["strategy"], raw["train"]["lr"] = dict(params), client_lr
    else:
        raw = {
            "rounds": 20,
            "model": {"name": "mlp"},
            "data": {
                "dataset": "mnist",
                "partition": "dirichlet",
                "alpha": alpha,
                "num_sites": 10,
                "examples_per_site": 1000,
                **d,
            },
            "train": {"optimizer": "sgd", "lr": 0.05, "batch_size": 32, "local_epochs": 1},
        }
    raw.setdefault("strategy", {"name": "fedavg"})
    raw.update(
        name=f"bench-{dataset}-{seed}",
        seed=seed,
        eval={"every": 0, "splits": ["test"]},
        pool={"kind": "sequential"},
    )
    if blend is not None:
        raw["blend"] = blend
    return parse_job(raw)


def test_metrics(pool: Any, weights: Any) -> dict[str, float]:
    from fedblend.engine.federation import summarize_reports
    from fedblend.records import EvalReport

    reps = [r for r in pool.evaluate(weights, pool.site_ids(), "test") if isinstance(r, EvalReport)]
    return summarize_reports(reps, "test")


class EndProbe:
    """A Synthesizer that, at the last round, runs ``variants`` on the final updates and keeps FedAvg."""

    def __init__(self, variants: dict[str, Any], seed: int) -> None:
        self.variants, self.seed, self.results = variants, seed, {}

    def due(self, round: int, last_round: int) -> bool:
        return round == last_round

    def synthesize(self, pool: Any, current: Any, merged: Any, updates: Any, round: int) -> tuple[Any, None]:
        from fedblend.blend import BlendSynthesizer, Candidate, blend_weights

        self.results["fedavg"] = {**test_metrics(pool, merged)}
        for name, spec in self.variants.items():
            if spec == "uniform":
                k = len(updates)
                cand = Candidate({"all": {u.site_id: 1.0 / k for u in updates}})
                w = blend_weights({u.site_id: u.weights for u in updates}, cand, reference=merged)
                self.results[name] = test_metrics(pool, w)
                continue
            if spec == "oracle":
                self.results.update(oracle(pool, merged, updates, self.seed))
                continue
            out = BlendSynthesizer(spec, self.seed).search(pool, current, merged, updates, round)
            rec = out.record
            self.results[name] = {
                **test_metrics(pool, out.weights),
                "accepted": float(out.accepted),
                "val_gain": rec["gain"],
                "models_sent": rec["communication"]["models_sent"],
                "vs_round_downloads": rec["communication"]["vs_round_downloads"],
                "search_s": rec["timing"]["total_s"],
            }
        return merged, None


def oracle_ratios(k: int, seed: int, steps: int = 20, samples: int = 600) -> np.ndarray:
    """Ratio vectors for the oracle: the simplex on a grid of ``1/steps`` when there are at most 5
    sites (1,771 points for 4), else ``samples`` uniform-Dirichlet draws plus the vertices."""
    if k <= 5:
        grid = np.stack(np.meshgrid(*[np.arange(steps + 1)] * (k - 1), indexing="ij"), -1).reshape(-1, k - 1)
        grid = grid[grid.sum(1) <= steps]
        return np.concatenate([grid, steps - grid.sum(1, keepdims=True)], 1) / steps
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x0AC1E]))
    return np.concatenate([np.eye(k), rng.dirichlet(np.ones(k), size=samples)])


def oracle(pool: Any, merged: Any, updates: Any, seed: int) -> dict[str, dict[str, float]]:
    """Upper bounds for any mix of the final updates (gamma = 1), chosen by looking at the TEST
    labels, which no method may do: the ratios with the best mean-of-sites test accuracy, and those
    with the lowest pooled test log-loss. FedAvg's own ratios are among the candidates."""
    from fedblend.blend import Candidate, blend_weights

    ids = [u.site_id for u in updates]
    models = {u.site_id: u.weights for u in updates}
    n = np.array([u.num_examples for u in updates], dtype=np.float64)
    best_acc: dict[str, float] | None = None
    best_loss: dict[str, float] | None = None
    for r in np.concatenate([(n / n.sum())[None], oracle_ratios(len(ids), seed)]):
        cand = Candidate({"all": {i: float(x) for i, x in zip(ids, r, strict=True)}})
        m = test_metrics(pool, blend_weights(models, cand, reference=merged))
        if best_acc is None or m["test_acc_mean_sites"] > best_acc["test_acc_mean_sites"]:
            best_acc = m
        if best_loss is None or m["test_loss"] < best_loss["test_loss"]:
            best_loss = m
    assert best_acc is not None and best_loss is not None
    return {"oracle: best mean-site acc †": best_acc, "oracle: best log-loss †": best_loss}


def run_cell(
    dataset: str,
    alpha: float | None,
    seed: int,
    data_dir: str | None,
    extra: dict[str, Any] | None = None,
    strategy: str = "fedavg",
    with_oracle: bool = False,
) -> dict[str, dict[str, float]]:
    import optuna
    import torch

    from fedblend.runner import build_federation, build_pool, prepare

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    vf = 0.2 if dataset == "heart" else 0.1

    def train(job: Any, probe: EndProbe | None) -> Any:
        prepared = prepare(job)
        pool = build_pool(job, prepared)
        try:
            fed = build_federation(job, prepared, pool, None)
            if probe is not None:
                fed.synthesizer = probe
            fed.run()
            return fed
        finally:
            pool.close()

    out: dict[str, dict[str, float]] = {}
    probe_a = EndProbe({"uniform": "uniform"}, seed)
    train(job_for(dataset, seed, alpha, 0.0, None, data_dir, strategy), probe_a)
    out["fedavg"], out["uniform"] = probe_a.results["fedavg"], probe_a.results["uniform"]
    variants: dict[str, Any] = {"n^tau (tpe)": {"space": "power"}}
    variants.update({f"tilt {s}" + (" (default)" if s == "tpe" else ""): {"searcher": s} for s in SEARCHERS})
    variants.update(extra or {})
    if with_oracle:
        variants["oracle"] = "oracle"
    probe_b = EndProbe(variants, seed)
    train(job_for(dataset, seed, alpha, vf, None, data_dir, strategy), probe_b)
    out["fedavg (train only)"] = probe_b.results.pop("fedavg")
    out.update(probe_b.results)
    fed = train(job_for(dataset, seed, alpha, vf, RECIPE, data_dir, strategy), None)
    recs = [r.blend for r in fed.history if r.blend]
    out["every-round recipe"] = {
        **fed.history[-1].global_metrics,
        "accepted": float(np.mean([r.get("decision") == "accepted" for r in recs])),
        "models_sent": float(np.mean([r["communication"]["models_sent"] for r in recs])),
        "vs_round_downloads": float(np.mean([r["communication"]["vs_round_downloads"] for r in recs])),
        "search_s": float(np.mean([r["timing"]["total_s"] for r in recs])),
    }
    return {
        k: {m: float(v) for m, v in d.items() if not m.endswith("_loss") or m == "test_loss"} for k, d in out.items()
    }


def paired(diffs: np.ndarray, seed: int = 0, n_boot: int = 10_000) -> tuple[float, float, float, float]:
    """Mean, standard error and a 95% percentile-bootstrap interval of paired differences."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB007]))
    m = float(diffs.mean())
    se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    boots = diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return m, se, float(lo), float(hi)


def summarize(cells: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    methods = [m for m in cells[0] if all(m in c for c in cells)]  # --variant rows only where every seed has them
    base = {m: np.array([c["fedavg"][m] for c in cells]) for m in METRICS}
    out: dict[str, dict[str, Any]] = {}
    for name in methods:
        vals = {m: np.array([c[name][m] for c in cells]) for m in METRICS}
        row: dict[str, Any] = {m: float(v.mean()) for m, v in vals.items()}
        for m in METRICS:
            row["d_" + m] = paired(vals[m] - base[m])
        for extra in ("accepted", "vs_round_downloads", "models_sent", "search_s"):
            if extra in cells[0][name]:
                row[extra] = float(np.mean([c[name][extra] for c in cells]))
        out[name] = row
    return out


def print_table(title: str, summary: dict[str, dict[str, Any]], console: Any) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    cols = [
        "method",
        "test log-loss",
        "pooled acc",
        "mean-site acc",
        "worst-site acc",
        "Δ log-loss vs FedAvg [95% CI]",
        "Δ pooled acc",
        "Δ worst-site acc",
        "accepted",
        "extra downloads",
    ]
    for c in cols:
        t.add_column(c, justify="left" if c == "method" else "right")

    def d(row: dict[str, Any], m: str, scale: float = 1.0) -> str:
        mean, se, lo, hi = row["d_" + m]
        return f"{mean * scale:+.4f} ± {se * scale:.4f} [{lo * scale:+.4f}, {hi * scale:+.4f}]"

    for name, row in summary.items():
        t.add_row(
            name,
            f"{row['test_loss']:.4f}",
            f"{row['test_acc']:.4f}",
            f"{row['test_acc_mean_sites']:.4f}",
            f"{row['test_acc_worst_site']:.4f}",
            "" if name == "fedavg" else d(row, "test_loss"),
            "" if name == "fedavg" else f"{row['d_test_acc'][0]:+.4f}",
            "" if name == "fedavg" else f"{row['d_test_acc_worst_site'][0]:+.4f}",
            f"{row['accepted']:.2f}" if "accepted" in row else "",
            f"{row['vs_round_downloads']:.0f}x round" if "vs_round_downloads" in row else "",
        )
    console.print(t)


def show(key: str, cells: list[dict[str, dict[str, float]]], console: Any) -> dict[str, Any]:
    summary = summarize(cells)
    print_table(
        f"{key}: {len(cells)} seeds, test metrics (differences paired by seed, vs "
        f"{key.rsplit('-', 1)[1] if key.endswith(('-fedadam', '-fedyogi')) else 'FedAvg'} on train+val)",
        summary,
        console,
    )
    if key.startswith("heart"):
        console.print(
            f"heart, mean-of-hospitals test accuracy: default blend {summary['tilt tpe (default)']['test_acc_mean_sites']:.4f}, "
            f"every-round recipe {summary['every-round recipe']['test_acc_mean_sites']:.4f}; FLamby FedAvg {FLAMBY['fedavg']}, "
            f"best single hospital {FLAMBY['best_single_hospital']}, pooled-data ceiling {FLAMBY['pooled']}"
        )
        if "oracle: best mean-site acc †" in summary:
            console.print(
                "upper bound of any end-of-training mix (ratios chosen on the test labels): mean-of-hospitals "
                f"{summary['oracle: best mean-site acc †']['test_acc_mean_sites']:.4f}"
            )
    return summary


def compare(key: str, cells: list[dict[str, dict[str, float]]], a: str, b: str, console: Any) -> None:
    """Paired differences between rows ``a`` and ``b`` over the seeds of one setting."""
    missing = [m for m in (a, b) if not all(m in c for c in cells)]
    if missing:
        console.print(f"{key}: --compare: no row {missing[0]!r} in every seed (rows: {', '.join(cells[0])})")
        return
    parts = []
    for m in METRICS:
        mean, se, lo, hi = paired(np.array([c[a][m] - c[b][m] for c in cells]))
        parts.append(f"{m} {mean:+.4f} ± {se:.4f} [{lo:+.4f}, {hi:+.4f}]")
    times = [
        f"{np.mean([c[r]['search_s'] for c in cells]):.2f} s" if "search_s" in cells[0][r] else "-" for r in (a, b)
    ]
    console.print(f"{key}, {a!r} - {b!r} over {len(cells)} seeds: " + "; ".join(parts))
    console.print(f"{key}, mean search time per synthesis: {a!r} {times[0]}, {b!r} {times[1]}")


def merged_results(paths: list[str]) -> dict[str, dict[int, Any]]:
    """Per-seed cells from earlier ``--out`` files, by setting and seed (a later file wins a seed)."""
    out: dict[str, dict[int, Any]] = {}
    for p in paths:
        rep = json.loads(Path(p).read_text())
        for key, val in rep["settings"].items():
            seeds = val["seeds"] if "seeds" in val else rep["seeds"]  # merged files keep seeds per setting
            out.setdefault(key, {}).update(dict(zip(seeds, val["per_seed"], strict=True)))
    return out


def parse_variants(ap: argparse.ArgumentParser, specs: list[str]) -> dict[str, Any]:
    """``NAME=JSON`` pairs to blend specs, each checked by the package's own ``[blend]`` validation."""
    from fedblend.blend.config import parse_blend_spec
    from fedblend.errors import ConfigError

    out: dict[str, Any] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        if not sep or not name.strip():
            ap.error(f"--variant {spec!r}: expected NAME=JSON, e.g. 'gamma 4={{\"gamma\": true}}'")
        try:
            keys = json.loads(raw)
            if not isinstance(keys, dict):
                raise ValueError("not a JSON object")
            parse_blend_spec(keys)
        except (ValueError, ConfigError) as exc:
            ap.error(f"--variant {name.strip()!r}: {exc}")
        out[name.strip()] = keys
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("heart", "mnist", "all"), default="heart")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    ap.add_argument("--workers", type=int, default=1, help="processes running seeds in parallel")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="benchmarks/results/blend.json", help="all per-seed numbers are written here")
    ap.add_argument("--merge", nargs="+", metavar="FILE", help="train nothing: summarize earlier --out files together")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an extra end-of-training blend on the train-only run, as [blend] keys in JSON, e.g. "
        '\'tilt tpe + gamma 4={"gamma": true, "gamma_range": [0.5, 4]}\' (repeatable)',
    )
    ap.add_argument(
        "--strategy",
        choices=("fedavg", "fedadam", "fedyogi"),
        default="fedavg",
        help="heart only: train with FLamby's tuned server optimizer instead of FedAvg; the 'fedavg' rows are then "
        "that strategy's own aggregate (the blend's trial 0)",
    )
    ap.add_argument(
        "--oracle",
        action="store_true",
        help="add two rows (marked †) that no method can reach: the mix of the final updates with the best "
        "test mean-of-sites accuracy and the one with the lowest test log-loss, found by scoring a grid of "
        "ratios ON THE TEST SPLITS; an upper bound (to the grid's resolution) for end-of-training blends "
        "with one set of ratios and no gamma",
    )
    ap.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="also print the paired differences A - B between two rows (e.g. 'tilt gp' 'tilt tpe (default)'), "
        "with bootstrap intervals, and their mean search times; works with --merge",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    if args.strategy != "fedavg" and args.dataset != "heart":
        ap.error("--strategy applies to --dataset heart only")
    extra = parse_variants(ap, args.variant)
    from rich.console import Console

    console = Console(width=200)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"recipe": RECIPE, "settings": {}}
    if args.merge:
        for key, by_seed in merged_results(args.merge).items():
            seeds = sorted(by_seed)
            cells = [by_seed[s] for s in seeds]
            report["settings"][key] = {"seeds": seeds, "summary": show(key, cells, console), "per_seed": cells}
    else:
        settings = ([("heart", None)] if args.dataset in ("heart", "all") else []) + (
            [("mnist", a) for a in args.alphas] if args.dataset in ("mnist", "all") else []
        )
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        report["seeds"] = seeds
        with ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=get_context("spawn")) as ex:
            for dataset, alpha in settings:
                key = dataset if alpha is None else f"{dataset}-alpha{alpha:g}"
                key += "" if args.strategy == "fedavg" else f"-{args.strategy}"
                futures = {
                    ex.submit(run_cell, dataset, alpha, seed, args.data_dir, extra, args.strategy, args.oracle): seed
                    for seed in seeds
                }
                by_seed = {}
                for fut in as_completed(futures):  # progress, one line per finished seed
                    seed = futures[fut]
                    by_seed[seed] = fut.result()
                    with open(args.out + ".partial.jsonl", "a") as fh:  # survives an interrupted run
                        fh.write(json.dumps({"setting": key, "seed": seed, "cell": by_seed[seed]}) + "\n")
                    console.print(
                        f"{key}: seed {seed} done ({len(by_seed)}/{len(seeds)}, {time.perf_counter() - t0:.0f} s)"
                    )
                cells = [by_seed[seed] for seed in seeds]
                report["settings"][key] = {"seeds": seeds, "summary": show(key, cells, console), "per_seed": cells}
        console.print(f"{time.perf_counter() - t0:.0f} s in all")
    if args.compare:
        for key, val in report["settings"].items():
            compare(key, val["per_seed"], *args.compare, console)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    if args.json:
        key = next((k for k in report["settings"] if k.startswith("heart")), next(iter(report["settings"])))
        s = report["settings"][key]["summary"]
        acc = "test_acc_mean_sites"
        print(
            json.dumps(
                {
                    "setting": key,
                    "seeds": len(report["settings"][key]["seeds"]),
                    "fedavg_acc": s["fedavg"][acc],
                    "uniform_acc": s["uniform"][acc],
                    "blend_acc": s["tilt tpe (default)"][acc],
                    "blend_vs_fedavg_logloss_ci": list(s["tilt tpe (default)"]["d_test_loss"][2:]),
                    "recipe_acc": s["every-round recipe"][acc],
                    "recipe_vs_fedavg_logloss_ci": list(s["every-round recipe"]["d_test_loss"][2:]),
                    **({"pooled_ceiling": FLAMBY["pooled"]} if key.startswith("heart") else {}),
                }
            )
        )


if __name__ == "__main__":
    main()
