"""Stand-ins for the pieces that cannot run on the test machine (no GPU, no container runtime).

- `tiny_model.build_tiny_chat_model(dir)`: a real, tiny Llama chat model directory (offline,
  deterministic bytes): `python tests/standin/tiny_model.py DIR` writes one from the shell.
- `engine.py`: stands in for TGI's `text-generation-launcher` 3.3.7 and `vllm serve` 0.19.x. It loads
  the model with transformers on CPU and serves the engines' HTTP routes with real (greedy) generation.
- `runtime.py`: stands in for `singularity` (SingularityCE 4.3) / `apptainer` (1.4): runs the command
  on the host after applying binds, the ENV prefixes, --env, --cleanenv and the image's runscript.
- `bin/`: the commands: `text-generation-launcher`, `vllm`, `singularity`, `apptainer` (symlink).

Use:
    export PATH="$PWD/tests/standin/bin:$PATH"
    export KIT_STANDIN_PYTHON="$PWD/.venv/bin/python"   # a Python with torch + transformers
    export KIT_STANDIN_LOG=/tmp/runtime.jsonl           # optional: one JSON line per runtime call
    export HF_HUB_OFFLINE=1
    echo '#!kit-standin runscript=text-generation-launcher' > tgi.sif
    echo '#!kit-standin runscript=vllm serve' > vllm.sif
    SINGULARITYENV_API_KEY=k singularity run --nv --bind "$MODEL:/models/m:ro" tgi.sif \\
        --model-id /models/m --port 8080 --prometheus-port 9090 --shard-uds-path /tmp/tgi-$$
    APPTAINERENV_VLLM_API_KEY=k apptainer exec --nv vllm.sif vllm serve "$MODEL" --port 8081
    # or the launchers directly: text-generation-launcher --model-id "$MODEL" --port 8080 ...
"""
