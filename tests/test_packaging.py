"""The installed library: a regular (non-editable) wheel holds the library, its model configs and the checkpoint
commands under project names only, and works from any directory — every module imports, ``create_model("tiny")``
finds its config, and the console scripts run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from itnet_scale.models import list_models

REPO = Path(__file__).resolve().parents[1]
#: What the build reads: the project file, the readme (the package's long description), the library and tools/.
BUILD_INPUTS = ["pyproject.toml", "README.md", "itnet_scale", "tools"]
COMMAND_MODULES = {"__init__.py", "convert_checkpoint.py", "inspect_checkpoint.py"}

# Run by the fresh venv's interpreter, outside the checkout: where the package comes from, whether the project
# venv's editable hook ran, every installed module imports (nothing it needs was left out of the wheel), the
# registered models, and a saved library folder.
INSTALLED_CHECK = """
import importlib, json, pkgutil, sys
import itnet_scale, itnet_scale_tools.convert_checkpoint, itnet_scale_tools.inspect_checkpoint
modules = [module.name for module in pkgutil.walk_packages(itnet_scale.__path__, "itnet_scale.")]
for name in modules:
    importlib.import_module(name)
from itnet_scale.models import create_model, list_models
model = create_model("tiny")
model.save_pretrained(sys.argv[1])
print(json.dumps({"package": itnet_scale.__file__, "tools": itnet_scale_tools.convert_checkpoint.__file__,
                  "editable_hooks": sorted(m for m in sys.modules if "__editable__" in m), "modules": modules,
                  "models": list_models(), "parameters": sum(p.numel() for p in model.parameters())}))
"""


def run(command: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.slow
def test_the_wheel_installs_and_works_outside_the_checkout(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # The wheel, built from a copy of the build's inputs (a build in the checkout would leave build/ there, and
    # could pick up files a previous build left in it).
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir",
         tmp_path / "dist", source], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("itnet_scale-*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top - {"itnet_scale", "itnet_scale_tools"} == {next(t for t in top if t.endswith(".dist-info"))}
    assert {name.split("/", 1)[1] for name in names if name.startswith("itnet_scale_tools/")} == COMMAND_MODULES
    assert sorted(name for name in names if name.startswith("itnet_scale/models/configs/")) == [
        f"itnet_scale/models/configs/{model}.yaml" for model in list_models()]
    assert not [name for name in names if "benchmarks/" in name or name.endswith("bench.py")]  # suites: checkout only

    # A fresh venv outside the checkout; the dependencies come from the project's venv through a .pth line — a
    # directory a .pth adds is not a site directory, so its own .pth files (the editable install's hook) do not run.
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(environment)
    python = environment / "bin" / "python"
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                             env).stdout.strip())
    (site_packages / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], tmp_path, env)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    report = json.loads(run([python, "-c", INSTALLED_CHECK, outside / "tiny"], outside, env).stdout.splitlines()[-1])
    assert Path(report["package"]).is_relative_to(site_packages) and not Path(report["package"]).is_relative_to(REPO)
    assert Path(report["tools"]).is_relative_to(site_packages)
    assert report["editable_hooks"] == []
    assert {"itnet_scale.checkpoint.library", "itnet_scale.train.loop", "itnet_scale.train.pretraining",
            "itnet_scale.parallel.ulysses"} <= set(report["modules"])
    assert report["models"] == list_models()

    bin_dir = environment / "bin"
    for script, usage in (("itnet-convert-checkpoint", "usage: convert_checkpoint"),
                          ("itnet-inspect-checkpoint", "usage: inspect_checkpoint")):
        assert run([bin_dir / script, "--help"], outside, env).stdout.startswith(usage)
    inspected = json.loads(run([bin_dir / "itnet-inspect-checkpoint", outside / "tiny", "--json"], outside,
                               env).stdout)
    assert inspected["format"] == "library" and inspected["model_class"] == "ITNetForPretraining"
    assert inspected["parameters"] == report["parameters"]
