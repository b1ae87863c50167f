"""Jobs, from request to running service: the shared parts of every job (``spec``), rendering
(``render``), the serving job (``serve``, ``adapters``), submitting with its guarantees
(``submit``), the record of each job (``record``), and following it (``status``, ``watch``,
``endpoint``, ``logs``). Slurm itself is behind ``kit.slurm``."""
