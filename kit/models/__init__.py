"""Models: architecture and exact parameter counts (``arch``, ``safetensors_headers``), where a
model's metadata comes from (``resolve``: a directory, the shared cache, the Hub, the packaged
``catalog``), and downloading it once (``pull``)."""
