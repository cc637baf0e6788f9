"""``a2tgpo-lab`` command line: ``train``, ``eval`` and ``presets``.

Every :class:`~a2tgpo_lab.config.A2TGPOConfig` field is a flag of the same name
(``--num_generations 8``, ``--use_peft``, ``--no-adaptive_clip``); ``--preset`` picks the starting
point and ``--config file.yaml`` reads a YAML/JSON file (flags given on the command line win).

    a2tgpo-lab train                                  # the quickstart: A²TGPO on the bundled tiny model
    a2tgpo-lab train --preset grpo --max_steps 50 --output_dir runs/grpo
    a2tgpo-lab train --resume_from_checkpoint latest --output_dir runs/a2tgpo
    a2tgpo-lab eval --model_name_or_path runs/a2tgpo/checkpoint-30/policy --eval_split test

Expected problems (a bad setting, a missing or malformed file, a busy or foreign output directory, a
full disk) print one message that says what to do and exit with status 2; ``--debug`` adds the
traceback. docs/troubleshooting.md lists them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import traceback
import typing
from typing import Optional, Sequence

from .config import PRESETS, A2TGPOConfig, preset, read_config_file
from .errors import UserError, disk_full


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(A2TGPOConfig)
    for f in dataclasses.fields(A2TGPOConfig):
        if f.name == "preset_name":
            continue
        hint = hints[f.name]
        if hint is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=None)
            continue
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
        kind = base if base in (int, float) else str
        parser.add_argument(f"--{f.name}", type=kind, default=None, metavar=kind.__name__.upper())


def _config_from_args(args: argparse.Namespace) -> A2TGPOConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(A2TGPOConfig)
                 if getattr(args, f.name, None) is not None}
    if overrides.get("resume_from_checkpoint") and not args.config and not args.preset:
        return _resumed_config(overrides)
    if args.config:
        values = read_config_file(args.config)
        name = args.preset or values.pop("preset", None)
        values.update(overrides)
        return preset(name, **values) if name else A2TGPOConfig.from_dict(values)
    return preset(args.preset or "a2tgpo", **overrides)


def _resumed_config(overrides: dict) -> A2TGPOConfig:
    """Resuming with neither --preset nor --config: the checkpoint's own config, with the flags given applied."""
    from .checkpoint import latest_checkpoint, read_checkpoint_config
    from .errors import CheckpointError
    from .rundir import read_run_info

    where = overrides["resume_from_checkpoint"]
    if where == "latest":
        output_dir = overrides.get("output_dir", A2TGPOConfig.output_dir)
        info = read_run_info(output_dir)
        checkpoint = latest_checkpoint(output_dir, info["run_id"] if info else None)
        if checkpoint is None:
            raise CheckpointError(f"No checkpoint-<step> directory in {output_dir} to resume from; check "
                                  "--output_dir, or train first.")
    else:
        checkpoint = where
    known = {f.name for f in dataclasses.fields(A2TGPOConfig)}
    saved = {name: value for name, value in read_checkpoint_config(checkpoint).items() if name in known}
    return A2TGPOConfig.from_dict({**saved, **overrides})


def _print_eval_table(before: Optional[dict], after: dict) -> None:
    keys = ["eval/em", "eval/f1", "eval/num_turns", "eval/search_calls", "eval/format_error_rate"]
    keys += sorted(k for k in after if k.startswith("eval/em/"))
    print(f"\n{'metric':<28}{'before':>10}{'after':>10}")
    for key in keys:
        old = f"{before[key]:.3f}" if before and key in before else "-"
        print(f"{key:<28}{old:>10}{after.get(key, float('nan')):>10.3f}")


