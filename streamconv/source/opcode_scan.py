"""A pickle's opcodes walked before it is unpickled, to bound what unpickling could build.

CPython's unpickler builds whatever the opcodes say, and some of it cannot be undone safely: a
million nested one-element tuples take 1 MB of pickle and crash the interpreter with a
segmentation fault once one is hashed as a dict key (CPython 3.11, tuple hashing recurses in C
without a depth check). A file of tensors is shallow (dict -> rebuild call -> argument tuple ->
persistent id: about five levels) and small (a few dozen opcodes per tensor), so this walks the
opcodes with pickletools, keeping only each stack item's nesting depth, and refuses a pickle
that nests deeper than _MAX_DEPTH or has more than _MAX_OPCODES opcodes. Nothing is built.
"""

from __future__ import annotations

import pickletools


class UnsafePickle(Exception):
    """The pickle is too large, too deep or malformed to unpickle; the reason says which."""


_MAX_DEPTH = 64
# A 405B rank file's data.pkl has ~30k opcodes (~25 per tensor); Llama 4's have more tensors,
# still far below this.
_MAX_OPCODES = 2_000_000
_MARK = -1
# Opcodes that pop everything down to the last MARK and push one container of it.
_BUILD_FROM_MARK = frozenset({"TUPLE", "LIST", "DICT", "FROZENSET", "INST", "OBJ"})
# Opcodes that pop everything down to the last MARK into the container below it.
_ADD_FROM_MARK = frozenset({"APPENDS", "SETITEMS", "ADDITEMS"})
_TUPLE_N = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
# Opcodes that pop n items and push one object made of them (calls and lookups).
_COMBINE = {"REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3, "STACK_GLOBAL": 2, "BINPERSID": 1}
_NO_STACK_EFFECT = frozenset({"PROTO", "FRAME", "STOP", "NEXT_BUFFER", "READONLY_BUFFER"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})


def _pop_to_mark(stack: list[int]) -> list[int]:
    items: list[int] = []
    while (item := stack.pop()) != _MARK:
        items.append(item)
    return items


def _step(name: str, arg: object, stack: list[int], memo: dict[object, int]) -> None:
    """One opcode's effect on the depths of the stack's items."""
    if name == "MARK":
        stack.append(_MARK)
    elif name in _BUILD_FROM_MARK:
        stack.append(max(_pop_to_mark(stack), default=0) + 1)
    elif name in _ADD_FROM_MARK:
        items = _pop_to_mark(stack)
        stack[-1] = max(stack[-1], max(items, default=0) + 1)
    elif name in _TUPLE_N:
        items = [stack.pop() for _ in range(_TUPLE_N[name])]
        stack.append(max(items) + 1)
    elif name in _COMBINE:
        items = [stack.pop() for _ in range(_COMBINE[name])]
        stack.append(max(items) + 1)
    elif name in ("APPEND", "BUILD"):
        item = stack.pop()
        stack[-1] = max(stack[-1], item + 1)
    elif name == "SETITEM":
        value, key = stack.pop(), stack.pop()
        stack[-1] = max(stack[-1], key + 1, value + 1)
    elif name in _MEMO_PUT:
        memo[arg] = stack[-1]
    elif name == "MEMOIZE":
        memo[len(memo)] = stack[-1]
    elif name in _MEMO_GET:
        stack.append(memo.get(arg, 0))
    elif name == "POP":
        stack.pop()
    elif name == "POP_MARK":
        _pop_to_mark(stack)
    elif name == "DUP":
        stack.append(stack[-1])
    elif name not in _NO_STACK_EFFECT:
        stack.append(0)  # a constant, an empty container, a global or an extension code


def scan_opcodes(data: bytes) -> None:
    """Raise UnsafePickle unless the pickle is small and shallow enough to unpickle safely."""
    stack: list[int] = []
    memo: dict[object, int] = {}
    try:
        for count, (opcode, arg, _pos) in enumerate(pickletools.genops(data)):
            if count >= _MAX_OPCODES:
                raise UnsafePickle(f"its data.pkl has more than {_MAX_OPCODES} opcodes, far "
                                   "more than a file of tensors needs")
            _step(opcode.name, arg, stack, memo)
            if stack and stack[-1] > _MAX_DEPTH:
                raise UnsafePickle(f"its data.pkl nests objects more than {_MAX_DEPTH} deep, "
                                   "which a file of tensors never does")
    except (ValueError, IndexError) as e:  # genops on bad bytes, a pop from an empty stack
        raise UnsafePickle("its data.pkl is not a well-formed pickle") from e
