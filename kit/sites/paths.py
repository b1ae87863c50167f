"""Paths in a site file: ``~``, ``$USER`` and the ``{account}`` placeholder, filled in one place."""

from __future__ import annotations

import os
from pathlib import Path

from kit.errors import KitError


def expand_user_path(text: str, account: str | None = None) -> str:
    """Fill {account} and expand ~ and $USER-style variables of the machine kit runs on
    ($USER is the login name even where the environment lacks it)."""
    import getpass

    if account is not None:
        text = text.replace("{account}", account)
    user = os.environ.get("USER") or getpass.getuser()
    text = text.replace("${USER}", user).replace("$USER", user)
    return os.path.expandvars(os.path.expanduser(text))


def account_path(site, text: str, account: str | None, what: str, required: bool = True) -> str | None:
    """A site path that may hold {account}, filled with the given or the site's default account.
    Without an account such a path is a KitError naming it (``what``: "model cache"), or None
    when it is not ``required``."""
    account = account or site.account.default
    if "{account}" in text and not account:
        if not required:
            return None
        raise KitError(f"--account: the {site.name} {what} is per account ({text})")
    return expand_user_path(text, account)


DEFAULT_STATE_DIR = "~/.kit"


def state_dir(site=None) -> Path:
    """kit's own state (job records, checks it remembers): the site's paths.state_dir (which
    KIT_STATE_DIR overrides when the site is loaded), else KIT_STATE_DIR or ~/.kit."""
    if site is not None:
        return Path(expand_user_path(site.paths.state_dir))
    return Path(expand_user_path(os.environ.get("KIT_STATE_DIR") or DEFAULT_STATE_DIR))
