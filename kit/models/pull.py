"""Download a model once into a shared Hugging Face cache, on a login node.

huggingface_hub's snapshot_download does the work: the HF cache layout that jobs read
offline (``HF_HUB_OFFLINE=1``), progress bars, resume of partial files, and skipping files
already present. The token comes from the usual places (HF_TOKEN, ``hf auth login``) and is
never printed.
"""

from __future__ import annotations

import os
from pathlib import Path

from kit.errors import KitError
from kit.models.resolve import HUB_ID, hub_reachable


def pull(repo_id: str, to: str, *, revision: str | None = None, allow_patterns: list[str] | None = None) -> Path:
    if not HUB_ID.match(repo_id):
        raise KitError(f"model {repo_id!r}: kit models pull takes a Hub id like org/name")
    cache = Path(to).expanduser()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KitError(f"--to {to}: cannot create the cache directory: {e.strerror}") from None
    if not os.access(cache, os.W_OK):
        raise KitError(f"--to {to}: not writable")
    if not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        from huggingface_hub import constants

        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{endpoint} does not answer"
        raise KitError(f"cannot reach the Hugging Face Hub ({reason}): run `kit models pull` on a login node "
                       f"with internet access")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=str(cache), allow_patterns=allow_patterns))
    except GatedRepoError:
        raise KitError(f"{repo_id}: gated on the Hub; accept its licence on the model page and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise KitError(f"{repo_id}: no such model on the Hub (or it is private and you are not logged in)") from None
    except RevisionNotFoundError:
        raise KitError(f"--revision {revision}: not a revision of {repo_id}") from None
    except (HfHubHTTPError, OSError) as e:
        raise KitError(f"{repo_id}: download failed: {str(e).splitlines()[0]}") from None
