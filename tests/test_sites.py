"""Site configs: the packaged files, layering, validation errors, and `kit sites check`
against the real local Slurm cluster."""

import re
from pathlib import Path

import pytest
import yaml

from kit.sites import load_site
from kitrun import kit

ROOT = Path(__file__).resolve().parents[1]
QUEST_YAML = ROOT / "site-configs" / "quest.yaml"


@pytest.fixture
def layers(tmp_path, monkeypatch):
    """Empty site-wide and user config dirs, for this test only."""
    system, user = tmp_path / "etc-kit", tmp_path / "xdg"
    (system / "sites").mkdir(parents=True)
    (user / "kit" / "sites").mkdir(parents=True)
    env = {"KIT_SYSTEM_CONFIG_DIR": str(system), "XDG_CONFIG_HOME": str(user), "KIT_ACCOUNT": "", "KIT_STATE_DIR": ""}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return system / "sites", user / "kit" / "sites", env


def test_packaged_quest_matches_the_research():
    site = load_site("quest").site
    gengpu = site.partitions["gengpu"]
    assert list(gengpu.gpu_tiers) == ["a100-40", "a100-80", "h100"]
    a40, a80, h100 = gengpu.gpu_tiers.values()
    assert (a40.gres, a40.constraint, a40.memory_gib, a40.gpus_per_node) == ("a100", "pcie", 40, 2)
    assert (a80.gres, a80.constraint, a80.memory_gib, a80.gpus_per_node) == ("a100", "sxm", 80, 4)
    assert (h100.gres, h100.constraint, h100.memory_gib, h100.gpus_per_node) == ("h100", "sxm", 80, 4)
    assert site.limits.gpus_per_user == 8 and gengpu.max_walltime == "2-00:00:00"
    assert {"gengpu-long", "short", "normal", "long"} <= set(site.partitions)
    assert site.runtime.module.startswith("singularityce/") and site.network.port_range == (7000, 11000)
    assert site.paths.project.startswith("/projects") and site.paths.scratch.startswith("/scratch")
    assert "{port}" in site.network.tunnel and "{node}" in site.network.tunnel


def test_packaged_klc_matches_the_research():
    site = load_site("klc").site
    tiers = site.partitions["kellogg"].gpu_tiers
    assert {n: (t.memory_gib, t.gpus_per_node) for n, t in tiers.items()} == {
        "l40s": (48, 2), "a100-80": (80, 1), "h100": (80, 4)}
    assert site.account.default == "kellogg" and site.defaults.gpu_partition == "kellogg"


@pytest.mark.parametrize("name", ["quest", "klc"])
def test_every_assumed_comment_is_listed_under_assumed(name):
    """A value marked ASSUMED in a comment is also in `assumed:` (which `kit sites show` prints)."""
    text = (ROOT / "site-configs" / f"{name}.yaml").read_text()
    site = load_site(name).site
    stack: list[tuple[int, str]] = []
    missing = []
    for line in text.splitlines():
        m = re.match(r"^(\s*)([\w.-]+):", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key = len(m.group(1)), m.group(2)
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, key)]
        if "ASSUMED" in line.split("#", 1)[-1] and "#" in line:
            path = ".".join(k for _, k in stack)
            if path.startswith("x-gpu-tiers"):
                path = path.replace("x-gpu-tiers", "partitions.gengpu.gpu_tiers")
            if not any(path == a or path.startswith(a + ".") for a in site.assumed):
                missing.append(path)
    assert not missing, f"ASSUMED in comments but not under assumed: {missing}"


def test_layers_merge_deeply_in_order(layers):
    system, user, env = layers
    (system / "quest.yaml").write_text("account: {default: p10001}\nlimits: {gpus_per_user: 6}\n")
    (user / "quest.yaml").write_text("account: {default: p20002}\npaths: {state_dir: /tmp/kit-state}\n")
    loaded = load_site("quest")
    assert loaded.site.account.default == "p20002"  # user beats site-wide
    assert loaded.site.limits.gpus_per_user == 6  # site-wide beats packaged
    assert loaded.site.limits.max_nodes_per_job == 1  # siblings survive a deep merge
    assert loaded.site.paths.state_dir == "/tmp/kit-state" and loaded.site.paths.home == "/home/$USER"
    assert len(loaded.files) == 3


