"""BlendSynthesizer: search the sites' mixing ratios, adopt the best blend only when it is really better.

Called by the round loop (``fedblend.engine.federation.Synthesizer``) after aggregation, when due:

1. a ratio space over the sites that delivered updates (``spaces.py``);
2. an Optuna study, driven by ask/tell: FedAvg is trial 0 (the round's own aggregate, unchanged),
   uniform weights trial 1, the previous synthesis's best trial 2 (warm start; ``restore`` reads it
   back from the run store's records for a resumed run or a new training cycle), then the
   searcher's proposals, asked ``batch_size`` at a time, scored, and told together, until
   ``budget`` candidates were scored;
3. every candidate is scored through the signal (``signal.py``): by default the sites score it on
   their validation split against FedAvg and return five scalar sums each;
4. the best candidate by the objective (or, with two objectives, the Pareto-front member with the
   best pooled loss among those no worse than FedAvg at the worst site) faces the acceptance test
   (``scoring.accept``): adopted if its paired gain over FedAvg beats the margin and k standard
   errors, else FedAvg is kept and the record says "not accepted", with the numbers.

    synth = build_synthesizer({"searcher": "tpe", "budget": 24}, seed=0)
    weights, record = synth.synthesize(pool, current, merged, updates, round=10)
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedblend.blend.config import BlendSpec, parse_blend_spec
from fedblend.blend.mixing import blend_weights, tensor_groups
from fedblend.blend.record import trial_entry
from fedblend.blend.scoring import Score, accept, pareto_front, score_reports
from fedblend.blend.searchers import make_sampler
from fedblend.blend.signal import EvalPool, FederatedValidation, ServerValidation, Signal, load_server_data
from fedblend.blend.spaces import Candidate, RatioSpace, make_space, split_groups
from fedblend.errors import ConfigError
from fedblend.records import EvalReport, SiteFailure, SiteUpdate
from fedblend.task.base import Task
from fedblend.weights import Weights

__all__ = ["BlendSynthesizer", "BlendOutcome", "build_synthesizer"]

log = logging.getLogger(__name__)
RECORD_VERSION = 1


@dataclass(frozen=True)
class BlendOutcome:
    """One synthesis: the weights to adopt, the best candidate (adopted or not), and the record."""

    weights: Weights
    best_weights: Weights
    accepted: bool
    record: dict[str, Any]


class BlendSynthesizer:
    """Optimal-ratio blending, configured by a ``BlendSpec`` (the job's ``[blend]`` table)."""

    def __init__(
        self,
        spec: BlendSpec | dict[str, Any] | None = None,
        seed: int = 0,
        *,
        server_validation: ServerValidation | None = None,
        storage_url: str | None = None,
    ) -> None:
        self.spec = parse_blend_spec(spec)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"blend seed must be a non-negative int (got {seed!r})")
        self.seed = seed
        if self.spec.signal == "server" and server_validation is None:
            raise ConfigError(
                '[blend].signal = "server" needs a server validation set: in a job file set [blend].server_data to '
                "an .npz file with arrays x and y; in Python pass "
                "BlendSynthesizer(spec, seed, server_validation=ServerValidation(x, y, task))"
            )
        self.signal: Signal = server_validation if self.spec.signal == "server" else FederatedValidation()  # type: ignore[assignment]
        self.storage_url = storage_url if self.spec.store_study else None
        self.previous_best: dict[str, float] | None = None
        self.previous_best_round: int | None = None
        self.history: list[dict[str, Any]] = []

    def restore(self, records: Sequence[dict[str, Any]]) -> None:
        """Pick up the warm start from stored blend records (a resumed run, a new training cycle).

        Applies the same rule as a live search, record by record in round order: the best
        parameters of the latest synthesis whose best trial was not FedAvg itself."""
        for rec in sorted(records, key=lambda r: r.get("round") or 0):
            best = rec.get("best_trial")
            if not best or not rec.get("trials"):
                continue  # skipped, or FedAvg scored best: keep the earlier warm start
            trial = next((t for t in rec["trials"] if t.get("number") == best), None)
            if trial is not None and trial.get("params"):
                self.previous_best = {k: float(v) for k, v in trial["params"].items()}
                self.previous_best_round = rec.get("round")

    # -- Synthesizer protocol --------------------------------------------------------------------
    def due(self, round: int, last_round: int) -> bool:
        s = self.spec
        if s.schedule == "every_round":
            return True
        if s.schedule == "every_n":
            return round % s.every == 0 or round == last_round
        return round == last_round

    def synthesize(
        self, pool: EvalPool, current: Weights, merged: Weights, updates: Sequence[SiteUpdate], round: int
    ) -> tuple[Weights, dict[str, Any]]:
        out = self.search(pool, current, merged, updates, round)
        return out.weights, out.record

    # -- the search ------------------------------------------------------------------------------
    def _sampler_seed(self, round: int) -> int:
        ss = np.random.SeedSequence([self.seed & 0xFFFFFFFF, round, 0xB1E4D])
        return int(ss.generate_state(1, dtype=np.uint32)[0])

    def _space(self, updates: Sequence[SiteUpdate], merged: Weights) -> tuple[RatioSpace, dict[str, str] | None]:
        s = self.spec
        groups = split_groups(list(merged), s.head) if s.groups == "body_head" else None
        space = make_space(
            s.space,
            [u.site_id for u in updates],
            [u.num_examples for u in updates],
            groups=tuple(groups) if groups else ("all",),
            gamma_range=tuple(s.gamma_range) if s.gamma else None,  # type: ignore[arg-type]
            floor=s.floor,
            tilt_range=s.tilt_range,
            tau_range=tuple(s.tau_range),  # type: ignore[arg-type]
        )
        return space, tensor_groups(merged, groups) if groups else None

    def _study(self, round: int, sampler: Any) -> Any:
        import optuna

        directions = ["minimize", "minimize"] if self.spec.two_objective else ["minimize"]
        name = f"blend-round-{round:05d}"
        storage = None
        if self.storage_url is not None:
            storage = optuna.storages.RDBStorage(self.storage_url)
            try:
                optuna.delete_study(study_name=name, storage=storage)  # a resumed run redoes the round
            except KeyError:
                pass
        return optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions)

    def search(
        self, pool: EvalPool, current: Weights, merged: Weights, updates: Sequence[SiteUpdate], round: int
    ) -> BlendOutcome:
        """Run one synthesis; see the module docstring."""
        import optuna

        s = self.spec
        t0 = time.perf_counter()
        updates = [u for u in updates if u.num_examples > 0]
        base: dict[str, Any] = {
            "version": RECORD_VERSION,
            "round": round,
            "searcher": s.searcher,
            "objective": s.objective,
            "signal": self.signal.kind,
            "split": "val",
            "budget": s.budget,
            "margin": s.margin,
            "k": s.k,
            "schedule": s.schedule,
        }
        if len(updates) < s.min_sites:
            why = f"{len(updates)} site update(s); blending needs at least min_sites = {s.min_sites}"
            return self._skip(base, merged, why)
        models = {u.site_id: u.weights for u in updates}
        space, groups = self._space(updates, merged)
        dists = space.distributions()
        seed = self._sampler_seed(round)
        sampler = make_sampler(
            s.searcher,
            seed,
            dists,
            budget=s.budget,
            grid_points=s.grid_points,
            two_objective=s.two_objective,
            options=s.sampler_options,
        )
        study = self._study(round, sampler)
        study.enqueue_trial(space.fedavg_params(), user_attrs={"label": "fedavg"})
        study.enqueue_trial(space.uniform_params(), user_attrs={"label": "uniform"})
        warm = None
        warm_from = None
        if s.warm_start and self.previous_best is not None:
            warm = space.warm_params(self.previous_best)
            warm_from = self.previous_best_round
            study.enqueue_trial(warm, user_attrs={"label": "warm_start"})
        eval_sites = self.signal.participants(pool)
        entries: list[dict[str, Any]] = []
        scores: dict[int, Score] = {}
        cands: dict[int, Any] = {}
        eval_s = 0.0
        models_sent = 0
        done = 0
        n_batches = 0
        while done < s.budget:
            # ask a whole batch before telling any of it: the searcher proposes batch_size candidates
            # from the same history (TPE uses a constant liar), then the batch is scored and told
            batch = [study.ask(dists) for _ in range(min(s.batch_size, s.budget - done))]
            n_batches += 1
            done += len(batch)
            told: list[tuple[Any, Any, list[float] | None]] = []
            for trial in batch:
                label = trial.user_attrs.get("label", "search")
                cand = space.candidate(trial.params)
                if label == "fedavg":  # the round's aggregate itself: FedAvg's exact ratios, no floor
                    cand = Candidate({g: space.fedavg_ratios() for g in space.groups}, 1.0)
                weights = (
                    merged
                    if label == "fedavg"
                    else blend_weights(models, cand, reference=merged, current=current, groups=groups)
                )
                te = time.perf_counter()
                got = self.signal.evaluate(pool, weights, merged, eval_sites)
                eval_s += time.perf_counter() - te
                if self.signal.kind == "federated":
                    models_sent += len(eval_sites)
                failed = [r for r in got if isinstance(r, SiteFailure)]
                reps = [r for r in got if isinstance(r, EvalReport)]
                if label == "fedavg" and failed:
                    # a site that cannot score FedAvg cannot give paired differences: leave it out
                    eval_sites = [x for x in eval_sites if x not in {f.site_id for f in failed}]
                    if not reps:  # nobody can score: keep FedAvg, the run goes on
                        return self._skip(
                            base,
                            merged,
                            "no site could score the FedAvg reference: "
                            + "; ".join(f"{f.site_id}: {f.reason}" for f in failed),
                        )
                    failed = []
                if failed:
                    reason = "; ".join(f"{f.site_id}: {f.reason}" for f in failed)
                    entries.append(
                        trial_entry(trial.number, label, trial.params, cand, None, "fail", reason, batch=n_batches - 1)
                    )
                    told.append((trial, optuna.trial.TrialState.FAIL, None))
                    continue
                score = score_reports(reps)
                scores[trial.number] = score
                cands[trial.number] = cand
                entries.append(
                    trial_entry(
                        trial.number, label, trial.params, cand, score, "complete", None, s.objective, batch=n_batches - 1
                    )
                )
                told.append((trial, None, score.values(s.objective)))
            for trial, state, values in told:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # e.g. GridSampler: grid exhausted
                    if state is None:
                        study.tell(trial, values)
                    else:
                        study.tell(trial, state=state)
        if 0 not in scores:
            raise ConfigError(
                "blend: the FedAvg reference (trial 0) could not be scored at any site; see the site errors"
            )
        best, front = self._choose(scores)
        ref = scores[0]
        gain, se = scores[best].gain(s.objective)
        label = next(e["label"] for e in entries if e["number"] == best)
        if best == 0:
            ok, reason = False, "FedAvg itself scored best"
        else:
            ok, reason = accept(gain, se, s.margin, s.k)
        best_weights = (
            merged
            if best == 0
            else blend_weights(models, cands[best], reference=merged, current=current, groups=groups)
        )
        adopted = best_weights if ok else merged
        if s.warm_start and best != 0:
            self.previous_best = {k: float(v) for k, v in study.trials[best].params.items()}
            self.previous_best_round = round
        chosen = cands[best]
        total_s = time.perf_counter() - t0
        rec = {
            **base,
            "study_name": study.study_name,
            "sampler_seed": seed,
            "batch_size": s.batch_size,
            "batches": n_batches,
            "space": {**space.describe(), "distributions": _dists_json(dists)},
            "sites": [u.site_id for u in updates],
            "num_examples": {u.site_id: u.num_examples for u in updates},
            "eval_sites": eval_sites,
            "fedavg_ratios": space.fedavg_ratios(),
            "chosen_ratios": chosen.ratios[space.groups[0]],
            **({"chosen_head_ratios": chosen.ratios["head"]} if "head" in chosen.ratios else {}),
            **({"chosen_gamma": chosen.gamma} if s.gamma else {}),
            "best_trial": best,
            "best_label": label,
            "decision": "accepted" if ok else "not accepted",
            "adopted": "blend" if ok else "fedavg",
            "reason": reason,
            "gain": gain,
            "gain_se": se,
            "fedavg": {
                "pooled_loss": ref.pooled_loss,
                "pooled_acc": ref.pooled_acc,
                "worst_loss": ref.worst_loss,
                "mean_site_acc": ref.mean_site_acc,
                "worst_site_acc": ref.worst_site_acc,
            },
            "best": {
                "pooled_loss": scores[best].pooled_loss,
                "pooled_acc": scores[best].pooled_acc,
                "worst_loss": scores[best].worst_loss,
                "mean_site_acc": scores[best].mean_site_acc,
                "worst_site_acc": scores[best].worst_site_acc,
            },
            "pareto_front": front,
            "warm_start": warm,
            "warm_start_from_round": warm_from,
            "trials": entries,
            "timing": {"total_s": total_s, "evaluate_s": eval_s, "search_s": total_s - eval_s},
            "communication": {
                "candidates": len(entries),
                "eval_sites": len(eval_sites),
                "models_sent": models_sent,
                "reference_models": len(eval_sites) if self.signal.kind == "federated" else 0,
                "bytes_sent": models_sent * merged.nbytes,
                "scalars_returned": models_sent * 5,
                "vs_round_downloads": models_sent / max(len(updates), 1),
            },
        }
        log.info(
            "round %d blend: %s (best trial %d, gain %.4g ± %.3g, %d candidates, %.1f s)",
            round,
            rec["decision"],
            best,
            gain,
            se,
            len(entries),
            total_s,
        )
        self.history.append(rec)
        return BlendOutcome(adopted, best_weights, ok, rec)

    def _skip(self, base: dict[str, Any], merged: Weights, reason: str) -> BlendOutcome:
        log.warning("round %s blend skipped: %s", base["round"], reason)
        rec = {**base, "decision": "skipped", "adopted": "fedavg", "reason": reason}
        self.history.append(rec)
        return BlendOutcome(merged, merged, False, rec)

    def _choose(self, scores: dict[int, Score]) -> tuple[int, list[int] | None]:
        obj = self.spec.objective
        numbers = sorted(scores)
        if not self.spec.two_objective:
            return min(numbers, key=lambda n: (scores[n].value(obj), n)), None
        points = [scores[n].values(obj) for n in numbers]
        front = [numbers[i] for i in pareto_front(points)]
        ref_worst = scores[0].worst_loss
        feasible = [n for n in front if scores[n].worst_loss <= ref_worst] or [0]
        best = min(feasible, key=lambda n: (scores[n].pooled_loss, n))
        return best, front


