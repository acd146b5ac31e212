#!/bin/sh
# Prints the shell command that creates the project's virtualenv with Python 3.8 (the Makefile evals it),
# or says on stderr why it cannot and exits 1. syft 0.2.9 has wheels for Python <= 3.8 only.
# Preference: a Python 3.8 already on the machine (python3.8, or pyenv's 3.8), then uv with a uv-managed
# CPython 3.8 (downloaded once): uv from PATH, or one pinned uv installed into TOOLS_DIR by python3's pip.
# Only shell built-ins are used, so tests can run it with a PATH of stub executables.
#
# Usage: find-python38.sh VENV_DIR [TOOLS_DIR]     (TOOLS_DIR defaults to .tools)
set -u
venv=${1:?usage: find-python38.sh VENV_DIR [TOOLS_DIR]}
tools=${2:-.tools}
uv_pin="uv==0.13.9"
uv_local="$tools/uv/bin/uv"

is_python38() {  # is_python38 CMD...: CMD --version says 3.8.x
    version=$("$@" --version 2>&1) || return 1
    case $version in "Python 3.8."*) return 0 ;; esac
    return 1
}

uv_venv() {  # uv_venv UV: the command for a venv on uv's own CPython 3.8 (with pip, hence --seed)
    echo "Python 3.8 not found (no python3.8, no pyenv 3.8): $venv gets uv's own CPython 3.8, downloaded once." >&2
    printf '%s venv --python 3.8 --managed-python --seed %s\n' "$1" "$venv"
}

if is_python38 python3.8; then
    printf 'python3.8 -m venv %s\n' "$venv"
    exit 0
fi
# pyenv's shim when 3.8 is installed but not selected. A subshell, since some shells (older bash as sh) keep
# the PYENV_VERSION of `PYENV_VERSION=3.8 function` set for the later steps.
if (PYENV_VERSION=3.8 && export PYENV_VERSION && is_python38 python3.8); then
    printf 'PYENV_VERSION=3.8 python3.8 -m venv %s\n' "$venv"
    exit 0
fi
if command -v pyenv >/dev/null 2>&1; then  # pyenv without its shims on PATH
    found=$(PYENV_VERSION=3.8 pyenv which python3.8 2>/dev/null) && is_python38 "$found" && {
        printf "'%s' -m venv %s\n" "$found" "$venv"
        exit 0
    }
fi

if command -v uv >/dev/null 2>&1; then
    case $(uv venv --help 2>&1) in
    *--managed-python*)
        uv_venv uv
        exit 0
        ;;
    esac
    echo "The uv on PATH is too old (no --managed-python); using $uv_pin in $tools/uv instead." >&2
fi
if [ -x "$uv_local" ]; then
    uv_venv "'$uv_local'"
    exit 0
fi
if python3 -m pip --version >/dev/null 2>&1; then
    then_venv=$(uv_venv "'$uv_local'")
    echo "uv not found: first installing $uv_pin into $tools/uv with python3's pip." >&2
    printf "python3 -m pip install --quiet --disable-pip-version-check --target '%s' %s && %s\n" \
        "$tools/uv" "$uv_pin" "$then_venv"
    exit 0
fi
echo "error: cannot create $venv: Python 3.8 is needed (syft 0.2.9) and neither it, uv, nor python3 with pip" \
     "was found. Install one of them: python3.8 (your distribution's package or 'pyenv install 3.8')," \
     "uv (see docs/setup.md), or pip for python3; then retry." >&2
exit 1