def test_environment_and_flags_beat_files(layers, monkeypatch):
    system, user, env = layers
    (user / "quest.yaml").write_text("account: {default: p20002}\n")
    monkeypatch.setenv("KIT_ACCOUNT", "e32337")
    assert load_site("quest").site.account.default == "e32337"
    assert load_site("quest", account="b1042").site.account.default == "b1042"
    monkeypatch.setenv("KIT_SITE", "klc")
    monkeypatch.delenv("KIT_ACCOUNT")
    assert load_site(None).site.name == "klc"


def test_site_as_a_path(tmp_path):
    custom = tmp_path / "mycluster.yaml"
    custom.write_text(QUEST_YAML.read_text().replace("name: quest", "name: mycluster"))
    r = kit("plan", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--site", str(custom), "--json",
            env={"HF_HUB_OFFLINE": "1"})
    assert r.json()["site"] == "mycluster"


def broken(tmp_path, edit) -> str:
    data = yaml.safe_load(QUEST_YAML.read_text())
    edit(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["partitions"]["gengpu"]["gpu_tiers"]["a100-40"].update(gpus_per_node="two"),
     "partitions.gengpu.gpu_tiers.a100-40.gpus_per_node: Expected 'int', got 'str'"),
    (lambda d: d["partitions"]["gengpu"].update(maxtime="1"),
     "partitions.gengpu.maxtime: unknown key (allowed here: max_walltime"),
    (lambda d: d["runtime"].pop("cache_dir"), "runtime.cache_dir: required key is missing"),
    (lambda d: d["runtime"].update(binaries=["docker"]), "allowed: singularity, apptainer"),
    (lambda d: d["partitions"]["short"].update(max_walltime="4h"), "max_walltime '4h' is not D-HH:MM:SS"),
    (lambda d: d["defaults"].update(gpu_partition="gpu"), "defaults.gpu_partition 'gpu' is not a partition"),
    (lambda d: d["assumed"].update({"limits.nope": "x"}), "assumed.limits.nope: names no key"),
])
def test_invalid_site_files_give_one_line_naming_file_and_key(tmp_path, edit, expected):
    path = broken(tmp_path, edit)
    r = kit("sites", "show", path)
    assert r.code != 0
    line = r.error_line
    assert path in line and expected in line


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\npartitions:\n  gengpu: [\n")
    r = kit("sites", "show", str(path))
    assert r.code != 0 and re.search(re.escape(str(path)) + r":\d+:\d+: YAML syntax error", r.error_line)


def test_error_in_a_user_layer_names_the_user_file(layers):
    system, user, env = layers
    (user / "quest.yaml").write_text("limits: {gpus_per_user: lots}\n")
    r = kit("sites", "show", "quest", env=env)
    assert str(user / "quest.yaml") in r.error_line and "limits.gpus_per_user" in r.error_line


def test_unknown_site_lists_the_known_ones():
    r = kit("sites", "show", "hopper")
    assert r.code != 0 and "unknown site 'hopper'" in r.error_line and "klc, quest" in r.error_line
    r = kit("plan", "serve", "meta-llama/Llama-3.1-8B-Instruct", env={"KIT_SITE": ""})
    assert r.code != 0 and "no site given" in r.error_line


def test_account_must_match_the_site_pattern():
    r = kit("sites", "show", "quest", env={"KIT_ACCOUNT": "not-an-account"})
    assert r.code != 0 and "account.default" in r.error_line and "pXXXXX" in r.error_line


def test_sites_list_and_show():
    r = kit("sites", "list")
    assert r.code == 0 and "quest" in r.out and "klc" in r.out
    show = kit("sites", "show", "quest")
    assert "gengpu, gengpu-long" in show.out and "a100-40" in show.out and "Assumed values" in show.out
    assert "39.6 *" in show.out  # assumed values are marked in the table
    data = kit("sites", "show", "klc", "--json").json()
    assert data["partitions"]["kellogg"]["gpu_tiers"]["l40s"]["memory_gib"] == 48


# --- `kit sites check` against the live local Slurm ------------------------------------------

def local_overrides(user_dir: Path, cluster) -> None:
    """The test cluster has one node per GPU kind where Quest has dozens: say so in a user layer."""
    counts = {}
    for name, node in cluster.nodes.items():
        if "gengpu" in node.partitions:
            kind = ("a100-40" if "pcie" in node.features else "a100-80") if "a100" in node.gres else "h100"
            counts[kind] = counts.get(kind, 0) + 1
    def tiers():  # a fresh dict per partition: no YAML aliases between them
        return {k: {"nodes": v} for k, v in counts.items()}

    (user_dir / "quest.yaml").write_text(yaml.safe_dump({"partitions": {"gengpu": {"gpu_tiers": tiers()},
                                                                        "gengpu-long": {"gpu_tiers": tiers()}}}))
    klc = {}
    for name, node in cluster.nodes.items():
        if "kellogg" in node.partitions:
            for gres in node.gres:
                kind = {"a100": "a100-80"}.get(gres, gres)
                klc[kind] = klc.get(kind, 0) + 1
    (user_dir / "klc.yaml").write_text(yaml.safe_dump({"partitions": {"kellogg": {"gpu_tiers": {k: {"nodes": v} for k, v in klc.items()}}}}))


@pytest.mark.slurm
@pytest.mark.parametrize("name", ["quest", "klc"])
def test_check_passes_on_a_matching_cluster(slurm_cluster, layers, name):
    system, user, env = layers
    local_overrides(user, slurm_cluster)
    r = kit("sites", "check", name, env=env)
    assert r.code == 0, r.out + r.err
    assert "matches" in r.out


@pytest.mark.slurm
def test_check_reports_each_drift(slurm_cluster, layers):
    system, user, env = layers
    local_overrides(user, slurm_cluster)
    drifted = yaml.safe_load((user / "quest.yaml").read_text())
    drifted["partitions"]["gengpu"]["max_walltime"] = "1-00:00:00"
    drifted["partitions"]["gengpu"]["gpu_tiers"]["a100-40"].update(gpus_per_node=8, constraint="pcie4")
    drifted["partitions"]["gengpu"]["gpu_tiers"]["h100"].update(gres="h200")
    drifted["partitions"]["gengpu"]["gpu_tiers"]["a100-80"].update(gpus_per_node=2)
    drifted["partitions"]["gpu-express"] = {"max_walltime": "01:00:00"}
    (user / "quest.yaml").write_text(yaml.safe_dump(drifted))
    r = kit("sites", "check", "quest", "--json", env=env)
    assert r.code == 1
    keys = {d["key"]: d["message"] for d in r.json()["drift"]}
    assert "1-00:00:00" in keys["partitions.gengpu.max_walltime"] and "2-00:00:00" in keys["partitions.gengpu.max_walltime"]
    assert "pcie4" in keys["partitions.gengpu.gpu_tiers.a100-40.constraint"]
    assert "gpu:h200" in keys["partitions.gengpu.gpu_tiers.h100.gres"]
    assert "site says 2" in keys["partitions.gengpu.gpu_tiers.a100-80.gpus_per_node"]
    assert "no such partition" in keys["partitions.gpu-express"]
    assert len(keys) == 5
    human = kit("sites", "check", "quest", env=env)
    assert human.code == 1 and "5 drift(s)" in human.out


@pytest.mark.slurm
def test_check_compares_node_memory_in_mib(slurm_cluster, layers):
    """RealMemory is MiB; mem_per_node_gib is GiB installed: 1024 MiB each, RealMemory 85-100 % of it."""
    system, user, env = layers
    local_overrides(user, slurm_cluster)
    real = {n.name: n.real_memory_mb for n in slurm_cluster.nodes.values()}
    assert real["qgpu2001"] == 192000 and real["qgpu3001"] == real["qgpu2002"] == 1000000  # MiB, cluster.conf
    data = yaml.safe_load((user / "quest.yaml").read_text())
    tiers = data["partitions"]["gengpu"]["gpu_tiers"]
    tiers["a100-40"]["mem_per_node_gib"] = 192   # 192000 MiB = 187.5 GiB: 97.7 % of 192 GiB
    tiers["h100"]["mem_per_node_gib"] = 900      # 1000000 MiB = 976.6 GiB: more than is installed
    tiers["a100-80"]["mem_per_node_gib"] = 1160  # 976.6 GiB is 84.2 % of 1160 GiB: too little
    (user / "quest.yaml").write_text(yaml.safe_dump(data))
    r = kit("sites", "check", "quest", "--json", env=env)
    keys = {d["key"]: d["message"] for d in r.json()["drift"]}
    assert r.code == 1 and set(keys) == {"partitions.gengpu.gpu_tiers.h100.mem_per_node_gib",
                                         "partitions.gengpu.gpu_tiers.a100-80.mem_per_node_gib"}, keys
    h100 = keys["partitions.gengpu.gpu_tiers.h100.mem_per_node_gib"]
    assert "900 GiB (921600 MiB)" in h100 and "1000000 MiB (976.6 GiB)" in h100 and "qgpu3001" in h100
    tiers["h100"]["mem_per_node_gib"], tiers["a100-80"]["mem_per_node_gib"] = 977, 1148  # both ends, inside
    (user / "quest.yaml").write_text(yaml.safe_dump(data))
    assert kit("sites", "check", "quest", env=env).code == 0


@pytest.mark.parametrize("where, old, new", [
    ("defaults", "mem_per_gpu_gb", "mem_per_gpu_gib"),
    ("partitions.gengpu.gpu_tiers.a100-40", "mem_per_node_gb", "mem_per_node_gib"),
    ("partitions.gengpu.gpu_tiers.h100", "memory_gb", "memory_gib"),
])
def test_a_memory_key_by_its_old_name_names_the_new_one(layers, where, old, new):
    system, user, env = layers
    layer: dict = {}
    node = layer
    for key in where.split("."):
        node = node.setdefault(key, {})
    node[old] = 80
    (user / "quest.yaml").write_text(yaml.safe_dump(layer))
    r = kit("sites", "show", "quest", env=env)
    line = r.error_line
    assert r.code != 0 and str(user / "quest.yaml") in line
    assert f"{where}.{old}: renamed {new}" in line and "GiB" in line


def test_host_memory_is_asked_in_gib(layers):
    from kit.jobs.spec import host_resources

    system, user, env = layers
    plan = {"partition": "gengpu", "gpu_type": "a100-40", "gpus": 2, "nodes": 1}
    assert host_resources(load_site("quest").site, plan) == (16, 128)  # 2 x 64 GiB: --mem=128G
    (user / "quest.yaml").write_text("defaults: {mem_per_gpu_gib: 100}\n")
    assert host_resources(load_site("quest").site, plan) == (16, 172)  # capped at 90 % of the node's 192 GiB


def test_check_without_slurm_is_one_clear_line(tmp_path):
    r = kit("sites", "check", "quest", env={"PATH": str(tmp_path)})
    assert r.code != 0 and "not found on PATH" in r.error_line


def test_a_key_given_twice_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(QUEST_YAML.read_text() + "\nlimits: {gpus_per_user: 4}\n")
    r = kit("sites", "show", str(path))
    assert r.code != 0 and "key 'limits' appears twice" in r.error_line and str(path) in r.error_line


def test_a_site_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    r = kit("sites", "show", str(path))
    assert r.code != 0 and "not a UTF-8 text file" in r.error_line


def test_default_walltime_within_the_gpu_partition(tmp_path):
    path = broken(tmp_path, lambda d: d["defaults"].update(walltime="9-00:00:00"))
    r = kit("sites", "show", path)
    assert r.code != 0 and "defaults.walltime 9-00:00:00 is over partition gengpu" in r.error_line


def test_user_only_sites_are_listed(layers):
    system, user, env = layers
    (user / "mylab.yaml").write_text(QUEST_YAML.read_text().replace("name: quest", "name: mylab"))
    r = kit("sites", "list", env=env)
    assert "mylab" in r.out
    r = kit("sites", "show", "nosuch", env=env)
    assert "klc, mylab, quest" in r.error_line


def test_klc_has_no_per_user_cap_and_says_so():
    assert "no per-user GPU cap" in kit("sites", "show", "klc").out
