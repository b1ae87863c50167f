"""Stand-ins for the pieces that cannot run on the test machine (no GPU, no container runtime).

- `tiny_model.build_tiny_chat_model(dir)`: a real, tiny Llama chat model directory (offline).
- `engine.py`: a stand-in for TGI's `text-generation-launcher` and for `vllm serve` that loads a
  model with transformers on CPU and serves the engines' HTTP routes (real generation).
- `bin/`: `text-generation-launcher`, `vllm`, `singularity`, `apptainer` wrappers; put this
  directory on PATH and set KIT_STANDIN_PYTHON to a Python with torch + transformers.
"""
