"""The key guard that fronts every served model (``proxy``): it runs inside the job, in the
engine's image, with the standard library only."""
