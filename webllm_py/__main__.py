"""`python -m webllm_py <command>` (also the `webllm-py` console script).

A small dispatcher: each subcommand lives in its own module, which provides
`add_arguments(parser)` and `main(args) -> exit code`. Add a command by adding a line to COMMANDS.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under webllm_py, one-line help)
COMMANDS = {
    "serve": ("serve", "serve the browser runtime (pages, Pyodide, wheels, models) from one origin"),
    "build": ("static_site", "write the browser runtime as a folder of static files for any web host"),
    "generate": ("generate", "generate text natively (wgpu); timing to stderr"),
    "bench": ("bench", "native prefill/decode benchmark; prints JSON"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webllm-py", description="LLM inference in Python on WebGPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f"webllm_py.{module}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    args = parser.parse_args(argv)
    return int(args._module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
