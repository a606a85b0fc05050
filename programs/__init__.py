"""Everything that builds on the lpemu machine, by role:

- ``compiler/``    model specs (``spec.py``) and the compiler that lowers them to firmware;
- ``host/``        the host driver that trains on the chip, datasets, the float32 reference;
- ``cli/``         the ``lpemu`` command line, reports and profiles;
- ``experiments/`` reproductions of the source papers' claims (``lpemu experiment``);
- ``verify/``      the differential tester (reference vs fast datapath vs JIT off);
- ``bench/``       the ``lpemu bench`` speed suite;
- ``examples/``    hand-written assembly programs and their data.

Imports flow one way: ``isa`` -> ``emulator`` -> ``programs``.
"""
