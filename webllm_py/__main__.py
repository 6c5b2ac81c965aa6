"""`python -m webllm_py <command>` (also the `webllm-py` console script).

A small dispatcher: each subcommand lives in its own module, which provides
`add_arguments(parser)` and `main(args) -> exit code`. Add a command by adding a line to COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback

# name -> (module under webllm_py, one-line help)
COMMANDS = {
    "serve": ("serve", "serve the browser runtime (pages, Pyodide, wheels, models) from one origin"),
    "build": ("static_site", "write the browser runtime as a folder of static files for any web host"),
    "generate": ("generate", "generate text natively (wgpu); timing to stderr"),
    "bench": ("bench", "native prefill/decode benchmark; prints JSON"),
    "dawn-bench": ("dawn", "the same benchmark on Dawn (browser backend in Pyodide under Node); prints JSON"),
}


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors in one line (bench's usage alone is ~30 lines), with the --help to see."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="webllm-py", description="LLM inference in Python on WebGPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f"webllm_py.{module}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        if "--verbose" not in p._option_string_actions:  # every command: the error line points to it
            p.add_argument("--verbose", action="store_true", help="print the traceback of an error")
        p.set_defaults(_module=mod)
    args = parser.parse_args(argv)
    try:
        return int(args._module.main(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout's reader went away (`generate ... | head`): stop quietly, as Unix tools do. stdout now goes
        # to /dev/null, or the interpreter's last flush fails on the pipe again and prints a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as e:  # a CLI user gets one line; --verbose adds the traceback
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(error_line(e, hint=not getattr(args, "verbose", False)), file=sys.stderr)
        return 1


def error_line(e: BaseException, hint: bool = True) -> str:
    """`error: <ErrorName>: <message>` on one line: the first line of a long message (a ShaderError
    carries its WGSL source), with a pointer to --verbose for the rest."""
    lines = str(e).strip().splitlines() or [""]
    more = " (more with --verbose)" if hint and len(lines) > 1 else ""
    return f"error: {type(e).__name__}: {lines[0]}{more}"


if __name__ == "__main__":
    sys.exit(main())
