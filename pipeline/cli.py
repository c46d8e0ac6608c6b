"""The ``kowiki-bert`` console script: one subcommand per stage, each calling ``run(cfg)``.

A stage module exposes ``Config`` (its dataclass), ``run(cfg)``, ``ALIASES`` (short flags
for dotted fields) and optionally ``POSITIONAL`` (the list field that takes bare words).
Every field is also settable as ``--dotted.name value``; ``--config FILE.yaml`` gives the base.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from pipeline.config import ConfigError, leaf_fields, load_config, show_bounds, _closest
from pipeline.errors import PipelineError

STAGES = {
    "extract": ("pipeline.extract", "Dump (XML/bz2, WikiExtractor, text, JSONL/Parquet) -> clean Arrow documents"),
    "tokenizer": ("pipeline.tokenizer", "Train a Korean WordPiece tokenizer on the documents"),
    "shard": ("pipeline.shard", "Documents -> pre-tokenized MLM+NSP Arrow shards"),
    "pretrain": ("pipeline.pretrain", "Pretrain BertForPreTraining (MLM+NSP) with Accelerate/DeepSpeed"),
    "finetune": ("pipeline.finetune", "Fine-tune and evaluate on a Korean downstream task"),
    "fill-mask": ("pipeline.fill_mask", "Print the top [MASK] candidates of a trained model"),
    "run": ("pipeline.run", "Run every stage end to end on the embedded sample"),
}


# Disk failures a user fixes, not bugs: one line, no traceback.
DISK_ERRORS = {errno.ENOSPC: "free some space or pass an --output on another disk",
               errno.EDQUOT: "free some quota or pass an --output on another disk",
               errno.EROFS: "the file system is read-only; pass a writable --output",
               errno.EACCES: "no permission; pass a writable --output"}


def _parser(prog: str, module) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or "").strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE.yaml", help="base config; flags below override it")
    aliases = getattr(module, "ALIASES", {})
    by_field = {}
    for flag, dotted in aliases.items():
        by_field.setdefault(dotted, []).append(flag)
    positional = getattr(module, "POSITIONAL", None)
    for dotted, (tp, f) in leaf_fields(module.Config).items():
        if dotted == positional:
            p.add_argument(dotted, nargs="*", metavar=dotted.upper(), help=f.metadata.get("help", "").replace("%", "%%"))
            continue
        flags = by_field.get(dotted, []) + [f"--{dotted}"]
        if f"--{dotted.replace('_', '-')}" not in flags:
            flags.append(f"--{dotted.replace('_', '-')}")
        default = None if f.default is dataclasses.MISSING else f.default  # required, or a factory's
        help_text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_text += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if default not in (None, [], ""):
            help_text += f" [default: {','.join(map(str, default)) if isinstance(default, list) else default}]"
        if f.metadata.get("bounds"):
            help_text += f" [range: {show_bounds(f.metadata['bounds'])}]"
        kwargs = dict(dest=dotted, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if tp is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        p.add_argument(*dict.fromkeys(flags), **kwargs)
    return p


def parse_stage_args(module, argv: Sequence[str], prog: str):
    """Parse a stage's command line into its validated config."""
    parser = _parser(prog, module)
    ns, unknown = parser.parse_known_args(list(argv))
    if unknown:
        bad = next((u for u in unknown if u.startswith("-")), unknown[0])
        key = bad.lstrip("-").split("=")[0].replace("-", "_")
        valid = list(leaf_fields(module.Config)) + [a.lstrip("-") for a in getattr(module, "ALIASES", {})]
        raise ConfigError(f"unknown option '{bad}': {_closest(key, valid)} (see '{prog} --help')")
    values = vars(ns)
    config_path = values.pop("config", None)
    positional = getattr(module, "POSITIONAL", None)
    if positional and not values.get(positional):
        values.pop(positional, None)
    return load_config(module.Config, config_path, values)


def quiet_libraries() -> None:
    """Keep the libraries' expected chatter (head-mismatch load reports, per-file progress
    bars, DeepSpeed's accelerator probe) out of the stage output; real warnings still show."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if not os.environ.get("DS_ACCELERATOR"):
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def refuse(line: str) -> int:
    """Print a refusal; under torchrun also hand it to the agent (its error file), so the
    failure summary it prints after the ranks exit names the refusal instead of "<N/A>"."""
    print(line, file=sys.stderr)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        try:
            Path(error_file).write_text(json.dumps({"message": line, "timestamp": int(time.time())}))
        except OSError:
            pass
    return 2


def stage_main(module_name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point shared by the console script and ``python -m pipeline.<stage>``."""
    module = importlib.import_module(module_name)  # light: stages import torch & co. when they run
    argv = sys.argv[1:] if argv is None else argv
    prog = prog or f"python -m {module_name}"
    try:
        cfg = parse_stage_args(module, argv, prog)
        quiet_libraries()
        result = module.run(cfg)
    except PipelineError as err:
        return refuse(f"error: {err}")
    except BrokenPipeError:  # `... --dry-run | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        return refuse(f"error: cannot write {err.filename or 'the output'}: {err.strerror}; {DISK_ERRORS[err.errno]}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from importlib.metadata import version

        print(f"kowiki-bert {version('kowiki-bert')}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: kowiki-bert STAGE [options]\n\nstages:")
        for name, (_, about) in STAGES.items():
            print(f"  {name:<10} {about}")
        print("\n'kowiki-bert STAGE --help' lists a stage's options.")
        return 0 if argv else 2
    name = argv[0]
    if name not in STAGES:
        print(f"error: unknown stage '{name}': {_closest(name, STAGES)}", file=sys.stderr)
        return 2
    return stage_main(STAGES[name][0], argv[1:], prog=f"kowiki-bert {name}")


if __name__ == "__main__":
    sys.exit(main())
