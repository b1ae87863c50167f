"""Site configs: the schema (``schema``), layered loading (``load``) and its validation
(``validate``), path placeholders (``paths``), and the live check against the cluster (``check``)."""

from kit.sites.load import LoadedSite, choose_site, known_site_names, load_site, load_site_if_given
from kit.sites.paths import account_path, expand_user_path

__all__ = ["LoadedSite", "account_path", "choose_site", "expand_user_path", "known_site_names", "load_site",
           "load_site_if_given"]
