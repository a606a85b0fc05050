"""Host driver: puts data and weights in DRAM, runs the firmware epoch by epoch, reads back
weights, statistics and counters.

DRAM map (beyond the compiler's PARAMS block and weight homes at the bottom): the shuffled
training batches (inputs transposed to ``[features, batch]`` per batch, negated one-hot targets),
the test batches, and output areas for per-batch softmax outputs, round-off sums and test logits;
with a validation split also the validation batches, their logits and a copy of the parameters
(weights and their INT16 update state) of the best-validation epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emulator.config import Config
from emulator.counters import COUNTERS, IDX, assumed_breakdown, derived, energy_breakdown
from emulator.debug import annotate
from emulator.errors import CheckpointError, ConfigError, ExecutionError
from emulator.machine import Machine
from isa.asm import assemble
from programs.compiler.firmware import (
    CONST_BYTES,
    MODE_EVAL,
    MODE_TRAIN,
    P_LOADW,
    P_MODE,
    P_MU,
    P_MUTAB,
    P_NBATCH,
    P_OBASE,
    P_RBASE,
    P_SEED,
    P_TBASE,
    P_XBASE,
    R_B,
    compile_model,
    constants,
    init_bound,
    lr_multiplier,
)
from programs.compiler.layers import Param
from programs.compiler.qbp import LOG_BYTES, P_QLOG
from programs.compiler.spec import ModelSpec, validate
from programs.host.datasets import Dataset, epoch_order, input_exponent

PHASES = {"fwd": "forward", "softmax": "softmax", "bwd": "backward", "upd": "update"}


def classifier_bits_bound(classes: int, alpha: float) -> float:
    """001 eq. 5: bitwidth_classifier > log2(|class| - 1) + log2(2 / alpha)."""
    return math.log2(max(classes - 1, 1)) + math.log2(2.0 / alpha)


def classifier_warning(spec: ModelSpec) -> str | None:
    """A warning when the classifier width is at or below the bound of 001 eq. 5, else None."""
    bound = classifier_bits_bound(spec.classes, spec.classifier_alpha)
    if spec.bits.classifier <= bound:
        return (f"classifier width INT{spec.bits.classifier} is below the bound of 001 eq. 5 "
                f"for {spec.classes} classes (alpha = {spec.classifier_alpha}): need more than "
                f"{bound:.2f} bits; small gradient components of dL/ds will be lost")
    return None


def initial_weights(spec: ModelSpec, weight_exp: list[int]) -> list[np.ndarray]:
    """He-uniform weights [fan_in, units] on each weight layer's initial grid, INT8 (int8) or
    INT16 (int16) by ``bits.weights`` (the float trainer starts from the same values,
    dequantized). Biases start at zero."""
    rng = np.random.default_rng([spec.seed, 7])
    out = []
    for layer, e, bits in zip(spec.net().weight_layers, weight_exp, spec.weight_bits(),
                              strict=True):
        b = init_bound(layer.fan_in)
        w = rng.uniform(-b, b, size=layer.wshape)
        top = 2 ** (bits - 1) - 1
        out.append(np.clip(np.rint(w / 2.0**e), -top, top).astype(
            np.int8 if bits == 8 else np.int16))
    return out


def initial_params(spec: ModelSpec, weight_exp: list[int]) -> list[np.ndarray]:
    """Every parameter in the compiler's order (per weight layer: W, then its bias)."""
    out = []
    for layer, w in zip(spec.net().weight_layers, initial_weights(spec, weight_exp),
                        strict=True):
        out.append(w)
        if layer.bias:
            out.append(np.zeros(layer.units, w.dtype))
    return out


MOMENT_EXP0 = -(2**30)  # Adam's moment exponents start "at minus infinity" (the moments are 0)


@dataclass
class EpochStats:
    epoch: int
    lr: float
    loss: float
    train_accuracy: float
    sparsity: list[float]
    roundoff_mean_abs: float  # mean over samples of |sum_j q(dL/ds)_j| (exact sum is 0)
    roundoff_mean: float  # the same, signed: a bias shows as a non-zero mean
    roundoff_max_abs: float  # the largest |sum| of any sample
    y_zero_fraction: float  # wrong-class softmax outputs quantized to 0 (lost components)
    counters: dict[str, int] = field(default_factory=dict)
    validation_accuracy: float | None = None  # on the chip, after the epoch (with a split)
    # adaptive QBP, per weight layer: the step's mean, min and max over the batches and the
    # fraction of batches the saturation floor or the lower clamp raised it
    qbp_steps: list[list[float]] | None = None
    param_exponents: list[int] = field(default_factory=list)  # after the epoch (compiler order)

    @property
    def mean_sparsity(self) -> float:
        return float(np.mean(self.sparsity)) if self.sparsity else 0.0


