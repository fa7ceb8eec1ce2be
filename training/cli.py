"""``medgate train`` / ``evaluate`` / ``export``: the training commands of the ``medgate`` CLI.

The ``medgate`` command finds them through the ``medgate.commands`` entry point (:data:`COMMAND_GROUP`,
:mod:`kernel.commands`): :func:`add_commands` declares them and :func:`run` executes them.

* ``train <model>``: config (task default < ``training/configs/<model>.yaml`` < ``--config`` <
  ``--seed/--max-steps/--seconds``), then :func:`training.loop.train` into ``--out``
  (``runs/<model>`` by default; ``--resume`` continues its checkpoint), then the held-out test
  split at the validation operating point, saved to ``<out>/eval-test/``.  With ``--version`` the
  model is also exported, parity-checked, registered and its model card rewritten.
* ``train <model> --from-feedback DIR``: retrain from clinicians' verdicts (:mod:`training.feedback`):
  the current version (``--base``; by default the one deployed when DIR was exported) fine-tuned on
  its generated data mixed with the reviewed feedback cases of DIR (``medgate export-training
  --with-feedback``), both measured on the same held-out set and the candidate registered as
  ``--version`` (by default the next minor version) with both figures in its metadata and card.
* ``evaluate <model>[@version]``: re-measure a registered version (its ``model.pt``), or
  ``--checkpoint``, on ``--split`` (``--seed`` for freshly generated data); prints and saves
  ``metrics.json`` and plots.
* ``export <model> --checkpoint P --version X.Y.Z``: evaluate, export, register, write the card.
"""
from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from kernel.commands import CommandGroup
from models.registry import DEFAULT_ROOT, ModelIntegrityError, ModelRegistry, file_sha256, parse_reference
from training import ood
from training.config import TaskNotFoundError, load_task, resolve_config
from training.evaluate import evaluate_split, load_weights, save_evaluation
from training.reference import applies as reference_applies, attach as attach_reference
from training.tasks.base import Evaluation, Task

COMMANDS = ("train", "evaluate", "export")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Declare ``train``, ``evaluate`` and ``export`` on the ``medgate`` sub-parsers."""
    train = sub.add_parser("train", help="train a model (then evaluate; export and register with --version)")
    train.add_argument("model", help="tb, nodule, derm or vitals")
    train.add_argument("--config", dest="train_config", type=Path, help="YAML/JSON overriding the default config")
    train.add_argument("--out", type=Path, help="run folder (default runs/<model>)")
    train.add_argument("--seed", type=int)
    train.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.pt")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--seconds", type=float, help="training time budget")
    train.add_argument("--version", help="register the result as this new version (MAJOR.MINOR.PATCH)")
    train.add_argument("--registry", type=Path, default=DEFAULT_ROOT, help="registry root (default models/)")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--from-feedback", type=Path, metavar="DIR",
                       help="retrain the current version on its data + the reviewed cases of this export folder")
    train.add_argument("--base", help="with --from-feedback: the version to start from and compare with")
    evaluate = sub.add_parser("evaluate", help="measure a registered version or a checkpoint on one split")
    evaluate.add_argument("model", help="NAME or NAME@VERSION (latest version by default)")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"))
    evaluate.add_argument("--checkpoint", type=Path, help="evaluate these weights instead of a registered version")
    evaluate.add_argument("--seed", type=int, help="data seed (a new one gives fresh generated data)")
    evaluate.add_argument("--out", type=Path, help="where metrics.json and plots go (default runs/<model>/eval-...)")
    evaluate.add_argument("--registry", type=Path, default=DEFAULT_ROOT)
    export = sub.add_parser("export", help="evaluate a checkpoint, export ONNX, register it, write the model card")
    export.add_argument("model")
    export.add_argument("--checkpoint", type=Path, required=True)
    export.add_argument("--version", required=True)
    export.add_argument("--registry", type=Path, default=DEFAULT_ROOT)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed training command; print errors as ``medgate: ...`` and return 2."""
    try:
        if args.command == "train":
            cmd_train(args)
        elif args.command == "evaluate":
            cmd_evaluate(args)
        else:
            cmd_export(args)
    except (TaskNotFoundError, ValueError, FileNotFoundError, FileExistsError, LookupError,
            ModelIntegrityError) as exc:
        print(f"medgate: {exc}")
        return 2
    return 0


#: The ``medgate`` sub-commands of this package (entry point ``medgate.commands``, pyproject.toml).
COMMAND_GROUP = CommandGroup(COMMANDS, add_commands, run)


def _summary(evaluation: Evaluation) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in evaluation.metrics.items()
            if not isinstance(v, dict)}


