"""The packaged catalog, planned: each model with the smallest allocation that serves it on a site."""

from __future__ import annotations

from kit.models import catalog
from kit.models.resolve import from_catalog
from kit.plan.serve import plan_serve


def catalog_rows(site=None, engine: str = "tgi") -> list[dict]:
    rows = []
    for entry in catalog.entries():
        for model_id in entry["ids"]:
            info = from_catalog(model_id, entry)
            row = {"model": model_id, "family": entry.get("family"), "params": info.params,
                   "active_params": info.active_params, "max_context": info.max_context}
            if site is not None:
                plan = plan_serve(info, site, engine=engine)
                row["serve"] = (f"{plan['gpus']}x {plan['gpu_type']}" if plan["fits"]
                                else "no fit" + (f" ({plan['suggestion']['text']})" if plan["suggestion"] else ""))
            rows.append(row)
    return rows
