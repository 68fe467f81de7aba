"""What a plain ``pip install hub-reflow`` gets: no web framework. The local Hub server's FastAPI and
uvicorn come with the ``hub-server`` extra, and nothing outside ``hub_reflow.testing.hub_server``
imports them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ("fastapi", "uvicorn", "starlette")

# In the child, the web frameworks are absent as in an install without the extra: a None entry in
# sys.modules makes ``import`` raise ModuleNotFoundError and ``importlib.util.find_spec`` answer None.
_BLOCK = textwrap.dedent("""
    import sys
    for name in {web!r}:
        sys.modules[name] = None
""").format(web=WEB)


def _run(code: str, tmp_path: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", _BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_package_and_non_demo_commands_never_import_a_web_framework(tmp_path):
    out = _run(f"""
        import contextlib, io, json, pkgutil, importlib, sys
        import hub_reflow
        from hub_reflow import cli
        skipped = "hub_reflow.testing.hub_server"
        modules = [m.name for m in pkgutil.walk_packages(hub_reflow.__path__, "hub_reflow.")
                   if m.name != skipped and not m.name.startswith(skipped + ".")]
        for name in modules:
            importlib.import_module(name)
        missing = {str(tmp_path / 'missing')!r}
        commands = [
            ["verify", missing], ["canonicalize", missing, missing + "-dst"], ["card", missing],
            ["push", missing, "--repo-id", "user/x"], ["pull", "user/bad id!"],
            ["train", "--teacher", missing, "--dataset", "user/d", "--output-dir", missing + "-out", "--device", "cpu"],
            ["pairs", "--teacher", missing, "--dataset", "user/d", "--output", missing + "-pairs", "--device", "cpu"],
        ]
        codes = {{}}
        for argv in commands:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                codes[argv[0]] = [cli.main(argv), err.getvalue().strip().splitlines()[-1]]
        with contextlib.redirect_stderr(io.StringIO()) as err:
            demo = cli.main(["demo", "--workdir", missing + "-demo"])
        try:
            importlib.import_module(skipped)
            server = "imported"
        except ImportError as e:
            server = str(e)
        print(json.dumps({{"modules": len(modules), "codes": codes, "demo": [demo, err.getvalue().strip()],
                          "server": server, "web": sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in {WEB!r})}}))
    """, tmp_path)
    assert out["modules"] > 15
    # Each command ran as far as its first user error: one line, exit 2, nothing web-related.
    for name, (code, line) in out["codes"].items():
        assert code == 2 and line.startswith("hub-reflow: error:"), (name, line)
    assert out["demo"] == [2, "hub-reflow: error: the demo pushes to a local Hub, which needs fastapi and uvicorn: "
                              "pip install 'hub-reflow[hub-server]' (scripts/demo.sh installs it)"]
    assert out["server"] == "hub_reflow.testing.hub_server needs FastAPI and uvicorn: pip install 'hub-reflow[hub-server]'"
    assert out["web"] == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(folder),
                    str(ROOT)], check=True, capture_output=True)
    return next(folder.glob("hub_reflow-*.whl"))


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]


def test_wheel_requires_no_web_framework_without_the_extra(wheel):
    requires = _requires(wheel)
    core = [r for r in requires if "extra ==" not in r]
    assert not any(r.split(">")[0].split("<")[0].split("=")[0].strip().lower() in WEB for r in core), core
    extra = sorted(r.split(";")[0].strip() for r in requires if 'extra == "hub-server"' in r)
    assert extra == ["fastapi>=0.110", "pyyaml>=6", "uvicorn>=0.29"]
    # The test extra brings the server along (the tests and the demo start it).
    assert 'hub-reflow[hub-server]; extra == "test"' in requires


def test_wheel_ships_the_server_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("__init__", "__main__", "app", "auth", "protocol", "routes", "routes_repos", "routes_uploads", "storage"):
        assert f"hub_reflow/testing/hub_server/{module}.py" in names


def test_wheel_ships_every_subpackage(wheel):
    """pyproject.toml's package list names every folder of hub_reflow (setuptools ships no other)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "hub_reflow").rglob("__init__.py"))
    assert [p for p in packages if f"{p}/__init__.py" not in names] == []
