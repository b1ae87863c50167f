"""Shared services: a serve job that renews itself under one stable name, with per-lab keys
(only their hashes reach the job) and usage per lab (deploy, registry, keys, usage)."""
