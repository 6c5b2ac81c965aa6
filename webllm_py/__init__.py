"""webllm_py: LLM inference in the browser (Pyodide + WebGPU) and natively (wgpu-py)."""
