"""Talking to what kit started: ``connection`` (InferenceClient, JOB or URL), ``chat``, ``bench``."""
