"""Importing gnc_ext from a source checkout whose native core was never built says so
(the folder, and the two ways out); a broken install keeps its own message."""
import os
import shutil
import subprocess
import sys

import gnc_ext
from conftest import package_subprocess_env

PKG = os.path.dirname(os.path.abspath(gnc_ext.__file__))  # the package under test, installed or in-tree


def _copy_package(dst):
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__"))


def _import(cwd):
    return subprocess.run([sys.executable, "-c", "import torch, gnc_ext; print(gnc_ext.__file__)"],
                          capture_output=True, text=True, cwd=cwd, env=package_subprocess_env(), timeout=120)


def _last_line(err):
    return [l for l in err.strip().splitlines() if l.strip()][-1]


def test_source_checkout_without_core_names_folder_and_ways_out(tmp_path):
    checkout = tmp_path / "checkout"
    _copy_package(checkout / "gnc_ext")
    (checkout / "csrc").mkdir()
    (checkout / "pyproject.toml").write_text('[project]\nname = "gnc_ext"\n')  # what a checkout has beside the package
    out = _import(checkout)
    assert out.returncode != 0
    msg = _last_line(out.stderr)
    assert msg.startswith("ImportError: gnc_ext is being imported from the source checkout "), msg
    assert str(checkout) in msg
    assert "gnc_ext._C has not been built" in msg
    assert "run Python from another folder" in msg and "pip install -e ." in msg
    # the gnc_ext these tests import is the one it shadows, and it is named
    assert "shadows the installed gnc_ext in " + os.path.realpath(PKG) in msg
    # from another folder the same environment imports the built package
    elsewhere = _import(tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert os.path.realpath(elsewhere.stdout.strip()) == os.path.realpath(os.path.join(PKG, "__init__.py"))


def test_broken_install_keeps_install_message(tmp_path):
    site = tmp_path / "site"
    _copy_package(site / "gnc_ext")  # a package folder with no core, not inside a checkout
    out = _import(site)
    assert out.returncode != 0
    msg = _last_line(out.stderr)
    assert "gnc_ext's native core (gnc_ext._C) could not be imported" in msg, msg
    assert "pip install ." in msg and "source checkout" not in msg
