"""Retrieval-augmented generation: documents become chunks (``chunk``), chunks become vectors
(``embed``), vectors live in a store (``store``: an embedded LanceDB store, or Weaviate in a
stack job), ``ingest`` keeps a store in step with a corpus, ``ask`` retrieves and generates with
citations, ``evaluate`` measures retrieval, and ``stack`` builds the Slurm job that serves
Weaviate, TEI and a generator together."""
