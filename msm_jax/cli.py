"""`msm`: the one command-line entry point. Each subcommand lives in its own module
with an `add_parser(subparsers)` function; heavy imports happen inside handlers so
`msm --help` stays instant."""

from __future__ import annotations

import argparse
import importlib
import sys

from msm_jax.config import ConfigError
from msm_jax.errors import UserError

# Subcommand modules, in the order of the data path.
COMMAND_MODULES = (
    "data_pipeline.generate_cli",     # msm generate docs|chats
    "data_pipeline.cli",              # msm tokenizer train, msm shards
    "msm_jax.commands.train",         # msm train
    "msm_jax.commands.convert",       # msm convert hf-to-orbax|orbax-to-hf|lora-to-peft
    "eval.cli",                       # msm eval
    "msm_jax.commands.serve",         # msm serve
    "msm_jax.commands.experiment",    # msm run, msm sweep, msm demo
)

DESCRIPTION = """\
msm-jax: Model Spec Midtraining on JAX.

The data path: generate (spec -> documents/chats) -> shards (tokenize, pack)
-> train (midtrain, then SFT) -> convert (Orbax <-> Hugging Face) -> eval.
Every command takes --help. Configs are YAML under configs/, with key.sub=value
overrides after the config file (MaxText style).
"""


class UsageError(Exception):
    """A command line argparse refused; printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (not usage text plus the error);
    subcommand parsers inherit it."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="msm", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv`, accepting `key=value` overrides anywhere after the config file, also
    after `--flags` (argparse alone takes them only before the first flag)."""
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if overrides and isinstance(getattr(args, "overrides", None), list):
        args.overrides += overrides
        extra = [a for a in extra if a not in overrides]
    if extra:
        command = " ".join(filter(None, ["msm", getattr(args, "command", None)]))
        raise UsageError(f"{command}: unrecognized arguments: {' '.join(extra)} (see {command} --help)")
    return args


def main(argv: list[str] | None = None) -> int:
    from msm_jax.storage import use_emulator_from_env

    use_emulator_from_env()  # STORAGE_EMULATOR_HOST alone selects a local Cloud Storage, for every library
    parser = build_parser()
    try:
        args = parse(parser, argv)
    except UsageError as e:
        print(f"usage error: {e}", file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"msm: config error: {e}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"msm: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a file the user named cannot be read or written (permissions, disk full)
        print(f"msm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("msm: interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The `msm` executable (and `python -m msm_jax.cli`): huge pages for XLA:CPU's temporaries
    (a re-exec, see msm_jax/host_memory.py), then `main`. Only a real command line re-executes;
    `main` called from Python (tests, notebooks) never replaces its process."""
    from msm_jax.host_memory import reexec_with_huge_pages

    reexec_with_huge_pages()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
