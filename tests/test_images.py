"""Images: the definition files and the lock, and `kit images` against a stand-in runtime
(tests/standin/runtime.py, which records every command line) and a stand-in registry."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from fakeregistry import FakeRegistry
from kit.images.definition import check_agreement, parse_def
from kit.images.lock import load_lock
from kitrun import kit

ROOT = Path(__file__).resolve().parents[1]
STANDIN_BIN = ROOT / "tests" / "standin" / "bin"
PACKAGED = load_lock(ROOT / "containers" / "images.lock")


@pytest.mark.parametrize("name", list(PACKAGED.images))
def test_every_def_parses_agrees_with_the_lock_and_pins_an_exact_version(name):
    definition = check_agreement(PACKAGED, name)
    text = definition.path.read_text()
    assert "latest" not in text.lower()
    entry = PACKAGED.entry(name)
    tag = entry["upstream"].rsplit(":", 1)[1]
    assert re.search(r"\d+\.\d+\.\d+", tag), f"{tag}: not an exact version"
    assert name == "finetune" or str(entry["version"]) in tag  # finetune is kit's own image, on a pinned base
    assert definition.labels["org.kit.image"] == name and entry["sif"].startswith(f"{name}-")


def test_a_def_without_labels_is_refused(tmp_path):
    bad = tmp_path / "x.def"
    bad.write_text((ROOT / "containers" / "tgi.def").read_text().replace("%labels", "%post\n    true\n%oldlabels", 1))
    with pytest.raises(Exception, match="unknown section %oldlabels"):
        parse_def(bad)
    bad.write_text("\n".join(line for line in (ROOT / "containers" / "vllm.def").read_text().splitlines()
                             if not line.startswith("%labels") and "org.kit." not in line))
    with pytest.raises(Exception, match="no %labels section"):
        parse_def(bad)


@pytest.fixture
def images_env(tmp_path):
    """A copy of containers/, a site layer whose runtime is the stand-in, a registry directory."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "containers", repo / "containers")
    xdg = tmp_path / "xdg"
    (xdg / "kit" / "sites").mkdir(parents=True)
    layer = {
        "account": {"default": "p12345"},
        "runtime": {"fakeroot": True, "cache_dir": str(tmp_path / "cache"), "tmp_dir": str(tmp_path / "tmp")},
        "paths": {"image_dir": str(tmp_path / "images")},
        "images": {"shared_dir": str(tmp_path / "shared"), "registry": "oras://registry.example.org/kit"},
    }
    (xdg / "kit" / "sites" / "quest.yaml").write_text(yaml.safe_dump(layer))
    (tmp_path / "tmp").mkdir()
    env = {
        "XDG_CONFIG_HOME": str(xdg),
        "KIT_SITE": "quest",
        "KIT_IMAGES_LOCK": str(repo / "containers" / "images.lock"),
        "PATH": f"{STANDIN_BIN}:{os.environ['PATH']}",
        "KIT_STANDIN_LOG": str(tmp_path / "runtime.log"),
        "KIT_STANDIN_ORAS_ROOT": str(tmp_path / "oras"),
        "KIT_STANDIN_PYTHON": os.environ.get("KIT_STANDIN_PYTHON", ""),
    }
    return {"env": env, "tmp": tmp_path, "lock": repo / "containers" / "images.lock", "images": tmp_path / "images"}


def kit_images(images_env, *args, **extra):
    return kit("images", *args, env=dict(images_env["env"], **extra))


def calls(images_env) -> list[list[str]]:
    log = Path(images_env["env"]["KIT_STANDIN_LOG"])
    return [json.loads(line)["argv"] for line in log.read_text().splitlines()] if log.exists() else []


def lock_entry(images_env, name):
    return yaml.safe_load(images_env["lock"].read_text())["images"][name]


