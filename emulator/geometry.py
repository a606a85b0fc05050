"""Image geometry of the convolution and pooling instructions (conv, vmaxpool, vsumpool,
vunpool): the fields of the four geometry registers and what derives from them (``docs/isa.md``,
"Geometry registers"). Image tensors are NHWC, row-major.

:func:`window_view` is the im2col view as a numpy strided view of a zero-padded image: shape
``(N, OH, OW, KH, KW, C)``, so ``view.reshape(M, K)`` is ``col(X)`` (``reshape`` copies).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# conv's mode field (isa.spec.CONV_MODES order)
CONV_FWD, CONV_WGRAD, CONV_DGRAD = range(3)


class Geometry(NamedTuple):
    """Batch, channels, input size, window, strides, padding per side, filters."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    f: int

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.ph - self.kh) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.pw - self.kw) // self.sw + 1

    @property
    def m(self) -> int:
        """Output pixels N OH OW (rows of the im2col view)."""
        return self.n * self.oh * self.ow

    @property
    def k(self) -> int:
        """Window elements KH KW C (columns of the im2col view)."""
        return self.kh * self.kw * self.c

    @property
    def inputs(self) -> int:
        """Input elements N H W C."""
        return self.n * self.h * self.w * self.c

    @property
    def padded(self) -> tuple[int, int, int, int]:
        """Shape of the zero-padded input: (N, H + 2 PH, W + 2 PW, C)."""
        return self.n, self.h + 2 * self.ph, self.w + 2 * self.pw, self.c


def unpack(rsz: int, rhw: int, rkw: int, rpf: int) -> Geometry:
    """The fields of the four geometry register values (each already in [0, 2**32))."""
    return Geometry(
        n=rsz & 0xFFFF, c=rsz >> 16 & 0xFFFF, h=rhw & 0xFFFF, w=rhw >> 16 & 0xFFFF,
        kh=rkw & 0xFF, kw=rkw >> 8 & 0xFF, sh=rkw >> 16 & 0xFF, sw=rkw >> 24 & 0xFF,
        ph=rpf & 0xFF, pw=rpf >> 8 & 0xFF, f=rpf >> 16 & 0xFFFF,
    )


def pack(g: Geometry) -> tuple[int, int, int, int]:
    """The four register values (rsz, rhw, rkw, rpf) that encode ``g``."""
    return (g.n | g.c << 16, g.h | g.w << 16, g.kh | g.kw << 8 | g.sh << 16 | g.sw << 24,
            g.ph | g.pw << 8 | g.f << 16)


def window_view(xp: np.ndarray, g: Geometry) -> np.ndarray:
    """The (N, OH, OW, KH, KW, C) windows of a C-contiguous padded image ``xp`` (shape
    :attr:`Geometry.padded`): ``view[n, oh, ow, kh, kw, c] = xp[n, oh SH + kh, ow SW + kw, c]``.
    A read-only view; nothing is copied."""
    sn, sh_, sw_, sc = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(g.n, g.oh, g.ow, g.kh, g.kw, g.c),
        strides=(sn, g.sh * sh_, g.sw * sw_, sh_, sw_, sc), writeable=False)


def padded(x: np.ndarray, g: Geometry, dtype: type, fill: int = 0,
           out: np.ndarray | None = None) -> np.ndarray:
    """``x`` ([N,H,W,C] in any layout that reshapes) placed in a (N, H+2PH, W+2PW, C) array of
    ``dtype`` whose border is ``fill``; into ``out`` when given (C-contiguous, that shape)."""
    xp = np.empty(g.padded, dtype) if out is None else out
    if g.ph or g.pw:
        if g.ph:
            xp[:, : g.ph] = fill
            xp[:, g.ph + g.h :] = fill
        if g.pw:
            xp[:, :, : g.pw] = fill
            xp[:, :, g.pw + g.w :] = fill
    xp[:, g.ph : g.ph + g.h, g.pw : g.pw + g.w] = x.reshape(g.n, g.h, g.w, g.c)
    return xp
