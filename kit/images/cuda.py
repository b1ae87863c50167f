"""Can a site's GPU driver run an image? Its CUDA version against the driver's ceiling."""

from __future__ import annotations


def cuda_problem(entry: dict, site) -> tuple[str | None, str | None]:
    """(error, warning) for an image's CUDA against the site's driver ceiling.

    A newer CUDA major than the driver's cannot run; a newer minor runs through CUDA's
    minor-version compatibility, without PTX JIT (a warning), unless the image's kernels are PTX
    the driver must compile (lock key ``ptx_jit``): then only a driver of at least its CUDA runs it."""
    need = entry.get("cuda")
    if not need:
        return None, None
    have = site.driver.cuda_max
    need_v, have_v = tuple(map(int, str(need).split("."))), tuple(map(int, have.split(".")))
    if need_v[0] > have_v[0]:
        return (f"the image needs CUDA {need}, and {site.name}'s driver supports up to CUDA {have} "
                f"(driver.cuda_max): use an image built on CUDA {have_v[0]}.x"), None
    if need_v > have_v and entry.get("ptx_jit"):
        return (f"the image needs CUDA {need} and its kernels are PTX the driver compiles at start, which CUDA "
                f"minor-version compatibility does not cover; {site.name}'s driver supports up to CUDA {have} "
                f"(driver.cuda_max)"), None
    if need_v > have_v:
        return None, (f"the image is built on CUDA {need} and {site.name}'s driver supports {have}: it runs through "
                      f"CUDA minor-version compatibility (no PTX JIT)")
    return None, None