def label_key(label: str) -> tuple[str, str]:
    """(layer, phase) of a firmware label such as ``train.bwd.l2`` or ``train.softmax``."""
    parts = label.split(".")
    if len(parts) >= 2 and parts[1] in PHASES:
        layer = parts[2] if len(parts) > 2 and parts[2].startswith("l") else "classifier"
        phase = PHASES[parts[1]]
        if parts[0] == "eval":
            phase = "eval " + phase
        return layer, phase
    return "-", "control/io"


def _int_array(a: Any, key: str, ndim: int, lo: int, hi: int) -> None:
    if not isinstance(a, np.ndarray) or a.ndim != ndim or a.dtype.kind not in "iu":
        what = (f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray)
                else type(a).__name__)
        raise ConfigError(f"must be a {ndim}-D integer numpy array, got {what}", key)
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise ConfigError(f"values must lie in [{lo}, {hi}], got [{int(a.min())}, "
                          f"{int(a.max())}]", key)


def check_training(spec: ModelSpec, data: Dataset) -> ModelSpec:
    """What every training run checks before it starts (``lpemu train``, the Python API and
    the experiments alike): the spec is valid (:func:`programs.compiler.spec.validate`) and the
    dataset fits it (INT8 inputs with the network's input features, and an image network's
    (C, H, W) shape, labels below the class count, as
    many labels as samples, at least one training batch and one test sample; the same for a
    validation split). Raises ConfigError naming the key."""
    if not isinstance(spec, ModelSpec):
        raise ConfigError(f"must be a ModelSpec, got {type(spec).__name__}", "model")
    validate(spec)
    parts = [("x_train", "y_train"), ("x_test", "y_test")]
    if getattr(data, "x_val", None) is not None or getattr(data, "y_val", None) is not None:
        parts.append(("x_val", "y_val"))
    for x, y in parts:
        _int_array(getattr(data, x, None), f"dataset.{x}", 2, -128, 127)
        _int_array(getattr(data, y, None), f"dataset.{y}", 1, 0, spec.classes - 1)
    features = {getattr(data, x).shape[1] for x, _ in parts}
    net = spec.net()
    if data.classes != spec.classes or features != {net.features}:
        shape = "x".join(map(str, getattr(data, "shape", None) or (data.x_train.shape[1],)))
        raise ConfigError(f"dataset {data.name} has {data.x_train.shape[1]} features (input "
                          f"shape {shape}) and {data.classes} classes; the network takes "
                          f"{net.features} inputs and gives {net.classes} classes", "layers")
    shape = tuple(getattr(data, "shape", None) or ())
    if net.is_image and shape != net.input_shape:
        raise ConfigError(f"dataset {data.name} has images of shape "
                          f"{'x'.join(map(str, shape))} (C, H, W); the network's input is "
                          f"{'x'.join(map(str, net.input_shape))}", "layers[0].shape")
    for x, y in parts:
        nx, ny = len(getattr(data, x)), len(getattr(data, y))
        if nx != ny:
            raise ConfigError(f"{ny} labels for {nx} samples in {x}", f"dataset.{y}")
    if len(data.x_train) < spec.batch_size:
        raise ConfigError(f"the dataset has {len(data.x_train)} training samples, fewer than "
                          f"one batch of {spec.batch_size}", "batch_size")
    if len(data.x_test) == 0:
        raise ConfigError("the dataset has no test samples", "dataset.x_test")
    return spec


