"""webllm_py: LLM inference in the browser (Pyodide + WebGPU) and natively (wgpu-py).

import webllm_py
engine = await webllm_py.create()          # default: SmolLM2-135M-Instruct
async for chunk in engine.chat.completions.create(messages=[...], stream=True): ...
reply = await engine.chat.completions.create(messages=[...])
"""

__version__ = "0.1.0"


async def create(model=None, **options):
    """Load a model; returns an engine with OpenAI's shape (`engine.chat.completions.create`)."""
    from .api import create as _create  # deferred: importing the package stays cheap

    return await _create(model, **options)
