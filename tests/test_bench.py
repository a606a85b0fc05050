"""``lpemu bench``'s bookkeeping, without timing anything: verdicts against targets, the noise
estimate, the retry of noisy figures, ``--json`` and ``--check``."""

from __future__ import annotations

import json

import pytest

from programs.bench import suite
from programs.cli.main import main


def test_verdicts_against_targets():
    assert suite.meets(1.4, "<= 1.5") is True and suite.meets(1.6, "<= 1.5") is False
    assert suite.meets(20.0, ">= 20") is True and suite.meets(19.9, ">= 20") is False
    assert suite.meets(None, "<= 1") is None and suite.meets(3.0, "") is None
    with pytest.raises(ValueError):
        suite.meets(1.0, "== 1")


def test_noise_is_the_spread_over_the_median():
    f = suite.Figure("x", 1.0, "x", "<= 2", [0.9, 1.0, 1.2])
    assert f.noise == pytest.approx(0.3) and f.noisy and f.passed
    assert suite.Figure("y", 1.0, "s", samples=[1.0]).noise is None
    calm = suite.Figure("z", 2.0, "s", ">= 3", [2.0, 2.1, 2.05])
    assert not calm.noisy and calm.passed is False


def test_noisy_figures_are_measured_again_and_the_calmest_kept():
    spreads = iter([[1.0, 2.0], [1.0, 1.5], [1.0, 1.1]])
    calls = []

    def measure() -> suite.Figure:
        calls.append(1)
        s = next(spreads)
        return suite.Figure("r", s[0], "x", "<= 2", s)

    f = suite.steady(measure, retries=2)
    assert len(calls) == 3 and f.samples == [1.0, 1.1] and f.retries == 2 and not f.noisy
    always = suite.steady(lambda: suite.Figure("n", 1.0, "x", "", [1.0, 3.0]), retries=1)
    assert always.noisy and always.retries == 1 and "noisy" in always.note


def _fake_results(passed: bool) -> dict:
    figs = [suite.Figure("gemm", 1.2 if passed else 0.8, "x", ">= 1.0", [1.0, 1.1]),
            suite.Figure("info", 3.0, "s", "", [3.0])]
    return {"quick": True, "state": {"cpus": 2, "others_runnable": 0, "loadavg": [0.1] * 3},
            "vnni": True, "parts": {"gemm": [f.to_dict() for f in figs]}}


@pytest.mark.parametrize("passed", [True, False])
def test_check_exit_code_and_json(monkeypatch, tmp_path, capsys, passed):
    monkeypatch.setattr(suite, "run_suite", lambda *a, **k: _fake_results(passed))
    out = tmp_path / "b.json"
    rc = main(["bench", "--quick", "--check", "--json", str(out)])
    assert rc == (0 if passed else 1)
    data = json.loads(out.read_text())
    fig = data["parts"]["gemm"][0]
    assert fig["passed"] is passed and fig["target"] == ">= 1.0" and fig["samples"] == [1.0, 1.1]
    assert ("MISS" in capsys.readouterr().out) is not passed
    # without --check a miss is reported but is not an error
    assert main(["bench", "--quick"]) == 0


def test_unknown_part_is_a_usage_error(capsys):
    assert main(["bench", "--only", "gemm,nope"]) == 2
    assert "nope" in capsys.readouterr().err