def _dists_json(dists: dict[str, Any]) -> dict[str, Any]:
    import json

    from optuna.distributions import distribution_to_json

    return {k: json.loads(distribution_to_json(d)) for k, d in dists.items()}


def build_synthesizer(
    spec: dict[str, Any] | BlendSpec | None,
    seed: int = 0,
    *,
    storage_url: str | None = None,
    val_fraction: float | None = None,
    server_validation: ServerValidation | None = None,
    task: Task | None = None,
    records: Sequence[dict[str, Any]] = (),
) -> BlendSynthesizer:
    """The synthesizer for a job's ``[blend]`` table.

    ``val_fraction`` (the job's effective ``[data].val_fraction``), when given, is checked: the
    default federated signal needs a validation split at every site. ``storage_url`` (the run
    store's database) is where ``store_study = true`` keeps each Optuna study. With
    ``signal = "server"`` the validation set is ``server_validation``, or else ``server_data``
    loaded and scored with ``task``. ``records`` (the run's earlier blend records) restore the
    warm start, so a resumed run or a new training cycle starts from the previous best ratios.
    """
    parsed = parse_blend_spec(spec)
    if parsed.signal == "server" and server_validation is None and parsed.server_data is not None:
        if task is None:
            raise ConfigError(
                '[blend].server_data: scoring the server validation set needs the job\'s task (model and loss); '
                "pass build_synthesizer(..., task=prepared.task)"
            )
        x, y = load_server_data(parsed.server_data)
        server_validation = ServerValidation(x, y, task)
    if parsed.signal == "federated" and val_fraction is not None and val_fraction <= 0:
        raise ConfigError(
            f"[blend] searches blend ratios on the sites' validation splits, but [data].val_fraction is {val_fraction!r}, "
            "so the sites have none (the test split is never used for the search); set [data].val_fraction = 0.2 "
            "(or another value in (0, 1)), or remove the [blend] table"
        )
    if parsed.groups == "body_head" and task is not None:  # a bad head prefix fails now, not after training
        split_groups(list(task.init_weights(seed)), parsed.head)
    synth = BlendSynthesizer(parsed, seed, server_validation=server_validation, storage_url=storage_url)
    synth.restore(records)
    return synth
