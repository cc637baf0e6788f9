"""The ablation ladder of the paper's Table 2, in miniature: every rung on the same model, data, seeds and budget.

For each (rung, seed) the script loads the start model, trains ``--steps`` RL steps, evaluates greedily on a
fixed dev subset every ``--curve_every`` steps (the learning curve), and at the end on ``--eval_n`` dev and
``--test_n`` test questions. One JSON line per run goes to ``OUT/runs.jsonl`` as soon as the run ends (a rerun
skips the runs already there), with everything the report needs: per-question results, per-step training
metrics (reward, clip fraction, advantage range), the step-0 batch's per-turn IG / normalized IG / advantages
(the paper's Fig. 4 compares IGPO and A²TGPO on the same batch: same seed, same start model, same step-0
rollouts), and per-turn clip statistics by normalized-IG bucket.

    # the ladder under the published recipes (5 seeds), then under the controlled switch
    python benchmarks/compare_estimators.py --out runs/ladder --seeds 0 1 2 3 4
    python benchmarks/compare_estimators.py --out runs/ladder_controlled --controlled --seeds 0 1 2 3 4
    # the beta sweep of the adaptive clip (a2tgpo with clip_beta = 0, 0.1, ..., 0.5)
    python benchmarks/compare_estimators.py --out runs/beta --rungs a2tgpo --betas 0 0.1 0.2 0.3 0.4 0.5
    # from a weaker start model, or a real model and question file on a GPU
    python benchmarks/compare_estimators.py --out runs/weak --model /path/to/model
    python benchmarks/compare_estimators.py --out runs/gpu --model Qwen/Qwen2.5-0.5B-Instruct \\
        --dataset questions.jsonl --corpus corpus.jsonl --set use_peft=true device='"cuda"'
    # tables and figures from one or more finished output folders
    python benchmarks/compare_estimators.py --report runs/ladder runs/beta --img_dir docs/img

Intervals are 95% percentile bootstrap intervals (2000 resamples), hierarchical: seeds are resampled, then
questions within each seed, so an interval holds both the seed-to-seed and the question-to-question spread.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

LADDER = ("grpo", "igpo", "igpo_tg", "igpo_tg_rescale", "a2tgpo", "a2tgpo_code")
# The paper's Table 2 (Qwen3-4B, multi-hop average EM, %): the column beside ours.
PAPER_EM = {"grpo": 46.02, "igpo": 44.88, "igpo_tg": 46.27, "igpo_tg_rescale": 46.71, "a2tgpo": 48.06}
IG_BUCKETS = (-math.inf, -1.0, -0.25, 0.25, 1.0, math.inf)
COLORS = dict(zip(LADDER, ("#7f7f7f", "#ff7f0e", "#2ca02c", "#9467bd", "#1f77b4", "#17becf")))


# ----------------------------------------------------------------------------------------------- running


def eval_rows(model, tokenizer, examples, tool, cfg) -> list[dict]:
    """One greedy rollout per question → per-question rows (qtype, hops, em, turns, searches)."""
    import torch

    from a2tgpo_lab.rewards import exact_match
    from a2tgpo_lab.rollout import generate_rollouts

    rows, was_training = [], model.training
    model.eval()
    for start in range(0, len(examples), 64):
        chunk = list(examples[start:start + 64])
        with torch.no_grad():
            traj = generate_rollouts(model, tokenizer, chunk, tool, cfg, num_generations=1, greedy=True)
        for i, example in enumerate(chunk):
            answer = traj.final_answer[i]
            rows.append({"id": example.id, "qtype": example.qtype, "hops": example.hops,
                         "em": exact_match(answer, example.answers) if answer is not None else 0.0,
                         "turns": len(traj.turn_texts[i]), "searches": int(traj.num_tool_turns[i])})
    model.train(was_training)
    return rows


def _finite_list(values) -> list:
    return [None if v is None or not math.isfinite(float(v)) else round(float(v), 6) for v in values]


def turn_table(record) -> dict:
    """The step's per-rollout, per-turn arrays the Fig. 4 views need (NaN → None)."""
    return {key: [_finite_list(row) for row in getattr(record, key)]
            for key in ("ig", "ig_norm", "advantages", "clip_factor")} | {
        "num_tool_turns": record.num_tool_turns.astype(int).tolist(),
        "prompt_index": record.prompt_index.astype(int).tolist(),
        "outcome_reward": _finite_list(record.outcome_reward),
        "first_query": [calls[0] if calls and calls[0] else None for calls in record.tool_calls]}