def snapshot(images_env) -> dict:
    files = sorted(p for p in images_env["tmp"].rglob("*")  # not the stand-in's own call logs
                   if p.is_file() and p.name != "runtime.log" and not p.name.startswith("kit-standin-"))
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_build_runs_the_runtime_and_records_the_sif(images_env):
    r = kit_images(images_env, "build", "tgi")
    assert r.code == 0, r.err
    sif = images_env["images"] / "tgi-3.3.7.sif"
    entry = lock_entry(images_env, "tgi")
    assert entry["sif_sha256"] == hashlib.sha256(sif.read_bytes()).hexdigest() and entry["sif_size"] == sif.stat().st_size
    assert entry["runtime_version"] == "singularity-ce version 4.3.1" and entry["built"]
    build = next(c for c in calls(images_env) if "build" in c)
    assert build[1:4] == ["build", "--fakeroot", "--force"]
    assert build[4].startswith(str(images_env["images"] / ".tgi-3.3.7.sif.partial-"))
    assert build[5] == str(images_env["lock"].parent / "tgi.def")
    assert (images_env["tmp"] / "cache" / "kit-standin-cache.log").exists()  # the site's cache dir was used
    assert not list(images_env["images"].glob(".*partial*"))
    before = len(calls(images_env))
    again = kit_images(images_env, "build", "tgi")
    assert again.code == 0 and not any("build" in c for c in calls(images_env)[before:]), "a verified image is kept"


def test_build_where_the_site_allows_no_fakeroot(images_env):
    site_file = Path(images_env["env"]["XDG_CONFIG_HOME"]) / "kit" / "sites" / "quest.yaml"
    layer = yaml.safe_load(site_file.read_text())
    layer["runtime"]["fakeroot"] = False
    site_file.write_text(yaml.safe_dump(layer))
    before = snapshot(images_env)
    r = kit_images(images_env, "build", "vllm")
    assert r.code != 0 and "does not allow unprivileged builds" in r.error_line and "kit images push vllm" in r.error_line
    assert snapshot(images_env) == before


def test_build_failure_in_the_runtime_is_reported_and_leaves_nothing(images_env):
    before = snapshot(images_env)
    r = kit_images(images_env, "build", "tgi", KIT_STANDIN_NO_FAKEROOT="1")
    assert r.code != 0 and "could not use fakeroot" in r.error_line
    assert not images_env["images"].exists() or not list(images_env["images"].iterdir())
    assert snapshot(images_env) == before


def test_no_runtime_on_path_names_the_module(images_env):
    r = kit_images(images_env, "build", "tgi", PATH="/usr/bin:/bin")
    assert r.code != 0 and "module load singularityce/4.3.1-gcc-8.5.0" in r.error_line


def publish(images_env, name="tgi"):
    """Staff's side: build, then put the image in the shared dir and push it to the registry."""
    assert kit_images(images_env, "build", name).code == 0
    shared = images_env["tmp"] / "shared"
    shared.mkdir(exist_ok=True)
    sif = images_env["images"] / lock_entry(images_env, name)["sif"]
    shutil.copy(sif, shared / sif.name)
    r = kit_images(images_env, "push", name)
    assert r.code == 0 and "oras://registry.example.org/kit/tgi:3.3.7" in r.out, r.err
    sif.unlink()  # the lab's own image dir starts empty
    return shared / sif.name


def test_push_puts_the_image_in_the_registry(images_env):
    publish(images_env)
    artifact = images_env["tmp"] / "oras" / "registry.example.org" / "kit" / "tgi" / "3.3.7.sif"
    assert artifact.is_file()
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == lock_entry(images_env, "tgi")["sif_sha256"]
    push = next(c for c in calls(images_env) if "push" in c)
    assert push[1:] == ["push", str(images_env["images"] / "tgi-3.3.7.sif"), "oras://registry.example.org/kit/tgi:3.3.7"]
    pushed = lock_entry(images_env, "tgi")["pushed"]
    assert pushed["ref"] == "oras://registry.example.org/kit/tgi:3.3.7" and pushed["sha256"] == lock_entry(images_env, "tgi")["sif_sha256"]


