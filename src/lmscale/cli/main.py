"""The `lmscale` command: one entry point, each subcommand a thin module in `lmscale.cli.commands`.

Command modules keep their top-level imports light (no torch), so `lmscale --help` is instant;
each exposes `HELP`, `add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys
from typing import NoReturn

from lmscale import __version__
from lmscale.cli.argtypes import resolve_device_argument
from lmscale.errors import LmscaleError

# subcommand -> module under lmscale.cli.commands
COMMANDS: dict[str, str] = {
    "quickstart": "quickstart",
    "presets": "presets",
    "tokenizer": "tokenizer",
    "data": "data",
    "pretrain": "pretrain",
    "config": "config",
    "convert": "convert",
    "fill-mask": "fill_mask",
    "generate": "generate",
    "eval": "eval",
    "finetune": "finetune",
    "predict": "predict",
    "experiment": "experiment",
    "count": "count",
    "cost": "cost",
    "fit": "fit",
    "allocate": "allocate",
    "sweep": "sweep",
    "emergence": "emergence",
    "plot": "plot",
    "report": "report",
}


class UsageError(SystemExit):
    """A bad command line (exit code 2); `main` returns 2 for it instead of exiting."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the flag (exit code 2), like every other lmscale error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise UsageError(2)


def _undecodable_argument(argv: list[str]) -> str | None:
    """The message for the first argument that is not valid UTF-8 (bytes Python kept as surrogates)."""
    for i, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            where = f"the value of {argv[i - 1]}" if i and argv[i - 1].startswith("-") else f"argument {shown!r}"
            if where.startswith("the value"):
                where += f" ({shown!r})"
            return f"{where} is not valid UTF-8 (byte offset {exc.start}); give text and file names in UTF-8"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lmscale",
        description="Tokenize, pretrain (BERT/GPT/T5), use, fine-tune and scale language models.",
    )
    parser.add_argument("--version", action="version", version=f"lmscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"lmscale.cli.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    bad = _undecodable_argument(argv)
    if bad is not None:
        command = argv[0] if argv and argv[0] in COMMANDS else ""
        print(f"lmscale{' ' + command if command else ''}: error: {bad}", file=sys.stderr)
        return 2
    try:
        args, extra = parser.parse_known_args(argv)
        if getattr(args, "command", None) is None:
            parser.print_help()
            return 2
        if extra and not getattr(args, "_accepts_overrides", False):
            args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError:
        return 2
    args._extra = extra
    try:
        resolve_device_argument(args)
        return int(args._run(args) or 0)
    except LmscaleError as exc:
        print(f"lmscale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmscale {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        full = disk_full(exc)
        if full is None:
            raise
        print(f"lmscale {args.command}: error: disk full ({full}); free some space and run the command again "
              "(what was written before stays as it was; a pretraining run continues with --resume)", file=sys.stderr)
        return 2


# errno of a write that found no room: ENOSPC, EFBIG (a file-size limit), EDQUOT
_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
# how safetensors (Rust) words the same errors
_FULL_WORDS = re.compile(r"No space left on device|File too large|Disk quota exceeded|StorageFull|FileTooLarge")


def disk_full(exc: BaseException) -> str | None:
    """What a write that ran out of room says, for any exception in its chain; None for others."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return f"{seen.filename}: {os.strerror(seen.errno)}" if seen.filename else os.strerror(seen.errno)
        match = _FULL_WORDS.search(str(seen))
        if match:
            return match.group(0)
        seen = seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