def clip_by_ig_bucket(record) -> dict[str, list[float]]:
    """Per process turn with a normalized IG: its bucket, clip factor c and the share of its tokens clipped
    (in the step's last PPO pass). Summed counts per bucket: [turns, Σc, Σclipped share]."""
    out = defaultdict(lambda: [0.0, 0.0, 0.0])
    for b in range(record.batch_size):
        for j in range(int(record.num_tool_turns[b])):
            value = record.ig_norm[b, j]
            if not math.isfinite(value):
                continue
            flags = record.clipped[b][(record.turn_ids[b] == j + 1) & record.loss_mask[b]]
            if flags.size == 0:
                continue
            bucket = str(int(np.searchsorted(IG_BUCKETS, value, side="right") - 1))
            out[bucket][0] += 1
            out[bucket][1] += float(record.clip_factor[b, j])
            out[bucket][2] += float((flags != 0).mean())
    return dict(out)


class CurveRecorder:
    """Trainer callback: appends (steps completed, greedy EM) at every periodic evaluation."""

    def __init__(self, curve: list):
        self.curve = curve

    def on_evaluate(self, trainer, metrics: dict) -> None:
        self.curve.append((trainer.global_step, metrics["eval/em"]))


def run_overrides(args) -> dict:
    """Config fields every run of this invocation shares (model, data, controlled, --set)."""
    overrides = dict(args.overrides)
    if args.model:
        overrides["model_name_or_path"] = args.model
    if args.dataset:
        overrides["dataset"] = args.dataset
    if args.corpus:
        overrides["corpus"] = args.corpus
    if args.controlled:
        overrides["controlled"] = True
    return overrides