def _check_inputs(task: Task, network, config, dataset, n: int = 4) -> list[tuple[torch.Tensor, ...]]:
    """A batch of real validation items for the ONNX parity check, when inputs are named like item keys."""
    names = task.export_spec(network, config).input_names
    batch = default_collate([dataset[i] for i in range(min(n, len(dataset)))])
    return [tuple(batch[k] for k in names)] if all(k in batch for k in names) else []


def _reproduce(args: argparse.Namespace) -> str:
    parts = ["medgate", "train", args.model]
    for flag, value in (("--config", args.train_config), ("--seed", args.seed), ("--max-steps", args.max_steps),
                        ("--seconds", args.seconds), ("--version", args.version)):
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def measure(task: Task, network, config: dict[str, Any], datasets, operating_point=None,
            device: str = "cpu") -> tuple[Evaluation, Evaluation]:
    """Validation (choosing the operating point unless given) and held-out test evaluations."""
    validation = evaluate_split(task, network, datasets["val"], config, operating_point, device)
    chosen = operating_point or validation.operating_point
    return validation, evaluate_split(task, network, datasets["test"], config, chosen, device)


def register(task: Task, network, config, datasets, validation, test, training, version, root, *,
             note: str | None = None, annotate=None) -> None:
    """Export + parity check + registry version (with its out-of-distribution statistic for an image
    classifier, :mod:`training.ood`) + model card; print where they went.  ``note``: the changelog
    entry; ``annotate(folder)``: adds to the version's metadata before the card is written."""
    from training.bundle import write_version
    from training.modelcard import write_model_card

    manifest = write_version(root, task, network, config, version=version, test=test, validation=validation,
                             training=training, check_inputs=_check_inputs(task, network, config, datasets["val"]),
                             note=note)
    if annotate is not None:
        annotate(manifest.folder)
    if ood.applies(manifest):
        statistic = ood.attach(manifest, task, datasets)
        print(f"out-of-distribution threshold {statistic.threshold:.3f} at a {statistic.false_flag_rate:.0%} "
              f"false-flag rate; held-out flagged {statistic.raw['heldout']['flagged']:.1%}")
    card = write_model_card(root, task.name, version)
    print(f"registered {task.name}@{version} at {manifest.folder} (sha256 {manifest.sha256[:12]}...); card {card}")
    if reference_applies(manifest):  # what live monitoring compares served traffic with (training.reference)
        made = attach_reference(manifest, task, datasets, config)
        print(f"monitoring reference: {made.n} held-out items, positive rate {made.positive_rate:.3f}")


def cmd_train(args: argparse.Namespace) -> None:
    from training.loop import train

    if args.from_feedback is not None:
        cmd_retrain(args)
        return
    t0 = time.perf_counter()
    task = load_task(args.model)
    out = args.out or Path("runs") / task.name
    checkpoint = out / "checkpoints" / "last.pt"
    if args.resume and checkpoint.is_file():  # the run's own config, with only the budget changed
        config = torch.load(checkpoint, map_location="cpu", weights_only=False)["config"]
        for key in ("max_steps", "seconds"):
            if getattr(args, key) is not None:
                config["train"][key] = getattr(args, key)
    else:
        config = resolve_config(task, args.train_config, seed=args.seed, max_steps=args.max_steps,
                                seconds=args.seconds)
    datasets = task.datasets(config)
    data_s = time.perf_counter() - t0
    print(f"{task.name}: data ready in {data_s:.1f} s ({', '.join(f'{k} {len(v)}' for k, v in datasets.items())})",
          flush=True)
    result = train(task, config, out, resume=args.resume, datasets=datasets, progress=not args.no_progress)
    validation = result.validation
    test = evaluate_split(task, result.network, datasets["test"], config, validation.operating_point, result.device)
    training = {"command": _reproduce(args), "steps": result.steps, "seconds": result.seconds,
                "device": result.device, "threads": torch.get_num_threads(), "final_loss": result.final_loss,
                "data_seconds": round(data_s, 1), "total_seconds": round(time.perf_counter() - t0, 1)}
    save_evaluation(test, out / "eval-test", extra={"split": "test", "training": training})
    print(json.dumps({"validation": _summary(validation), "test": _summary(test), "training": training}, indent=2))
    if args.version:
        register(task, result.network, config, datasets, validation, test, training, args.version, args.registry)


