"""docs/api.md: every Python example runs, in order, in one session (and the page shows the
whole public surface of ``import lpemu``)."""

from __future__ import annotations

import re
from pathlib import Path

import lpemu

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "api.md"


def _examples() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)


def test_every_example_in_the_api_doc_runs(tmp_path, monkeypatch, capsys):
    examples = _examples()
    assert len(examples) >= 10
    monkeypatch.chdir(tmp_path)
    ns: dict[str, object] = {"__name__": "api_doc"}
    for i, code in enumerate(examples):
        try:
            exec(compile(code, f"docs/api.md example {i + 1}", "exec"), ns)
        except Exception as e:  # name the example that failed
            raise AssertionError(f"docs/api.md example {i + 1} failed: {e!r}\n{code}") from e
    out = capsys.readouterr().out
    assert "instruction: ldw r2, r1, 0" in out and "bad.s:4: pc 1 (load)" in out


def test_the_api_doc_mentions_every_public_name():
    text = DOC.read_text()
    missing = [n for n in lpemu.__all__ if not n.startswith("_") and n not in text]
    assert missing == []


def test_import_lpemu_loads_no_plotting_or_dataset_library():
    import subprocess
    import sys

    code = ("import sys, lpemu; "
            "print(sorted(m for m in ('sklearn', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"
