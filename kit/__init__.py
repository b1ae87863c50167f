"""kit: right-sized, reproducible LLM jobs on Slurm GPU clusters."""

__version__ = "0.1.0"
