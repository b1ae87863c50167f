"""Talking to the Hugging Face Hub: a quick reachability check and one mapping of its errors."""

from __future__ import annotations

import os
from contextlib import contextmanager

from kit.errors import KitError


def hub_reachable(timeout: float = 1.5) -> bool:
    """huggingface_hub retries for ~25 s when offline; a quick TCP check decides first."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:  # HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None, action: str = "Hub request failed"):
    """The Hub's exceptions as one-line KitErrors that say what to do."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except GatedRepoError:  # a subclass of RepositoryNotFoundError: first
        raise KitError(f"{repo_id}: gated on the Hub; accept its licence on the model page and log in "
                       f"(hf auth login)") from None
    except RepositoryNotFoundError:
        raise KitError(f"{repo_id}: no such model on the Hub (or it is private and you are not logged in)") from None
    except RevisionNotFoundError:
        raise KitError(f"--revision {revision}: not a revision of {repo_id}") from None
    except (HfHubHTTPError, OSError) as e:
        raise KitError(f"{repo_id}: {action}: {str(e).splitlines()[0]}") from None
