"""tools/find-python38.sh picks how `make` creates .venv: python3.8, pyenv's 3.8, else uv with its own CPython 3.8.

Each case runs the script with a PATH holding only stub executables (small Python scripts that answer
`--version` and friends and log how they were called), so the choice is tested without touching the
machine's real interpreters or the network.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "find-python38.sh"
UV_VENV = "venv --python 3.8 --managed-python --seed .venv"
# The Makefile runs the script with `sh`: dash here, bash in POSIX mode on other systems.
SHELLS = [["/bin/sh"]] + ([[shutil.which("bash"), "--posix"]] if shutil.which("bash") else [])


def stub(directory: Path, name: str, body: str) -> Path:
    """An executable `name` in `directory` running the Python `body` (argv, env, log() are in scope)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    prelude = textwrap.dedent(
        f"""\
        #!{sys.executable}
        import os, sys
        argv, env = sys.argv[1:], os.environ
        def log(*words):
            with open({str(directory.parent / "calls.log")!r}, "a") as f:
                f.write(" ".join(({name!r},) + words) + "\\n")
        log(*argv)
        """
    )
    path.write_text(prelude + textwrap.dedent(body))
    path.chmod(0o755)
    return path


PY38 = 'print("Python 3.8.18")\n'
PY311 = 'print("Python 3.11.7")\n'
PYENV_SHIM = """\
if env.get("PYENV_VERSION") == "3.8":
    print("Python 3.8.18")
else:
    sys.exit("pyenv: python3.8: command not found")
"""
NEW_UV = 'print("      --managed-python       Require use of uv-managed Python versions")\n'
OLD_UV = 'print("      --python-preference <PYTHON_PREFERENCE>")\n'
# python3 whose pip can install: `--target DIR` gets DIR/bin/uv, a uv stub that only logs its arguments.
PYTHON3_WITH_PIP = f"""\
if env.get("PYENV_VERSION"):
    sys.exit("PYENV_VERSION leaked into a later step")
if argv[:3] == ["-m", "pip", "--version"]:
    print("pip 24.0")
elif argv[:3] == ["-m", "pip", "install"]:
    target = argv[argv.index("--target") + 1]
    os.makedirs(os.path.join(target, "bin"))
    uv = os.path.join(target, "bin", "uv")
    with open(uv, "w") as f:
        f.write("#!{sys.executable}\\nimport sys\\n")
        f.write("open('calls.log', 'a').write('local-uv ' + ' '.join(sys.argv[1:]))\\n")
    os.chmod(uv, 0o755)
else:
    sys.exit(1)
"""


def choose(tmp_path: Path, shell=SHELLS[0], **stubs: str) -> subprocess.CompletedProcess:
    """Runs the script with `shell` in tmp_path, with PATH = the stubs made so far there plus the given ones."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in stubs.items():
        stub(bin_dir, name.replace("_", "."), body)
    return subprocess.run(
        [*shell, str(SCRIPT), ".venv", ".tools"],
        cwd=tmp_path,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_printed(tmp_path: Path, command: str) -> None:
    """Runs a printed command the way the Makefile does (eval in sh), still with the stub PATH."""
    subprocess.run(
        ["/bin/sh", "-c", 'eval "$0"', command],
        cwd=tmp_path,
        env={"PATH": str(tmp_path / "bin")},
        check=True,
        timeout=60,
    )


def test_python38_on_path_is_used(tmp_path):
    result = choose(tmp_path, python3_8=PY38, uv=NEW_UV)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "python3.8 -m venv .venv\n"
    assert result.stderr == ""


def test_pyenv_shim_with_38_installed_but_not_selected(tmp_path):
    result = choose(tmp_path, python3_8=PYENV_SHIM, uv=NEW_UV)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "PYENV_VERSION=3.8 python3.8 -m venv .venv\n"


def test_pyenv_without_shims_on_path(tmp_path):
    real = stub(tmp_path / "pyenv-root" / "bin", "python3.8", PY38)
    pyenv = f"""\
