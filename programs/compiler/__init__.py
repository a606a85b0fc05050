"""Model specs and the compiler that turns them into firmware for the lpemu machine."""

from programs.compiler.firmware import Layout, compile_model, plan
from programs.compiler.spec import ModelSpec, load_model, spec_from_dict, validate, with_overrides

__all__ = [
    "Layout",
    "ModelSpec",
    "compile_model",
    "load_model",
    "plan",
    "spec_from_dict",
    "validate",
    "with_overrides",
]