def test_pull_from_the_shared_dir_and_from_the_registry(images_env):
    publish(images_env)
    r = kit_images(images_env, "pull", "tgi")
    assert r.code == 0 and "pulled from" in r.out and str(images_env["tmp"] / "shared") in r.out
    (images_env["images"] / "tgi-3.3.7.sif").unlink()
    r = kit_images(images_env, "pull", "tgi", "--from", "registry")
    assert r.code == 0 and "oras://registry.example.org/kit/tgi:3.3.7" in r.out, r.err
    pull = next(c for c in calls(images_env) if "pull" in c)
    assert pull[1:4] == ["pull", "--force", "--name"] and pull[-1] == "oras://registry.example.org/kit/tgi:3.3.7"
    assert kit_images(images_env, "verify", "tgi").code == 0


def test_an_image_already_present_is_not_fetched_again(images_env):
    publish(images_env)
    assert kit_images(images_env, "pull", "tgi", "--from", "registry").code == 0
    before = len(calls(images_env))
    r = kit_images(images_env, "pull", "tgi", "--from", "registry")
    assert r.code == 0 and "already present and verified" in r.out
    assert not any("pull" in c for c in calls(images_env)[before:])


def test_a_checksum_mismatch_is_rejected_with_nothing_left(images_env):
    publish(images_env)
    before = snapshot(images_env)
    r = kit_images(images_env, "pull", "tgi", "--from", "registry", KIT_STANDIN_PULL_CORRUPT="1")
    expected = lock_entry(images_env, "tgi")["sif_sha256"]
    assert r.code != 0 and "does not match" in r.error_line and expected in r.error_line
    assert len([w for w in r.error_line.split() if len(w.strip("();")) == 64]) == 2, "both hashes are named"
    assert snapshot(images_env) == before


def test_an_interrupted_pull_leaves_no_partial_image(images_env):
    publish(images_env)
    before = snapshot(images_env)
    r = kit_images(images_env, "pull", "tgi", "--from", "registry", KIT_STANDIN_PULL_FAIL_AFTER="100")
    assert r.code != 0 and "connection reset by peer" in r.error_line
    assert snapshot(images_env) == before
    assert not list(images_env["images"].glob("*partial*"))


def test_verify_finds_a_tampered_image(images_env):
    publish(images_env)
    assert kit_images(images_env, "pull", "tgi").code == 0
    sif = images_env["images"] / "tgi-3.3.7.sif"
    sif.write_bytes(sif.read_bytes() + b"tampered")
    r = kit_images(images_env, "verify")
    assert r.code == 1 and "tgi: mismatch" in r.out


def test_inspect_shows_the_labels(images_env):
    assert kit_images(images_env, "build", "vllm").code == 0
    r = kit_images(images_env, "inspect", "vllm")
    assert r.code == 0, r.err
    info = r.json()
    assert info["labels"]["org.kit.upstream"] == "vllm/vllm-openai:v0.19.1" and info["verified"] == "verified"
    assert any(c[1] == "inspect" for c in calls(images_env))


def test_list_shows_local_state(images_env):
    assert kit_images(images_env, "build", "tei").code == 0
    rows = {r["image"]: r for r in kit_images(images_env, "list", "--json").json()}
    assert rows["tei"]["local"] == "verified" and rows["tgi"]["local"] == "missing"
    assert rows["tgi"]["digest"] == "unresolved"


