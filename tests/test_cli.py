"""The CLI as a login-node tool: light imports, help, version, one-line errors."""

import subprocess
import sys

from kitrun import kit


def test_plan_serve_does_not_import_torch_or_transformers():
    code = (
        "import sys\n"
        "from kit.cli import main\n"
        "try:\n"
        "    main(['plan', 'serve', 'meta-llama/Llama-3.1-8B-Instruct', '--site', 'quest', '--json'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'weaviate', 'lancedb', 'pyarrow', 'pydantic') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stderr, proc.stderr


HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "weaviate", "lancedb", "pyarrow", "pydantic",
         "sentence_transformers")
# Packages that run only inside a job's container, where the heavy libraries live.
IN_CONTAINER = ("kit.train",)


def test_no_module_the_cli_can_import_pulls_in_a_heavy_library():
    """Every module of kit outside the in-container packages imports light: a login node never
    loads torch because a command imported a module at its top."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import kit\n"
        f"skip = {IN_CONTAINER!r}\n"
        "names = [m.name for m in pkgutil.walk_packages(kit.__path__, 'kit.') if not m.name.startswith(skip) and not m.name.endswith('.__main__')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print('MODULES', len(names), 'HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stderr, proc.stderr
    assert int(proc.stderr.split()[1]) > 40, proc.stderr  # the walk found the packages


def test_help_and_version():
    r = kit("--help")
    assert r.code == 0 and "plan" in r.out and "models" in r.out and "sites" in r.out
    assert kit("--version").out.startswith("kit, version ")
    assert "--max-batch-prefill-tokens" not in kit("plan", "serve", "--help").out
    assert "--quantize" in kit("plan", "serve", "--help").out


def test_usage_errors_are_one_line():
    r = kit("plan", "serve")
    assert r.code == 2 and "Missing argument 'MODEL'" in r.error_line
    r = kit("plan", "serve", "x/y", "--gpus", "two")
    assert r.code == 2 and "'--gpus'" in r.error_line
    r = kit("nonsense")
    assert r.code == 2 and "No such command 'nonsense'" in r.error_line
