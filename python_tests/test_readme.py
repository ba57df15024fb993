"""Every ```python block of README.md runs as written on a CPU, so the README cannot rot.

The blocks are found by their fence (whatever sections exist now or are added later),
and each runs in a fresh namespace (it must define every name it uses), one after
another in one subprocess with CUDA hidden, under a time limit. A failure names the
block's first line number in README.md and shows its traceback.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
TIMEOUT_S = 600  # all blocks together; each is meant to take seconds

RUNNER = r'''
import json, sys, time, traceback
blocks = json.load(sys.stdin)
for line, code in blocks:
    t0 = time.perf_counter()
    try:
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
    except BaseException:
        print(json.dumps({"line": line, "error": traceback.format_exc()}), flush=True)
        sys.exit(1)
    print(json.dumps({"line": line, "seconds": time.perf_counter() - t0}), flush=True)
'''


def python_blocks(text: str):
    """(first line number, code) of every ```python fenced block."""
    out = []
    for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S):
        out.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return out


def test_extraction_finds_the_blocks():
    text = README.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert len(blocks) == text.count("```python") and len(blocks) >= 1
    for line, code in blocks:
        assert code.strip(), f"README.md:{line}: empty python block"
        code_only = re.sub(r"#.*", "", code)  # comments may mention the GPU
        assert "cuda" not in code_only, f"README.md:{line}: python blocks must run on a CPU"


def test_readme_python_blocks_run(tmp_path):
    """Runs in an empty folder with the test session's environment, so it imports the
    gnc_ext the tests use (the installed package, or PYTHONPATH's in-tree build), never
    the uncompiled source tree by accident; files the blocks write land there too."""
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), capture_output=True,
                         text=True, timeout=TIMEOUT_S, cwd=tmp_path, env=env)
    done = [json.loads(l) for l in out.stdout.splitlines() if l.startswith('{"line"')]
    failed = [r for r in done if "error" in r]
    assert not failed, f"README.md:{failed[0]['line']}: the block fails:\n{failed[0]['error']}"
    assert out.returncode == 0, out.stderr[-3000:]
    assert [r["line"] for r in done] == [b[0] for b in blocks]  # every block ran