def test_lock_resolves_digests_from_the_registry(images_env):
    lock = load_lock(images_env["lock"])
    tags = {}
    for entry in lock.images.values():
        host_repo, tag = entry["upstream"].rsplit(":", 1)
        repo = host_repo.split("/", 1)[1] if "." in host_repo.split("/", 1)[0] else host_repo
        tags[f"{repo}:{tag}"] = f"manifest of {entry['upstream']}"
    with FakeRegistry(tags) as registry:
        mirrors = ",".join(f"{h}={registry.url}" for h in ("ghcr.io", "docker.io", "cr.weaviate.io"))
        r = kit_images(images_env, "lock", KIT_REGISTRY_MIRRORS=mirrors)
        assert r.code == 0, r.err
        assert any(req.startswith("GET /token") for req in registry.requests)  # the anonymous token flow
        updated = load_lock(images_env["lock"])
        for name, entry in updated.images.items():
            key = next(k for k in tags if entry["upstream"].endswith(k))
            assert entry["digest"] == registry.digest(key)
            definition = check_agreement(updated, name)  # the def's From: and label follow
            assert definition.header["From"] == f"{entry['upstream']}@{entry['digest']}"


def test_lock_without_the_registry_changes_nothing(images_env):
    before = snapshot(images_env)
    r = kit_images(images_env, "lock", KIT_REGISTRY_MIRRORS="ghcr.io=http://127.0.0.1:9,docker.io=http://127.0.0.1:9,"
                                                          "cr.weaviate.io=http://127.0.0.1:9")
    assert r.code != 0 and "cannot reach" in r.error_line
    assert snapshot(images_env) == before


def test_lock_records_a_sif_built_elsewhere(images_env, tmp_path):
    sif = tmp_path / "built-on-a-workstation.sif"
    sif.write_bytes(b"an image")
    r = kit_images(images_env, "lock", "--sif", "weaviate", str(sif))
    assert r.code == 0 and lock_entry(images_env, "weaviate")["sif_sha256"] == hashlib.sha256(b"an image").hexdigest()


@pytest.mark.parametrize("args, expected", [
    (["pull", "nosuch"], "unknown image 'nosuch'"),
    (["build", "nosuch"], "unknown image 'nosuch'"),
    (["push", "tgi", "--ref", "oras://registry.example.org/kit/tgi"], "needs oras://HOST/PATH:TAG with an explicit tag"),
    (["pull", "tgi"], "sif_sha256 is not set"),
])
def test_bad_input_changes_nothing(images_env, args, expected):
    before = snapshot(images_env)
    r = kit_images(images_env, *args)
    assert r.code != 0 and expected in r.error_line
    assert snapshot(images_env) == before


def test_broken_lock_files(images_env):
    lock = images_env["lock"]
    lock.write_text(lock.read_text() + "\n  broken: [\n")
    r = kit_images(images_env, "list")
    assert r.code != 0 and str(lock) in r.error_line and "YAML syntax error" in r.error_line
    data = yaml.safe_load((ROOT / "containers" / "images.lock").read_text())
    del data["images"]["tgi"]["sif"]
    lock.write_text(yaml.safe_dump(data))
    r = kit_images(images_env, "list")
    assert r.code != 0 and "images.tgi.sif: required key is missing" in r.error_line


def test_an_unwritable_image_dir(images_env):
    blocker = images_env["tmp"] / "not-a-dir"
    blocker.write_text("")
    site_file = Path(images_env["env"]["XDG_CONFIG_HOME"]) / "kit" / "sites" / "quest.yaml"
    layer = yaml.safe_load(site_file.read_text())
    layer["paths"]["image_dir"] = str(blocker / "images")
    site_file.write_text(yaml.safe_dump(layer))
    r = kit_images(images_env, "build", "tgi")
    assert r.code != 0 and "image dir" in r.error_line and "cannot create" in r.error_line


