"""Stand-ins for what cannot run on the test machine (no GPU, no container runtime), one concern
per module:

- `flags.py`: the engines' command lines, parsed with the pinned flag sets (tests/engine_flags.yaml).
- `routes.py`: the engines' pinned route tables (tests/engine_routes.yaml) and their matching.
- `httpd.py`: the engines' HTTP server (TCP or Unix socket), serving a route table behind a key rule.
- `engine.py`: what both engines share: key-rule hooks, the OpenAI chat and completions routes.
- `model.py`: the model, loaded with transformers on CPU, greedy; `tiny_model.py` writes a tiny
  real chat model (`python tests/standin/tiny_model.py DIR`).
- `tgi.py`, `vllm.py`: `text-generation-launcher` and `vllm serve`: their flags, handlers and key rules.
- `weaviate.py`, `tei.py`: the RAG stack's Weaviate server (its environment, listeners, routes, API-key
  rules, Raft state per node name) and TEI's `text-embeddings-router` (real sentence-transformers
  embeddings behind TEI's key rule); KIT_STANDIN_EXIT_DIR/NAME makes either exit, as a dying service.
- `runtime.py`: `singularity`/`apptainer` exec and run on the host (binds, env prefixes, --env,
  --cleanenv, runscript, the JSONL call log); `images.py`: their build, pull, push, inspect.
- `site.py`: a site layer that runs jobs with all of the above; `bin/`: the commands.

Use:
    export PATH="$PWD/tests/standin/bin:$PATH"
    export KIT_STANDIN_PYTHON="$PWD/.venv/bin/python"   # a Python with torch + transformers
    export KIT_STANDIN_LOG=/tmp/runtime.jsonl           # optional: one JSON line per runtime call
    export HF_HUB_OFFLINE=1
    printf '#!kit-standin image\nBootstrap: docker\n%%runscript\n    exec text-generation-launcher "$@"\n' > tgi.sif
    SINGULARITYENV_API_KEY=k singularity run --nv --bind "$MODEL:/models/m:ro" tgi.sif \\
        --model-id /models/m --port 8080 --prometheus-port 9090
"""