def run_one(rung: str, seed: int, args, shared: dict, clip_beta: Optional[float]) -> dict:
    """Train one (rung, seed) and return its JSON row."""
    import tempfile

    from a2tgpo_lab import A2TGPOTrainer, preset

    overrides = run_overrides(args)
    if clip_beta is not None:
        overrides["clip_beta"] = clip_beta
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as out:
        cfg = preset(rung, max_steps=args.steps, seed=seed, output_dir=out, eval_steps=args.curve_every,
                     save_steps=10 ** 9, eval_num_prompts=args.curve_n, **overrides)
        trainer = A2TGPOTrainer(cfg, train_examples=shared["train"], eval_examples=shared["dev"],
                                tool=shared["tool"], keep_records=args.steps)
        if "start_curve" not in shared:  # the start model is the same for every run: evaluate it once
            shared["start_curve"] = trainer.evaluate()["eval/em"]
        curve = [(0, shared["start_curve"])]
        trainer.add_callback(CurveRecorder(curve))
        trainer.train()
        dev = eval_rows(trainer.model, trainer.tokenizer, shared["dev"][:args.eval_n], shared["tool"], cfg)
        test = eval_rows(trainer.model, trainer.tokenizer, shared["test"][:args.test_n], shared["tool"], cfg)
    curve.append((args.steps, float(np.mean([r["em"] for r in dev[:args.curve_n]]))))
    steps = []
    for record, metrics in zip(trainer.records, [h for h in trainer.history if "reward" in h]):
        adv = record.advantages[np.isfinite(record.advantages)]
        steps.append({"step": record.step, "reward": metrics["reward"], "search_calls": metrics["search_calls/mean"],
                      "num_turns": metrics["num_turns/mean"],
                      "clip_frac": metrics.get("clip_ratio/region_mean", float("nan")),
                      "adv_min": float(adv.min()), "adv_max": float(adv.max()), "adv_mean": float(adv.mean()),
                      "step_s": metrics["time/step_s"], "clip_by_ig": clip_by_ig_bucket(record)})
    row = {"rung": rung, "seed": seed, "controlled": bool(args.controlled), "clip_beta": cfg.clip_beta,
           "model": args.model or "bundled", "steps": args.steps, "config": _finite_dict(cfg.to_dict()),
           "curve": curve, "dev": dev, "test": test, "train": [_finite_dict(s) for s in steps],
           "step0": turn_table(trainer.records[0]) if trainer.records else None,
           "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    return row


def _finite_dict(values: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def run(args) -> None:
    import torch

    from a2tgpo_lab.envs.loaders import load_questions
    from a2tgpo_lab.envs.search import SearchTool, bundled_search_tool
    from a2tgpo_lab.envs.world import load_split

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["rung"], r["seed"], r["clip_beta"]) for r in read_rows([out])}
    if args.dataset:
        questions = load_questions(args.dataset)
        cut = max(1, len(questions) // 10)
        shared = {"dev": questions[:cut], "test": questions[cut:2 * cut], "train": questions[2 * cut:]}
    else:
        shared = {split: load_split(split) for split in ("train", "dev", "test")}
    shared["tool"] = SearchTool.from_jsonl(args.corpus, topk=2) if args.corpus else bundled_search_tool(topk=2)
    from a2tgpo_lab import preset

    if not (out / "start.json").exists():  # the start model's greedy EM on the same questions: the "before" row
        from a2tgpo_lab.models import load_model_and_tokenizer

        cfg = preset("grpo", **run_overrides(args))
        model, tokenizer = load_model_and_tokenizer(cfg)
        start = {split: eval_rows(model, tokenizer, shared[split][:n], shared["tool"], cfg)
                 for split, n in (("dev", args.eval_n), ("test", args.test_n))}
        (out / "start.json").write_text(json.dumps({"model": args.model or "bundled", **start}))
        del model
    betas = args.betas or [None]
    print(f"machine: {platform.machine()}, torch threads {torch.get_num_threads()}, cuda={torch.cuda.is_available()}; "
          f"{args.steps} steps; curve every {args.curve_every} on {args.curve_n} dev; final dev {args.eval_n}, "
          f"test {args.test_n}", flush=True)
    for seed in args.seeds:  # seeds outermost: a cut-short run still has every rung for the first seeds
        for rung in args.rungs:
            for beta in betas:
                beta_value = preset(rung, **({"clip_beta": beta} if beta is not None else {})).clip_beta
                if (rung, seed, beta_value) in done:
                    continue
                row = run_one(rung, seed, args, shared, beta)
                with open(out / "runs.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                dev = np.mean([r["em"] for r in row["dev"]])
                print(f"  {rung:<16} seed {seed} beta {row['clip_beta']:.1f}: dev EM {row['curve'][0][1]:.3f} "
                      f"(subset, start) -> {dev:.3f} (dev), {row['wall_s']:.0f} s wall, {row['cpu_s']:.0f} s CPU",
                      flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


# ----------------------------------------------------------------------------------------------- report


def read_rows(folders) -> list[dict]:
    rows = []
    for folder in folders:
        path = Path(folder) / "runs.jsonl"
        if path.exists():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def bootstrap_ci(per_seed: list[np.ndarray], rng: np.random.Generator, n: int = 2000) -> tuple[float, float, float]:
    """Mean over seeds of the per-seed mean, with a hierarchical percentile bootstrap (seeds, then items)."""
    per_seed = [x for x in per_seed if x.size]
    if not per_seed:
        return float("nan"), float("nan"), float("nan")
    point = float(np.mean([x.mean() for x in per_seed]))
    means = np.empty(n)
    for i in range(n):
        seeds = rng.integers(0, len(per_seed), len(per_seed))
        means[i] = np.mean([per_seed[s][rng.integers(0, len(per_seed[s]), len(per_seed[s]))].mean() for s in seeds])
    low, high = np.percentile(means, [2.5, 97.5])
    return point, float(low), float(high)


@functools.cache
def preset_defaults(rung: str, controlled: bool = False) -> dict:
    """The preset's config as a dict, under the controlled switch if asked (for every row by the report's
    grouping)."""
    from a2tgpo_lab import preset

    return preset(rung, controlled=controlled).to_dict()


def group_key(row: dict) -> str:
    """How runs are grouped in the tables: rung, plus the clip β when it is not the preset's."""
    default = preset_defaults(row["rung"])["clip_beta"]
    return row["rung"] if abs(row["clip_beta"] - default) < 1e-9 else f"{row['rung']} β={row['clip_beta']:.1f}"


def summarize(rows: list[dict], seed: int = 0) -> dict:
    """Per group: dev / test EM with intervals, by type and hop count, turns, searches, clip fraction."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[group_key(row)].append(row)
    table = {}
    for name, runs in groups.items():
        entry = {"seeds": sorted(r["seed"] for r in runs), "n_runs": len(runs)}
        for split in ("dev", "test"):
            entry[split] = bootstrap_ci([np.array([q["em"] for q in r[split]]) for r in runs], rng)
            entry[f"{split}_seed_means"] = [float(np.mean([q["em"] for q in r[split]])) for r in runs]
            for key in ("qtype", "hops"):
                labels = sorted({q[key] for r in runs for q in r[split]}, key=str)
                entry[f"{split}_by_{key}"] = {
                    str(label): bootstrap_ci([np.array([q["em"] for q in r[split] if q[key] == label]) for r in runs],
                                             rng, n=500) for label in labels}
            entry[f"{split}_turns"] = float(np.mean([q["turns"] for r in runs for q in r[split]]))
            entry[f"{split}_searches"] = float(np.mean([q["searches"] for r in runs for q in r[split]]))
        clip = [s["clip_frac"] for r in runs for s in r["train"] if s["clip_frac"] is not None]
        entry["clip_frac"] = float(np.mean(clip)) if clip else float("nan")
        entry["cpu_s"] = float(np.mean([r["cpu_s"] for r in runs]))
        entry["wall_s"] = float(np.mean([r["wall_s"] for r in runs]))
        entry["step_s"] = float(np.mean([s["step_s"] for r in runs for s in r["train"]]))
        table[name] = entry
    return table


def spreads(table: dict, split: str = "dev") -> dict:
    """The spread between seeds (mean within-rung sd of per-seed EM) beside the spread between rungs (sd of
    the rung means)."""
    table = {name: e for name, e in table.items() if name in LADDER}
    within = [np.std(e[f"{split}_seed_means"], ddof=1) for e in table.values() if len(e[f"{split}_seed_means"]) > 1]
    between = [e[split][0] for e in table.values()]
    return {"between_seeds_sd": float(np.mean(within)) if within else float("nan"),
            "between_rungs_sd": float(np.std(between, ddof=1)) if len(between) > 1 else float("nan"),
            "rung_range": float(max(between) - min(between)) if between else float("nan")}


def mechanisms(rows: list[dict]) -> dict:
    """Fig. 4: per-turn raw IG, normalized IG, advantages for igpo vs a2tgpo on the same step-0 batch (pairs of
    runs with the same seed and start model), ΔĀ_t, per-turn spread, and how many step-0 process turns have
    Î_t exactly 0 (a turn group whose members all gained the same IG); Fig. 5: advantage min/max/mean per step;
    the clip band and clipped share by normalized-IG bucket."""
    out: dict = {"fig4": {}, "fig5": {}, "clip_by_ig": {}}
    rows = [r for r in rows if group_key(r) == r["rung"] and not r["controlled"]]  # the preset's own β, published loss
    by = {(r["rung"], r["seed"], r["model"], r["controlled"]): r for r in rows if r.get("step0")}
    per_turn: dict = defaultdict(lambda: defaultdict(list))
    for (rung, seed, model, controlled), row in by.items():
        if rung not in ("igpo", "a2tgpo") or controlled:
            continue
        table = row["step0"]
        for key in ("ig", "ig_norm", "advantages"):
            for b, turns in enumerate(table[key]):
                for j, value in enumerate(turns[: table["num_tool_turns"][b]]):
                    if value is not None:
                        per_turn[(rung, key)][j + 1].append(value)
    for rung in ("igpo", "a2tgpo"):  # turn groups without IG spread: every member gets Î_t = 0 exactly
        values = per_turn.get((rung, "ig_norm"), {})
        flat = [v for turn in values.values() for v in turn]
        if flat:
            out.setdefault("zero_ig", {})[rung] = {"process_turns": len(flat), "zero": sum(v == 0 for v in flat)}
    for (rung, key), turns in per_turn.items():
        out["fig4"].setdefault(rung, {})[key] = {
            str(t): {"mean": float(np.mean(v)), "sd": float(np.std(v)), "n": len(v)} for t, v in sorted(turns.items())}
    for rung, stats in out["fig4"].items():  # drift: |per-turn mean of normalized IG| (0 for an unbiased z-score)
        norm = stats.get("ig_norm", {})
        stats["drift"] = {t: abs(v["mean"]) for t, v in norm.items()}
        stats["drift_mean"] = float(np.mean(list(stats["drift"].values()))) if norm else float("nan")
    if {"igpo", "a2tgpo"} <= set(out["fig4"]):  # ΔĀ_t = Ā_t(A²TGPO) − Ā_t(IGPO) on the same batches
        a, b = out["fig4"]["a2tgpo"]["advantages"], out["fig4"]["igpo"]["advantages"]
        out["fig4"]["delta_adv"] = {t: a[t]["mean"] - b[t]["mean"] for t in a if t in b}
    for row in rows:
        series = out["fig5"].setdefault(row["rung"], defaultdict(lambda: {"min": [], "max": [], "mean": []}))
        for s in row["train"]:
            for key in ("min", "max", "mean"):
                series[s["step"]][key].append(s[f"adv_{key}"])
        buckets = out["clip_by_ig"].setdefault(row["rung"], defaultdict(lambda: [0.0, 0.0, 0.0]))
        for s in row["train"]:
            for bucket, counts in s["clip_by_ig"].items():
                for i in range(3):
                    buckets[bucket][i] += counts[i]
    out["fig5"] = {rung: {str(step): {k: float(np.mean(v)) for k, v in vals.items()} for step, vals in sorted(s.items())}
                   for rung, s in out["fig5"].items()}
    labels = ["Î<-1", "-1..-0.25", "-0.25..0.25", "0.25..1", "Î>1"]
    out["clip_by_ig"] = {rung: {labels[int(b)]: {"turns": c[0], "c_mean": c[1] / c[0], "clipped_share": c[2] / c[0]}
                                for b, c in sorted(buckets.items()) if c[0]}
                         for rung, buckets in out["clip_by_ig"].items()}
    return out


def first_search_credit(rows: list[dict]) -> dict:
    """Namesake and chain questions of the step-0 batches: the first search's raw IG, normalized IG Î_1 and
    advantage A_1 by kind of query (careful "C founded", lazy "C born", other), and — inside the groups that
    hold both a careful and a lazy first search — the mean within-group gap careful − lazy."""
    from a2tgpo_lab.envs.world import load_split

    train = load_split("train")
    kinds: dict = defaultdict(list)
    gaps: dict = defaultdict(list)
    for row in rows:
        if row["rung"] not in ("igpo", "a2tgpo") or row["controlled"] or not row.get("step0") or row["model"] != "bundled":
            continue
        # The step-0 prompts, as A2TGPOTrainer.batch_examples draws them (a permutation seeded by (seed, epoch 0)).
        order = np.random.default_rng([row["seed"], 0]).permutation(len(train))
        examples = [train[i] for i in order[: row["config"]["num_prompts_per_step"]]]
        table = row["step0"]
        groups: dict = defaultdict(lambda: defaultdict(list))
        for b, prompt in enumerate(table["prompt_index"]):
            example = examples[prompt]
            if example.qtype != "namesake" or table["num_tool_turns"][b] < 1:
                continue
            query = table["first_query"][b]
            kind = ("careful" if query == example.meta["queries"][0] else
                    "lazy" if query == example.meta["trap_query"] else "other")
            values = tuple(math.nan if v is None else v for v in (  # None: a dropped (NaN) value
                table["ig"][b][0], table["ig_norm"][b][0], table["advantages"][b][0], table["outcome_reward"][b]))
            kinds[(row["rung"], kind)].append(values)
            groups[prompt][kind].append(values)
        for by_kind in groups.values():
            if by_kind["careful"] and by_kind["lazy"]:
                gaps[row["rung"]].append([np.mean([v[i] for v in by_kind["careful"]]) - np.mean([v[i] for v in by_kind["lazy"]])
                                          for i in range(3)])
    out = {f"{rung}/{kind}": {"n": len(v), "ig": float(np.nanmean([x[0] for x in v])),
                              "ig_norm": float(np.nanmean([x[1] for x in v])),
                              "adv": float(np.nanmean([x[2] for x in v])), "em": float(np.mean([x[3] == 1 for x in v]))}
           for (rung, kind), v in sorted(kinds.items())}
    out.update({f"{rung}/gap_careful_minus_lazy": {"groups": len(v), "ig": float(np.mean([g[0] for g in v])),
                                                   "ig_norm": float(np.mean([g[1] for g in v])),
                                                   "adv": float(np.mean([g[2] for g in v]))} for rung, v in gaps.items()})
    return out


def curves(rows: list[dict]) -> dict:
    """Learning curves: per group, the mean and range over seeds of the dev-subset EM at each evaluated step."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for step, em in dict(row["curve"]).items():  # one value per step (the first rows repeated step 0)
            groups[group_key(row)][step].append(em)
    return {name: {str(step): [float(np.mean(v)), float(np.min(v)), float(np.max(v))] for step, v in sorted(s.items())}
            for name, s in groups.items()}


def start_rows(folders, model: str) -> Optional[dict]:
    """The start model's per-question rows (``start.json`` of the first folder that has one for ``model``)."""
    for folder in folders:
        path = Path(folder) / "start.json"
        if path.exists():
            start = json.loads(path.read_text())
            if start["model"] == model:
                return start
    return None


def _by(rows: list[dict], key: str) -> dict:
    labels = sorted({q[key] for q in rows}, key=str)
    return {str(label): (float(np.mean([q["em"] for q in rows if q[key] == label])),) for label in labels}


def markdown(table: dict, label: str) -> str:
    lines = [f"### {label}", "", "| rung | paper EM | dev EM [95% CI] | test EM [95% CI] | seeds | turns | searches "
             "| clip frac | CPU s/run |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in table.items():
        paper = f"{PAPER_EM[name]:.2f}" if name in PAPER_EM else "–"
        lines.append(f"| {name} | {paper} | {_ci(e['dev'])} | {_ci(e['test'])} | {len(e['seeds']) or '–'} | "
                     f"{e['dev_turns']:.2f} | {e['dev_searches']:.2f} | {_num(e['clip_frac'], 3)} | {_num(e['cpu_s'], 0)} |")
    qtypes = sorted({q for e in table.values() for q in e["dev_by_qtype"]})
    hops = sorted({h for e in table.values() for h in e["dev_by_hops"]})
    lines += ["", f"Dev EM by question type and hop count ({label}):", "",
              "| rung | " + " | ".join(qtypes) + " | " + " | ".join(f"{h} hop" for h in hops) + " |",
              "|---" * (1 + len(qtypes) + len(hops)) + "|"]
    for name, e in table.items():
        cells = [f"{e['dev_by_qtype'][q][0]:.2f}" if q in e["dev_by_qtype"] else "–" for q in qtypes]
        cells += [f"{e['dev_by_hops'][h][0]:.2f}" if h in e["dev_by_hops"] else "–" for h in hops]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def _ci(value) -> str:
    point, low, high = value
    return f"{point:.3f} [{low:.3f}, {high:.3f}]"


def figures(rows: list[dict], img_dir: Path, prefix: str) -> list[Path]:
    """Small PNGs: learning curves, Fig. 4 per-turn bars, Fig. 5 advantage range, clip by IG bucket."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    img_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name, width=720, height=360):
        fig.update_layout(template="simple_white", width=width, height=height, margin=dict(l=50, r=20, t=50, b=40),
                          font=dict(size=11))
        path = img_dir / f"{prefix}{name}.png"
        fig.write_image(path, scale=1)
        written.append(path)

    fig = go.Figure()
    for name, points in curves([r for r in rows if group_key(r) == r["rung"]]).items():
        steps = [int(s) for s in points]
        mean = [v[0] for v in points.values()]
        fig.add_trace(go.Scatter(x=steps, y=mean, mode="lines+markers", name=name, line=dict(color=COLORS.get(name))))
    fig.update_layout(title="Dev-subset EM during training (mean over seeds)", xaxis_title="RL step",
                      yaxis_title="greedy EM")
    save(fig, "curves")

    mech = mechanisms(rows)
    if mech["fig4"]:
        fig = make_subplots(rows=1, cols=3, subplot_titles=("raw IG", "normalized IG", "advantage"))
        for rung, stats in mech["fig4"].items():
            if rung == "delta_adv":
                continue
            for col, key in enumerate(("ig", "ig_norm", "advantages"), start=1):
                turns = stats.get(key, {})
                fig.add_trace(go.Bar(x=[f"turn {t}" for t in turns], y=[v["mean"] for v in turns.values()],
                                     error_y=dict(array=[v["sd"] for v in turns.values()]), name=rung,
                                     legendgroup=rung, showlegend=col == 1,
                                     marker_color=COLORS[rung]), row=1, col=col)
        fig.update_layout(title="Per-turn credit on the same step-0 batches (mean ± sd over rollouts)",
                          barmode="group")
        save(fig, "fig4_per_turn", width=900)
    if mech["fig5"]:
        fig = go.Figure()
        for rung, series in mech["fig5"].items():
            if rung not in ("grpo", "igpo", "a2tgpo"):  # the paper's Fig. 5 trio
                continue
            steps = [int(s) for s in series]
            for key, dash in (("max", "dot"), ("mean", "solid"), ("min", "dot")):
                fig.add_trace(go.Scatter(x=steps, y=[v[key] for v in series.values()], mode="lines", name=f"{rung} {key}",
                                         line=dict(dash=dash, color=COLORS.get(rung)), legendgroup=rung,
                                         showlegend=key == "mean"))
        fig.update_layout(title="Advantage min / mean / max per step (mean over seeds)", xaxis_title="RL step")
        save(fig, "fig5_adv_range")
    if mech["clip_by_ig"]:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("mean clip factor c", "share of turn tokens clipped"))
        for rung, buckets in mech["clip_by_ig"].items():
            color = COLORS.get(rung)
            fig.add_trace(go.Bar(x=list(buckets), y=[v["c_mean"] for v in buckets.values()], name=rung,
                                 legendgroup=rung, marker_color=color), row=1, col=1)
            fig.add_trace(go.Bar(x=list(buckets), y=[v["clipped_share"] for v in buckets.values()], name=rung,
                                 legendgroup=rung, showlegend=False, marker_color=color), row=1, col=2)
        fig.update_layout(title="Clip band and clipping by normalized-IG bucket of the turn", barmode="group")
        save(fig, "clip_by_ig", width=900)
    return written


# Config fields that say how long / on what a run trained, not the recipe it trained with (prompts per step
# is the budget: the ladder's runs all take 4, and their mechanisms and figures are those of the presets).
RUN_FIELDS = {"clip_beta", "controlled", "seed", "max_steps", "num_prompts_per_step", "eval_steps",
              "eval_num_prompts", "save_steps", "output_dir", "model_name_or_path", "dataset", "corpus"}


def recipe(row: dict) -> str:
    """The recipe a run trained with: "published recipe" (its preset, under the controlled switch if it ran
    with it), plus every field set otherwise (``--set``)."""
    defaults = preset_defaults(row["rung"], bool(row["controlled"]))
    changed = {k: v for k, v in row["config"].items() if k not in RUN_FIELDS and defaults.get(k) != v}
    return "published recipe" + "".join(f", {k}={v}" for k, v in sorted(changed.items()))


def beta_sweep(rows: list[dict], recipe_name: str = "published recipe") -> dict:
    """a2tgpo runs (``recipe_name``, bundled model) grouped by clip β, on the seeds every β value has."""
    runs = [r for r in rows if r["rung"] == "a2tgpo" and not r["controlled"] and r["model"] == "bundled"
            and recipe(r) == recipe_name]
    by_beta: dict = defaultdict(dict)
    for r in runs:
        by_beta[round(r["clip_beta"], 3)][r["seed"]] = r
    if len(by_beta) < 2:
        return {}
    seeds = sorted(set.intersection(*(set(v) for v in by_beta.values())))
    rng = np.random.default_rng(0)
    return {beta: {"seeds": seeds, **{split: bootstrap_ci([np.array([q["em"] for q in by_beta[beta][s][split]])
                                                           for s in seeds], rng) for split in ("dev", "test")},
                   "clip_frac": float(np.mean([st["clip_frac"] for s in seeds for st in by_beta[beta][s]["train"]
                                               if st["clip_frac"] is not None]))}
            for beta in sorted(by_beta)}


def beta_figure(sweep: dict, img_dir: Path, prefix: str) -> Optional[Path]:
    import plotly.graph_objects as go

    points = [(beta, entry["dev"]) for beta, entry in sweep.items()]
    if len(points) < 2:
        return None
    fig = go.Figure(go.Scatter(x=[b for b, _ in points], y=[v[0] for _, v in points], mode="lines+markers",
                               error_y=dict(type="data", symmetric=False, array=[v[2] - v[0] for _, v in points],
                                            arrayminus=[v[0] - v[1] for _, v in points])))
    fig.update_layout(template="simple_white", width=520, height=320, title="β sweep: dev EM (95% CI)",
                      xaxis_title="clip β", yaxis_title="greedy EM", margin=dict(l=50, r=20, t=50, b=40))
    path = img_dir / f"{prefix}beta_sweep.png"
    fig.write_image(path)
    return path


def report(args) -> None:
    rows = read_rows(args.report)
    if not rows:
        raise SystemExit(f"No runs.jsonl with rows in {args.report}; run the ladder first.")
    out = Path(args.report[0])
    sections, summary = [], {}
    for controlled, model, name in sorted({(r["controlled"], r["model"], recipe(r)) for r in rows}):
        subset = [r for r in rows if r["controlled"] == controlled and r["model"] == model and recipe(r) == name
                  and group_key(r) == r["rung"]]  # β-sweep points have their own table
        if not subset:
            continue
        label = (f"{'controlled' if controlled else 'published recipes'}"
                 f"{name.removeprefix('published recipe')}, start model {model}")
        table = summarize(subset)
        start = start_rows(args.report, model)
        if start:
            rng = np.random.default_rng(0)
            table = {"(start model)": {split: bootstrap_ci([np.array([q["em"] for q in start[split]])], rng)
                                       for split in ("dev", "test")} | {
                "seeds": [], "dev_seed_means": [], "dev_turns": float(np.mean([q["turns"] for q in start["dev"]])),
                "dev_searches": float(np.mean([q["searches"] for q in start["dev"]])), "clip_frac": float("nan"),
                "cpu_s": float("nan"), **{f"dev_by_{k}": _by(start["dev"], k) for k in ("qtype", "hops")}}} | table
        summary[label] = {"table": table, "spreads": spreads(table), "curves": curves(subset)}
        sections.append(markdown(table, label))
        s = summary[label]["spreads"]
        sections.append(f"Spread of dev EM: between seeds (sd within a rung) {s['between_seeds_sd']:.3f}; "
                        f"between rungs (sd of rung means) {s['between_rungs_sd']:.3f}; "
                        f"range of rung means {s['rung_range']:.3f}.\n")
    for name in sorted({recipe(r) for r in rows}):  # one sweep per recipe: --set runs never mix with others
        sweep = beta_sweep(rows, name)
        if not sweep:
            continue
        summary["beta_sweep" if name == "published recipe" else f"beta_sweep ({name})"] = sweep
        lines = [f"### β sweep (a2tgpo, {name})", "", "| clip β | dev EM [95% CI] | test EM [95% CI] | seeds "
                 "| clip frac |", "|---|---|---|---|---|"]
        lines += [f"| {beta:.1f} | {_ci(e['dev'])} | {_ci(e['test'])} | {len(e['seeds'])} | {e['clip_frac']:.3f} |"
                  for beta, e in sweep.items()]
        sections.append("\n".join(lines) + "\n")
    published = [r for r in rows if recipe(r) == "published recipe"]  # mechanisms and figures: the presets as they are
    summary["mechanisms"] = mechanisms([r for r in published if r["model"] == "bundled"])
    if not any(r["config"].get("dataset", "bundled") != "bundled" for r in rows):
        summary["mechanisms"]["first_search"] = first_search_credit(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    (out / "summary.md").write_text("\n".join(sections))
    print("\n".join(sections))
    print(json.dumps(summary["mechanisms"]["fig4"], indent=1)[:3000])
    if args.img_dir:
        prefix = args.img_prefix
        written = figures([r for r in published if not r["controlled"] and r["model"] == "bundled"], Path(args.img_dir),
                          prefix)
        beta = beta_figure(summary.get("beta_sweep", {}), Path(args.img_dir), prefix)
        print("figures:", [str(p) for p in written + ([beta] if beta else [])])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ladder", help="folder for runs.jsonl (appended; finished runs skipped)")
    parser.add_argument("--rungs", nargs="+", default=list(LADDER))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--betas", nargs="*", type=float, default=None, help="clip β values (default: the preset's)")
    parser.add_argument("--controlled", action="store_true", help="hold the loss fixed across rungs")
    parser.add_argument("--steps", type=int, default=40, help="RL steps per run")
    parser.add_argument("--curve_every", type=int, default=5, help="evaluate the dev subset every this many steps")
    parser.add_argument("--curve_n", type=int, default=70, help="size of the fixed dev subset of the learning curve")
    parser.add_argument("--eval_n", type=int, default=350, help="final dev questions")
    parser.add_argument("--test_n", type=int, default=350, help="final test questions")
    parser.add_argument("--model", default=None, help="start model: HF id or directory (default: the bundled one)")
    parser.add_argument("--dataset", default=None, help="question file (jsonl/parquet); split 10%% dev, 10%% test, rest train")
    parser.add_argument("--corpus", default=None, help="corpus jsonl for the search tool (default: the bundled one)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config overrides (JSON values)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    parser.add_argument("--report", nargs="+", default=None, metavar="FOLDER", help="summarize finished folders")
    parser.add_argument("--img_dir", default=None, help="with --report: write PNG figures here")
    parser.add_argument("--img_prefix", default="", help="with --report: file-name prefix of the figures")
    args = parser.parse_args(argv)
    args.overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.report:
        report(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