def check_dataset_fits(spec: ModelSpec, cfg: Config) -> None:
    """Before the ``synthetic`` dataset is generated: its samples (40 per class, 64 features,
    INT8) fit the configured DRAM they are placed in, and generating them fits the memory
    budget, so a huge class count is a ConfigError, not an allocation. Other datasets check
    their own sizes when they are read (programs/host/datasets.py)."""
    if spec.dataset != "synthetic":
        return
    from emulator.limits import fmt_bytes, memory_budget
    from programs.host.datasets import SYNTHETIC_FEATURES, SYNTHETIC_PER_CLASS

    c = spec.classes
    samples = c * SYNTHETIC_PER_CLASS * SYNTHETIC_FEATURES  # INT8, as placed in DRAM
    host = samples + 8 * c * (SYNTHETIC_FEATURES + SYNTHETIC_PER_CLASS)  # + centers, labels
    if samples > cfg.memory.dram_bytes:
        raise ConfigError(f"the synthetic dataset of {c:,} classes has {fmt_bytes(samples)} of "
                          f"samples, more than the {cfg.memory.dram_bytes:,} bytes of DRAM",
                          "layers")
    budget = memory_budget(cfg.budget.max_memory_bytes)
    if host > budget:
        raise ConfigError(f"generating the synthetic dataset of {c:,} classes takes "
                          f"{fmt_bytes(host)}, over the memory budget of {fmt_bytes(budget)}",
                          "layers")


