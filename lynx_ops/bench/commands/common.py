# SPDX-License-Identifier: Apache-2.0
"""What the `lynx-bench` subcommands share: the model-source, router and policy argument groups,
engine arguments, the Lynx side's environment, and the model and server setup."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from lynx_ops.bench import model_configs, router_realism
from lynx_ops.registry import router_shape


def parse_engine_args(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not key or not _:
            raise SystemExit(f"--engine-arg {pair!r}: expected key=value (value as JSON or text)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def model_type(args: argparse.Namespace) -> str | None:
    if args.shape:
        return model_configs.config(args.shape)["model_type"]
    config = Path(args.model) / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def resolve_router(args: argparse.Namespace, dummy: bool) -> None:
    """Sets args.router (router_realism.Router, or None: no re-draw) and args.router_label, the
    name every table and row states. Router realism is for dummy weights only: a loaded checkpoint
    keeps its trained router."""
    args.router = None
    if not dummy:
        args.router_label = "checkpoint router"
        return
    if args.spread is not None:
        if args.spread.lower() == "none":
            args.router_label = "UNMODIFIED dummy router (near-uniform): not a speed-up"
            return
        args.router = router_realism.Router(float(args.spread), args.skew, "custom")
    else:
        choice = args.router_stats or args.router_preset
        args.router = router_realism.resolve(choice, model_type(args))
    args.router_label = args.router.describe()


def add_source_args(parser: argparse.ArgumentParser, cpu_note: str) -> None:
    """--shape/--model and what goes with them: one group for every subcommand."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--shape", choices=sorted(model_configs.SHAPES),
                     help="a family at its real layer shapes, dummy weights")  # fmt: skip
    src.add_argument("--model", help="a local checkpoint directory")
    parser.add_argument("--layers", type=int, default=None, help="trim depth (--shape only)")
    parser.add_argument("--tiny", action="store_true", help=f"tiny variant of --shape ({cpu_note})")
    parser.add_argument("--vocab", type=int, default=30000, help="prompt token ids below this")


def add_policy_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy-file", default=None, metavar="FILE",
                        help="the Lynx side runs with this policy file (VLLM_LYNX_CONFIG_FILE; "
                             "docs/MODELS.md), e.g. a setting chosen with lynx-bench frontier")  # fmt: skip


def lynx_env(args: argparse.Namespace) -> dict[str, str]:
    """The Lynx side's environment; a policy file is checked now, before any engine starts."""
    env = {"VLLM_LYNX_ENABLED": "1"}
    if getattr(args, "policy_file", None):
        from lynx_ops.registry import PolicyError, load_policy_file

        try:
            load_policy_file(args.policy_file)
        except PolicyError as e:
            raise SystemExit(f"--policy-file: {e}") from None
        env["VLLM_LYNX_CONFIG_FILE"] = str(Path(args.policy_file).resolve())
    return env


CONTROLLED_SCHEDULER = "lynx_ops.integration.scheduler.LynxAsyncScheduler"


def add_controller_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--controller-file", default=None, metavar="FILE",
                        help="the Lynx side runs the TPOT controller with these settings "
                             "(VLLM_LYNX_CONTROLLER_FILE, with Lynx's scheduler; docs/CONTROLLER.md); "
                             "needs --policy-file with a budget policy")  # fmt: skip


def controller_side(args: argparse.Namespace) -> tuple[dict[str, str], list[str]]:
    """The Lynx side's extra environment and `vllm serve` arguments for --controller-file,
    checked now, before any server starts; ({}, []) without it."""
    path = getattr(args, "controller_file", None)
    if not path:
        return {}, []
    from lynx_ops.controller import ControllerError, load_config

    if not getattr(args, "policy_file", None):
        raise SystemExit("--controller-file turns a budget policy's K or a keep_k0 policy's k0: "
                         "give --policy-file too")  # fmt: skip
    try:
        load_config(path)
    except ControllerError as e:
        raise SystemExit(f"--controller-file {e}") from None
    env = {"VLLM_LYNX_CONTROLLER_FILE": str(Path(path).resolve())}
    return env, [f"--scheduler-cls={CONTROLLED_SCHEDULER}"]


