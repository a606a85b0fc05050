"""The energy model: SRAM priced at its capacity from Horowitz's 8 KB / 32 KB / 1 MB points,
the accumulate add at the accumulator width, old fixed-price keys still honoured, and assumed
prices marked in every report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from emulator.config import Config, config_from_dict
from emulator.counters import COUNTERS, assumed_breakdown, energy_breakdown
from emulator.energy import acc_add_price, prices, sram_price
from emulator.machine import Machine
from isa import assemble
from programs.cli import main

KIB, MIB = 1024, 1 << 20
# Horowitz, ISSCC 2014: SRAM energy per 64-bit access (pJ) at 8 KB, 32 KB and 1 MB
PAPER = {8 * KIB: 10.0, 32 * KIB: 20.0, MIB: 100.0}


def _power_law(c: float) -> float:
    """The documented rule, written out: the power law through the two points around c."""
    (c0, p0), (c1, p1) = ((8 * KIB, 10.0), (32 * KIB, 20.0)) if c < 32 * KIB else \
        ((32 * KIB, 20.0), (MIB, 100.0))
    return p0 * (c / c0) ** (math.log(p1 / p0) / math.log(c1 / c0))


def test_sram_price_is_the_paper_figure_at_its_points_and_a_power_law_between():
    e = Config().energy
    for cap, pj in PAPER.items():
        assert sram_price(e, cap)[:2] == (pj, "paper")
    assert sram_price(e, 16 * KIB)[0] == pytest.approx(10 * math.sqrt(2), rel=1e-12)
    assert sram_price(e, 256 * KIB)[0] == pytest.approx(20 * 5 ** 0.6, rel=1e-12)
    caps = [1 << k for k in range(10, 25)] + [3000, 100_000, 5 * MIB + 7]
    for cap in caps:
        v, kind, _ = sram_price(e, cap)
        assert v == pytest.approx(_power_law(cap), rel=1e-12), cap
        assert kind == ("paper" if cap in PAPER else "derived")
    vals = [sram_price(e, c)[0] for c in sorted(caps)]
    assert all(a < b for a, b in zip(vals, vals[1:], strict=False))  # more capacity costs more


def test_scratchpad_and_accumulator_are_priced_at_their_capacity():
    p = prices(Config())  # 1 MiB scratchpad, 262,144 x 4 B = 1 MiB accumulator memory
    assert p["scratchpad_per_64b"].pj == 100.0 and p["accumulator_per_64b"].pj == 100.0
    assert not p["scratchpad_per_64b"].assumed and not p["accumulator_per_64b"].assumed
    cfg = config_from_dict({"memory": {"scratchpad_bytes": 32 * KIB},
                            "accumulator": {"bits": 16, "entries": 4 * KIB}})
    p = prices(cfg)  # accumulator: 4096 x 2 B = 8 KiB
    assert (p["scratchpad_per_64b"].pj, p["accumulator_per_64b"].pj) == (20.0, 10.0)
    # the energy of a run uses those prices: bytes / 8 x price
    m = Machine(cfg, assemble("li r1, 64\nli r2, 16\nvtoacc r0, r0, r1, dt=i8\n"
                              "vadd r2, r0, r0, r1, dt=i8\nhalt\n", "e.s"))
    m.run()
    c = {n: int(m.counts[:, i].sum()) for i, n in enumerate(COUNTERS)}
    en = energy_breakdown(m.counts, cfg)
    assert en["scratchpad"] == pytest.approx((c["spad_rd_bytes"] + c["spad_wr_bytes"]) / 8 * 20)
    assert en["accumulator"] == pytest.approx((c["acc_rd_bytes"] + c["acc_wr_bytes"]) / 8 * 10)
    assert c["acc_wr_bytes"] == 64 * 2 and c["spad_wr_bytes"] == 64


def test_accumulate_add_follows_the_accumulator_width():
    e = Config().energy
    assert acc_add_price(e, 8)[:2] == (0.03, "paper")
    assert acc_add_price(e, 32)[:2] == (0.1, "paper")
    for bits in (9, 16, 20, 24, 31):
        v, kind, _ = acc_add_price(e, bits)
        assert v == pytest.approx(0.03 + (bits - 8) * 0.07 / 24, rel=1e-12) and kind == "derived"
    src = ("li r1, 2\nli r2, 8\nli r3, 64\ngemm r0, r0, r3, r1, r2, r1\nhalt\n")
    for bits, add in ((16, 0.03 + 8 * 0.07 / 24), (32, 0.1)):
        cfg = config_from_dict({"accumulator": {"bits": bits}})
        m = Machine(cfg, assemble(src, "g.s"))
        m.spad[:200] = np.arange(200, dtype=np.uint8)
        m.run()
        mac_ops = int(m.counts[:, COUNTERS.index("mac_ops")].sum())
        assert mac_ops == 2 * 8 * 2
        assert energy_breakdown(m.counts, cfg)["accumulate"] == pytest.approx(mac_ops * add)


def test_old_fixed_price_keys_keep_working():
    old = {"energy": {"mult_int8": 0.2, "add_int8": 0.03, "add_int32": 0.1,
                      "sram_per_64b": 10.0, "acc_per_64b": 12.5, "dram_per_64b": 1950.0,
                      "rng_draw": 1.0, "requant_element": 0.1, "instruction": 0.5}}
    p = prices(config_from_dict(old))  # the energy section of the previous default.yaml
    assert (p["scratchpad_per_64b"].pj, p["accumulator_per_64b"].pj) == (10.0, 12.5)
    assert p["scratchpad_per_64b"].kind == "config" and p["scratchpad_per_64b"].assumed
    assert "sram_per_64b" in p["scratchpad_per_64b"].source


def test_a_changed_price_is_marked_as_set_in_the_config():
    p = prices(config_from_dict({"energy": {"mult_int8": 0.25, "rng_draw": 1.0}}))
    assert p["mult_int8"].kind == "config" and p["mult_int8"].assumed
    assert p["rng_draw"].kind == "assumed"  # unchanged, and not in the paper
    assert [n for n, pr in prices(Config()).items() if pr.assumed] == [
        "rng_draw", "requant_element", "instruction"]


def _by_price(counts: np.ndarray, cfg: Config) -> tuple[float, float]:
    """(all energy, energy on assumed prices) written out from the counters and prices."""
    c = {n: int(counts[:, i].sum()) for i, n in enumerate(COUNTERS)}
    p = {n: (pr.pj, pr.assumed) for n, pr in prices(cfg).items()}
    terms = [(c["mac_ops"], "mult_int8"), (c["mac_ops"], "accumulate_add"),
             ((c["spad_rd_bytes"] + c["spad_wr_bytes"]) / 8, "scratchpad_per_64b"),
             ((c["acc_rd_bytes"] + c["acc_wr_bytes"]) / 8, "accumulator_per_64b"),
             ((c["dram_rd_bytes"] + c["dram_wr_bytes"]) / 8, "dram_per_64b"),
             (c["rng_draws"], "rng_draw"), (c["alu_passes"], "add_int8"),
             (c["alu_mul_passes"], "mult_int8"), (c["rq_elems"], "requant_element"),
             (c["instructions"], "instruction")]
    total = sum(n * p[k][0] for n, k in terms)
    return total, sum(n * p[k][0] for n, k in terms if p[k][1])


def test_reports_mark_assumed_prices_in_tables_and_json(tmp_path, capsys):
    prog = tmp_path / "p.s"
    prog.write_text("li r1, 7\nrngseed r1\nli r2, 16\neset e1, 0\neset e2, 2\n"
                    "rq r0, r0, r2, e2, e1, rnd=uniform, dt=i8\nstw r1, r0, 0\nhalt\n")
    hw = tmp_path / "hw.yaml"
    hw.write_text("memory:\n  scratchpad_bytes: 65536\n")  # 64 KiB: an interpolated price
    out = tmp_path / "r.json"
    assert main(["run", str(prog), "--config", str(hw), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())
    cfg = config_from_dict({"memory": {"scratchpad_bytes": 65536}})
    m = Machine(cfg, assemble(prog.read_text(), "p.s"))
    m.run()
    total, assumed = _by_price(m.counts, cfg)
    assert rep["energy_pj"] == pytest.approx(total) and rep["assumed_energy_pj"] == \
        pytest.approx(assumed) and 0 < assumed < total
    assert sum(assumed_breakdown(m.counts, cfg).values()) == pytest.approx(assumed)
    ep = rep["energy_prices"]
    assert ep["scratchpad_per_64b"]["kind"] == "derived" and ep["scratchpad_per_64b"]["assumed"]
    assert ep["dram_per_64b"]["kind"] == "paper" and not ep["dram_per_64b"]["assumed"]
    assert ep["rng_draw"]["assumed"] and "ASSUMPTION" in ep["rng_draw"]["source"]
    lines = {ln.split("│")[1].strip(): ln for ln in text.splitlines() if ln.count("│") > 4}
    assert "ASSUMED (derived)" in lines["scratchpad_per_64b"]
    assert "ASSUMED" in lines["rng_draw"] and "Horowitz 2014" in lines["dram_per_64b"]
    assert "ASSUMED" not in lines["dram_per_64b"]
    # profile: the JSON carries the prices and every row its assumed part
    pj = tmp_path / "p.json"
    assert main(["profile", str(prog), "--config", str(hw), "--json", str(pj), "-q"]) == 0
    prof = json.loads(pj.read_text())
    assert prof["energy_prices"] == ep
    assert prof["total"]["assumed_energy_pj"] == pytest.approx(assumed)
    assert sum(r["assumed_energy_pj"] for r in prof["rows"]) == pytest.approx(assumed)
