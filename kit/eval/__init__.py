"""Evaluation: extraction precision/recall/F1 (``extract``, values compared after ``normalize``),
base-vs-tuned side by side (``compare``), the runner that sends prompts to an endpoint or a local
model (``generate``, with ``prompts``, ``answer`` parsing and the ``local`` transformers backend),
retrieval recall@k for RAG (``retrieval``), and the JSONL records they all read (``records``).

Nothing here imports torch or transformers at the top: only ``local`` does, inside its functions.
"""