def cmd_evaluate(args: argparse.Namespace) -> None:
    name, version = parse_reference(args.model)
    task = load_task(name)
    operating_point, label = None, "checkpoint"
    if args.checkpoint is not None:
        network, config = load_weights(task, args.checkpoint)
    else:
        manifest = ModelRegistry(args.registry).get(name, version)
        manifest.verify()
        weights = manifest.folder / manifest.raw.get("weights_file", "model.pt")
        if not weights.is_file():
            raise FileNotFoundError(f"{name}@{manifest.version} has no torch weights ({weights}); it predates "
                                    "`medgate export`, so pass --checkpoint.")
        if manifest.raw.get("weights_sha256") not in (None, file_sha256(weights)):
            raise ValueError(f"{weights} does not match the weights_sha256 in its metadata.")
        network, config = load_weights(task, weights)
        operating_point, label = manifest.operating_point, manifest.version
    if args.seed is not None:
        config = {**config, "seed": args.seed}
    datasets = task.datasets(config)
    if operating_point is None and args.split != "val":
        operating_point = evaluate_split(task, network, datasets["val"], config).operating_point
    evaluation = evaluate_split(task, network, datasets[args.split], config, operating_point)
    out = args.out or Path("runs") / name / f"eval-{label}-{args.split}-seed{config['seed']}"
    paths = save_evaluation(evaluation, out, extra={"model": f"{name}@{label}", "split": args.split,
                                                    "seed": config["seed"]})
    print(json.dumps(_summary(evaluation), indent=2))
    print(f"wrote {', '.join(str(p) for p in paths)}")


def cmd_export(args: argparse.Namespace) -> None:
    task = load_task(args.model)
    network, config = load_weights(task, args.checkpoint)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    datasets = task.datasets(config)
    validation, test = measure(task, network, config, datasets)
    training = {"command": f"medgate export {args.model} --checkpoint {args.checkpoint} --version {args.version}",
                "steps": state.get("step"), "seconds": round(float(state.get("seconds", 0.0)), 1),
                "device": state.get("device", "unknown"), "threads": torch.get_num_threads()}
    print(json.dumps({"validation": _summary(validation), "test": _summary(test)}, indent=2))
    register(task, network, config, datasets, validation, test, training, args.version, args.registry)


def cmd_retrain(args: argparse.Namespace) -> None:
    """``train <model> --from-feedback DIR`` (see the module docstring and :mod:`training.feedback`)."""
    from training import feedback
    from training.config import read_config_file
    from training.loop import train

    t0 = time.perf_counter()
    task = load_task(args.model)
    registry = ModelRegistry(args.registry)
    labels = feedback.read_feedback(args.from_feedback, task.name)
    base_version = args.base or (labels.deployed_version if labels.deployed_version in registry.versions(task.name)
                                 else None)
    current = registry.get(task.name, base_version)
    current.verify()
    current_network, current_config = load_weights(task, current.folder / current.raw.get("weights_file", "model.pt"))
    config = feedback.retraining_config(current_config, args.train_config and read_config_file(args.train_config),
                                        seed=args.seed)
    out = args.out or Path("runs") / f"{task.name}-feedback"
    train_cases, heldout_cases = feedback.split(labels.cases, float(config["feedback"]["heldout_fraction"]),
                                                config["seed"])
    datasets, mix = feedback.mixed_datasets(task, config, train_cases, heldout_cases, out)
    data_s = time.perf_counter() - t0
    print(f"{task.name}: {len(labels.cases)} reviewed cases ({labels.rules()}; left out {dict(labels.skipped)}); "
          f"training on {mix['generated_train']} generated + {mix['feedback_train']} feedback x {mix['repeat']} "
          f"(feedback {mix['feedback_share_of_draws']:.0%} of draws), {mix['steps']} steps from {current.version}",
          flush=True)
    result = train(feedback.WarmStart(task, current_network.state_dict()), config, out, datasets=datasets,
                   progress=not args.no_progress)
    test = evaluate_split(task, result.network, datasets["test"], config, result.validation.operating_point)
    comparison = feedback.compare(task, current, current_network, result.network, test, datasets, config)
    line = feedback.summary_line(comparison)
    print(json.dumps(comparison, indent=2))
    print(line)
    version = args.version or feedback.next_version(registry, task.name)
    command = shlex.join(["medgate", "train", task.name, "--from-feedback", str(args.from_feedback), "--base",
                          current.version, "--version", version]
                         + (["--config", str(args.train_config)] if args.train_config else []))
    training = {"command": command, "steps": result.steps, "seconds": result.seconds, "device": result.device,
                "threads": torch.get_num_threads(), "final_loss": result.final_loss, "data_seconds": round(data_s, 1),
                "total_seconds": round(time.perf_counter() - t0, 1), "base_version": current.version}
    extra = feedback.card_metadata(labels, mix, comparison)
    note = (f"trained on generated data + {mix['feedback_train']} feedback cases, fine-tuned from {current.version} "
            f"by `{command}`; {line}")
    register(task, result.network, config, datasets, result.validation, test, training, version, args.registry,
             note=note, annotate=lambda folder: feedback.annotate(folder, extra, f"before: {current.version}"))
