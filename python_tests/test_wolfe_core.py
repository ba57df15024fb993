"""The shared Wolfe core (csrc/common/wolfe.h) on a parallel team, without a GPU.

On the CPU the core runs on the serial team (the hull tests cover it); on CUDA it runs
on a warp, which no CPU machine can execute. csrc/tests/wolfe_team_emulation.cpp runs
the core's team-parallel code paths (strided loops, team reductions, leader writes and
barriers) on a team of CPU threads and compares every result with the serial team's:
distances within 1e-9 relative and the same status, cold and warm started. It is
compiled here with the system's C++ compiler (skipped when there is none).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "csrc" / "tests" / "wolfe_team_emulation.cpp"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    exe = tmp_path_factory.mktemp("wolfe") / "wolfe_team_emulation"
    out = subprocess.run([cxx, "-std=c++17", "-O2", "-pthread", f"-I{ROOT / 'csrc'}", str(SRC), "-o", str(exe)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return exe


@pytest.mark.parametrize("trials,members", [(20, 3), (3, 32)])
def test_team_parallel_core_matches_serial(emulator, trials, members):
    out = subprocess.run([str(emulator), str(trials), str(members)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " 0 differ" in out.stdout, out.stdout
