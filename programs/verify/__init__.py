"""Verification tools: the differential tester (``python -m programs.verify.difftest``)."""
