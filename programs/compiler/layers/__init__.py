"""Layer lowerings, one module per layer kind (adding a kind adds a module and a line here)."""

from programs.compiler.layers.base import Lowering
from programs.compiler.layers.conv import Conv
from programs.compiler.layers.dense import Dense
from programs.compiler.layers.flatten import Flatten
from programs.compiler.layers.pool import Pool
from programs.compiler.layout import Grad, Param

LOWERINGS: dict[str, type[Lowering]] = {
    "dense": Dense,
    "conv": Conv,
    "maxpool": Pool,
    "avgpool": Pool,
    "flatten": Flatten,
}

__all__ = ["LOWERINGS", "Grad", "Lowering", "Param"]
