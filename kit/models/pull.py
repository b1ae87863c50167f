"""Download a model once into a shared Hugging Face cache, on a login node.

huggingface_hub's snapshot_download does the work: the HF cache layout that jobs read
offline (``HF_HUB_OFFLINE=1``), progress bars, resume of partial files, and skipping files
already present. The token comes from the usual places (HF_TOKEN, ``hf auth login``) and is
never printed.
"""

from __future__ import annotations

from pathlib import Path

from kit.errors import KitError
from kit.fs import writable_dir
from kit.models.hub import hub_endpoint, hub_errors, hub_reachable
from kit.models.resolve import HUB_ID


def pull(repo_id: str, to: str, *, revision: str | None = None, allow_patterns: list[str] | None = None) -> Path:
    if not HUB_ID.match(repo_id):
        raise KitError(f"model {repo_id!r}: kit models pull takes a Hub id like org/name")
    cache = writable_dir(Path(to).expanduser(), "--to")
    if not hub_reachable():
        endpoint = hub_endpoint()
        from huggingface_hub import constants

        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{endpoint} does not answer"
        raise KitError(f"cannot reach the Hugging Face Hub ({reason}): run `kit models pull` on a login node "
                       f"with internet access")
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id, revision, "download failed", "run `kit models pull` again (it resumes)"):
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=str(cache), allow_patterns=allow_patterns))


def default_cache_dir(site, account: str | None) -> str:
    """Where `kit models pull` puts a model without --to: the site's shared model cache."""
    from kit.sites import account_path

    return account_path(site, site.paths.model_cache, account, "model cache")