if argv == ["which", "python3.8"] and env.get("PYENV_VERSION") == "3.8":
    print({str(real)!r})
else:
    sys.exit(1)
"""
    result = choose(tmp_path, pyenv=pyenv, uv=NEW_UV)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"'{real}' -m venv .venv\n"


def test_wrong_python38_and_uv_on_path_uses_uv_managed_python(tmp_path):
    result = choose(tmp_path, python3_8=PY311, uv=NEW_UV, python3=PYTHON3_WITH_PIP)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"uv {UV_VENV}\n"
    assert "uv's own CPython 3.8" in result.stderr


@pytest.mark.parametrize("shell", SHELLS, ids=lambda shell: " ".join(shell))
@pytest.mark.parametrize("uv_on_path", [None, OLD_UV], ids=["no-uv", "uv-without-managed-python"])
def test_no_python38_no_usable_uv_installs_pinned_uv_with_pip(tmp_path, uv_on_path, shell):
    stubs = {"python3": PYTHON3_WITH_PIP, "python3_8": PYENV_SHIM.replace('"3.8"', '"never"')}
    if uv_on_path:
        stubs["uv"] = uv_on_path
    result = choose(tmp_path, shell, **stubs)
    assert result.returncode == 0, result.stderr
    install, _, create = result.stdout.strip().partition(" && ")
    assert install.startswith("python3 -m pip install ") and "--target '.tools/uv' uv==" in install
    assert create == f"'.tools/uv/bin/uv' {UV_VENV}"
    # The printed command really chains: pip puts uv in .tools/uv/bin, which then creates the venv.
    run_printed(tmp_path, result.stdout)
    assert (tmp_path / "calls.log").read_text().splitlines()[-1] == f"local-uv {UV_VENV}"
    # Next time the uv in .tools is reused, without pip.
    again = choose(tmp_path, shell)
    assert again.stdout == f"'.tools/uv/bin/uv' {UV_VENV}\n"


@pytest.mark.parametrize(
    "stubs",
    [{}, {"python3": "sys.exit(1)\n"}, {"python3_8": PY311, "python3": "sys.exit(1)\n"}],
    ids=["nothing", "python3-without-pip", "python3.8-is-not-3.8"],
)
def test_nothing_usable_is_a_one_line_error(tmp_path, stubs):
    result = choose(tmp_path, **stubs)
    assert result.returncode == 1
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Python 3.8" in errors[0] and "docs/setup.md" in errors[0]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    ("stubs", "expected"),
    [({"python3_8": PY38}, "python3.8 -m venv .venv"), ({"uv": NEW_UV}, f"uv {UV_VENV}")],
    ids=["python3.8", "uv"],
)
def test_makefile_creates_the_venv_with_the_chosen_command(tmp_path, stubs, expected):
    """`make .venv/bin/python` evals the script's command (the stubs create a fake .venv/bin/python)."""
    (tmp_path / "tools").mkdir()
    shutil.copy(SCRIPT, tmp_path / "tools")
    shutil.copy(ROOT / "Makefile", tmp_path)
    make_venv = """\
if "venv" in argv and "--help" not in argv:
    os.makedirs(".venv/bin")
    with open(".venv/bin/python", "w") as f:
        f.write("#!/bin/sh\\necho Python 3.8.18\\n")
    os.chmod(".venv/bin/python", 0o755)
"""
    for name, body in stubs.items():
        stub(tmp_path / "bin", name.replace("_", "."), body + make_venv)
    os.symlink("/bin/sh", tmp_path / "bin" / "sh")
    result = subprocess.run(
        [shutil.which("make"), "--no-print-directory", ".venv/bin/python"],
        cwd=tmp_path,
        env={"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"creating .venv: {expected}\n" in result.stderr  # stderr: `make run ARGS=--json` pipes even then
    assert "created .venv with Python 3.8.18" in result.stderr and result.stdout == ""