def cmd_train(args: argparse.Namespace) -> int:
    from .metrics import clip_fraction_summary
    from .trainer import A2TGPOTrainer

    cfg = _config_from_args(args)
    print(f"a2tgpo-lab: training preset={cfg.preset_name} model={cfg.model_name_or_path} steps={cfg.max_steps} "
          f"prompts/step={cfg.num_prompts_per_step} G={cfg.num_generations} -> {cfg.output_dir}")
    trainer = A2TGPOTrainer(cfg, overwrite_output_dir=args.overwrite_output_dir,
                            allow_config_change=args.allow_config_change)
    trainer.claim_output_dir()  # refuse a busy or foreign output_dir before the evaluation
    before = None
    if trainer.resumed_from is None and not args.skip_eval:
        before = trainer.evaluate(progress=True)
        print(f"dev EM before training: {before['eval/em']:.3f} ({int(before['eval/n'])} questions)")
    trainer.train()
    if trainer.interrupted:
        print(f"\nstopped by {trainer.interrupted} at step {trainer.global_step}; saved to {cfg.output_dir}. Continue "
              f"with: a2tgpo-lab train --resume_from_checkpoint latest --output_dir {cfg.output_dir}")
        return 130 if trainer.interrupted == "SIGINT" else 143
    after = trainer.evaluate(progress=True) if not args.skip_eval else {}
    last = trainer.history[-1] if trainer.history else {}
    if after:
        _print_eval_table(before, after)
    print("\n" + clip_fraction_summary(trainer.history))
    print(f"\nfinished at step {trainer.global_step}; last train reward {last.get('reward', float('nan')):.3f}; "
          f"checkpoint and logs in {cfg.output_dir} (metrics.jsonl, completions.jsonl, eval.jsonl)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .errors import ModelError
    from .evaluation import evaluate_agent
    from .models import load_model_and_tokenizer
    from .trainer import _resolve_examples, _resolve_tool, _within_prompt_budget

    cfg = _config_from_args(args)
    model, tokenizer = load_model_and_tokenizer(cfg)
    broken = next((name for name, p in model.named_parameters()
                   if p.is_floating_point() and not torch.isfinite(p).all()), None)
    if broken is not None:
        raise ModelError(f"{cfg.model_name_or_path}: weight {broken} is NaN/inf (the run it came from diverged); "
                         "evaluate an earlier checkpoint.")
    _, examples = _resolve_examples(cfg, None, None)
    examples = _within_prompt_budget(examples[: cfg.eval_num_prompts], tokenizer, cfg, "evaluation")
    metrics = evaluate_agent(model, tokenizer, examples, _resolve_tool(cfg), cfg, progress=True)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name, values in PRESETS.items():
        print(f"{name:<20} {values}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2tgpo-lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in (("train", cmd_train, "train an agent (quickstart with no flags)"),
                                  ("eval", cmd_eval, "greedy evaluation on dev/test")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="starting config (default a2tgpo)")
        p.add_argument("--config", default=None, help="YAML/JSON config file (flags override it)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of any error")
        if name == "train":
            p.add_argument("--skip_eval", action="store_true", help="no dev evaluation before/after")
            p.add_argument("--overwrite_output_dir", action="store_true",
                           help="start over in an output_dir that holds another run (deletes its checkpoints and logs)")
            p.add_argument("--allow_config_change", action="store_true",
                           help="resume although the config differs from the checkpoint's")
        _add_config_flags(p)
        p.set_defaults(func=func)
    sub.add_parser("presets", help="list the presets").set_defaults(func=cmd_presets)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a command; an expected error prints one line and returns 2 (``--debug``: the traceback too)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, OSError) as err:
        if not isinstance(err, UserError) and not disk_full(err):
            raise  # an unexpected OSError is a bug to report: keep its traceback
        if args.debug:
            traceback.print_exc()
        message = str(err) if isinstance(err, UserError) else f"No space left on device ({err.filename or err})."
        print(f"a2tgpo-lab: error: {message}", file=sys.stderr)
        if not args.debug:
            print("(--debug shows the traceback; docs/troubleshooting.md lists common problems)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("a2tgpo-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
