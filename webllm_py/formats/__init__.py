"""Model file formats: GGUF and safetensors readers over a ByteSource, ggml quant layouts as data."""