class ChipTrainer:
    """Trains a model spec on the emulated chip.

    With a validation split in the data, every epoch ends with a validation pass on the chip;
    the parameters of the best epoch (highest validation accuracy, the earliest on a tie) are
    copied to DRAM, and :meth:`test_accuracy` evaluates the test set with them (004's
    protocol). Spec and data are checked first (:func:`check_training`)."""

    def __init__(self, spec: ModelSpec, cfg: Config, data: Dataset,
                 datapath: str = "fast") -> None:
        if spec.input_exponent is None:  # null: the dataset's own input grid
            spec = dataclasses.replace(spec, input_exponent=input_exponent(spec, data))
        check_training(spec, data)
        self.spec, self.cfg, self.data = spec, cfg, data
        text, lay = compile_model(spec, cfg)
        self.asm_text, self.layout = text, lay
        self.program = assemble(text, f"{spec.name}.s")
        self.m = Machine(cfg, self.program, datapath=datapath)
        self.params0 = initial_params(spec, lay.weight_exp)
        self.weights0 = [w for p, w in zip(lay.params, self.params0, strict=True)
                         if not p.is_bias]
        self._place_params(self.params0)
        if lay.ones:
            self.m.load_dram(lay.dram["ONES"], np.ones(lay.ones, np.int8))
        consts = constants(lay)
        if consts is not None:
            self.m.load_dram(lay.dram["CONST"], np.frombuffer(consts[0], np.uint8))
            self.m.load_dram(lay.dram["CONST"] + CONST_BYTES, np.array([consts[1]], "<i4"))
        self._plan_dram()
        self.epoch = self.log_epoch = 0
        self.loaded = False
        self.in_epoch = False
        self.epoch_start_counts = self.m.counts.copy()
        self.history: list[EpochStats] = []
        labels = self.program.label_at()
        self.pc_keys = [label_key(lb) for lb in labels]
        self.bwd_pcs = {
            x.pos: np.array([k == (x.name, "backward") for k in self.pc_keys], dtype=bool)
            for x in lay.net.weight_layers
        }

    # ------------------------------------------------------------------ DRAM placement
    def _place_params(self, params: list[np.ndarray]) -> None:
        lay, spec = self.layout, self.spec
        for p, w in zip(lay.params, params, strict=True):
            self.m.load_dram(lay.dram[p.key("W")], w.astype(np.int8 if p.bits == 8 else "<i2"))
            if spec.update.mode == "shadow":
                lz = w.astype(np.int16) << spec.update.acc_shift
            else:
                lz = np.zeros(w.shape, np.int16)
            self.m.load_dram(lay.dram[p.key("LZ")], lz.astype("<i2"))
            for x in ("VL", "M", "V"):  # momentum, Adam's moments: start at zero
                if p.key(x) in lay.dram:
                    self.m.load_dram(lay.dram[p.key(x)],
                                     np.zeros(lay.state_bytes(x, p) * w.size, np.uint8))
            if p.key("E") in lay.dram:  # the dynamic exponent starts at the initial grid
                self.m.load_dram(lay.dram[p.key("E")], np.array([p.exp], "<i4"))
            for x in ("EM", "EV"):
                if p.key(x) in lay.dram:
                    n = len(lay.tiles[p.layer.pos])
                    self.m.load_dram(lay.dram[p.key(x)], np.full(n, MOMENT_EXP0, "<i4"))

    def _plan_dram(self) -> None:
        lay, spec, d = self.layout, self.spec, self.data
        b = spec.batch_size
        self.nb_train = len(d.x_train) // b
        self.nb_test = math.ceil(len(d.x_test) / b)
        top = lay.dram["DATA"]

        def take(nbytes: int) -> int:
            nonlocal top
            addr = top
            top += -(-nbytes // 4096) * 4096
            return addr

        self.x_train_addr = take(self.nb_train * lay.batch_x_bytes)
        self.t_train_addr = take(self.nb_train * lay.batch_t_bytes)
        self.y_addr = take(self.nb_train * lay.batch_y_bytes)
        self.ro_addr = take(self.nb_train * 4 * b)
        # the adaptive QBP steps of every batch of an epoch (programs/compiler/qbp.py)
        self.qlog_addr = take(self.nb_train * LOG_BYTES * lay.qbp.nw) if lay.qbp.adapt else 0
        self.mu_addr = take(4 * self.nb_train) if spec.per_step_lr else 0
        self.x_test_addr = take(self.nb_test * lay.batch_x_bytes)
        self.logit_addr = take(self.nb_test * lay.batch_logit_bytes)
        self.nb_val = math.ceil(len(d.x_val) / b) if d.has_validation else 0
        if d.has_validation:
            self.x_val_addr = take(self.nb_val * lay.batch_x_bytes)
            self.val_logit_addr = take(self.nb_val * lay.batch_logit_bytes)
            self.best_addr = take(sum(n for _, n in self._param_regions()))
        if top > self.cfg.memory.dram_bytes:
            raise ConfigError(f"the dataset needs {top:,} bytes of DRAM, "
                              f"{self.cfg.memory.dram_bytes:,} available", "memory.dram_bytes")
        self.dram_top = top  # the end of everything the host places in DRAM
        xte = self._pad(d.x_test, self.nb_test * b)
        self.m.load_dram(self.x_test_addr, self._batches_x(xte))
        if d.has_validation:
            xva = self._pad(d.x_val, self.nb_val * b)
            self.m.load_dram(self.x_val_addr, self._batches_x(xva))

    def _param_regions(self) -> list[tuple[int, int]]:
        """(DRAM address, bytes) of every parameter and its update state (lazy residual or
        shadow copy, velocity, Adam's moments) and exponent words (dynamic exponents, Adam's
        moment exponents)."""
        return [(self.layout.dram[p.key(x)], n) for p, x, n in self.layout.param_blocks()]

    def _copy_params(self, to_best: bool) -> None:
        """Copy the parameters to the best-epoch area (or back); host access, not counted."""
        at = self.best_addr
        for addr, size in self._param_regions():
            src, dst = (addr, at) if to_best else (at, addr)
            self.m.load_dram(dst, np.frombuffer(self.m.read_dram(src, size), np.uint8))
            at += size

    def _pad(self, x: np.ndarray, n: int) -> np.ndarray:
        if len(x) >= n:
            return x[:n]
        return np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])

    def _batches_x(self, x: np.ndarray) -> np.ndarray:
        """Per batch: images NHWC [B, H, W, C] (from rows in (c, h, w) order); feature vectors
        transposed to [features, B]."""
        b = self.spec.batch_size
        net = self.layout.net
        if net.is_image:
            c, h, w = net.input_shape
            return np.ascontiguousarray(x.reshape(-1, b, c, h, w).transpose(0, 1, 3, 4, 2),
                                        np.int8)
        return np.ascontiguousarray(x.reshape(-1, b, x.shape[1]).transpose(0, 2, 1), np.int8)

    def _neg_targets(self, y: np.ndarray) -> np.ndarray:
        bw = self.spec.bits.classifier
        t = np.zeros((len(y), self.spec.classes), dtype="<i2" if self.layout.gbytes == 2 else "i1")
        t[np.arange(len(y)), y] = -(1 << (bw - 1))
        return t

    def _params(self, mode: int, nb: int, mu: int, seed: int, xb: int, tb: int, ob: int,
                rb: int) -> None:
        words = np.zeros(16, dtype="<i4")
        words[P_MODE], words[P_NBATCH], words[P_MU], words[P_SEED] = mode, nb, mu, seed
        words[P_XBASE], words[P_TBASE], words[P_OBASE], words[P_RBASE] = xb, tb, ob, rb
        words[P_LOADW] = 0 if self.loaded else 1
        words[P_QLOG] = self.qlog_addr
        words[P_MUTAB] = self.mu_addr
        self.m.load_dram(0, words)
        self.loaded = True

    # ------------------------------------------------------------------ running
    def train_epoch(self, checkpoint_every: int = 0,
                    on_checkpoint: Callable[[ChipTrainer], None] | None = None) -> EpochStats:
        """Train one epoch. With ``checkpoint_every`` = N > 0, the firmware is stopped at its
        batch-loop head every N training steps and ``on_checkpoint(self)`` is called there
        (e.g. to save a checkpoint); the results are identical either way."""
        self._begin_epoch()
        return self.continue_epoch(checkpoint_every, on_checkpoint)

    def _begin_epoch(self) -> None:
        spec, lay, d = self.spec, self.layout, self.data
        order = epoch_order(len(d.x_train), spec.batch_size, spec.seed, self.epoch)
        x, y = d.x_train[order], d.y_train[order]
        self.m.load_dram(self.x_train_addr, self._batches_x(x))
        self.m.load_dram(self.t_train_addr, self._neg_targets(y))
        mu = lr_multiplier(spec, lay, self.epoch)
        if spec.per_step_lr:  # one mu per batch: the step size of training step t
            t0 = self.epoch * self.nb_train
            self.m.load_dram(self.mu_addr, np.array(
                [lr_multiplier(spec, lay, self.epoch, t0 + i) for i in range(self.nb_train)],
                "<i4"))
        seed = (spec.seed * 1_000_003 + self.epoch) & 0x7FFFFFFF
        self._params(MODE_TRAIN, self.nb_train, mu, seed, self.x_train_addr,
                     self.t_train_addr, self.y_addr, self.ro_addr)
        self.epoch_start_counts = self.m.counts.copy()
        self.in_epoch = True
        self.log_epoch = self.epoch  # the epoch the firmware's step log describes
        self.m.restart()

    def firmware_image(self) -> np.ndarray:
        """DRAM bytes ``[0, dram_top)`` as the firmware finds them at the start of the next
        training epoch: the PARAMS block, the weights and their update state, the epoch's
        batches and the test data. Starts that epoch (``continue_epoch`` runs it): running the
        firmware on this image, alone, is exactly that epoch of training."""
        if self.in_epoch:
            raise ValueError("the DRAM image exists only at the start of an epoch")
        self._begin_epoch()
        return self.m.dram[: self.dram_top].copy()

    def global_step(self) -> int:
        """Training steps (batches) completed since the start, counted at the loop head."""
        done = int(self.m.r[R_B]) if self.m.pc == self.program.labels["train.loop"] else 0
        return self.epoch * self.nb_train + done

    def continue_epoch(self, checkpoint_every: int = 0,
                       on_checkpoint: Callable[[ChipTrainer], None] | None = None
                       ) -> EpochStats:
        """Run the current epoch's firmware to its end (after ``_begin_epoch`` or a resume),
        stopping at the batch-loop head whenever the global step count reaches a multiple of
        ``checkpoint_every`` to call ``on_checkpoint``.

        The firmware runs one batch per machine call (each stops at the loop head), so the
        config's step, cycle and wall-time budgets bound one training step: a training run
        is never stopped by them however long it is."""
        loop_pc = self.program.labels["train.loop"]
        n = checkpoint_every if on_checkpoint is not None else 0
        s0 = self.global_step()
        resumed_at_head = self.m.pc == loop_pc
        while True:
            self._run(break_pc=loop_pc)
            if self.m.halted:
                break
            s = self.global_step()
            # at the head: every multiple of n after where this call started (a run started
            # at the top of an epoch also checkpoints its first step, unless it is step 0)
            if n > 0 and s % n == 0 and (s > s0 if resumed_at_head else s > 0):
                on_checkpoint(self)  # type: ignore[misc]
        self.in_epoch = False
        return self._finish_epoch()

    def _run(self, **kw: Any) -> None:
        """``m.execute(**kw)`` (a run without the summary); a runtime fault names the firmware
        label and source line."""
        try:
            self.m.execute(**kw)
        except ExecutionError as e:
            raise annotate(e, self.program) from None

    def _finish_epoch(self) -> EpochStats:
        spec, lay, d = self.spec, self.layout, self.data
        b, c, bw = spec.batch_size, spec.classes, spec.bits.classifier
        order = epoch_order(len(d.x_train), b, spec.seed, self.epoch)
        y = d.y_train[order]
        delta = self.m.counts - self.epoch_start_counts
        gdt = np.dtype("<i2") if lay.gbytes == 2 else np.dtype("i1")
        yq = np.frombuffer(self.m.read_dram(self.y_addr, len(y) * c * lay.gbytes), gdt)
        prob = yq.reshape(len(y), c).astype(np.float64) * 2.0 ** -(bw - 1)
        p_true = np.maximum(prob[np.arange(len(y)), y], 2.0 ** -(bw - 1))
        ro = np.frombuffer(self.m.read_dram(self.ro_addr, len(y) * 4), "<i4")
        wrong = np.ones_like(prob, dtype=bool)
        wrong[np.arange(len(y)), y] = False
        stats = EpochStats(
            epoch=self.epoch,
            lr=spec.lr_at(self.epoch),
            loss=float(-np.log(p_true).mean()),
            train_accuracy=float((prob.argmax(axis=1) == y).mean()),
            sparsity=self._sparsity(delta),
            roundoff_mean_abs=float(np.abs(ro.astype(np.float64)).mean() * 2.0 ** -(bw - 1)),
            roundoff_mean=float(ro.astype(np.float64).mean() * 2.0 ** -(bw - 1)),
            roundoff_max_abs=float(np.abs(ro.astype(np.float64)).max() * 2.0 ** -(bw - 1)),
            y_zero_fraction=float(((prob == 0) & wrong).sum() / max(int(wrong.sum()), 1)),
            counters={n: int(delta[:, i].sum()) for i, n in enumerate(COUNTERS)},
            qbp_steps=self._step_stats(),
            param_exponents=self.param_exponents(),
        )
        if d.has_validation:
            best = self.best_epoch()
            stats.validation_accuracy = self.evaluate("val")
            if best is None or stats.validation_accuracy > self.history[best].validation_accuracy:
                self._copy_params(to_best=True)
        self.history.append(stats)
        self.epoch += 1
        return stats

    def step_log(self, rule: bool = False) -> np.ndarray | None:
        """Adaptive QBP: the step every weight layer used in every batch of the epoch just
        run, [batches, weight layers] (float64 M 2**(e - 15) from the firmware's log); with
        ``rule``, the step the adaptive rule asked for, before the saturation floor and the
        clamps (0: none can meet the budget; inf: unconstrained)."""
        if not self.qlog_addr:
            return None
        nw = self.layout.qbp.nw
        raw = np.frombuffer(self.m.read_dram(self.qlog_addr, self.nb_train * LOG_BYTES * nw),
                            "<i4").reshape(self.nb_train, nw, 4).astype(np.float64)
        m, e = (raw[:, :, 2], raw[:, :, 3]) if rule else (raw[:, :, 0], raw[:, :, 1])
        with np.errstate(over="ignore"):
            out = np.where(e >= 2**31 - 1, np.inf, m * np.exp2(np.clip(e, -2000, 2000) - 15))
        if rule:  # the rule ran in the batches whose global index is a multiple of every
            g = self.log_epoch * self.nb_train + np.arange(self.nb_train)
            out[g % self.layout.qbp.every != 0] = np.nan
        return out

    def _step_stats(self) -> list[list[float]] | None:
        """Per weight layer: mean, min, max of the step used, and the fraction of batches whose
        step the saturation floor or the lower clamp raised above the rule's."""
        log, rule = self.step_log(), self.step_log(rule=True)
        if log is None or rule is None:
            return None
        ran = ~np.isnan(rule[:, 0])
        return [[float(c.mean()), float(c.min()), float(c.max()),
                 float((c[ran] > r[ran]).mean()) if ran.any() else 0.0]
                for c, r in zip(log.T, rule.T, strict=True)]

    def best_epoch(self) -> int | None:
        """The finished epoch with the highest validation accuracy (the earliest on a tie), or
        None without a validation split or before the first epoch."""
        accs = [h.validation_accuracy for h in self.history]
        if not accs or any(a is None for a in accs):
            return None
        return int(np.argmax(accs))

    def _sparsity(self, delta: np.ndarray) -> list[float]:
        """Fraction of zeros in each weight layer's quantized dz~, exactly, from the skip
        counters.

        In ``train.bwd.l<pos>`` every zero of dz~ skips the same number of MACs: the dW product
        skips zeros(dz~) x K (fan-in), the input-gradient product (all but the lowest weight
        layer) as many again, the bias gradient zeros(dz~) x 1."""
        lay = self.layout
        out = []
        layers = lay.net.layers
        for i, x in enumerate(layers):
            if not x.is_weight:
                continue
            low = lay.lowerings[i]
            need_dx = any(y.is_weight for y in layers[:i])
            skipped = int(delta[self.bwd_pcs[x.pos], IDX["macs_skipped"]].sum())
            zeros = skipped / low.skip_factor(need_dx)
            out.append(zeros / (low.dz_count(self.spec.batch_size) * self.nb_train))
        return out

    def evaluate(self, split: str = "test") -> float:
        """Accuracy of the current weights on the ``test`` or ``val`` split, on the chip."""
        spec, d = self.spec, self.data
        b, c = spec.batch_size, spec.classes
        if split == "val":
            nb, xa, oa, y = self.nb_val, self.x_val_addr, self.val_logit_addr, d.y_val
        else:
            nb, xa, oa, y = self.nb_test, self.x_test_addr, self.logit_addr, d.y_test
        self._params(MODE_EVAL, nb, 1, 0, xa, 0, oa, 0)
        self.m.restart()
        head = self.program.labels.get("eval.loop")
        while not self.m.halted:  # one batch per call, as in training (budgets per batch)
            self._run(break_pc=head)
        s = np.frombuffer(self.m.read_dram(oa, nb * b * c * 2), "<i2")
        pred = s.reshape(-1, c)[: len(y)].argmax(axis=1)
        return float((pred == y).mean())

    def test_accuracy(self) -> float:
        """Test accuracy by the run's protocol: of the current weights, or with a validation
        split of the best-validation epoch's parameters (restored into their DRAM homes and
        reloaded by the firmware, so the machine holds them afterwards)."""
        if self.best_epoch() is not None:
            self._copy_params(to_best=False)
            self.loaded = False  # the firmware reloads resident weights from DRAM
        return self.evaluate()

    def _read_param(self, p: Param, x: str = "W") -> np.ndarray:
        eb = self.layout.state_bytes(x, p)
        dt = np.dtype(np.int8) if eb == 1 else np.dtype("<i2")
        raw = self.m.read_dram(self.layout.dram[p.key(x)], p.size * dt.itemsize)
        return np.frombuffer(raw, dt).reshape(p.shape).copy()

    def weights(self) -> list[np.ndarray]:
        """The weight matrices [fan_in, units] of the weight layers (int8 or int16)."""
        return [self._read_param(p) for p in self.layout.params if not p.is_bias]

    def params(self) -> list[np.ndarray]:
        """Every parameter in the compiler's order (per weight layer: W, then bias)."""
        return [self._read_param(p) for p in self.layout.params]

    def param_exponents(self) -> list[int]:
        """The current exponent of every parameter (the fixed one, or the dynamic one the
        chip keeps in its DRAM word)."""
        out = []
        for p in self.layout.params:
            if p.key("E") in self.layout.dram:
                raw = self.m.read_dram(self.layout.dram[p.key("E")], 4)
                out.append(int(np.frombuffer(raw, "<i4")[0]))
            else:
                out.append(p.exp)
        return out

    def param_values(self) -> list[np.ndarray]:
        """Every parameter as float64 values (integers times 2**exponent)."""
        return [w.astype(np.float64) * 2.0**e
                for w, e in zip(self.params(), self.param_exponents(), strict=True)]

    def weights_digest(self) -> str:
        """SHA-256 of every parameter (row-major) and its update state (lazy residual or shadow
        copy, momentum velocity, Adam's moments) and exponent words."""
        h = hashlib.sha256()
        for w in self.params():
            h.update(w.tobytes())
        for p, x, n in self.layout.param_blocks():
            if x != "W":
                h.update(self.m.read_dram(self.layout.dram[p.key(x)], n))
        return h.hexdigest()

    def float_init(self) -> list[np.ndarray]:
        """The initial parameters as float32 values (for the float reference trainer)."""
        return [w.astype(np.float32) * np.float32(2.0**p.exp)
                for w, p in zip(self.params0, self.layout.params, strict=True)]

    # ------------------------------------------------------------------ checkpoints
    def host_state(self) -> dict[str, Any]:
        """The driver's own state (JSON-ready): with the machine state it is everything a
        resumed run needs."""
        return {
            "epoch": self.epoch,
            "loaded": self.loaded,
            "in_epoch": self.in_epoch,
            "epoch_start_counts": self.epoch_start_counts.tolist()
            if self.in_epoch else None,
            "history": [dataclasses.asdict(h) for h in self.history],
        }

    def set_host_state(self, st: Any, file: str = "<checkpoint>") -> None:
        """Restore :meth:`host_state`; a malformed document (a missing field, a value of the
        wrong type or shape, an epoch outside the run) raises CheckpointError."""
        try:
            if not isinstance(st, dict):
                raise ValueError(f"host state is {type(st).__name__}, not an object")
            epoch, loaded, in_epoch = st["epoch"], st["loaded"], st["in_epoch"]
            if not (_is_int(epoch) and isinstance(loaded, bool) and isinstance(in_epoch, bool)):
                raise ValueError("epoch must be an integer, loaded and in_epoch booleans")
            if not 0 <= epoch <= self.spec.epochs:
                raise ValueError(f"epoch {epoch} outside 0..{self.spec.epochs}")
            if in_epoch and epoch >= self.spec.epochs:
                raise ValueError(f"mid-epoch at epoch {epoch} of {self.spec.epochs}")
            start = self.epoch_start_counts
            if in_epoch:
                rows = st["epoch_start_counts"]
                if not (isinstance(rows, list) and len(rows) == self.m.counts.shape[0]
                        and all(isinstance(r, list) and len(r) == self.m.counts.shape[1]
                                and all(_is_int(v) and 0 <= v < 1 << 63 for v in r)
                                for r in rows)):
                    raise ValueError("epoch_start_counts is not a matrix of counters of this "
                                     f"program's shape {self.m.counts.shape}")
                start = np.array(rows, dtype=np.int64)
            history = st["history"]
            if not isinstance(history, list) or len(history) != epoch:
                raise ValueError(f"history must list the {epoch} finished epochs")
            history = [_epoch_stats(h, i) for i, h in enumerate(history)]
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"training driver state is malformed: {e!r}", file) from None
        self.epoch, self.loaded, self.in_epoch = epoch, loaded, in_epoch
        self.log_epoch = epoch
        self.epoch_start_counts = start
        self.history = history

    # ------------------------------------------------------------------ reports
    def breakdown(self) -> list[dict[str, Any]]:
        """Counters and energy per (layer, phase), over everything run so far."""
        groups: dict[tuple[str, str], np.ndarray] = {}
        for pc, key in enumerate(self.pc_keys):
            row = self.m.counts[pc]
            groups[key] = groups.get(key, 0) + row
        out = []
        for (layer, phase), c in sorted(groups.items()):
            en = energy_breakdown(c, self.cfg)
            d = {"layer": layer, "phase": phase}
            d.update({n: int(c[i]) for i, n in enumerate(COUNTERS)})
            d["energy_pj"] = float(sum(en.values()))
            d.update({f"energy_{k}_pj": v for k, v in en.items()})
            d["assumed_energy_pj"] = float(sum(assumed_breakdown(c, self.cfg).values()))
            d.update(derived(c, self.cfg))
            out.append(d)
        return out


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _epoch_stats(h: Any, i: int) -> EpochStats:
    """One finished epoch's statistics from a checkpoint, every field of its type."""
    if not isinstance(h, dict) or set(h) != {f.name for f in dataclasses.fields(EpochStats)}:
        raise ValueError(f"history[{i}] is not an epoch record")
    floats = ("lr", "loss", "train_accuracy", "roundoff_mean_abs", "roundoff_mean",
              "roundoff_max_abs", "y_zero_fraction")
    ok = (h["epoch"] == i and _is_int(h["epoch"]) and all(_is_num(h[k]) for k in floats)
          and (h["validation_accuracy"] is None or _is_num(h["validation_accuracy"]))
          and isinstance(h["sparsity"], list) and all(_is_num(v) for v in h["sparsity"])
          and isinstance(h["counters"], dict)
          and all(k in IDX and _is_int(v) for k, v in h["counters"].items())
          and isinstance(h["param_exponents"], list)
          and all(_is_int(v) for v in h["param_exponents"]))
    if not ok:
        raise ValueError(f"history[{i}] has a field of the wrong type")
    return EpochStats(**h)


def train(spec: ModelSpec, cfg: Config, data: Dataset, on_epoch=None,
          datapath: str = "fast") -> tuple[ChipTrainer, float]:
    """Train for ``spec.epochs`` epochs (after :func:`check_training`); returns the trainer and
    the test accuracy (at the best-validation epoch when the data has a validation split)."""
    tr = ChipTrainer(spec, cfg, data, datapath=datapath)
    for _ in range(spec.epochs):
        st = tr.train_epoch()
        if on_epoch is not None:
            on_epoch(tr, st)
    return tr, tr.test_accuracy()