def test_serve_refuses_an_image_that_does_not_match_the_lock(images_env):
    assert kit_images(images_env, "build", "tgi").code == 0
    sif = images_env["images"] / "tgi-3.3.7.sif"
    sif.write_bytes(sif.read_bytes() + b"x")
    env = dict(images_env["env"], KIT_STATE_DIR=str(images_env["tmp"] / "state"))
    r = kit("serve", "meta-llama/Llama-3.1-8B-Instruct", env=env)
    assert r.code != 0 and "does not match" in r.error_line and "kit images pull tgi" in r.error_line
    sif.unlink()
    r = kit("serve", "meta-llama/Llama-3.1-8B-Instruct", env=env)
    assert r.code != 0 and "not found" in r.error_line and "kit images pull tgi" in r.error_line


def test_serve_refuses_an_image_newer_than_the_driver(images_env):
    data = yaml.safe_load(images_env["lock"].read_text())
    data["images"]["vllm"]["cuda"] = "13.0"
    images_env["lock"].write_text(yaml.safe_dump(data))
    r = kit("serve", "meta-llama/Llama-3.1-8B-Instruct", "--engine", "vllm", "--dry-run", env=images_env["env"])
    assert r.code != 0 and "needs CUDA 13.0" in r.error_line and "up to CUDA 12.8" in r.error_line


# --- the lock and the defs change together; checks come before side effects ---------------------

def upstream_tags(lock_file: Path) -> dict:
    tags = {}
    for entry in load_lock(lock_file).images.values():
        host_repo, tag = entry["upstream"].rsplit(":", 1)
        repo = host_repo.split("/", 1)[1] if "." in host_repo.split("/", 1)[0] else host_repo
        tags[f"{repo}:{tag}"] = f"manifest of {entry['upstream']}"
    return tags


def mirrors(registry) -> str:
    return ",".join(f"{h}={registry.url}" for h in ("ghcr.io", "docker.io", "cr.weaviate.io"))


def test_a_lock_that_cannot_be_written_leaves_every_def_as_it_was(images_env):
    blocker = images_env["lock"].parent / ".images.lock.tmp"  # the lock's temp file cannot be created
    blocker.mkdir()
    before = snapshot(images_env)
    with FakeRegistry(upstream_tags(images_env["lock"])) as registry:
        r = kit_images(images_env, "lock", KIT_REGISTRY_MIRRORS=mirrors(registry))
        assert r.code != 0 and str(images_env["lock"]) in r.error_line and "nothing was changed" in r.error_line
        assert snapshot(images_env) == before
        assert not list(images_env["lock"].parent.glob(".*.def.tmp"))
        blocker.rmdir()
        assert kit_images(images_env, "lock", KIT_REGISTRY_MIRRORS=mirrors(registry)).code == 0
    updated = load_lock(images_env["lock"])
    for name in updated.images:
        check_agreement(updated, name)


def test_a_rerun_of_lock_repairs_a_def_left_ahead_of_the_lock(images_env):
    """What an interrupted lock used to leave: the def has the new digest, the lock the old."""
    digest = "sha256:" + "ab" * 32
    tgi_def = images_env["lock"].parent / "tgi.def"
    text = tgi_def.read_text()
    text = re.sub(r"(?m)^From:.*$", f"From: ghcr.io/huggingface/text-generation-inference:3.3.7@{digest}", text, count=1)
    tgi_def.write_text(text.replace("org.kit.upstream.digest unresolved", f"org.kit.upstream.digest {digest}"))
    r = kit_images(images_env, "build", "tgi")
    assert r.code != 0 and "disagree" in r.error_line and "`kit images lock tgi` rewrites both" in r.error_line
    with FakeRegistry(upstream_tags(images_env["lock"])) as registry:
        r = kit_images(images_env, "lock", "tgi", KIT_REGISTRY_MIRRORS=mirrors(registry))
        assert r.code == 0, r.err
        fresh = registry.digest("huggingface/text-generation-inference:3.3.7")
    definition = check_agreement(load_lock(images_env["lock"]), "tgi")
    assert definition.header["From"].endswith(fresh)
    assert kit_images(images_env, "build", "tgi").code == 0


