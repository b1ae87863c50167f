"""Pinned container images: the lock (``lock``), definition files (``definition``), the site's
image directory (``store``), the runtime (``runtime``), ``build``, pull and push (``transfer``),
the registry's digests (``registry``) and the driver's CUDA ceiling (``cuda``)."""
