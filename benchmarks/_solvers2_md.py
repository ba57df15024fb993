"""Write one named section of benchmarks/results/solvers2_cpu.md (other sections kept)."""
import os
import re

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "solvers2_cpu.md")


def write_section(name: str, text: str) -> None:
    os.makedirs(os.path.dirname(PATH), exist_ok=True)
    old = open(PATH).read() if os.path.exists(PATH) else "# solvers2 (Softmax Codes, UFM, HardMax) — CPU results\n\n"
    block = f"<!-- {name} -->\n{text.rstrip()}\n<!-- /{name} -->\n"
    pat = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->\n", re.S)
    new = pat.sub(lambda m: block, old) if pat.search(old) else old.rstrip() + "\n\n" + block
    open(PATH, "w").write(new)
