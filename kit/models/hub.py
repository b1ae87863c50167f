"""Talking to the Hugging Face Hub: a quick reachability check, a bound on every request, and
one mapping of its errors (HTTP answers and network failures alike) to one line."""

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
    url = urlparse(hub_endpoint())
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


class HubUnreachable(KitError):
    """The network failed between kit and the Hub (no answer, a dropped connection, a timeout)."""


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def bound_requests() -> None:
    """huggingface_hub's shared HTTP client waits forever by default, and its API calls (the repo
    listing of a download, for one) pass an explicit ``timeout=None``: a request hook gives every
    request without a timeout the Hub's download timeout (HF_HUB_DOWNLOAD_TIMEOUT, 10 s by
    default) for each connect and read, so a Hub that accepts and never answers fails instead
    of hanging. Requests that carry their own timeout keep it."""
    from huggingface_hub.utils import get_session

    session = get_session()
    hooks = session.event_hooks
    if bounded_timeout not in hooks["request"]:
        hooks["request"] = [*hooks["request"], bounded_timeout]
        session.event_hooks = hooks


def bounded_timeout(request) -> None:
    from huggingface_hub import constants

    timeout = request.extensions.get("timeout") or {}
    if all(value is None for value in timeout.values()):
        seconds = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
        request.extensions["timeout"] = dict.fromkeys(("connect", "read", "write", "pool"), seconds)


def network_failure(error: BaseException) -> BaseException | None:
    """The transport error (httpx's RequestError, under huggingface_hub 1.x; its successor's
    under later versions) behind an exception, following the chain huggingface_hub wraps it in."""
    import importlib

    kinds = []
    for module in ("httpx", "httpx2"):
        try:
            kinds.append(importlib.import_module(module).RequestError)
        except (ImportError, AttributeError):
            pass
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__name__ == "OfflineModeIsEnabled":  # HF_HUB_OFFLINE: not a network failure
            return None
        if isinstance(error, (*kinds, ConnectionError, TimeoutError)):
            return error
        error = error.__cause__ or error.__context__
    return None


def describe_network_failure(error: BaseException) -> str:
    name = type(error).__name__
    if isinstance(error, TimeoutError) or "Timeout" in name:
        what = "did not answer in time"
    elif "Connect" in name or isinstance(error, ConnectionRefusedError):
        what = "cannot be reached"
    else:  # RemoteProtocolError, ReadError, ...: the server dropped the connection
        what = "dropped the connection"
    return f"the Hub at {hub_endpoint()} {what} ({name})"


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None, action: str = "Hub request failed",
               retry: str = "try again"):
    """The Hub's exceptions as one-line KitErrors that say what to do."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    bound_requests()
    try:
        yield
    except GatedRepoError:  # a subclass of RepositoryNotFoundError: first
        raise KitError(f"{repo_id}: gated on the Hub; accept its licence on the model page and log in "
                       f"(hf auth login)") from None
    except RepositoryNotFoundError:
        raise KitError(f"{repo_id}: no such model on the Hub (or it is private and you are not logged in)") from None
    except RevisionNotFoundError:
        raise KitError(f"--revision {revision}: not a revision of {repo_id}") from None
    except Exception as e:
        failure = network_failure(e)
        if failure is not None:
            raise HubUnreachable(f"{repo_id}: {action}: {describe_network_failure(failure)}; check the network "
                                 f"(HF_ENDPOINT, proxy) and {retry}") from None
        if isinstance(e, (HfHubHTTPError, OSError)):
            raise KitError(f"{repo_id}: {action}: {str(e).splitlines()[0]}") from None
        raise
