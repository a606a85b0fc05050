"""``lpemu experiment NAME``: the source papers' claims reproduced on the emulator."""

from programs.experiments.paper import EXPERIMENTS, chip_run, classifier_spec, run_experiment

__all__ = ["EXPERIMENTS", "chip_run", "classifier_spec", "run_experiment"]