def policy_label(args: argparse.Namespace) -> str:
    """What the Lynx side ran with, for every result row."""
    if not getattr(args, "policy_file", None):
        return "family default"
    label = json.dumps(json.loads(Path(args.policy_file).read_text())["policies"])
    if getattr(args, "controller_file", None):
        label += " + TPOT controller " + json.dumps(
            json.loads(Path(args.controller_file).read_text())
        )
    return label


def add_router_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("router (dummy weights only)")
    g.add_argument("--router", dest="router_preset", default="calibrated", metavar="PRESET",
                   help="gate re-draw preset: calibrated (default; the family's preset fitted to "
                        "published real-router statistics), calibrated-deepseek, optimistic (the "
                        "former default: far more confident than real routers), embedded, or a "
                        "router statistics file")  # fmt: skip
    g.add_argument("--router-stats", metavar="FILE",
                   help="a router statistics file (scripts/export_router_stats.py); same as "
                        "--router FILE")  # fmt: skip
    g.add_argument("--spread", default=None,
                   help="custom logit spread instead of a preset, or 'none' for vLLM's plain "
                        "dummy router (rows marked not a speed-up)")  # fmt: skip
    g.add_argument("--skew", type=float, default=0.0, help="custom expert skew (with --spread)")


def prepare_model(args: argparse.Namespace, work: Path):
    """(model dir, prompt vocab, num_experts, top_k): a --shape is written as a config dir for dummy
    weights; a --model is used as given (its router shape unknown here)."""
    if not args.shape:
        config = Path(args.model) / "config.json"
        if config.is_file():  # prompt ids must exist in the checkpoint's vocabulary
            cfg = json.loads(config.read_text())
            return (
                args.model,
                min(args.vocab, int(cfg.get("vocab_size", args.vocab))),
                *router_shape(cfg),
            )
        return args.model, args.vocab, None, None
    cfg = model_configs.config(args.shape, args.layers, tiny=args.tiny)
    model = model_configs.write_model_dir(args.shape, work / "model", args.layers, tiny=args.tiny)
    num_experts, top_k = router_shape(cfg)
    return str(model), cfg["vocab_size"], num_experts, top_k


def serve_setup(args: argparse.Namespace, prefix: str, max_tokens: int):
    """What every `vllm serve` workload needs: output and work dirs, the model (a --shape written
    as a dummy-weight config dir with a word-level tokenizer over its vocabulary), prompt
    vocabulary and serve arguments (router realism through the lynx_dummy load format)."""
    from lynx_ops.bench.online import router_serve_args

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir))
    resolve_router(args, dummy=bool(args.shape))
    serve_args = [f"--max-model-len={max_tokens + 16}", *args.serve_arg]
    model, vocab, _, _ = prepare_model(args, work)
    if args.shape:
        cfg = json.loads((Path(model) / "config.json").read_text())
        model_configs.write_tokenizer(model, int(cfg["vocab_size"]))
        serve_args += (router_serve_args(args.router.loader_config()) if args.router
                       else ["--load-format=dummy"])  # fmt: skip
    return out_dir, work, model, vocab, serve_args


def read_reuse(path: str, workload: dict) -> dict[str, Any]:
    """An earlier run's JSON for --reuse, refused unless it recorded the same workload: one
    comparison may span several runs, and it must stay one comparison."""
    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"--reuse {path}: cannot read it ({e})") from e
    if earlier.get("workload") != workload:
        raise SystemExit(f"--reuse {path}: recorded for a different workload "
                         f"({earlier.get('workload')} vs {workload})")  # fmt: skip
    return earlier


def checkpoint_or_embedded(model: str | None) -> str:
    """--model, or the embedded trained model where none is given."""
    if model is not None:
        return model
    from lynx_ops import embedded

    if not embedded.available():
        raise SystemExit("no --model given and the embedded model is not trained yet "
                         "(scripts/train_embedded_model.py)")  # fmt: skip
    return str(embedded.MODEL_DIR)