def test_push_checks_the_lock_is_writable_before_pushing(images_env, monkeypatch):
    from kit.images import lock as lock_module
    from kit.images.transfer import push
    from kit.sites import load_site
    from kit.errors import KitError

    assert kit_images(images_env, "build", "tgi").code == 0
    for key, value in images_env["env"].items():
        monkeypatch.setenv(key, value)
    real_access = os.access
    monkeypatch.setattr(lock_module.os, "access",
                        lambda path, mode: False if Path(path) == images_env["lock"] else real_access(path, mode))
    before = len(calls(images_env))
    with pytest.raises(KitError, match="not writable"):
        push(load_site("quest").site, "tgi")
    assert not any("push" in c for c in calls(images_env)[before:]), "nothing was pushed"
    assert not (images_env["tmp"] / "oras").exists()


def test_the_finetune_image_needs_a_source_checkout(images_env):
    """An installed kit bundles containers/ without pyproject.toml or kit's source: say so at once."""
    before = snapshot(images_env)
    r = kit_images(images_env, "build", "finetune")
    line = r.error_line
    assert r.code != 0 and "%files needs pyproject.toml, README.md, kit, site-configs, templates" in line
    assert "source checkout" in line and "finetune.def" in line
    assert not any("build" in c for c in calls(images_env)), "the runtime was never called"
    assert snapshot(images_env) == before
    repo = images_env["lock"].parent.parent  # a checkout: the sources beside containers/
    for name in ("pyproject.toml", "README.md", "kit", "site-configs", "templates"):
        (repo / name).symlink_to(ROOT / name)
    r = kit_images(images_env, "build", "finetune")
    assert r.code == 0, r.err


# --- facts: what the pinned images really are ----------------------------------------------------

def test_the_vllm_image_runs_every_quantization_kit_plans_for_it():
    """kit plans `--quantization bitsandbytes` for vLLM; the image must have a bitsandbytes vLLM accepts."""
    from kit.engines import engine

    assert "bitsandbytes" in engine("vllm")["quantize"].values()
    test_section = "\n".join(parse_def(ROOT / "containers" / "vllm.def").sections["%test"])
    assert "import bitsandbytes" in test_section
    assert 'Version("0.48.1")' in test_section  # vLLM 0.19.1's _check_bitsandbytes_version minimum


def test_tgi_runs_cuda_12_8_the_build_of_its_torch():
    assert PACKAGED.entry("tgi")["cuda"] == "12.8"
    assert check_agreement(PACKAGED, "tgi").labels["org.kit.cuda"] == "12.8"


def test_weaviate_is_unverified_until_lock_resolves_it(images_env):
    rows = {r["image"]: r for r in kit_images(images_env, "list", "--json").json()}
    assert "v1.39.0" in rows["weaviate"]["unverified"] and rows["tgi"]["unverified"] is None
    human = kit_images(images_env, "list")
    assert "unverified: weaviate 1.40.3" in " ".join(human.out.split())
    assert "UNVERIFIED" in (ROOT / "containers" / "weaviate.def").read_text()
    # A resolved digest proves the tag exists: the lock cannot keep calling it unverified.
    data = yaml.safe_load(images_env["lock"].read_text())
    data["images"]["weaviate"]["digest"] = "sha256:" + "cd" * 32
    images_env["lock"].write_text(yaml.safe_dump(data))
    r = kit_images(images_env, "list")
    assert r.code != 0 and "images.weaviate.unverified: the digest is resolved" in r.error_line
    shutil.copy(ROOT / "containers" / "images.lock", images_env["lock"])
    with FakeRegistry(upstream_tags(images_env["lock"])) as registry:
        assert kit_images(images_env, "lock", "weaviate", KIT_REGISTRY_MIRRORS=mirrors(registry)).code == 0
    assert "unverified" not in lock_entry(images_env, "weaviate")
    assert {r["image"]: r for r in kit_images(images_env, "list", "--json").json()}["weaviate"]["unverified"] is None
