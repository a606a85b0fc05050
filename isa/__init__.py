"""lpemu instruction set: one declarative table and everything derived from it."""

from isa.asm import assemble, disassemble
from isa.encoding import Program, decode, encode, from_bytes, read_program, to_bytes
from isa.spec import BY_MNEMONIC, BY_OPCODE, TABLE, Field, Instr

__all__ = [
    "BY_MNEMONIC",
    "BY_OPCODE",
    "TABLE",
    "Field",
    "Instr",
    "Program",
    "assemble",
    "decode",
    "disassemble",
    "encode",
    "from_bytes",
    "read_program",
    "to_bytes",
]
