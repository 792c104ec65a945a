"""ncx: train language models over neurally compressed text.

One subcommand per module; each module exposes add_arguments(parser, command)
and run(args) -> exit code."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module, one-line help). Modules are imported only when their
# command runs, so `ncx --help` stays fast.
COMMANDS = {
    "demo": ("ncx.demo", "the main job: every method on the embedded corpus, M1 and M2, table and plot"),
    "train-m1": ("ncx.train_m1", "train M1, the byte-level model that drives the coder"),
    "quantize-m1": ("ncx.int_m1", "convert a float M1 into an integer-exact M1 (decodes on any device)"),
    "compress": ("ncx.jobs", "compress a corpus into a token dataset"),
    "decompress": ("ncx.jobs", "restore the original documents from a token dataset"),
    "inspect": ("ncx.jobs", "summarize a token dataset"),
    "train-m2": ("ncx.train_m2", "train M2 on a token dataset"),
    "experiment": ("ncx.experiment", "compress, train and evaluate a grid of methods and M2 sizes"),
    "generate": ("ncx.generate", "sample text from M2 through M1's decoder"),
    "export": ("ncx.export", "write a token dataset for Megatron, Hugging Face datasets or nanoGPT"),
    "export-tokenizer": ("ncx.tokenizer_export",
                         "write an EqualInfoAC b=16 window vocabulary as a Hugging Face tokenizer.json"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ncx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        p.set_defaults(_name=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Parse the command name first, then let its module add its own arguments.
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    if not getattr(known, "command", None):
        parser.print_help()
        if not argv:
            from .ops import build_info

            print("\nthis machine:\n  " + build_info().replace("\n", "\n  "))
        return 0 if not argv else 2
    module = importlib.import_module(known._module)
    sub = argparse.ArgumentParser(prog=f"ncx {known._name}", description=COMMANDS[known._name][1])
    module.add_arguments(sub, known._name)
    args = sub.parse_args(argv[1:])
    args.command = known._name
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        # User mistakes get one clear line, not a traceback.
        print(f"ncx {known._name}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`ncx inspect DIR | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
