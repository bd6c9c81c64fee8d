"""A restricted pickle interpreter: the object tree of an untrusted pickle, and nothing else.

``pickle.load`` calls whatever the stream names (``os.system`` included) and the C
unpickler trusts sizes and memo indices from the stream (``LONG_BINPUT 0x7fffffff``
allocates and clears 16 GB). This module interprets the opcodes itself, decoded by
:func:`pickletools.genops`, and never imports or calls anything named by the stream:

- ``GLOBAL``/``STACK_GLOBAL`` go to the caller's ``resolver.find_global``; a name it does
  not know becomes an inert :class:`Placeholder`. Calling a placeholder (``REDUCE``,
  ``NEWOBJ``, ``INST``, ``OBJ``) gives another placeholder that only records the
  arguments; ``BUILD`` on it records the state. Everything else the resolver returned is
  called through ``resolver.call``, which validates the arguments itself.
- Only lists, tuples, dicts, sets and frozensets of plain values are built. Dict keys and
  set members must be strings, bytes, None, booleans, 32-bit ints or flat tuples of at most
  16 of those: other keys (floats, huge ints, crafted tuples) can be chosen to collide in a
  hash table and make insertion quadratic, and a tuple key is hashed (and checked) whole on
  every insertion, so a nested one shared through the memo (``t = (t, t)`` 40 times, 431
  bytes) would cost 2**40 steps.
- Limits: at most ``max_ops`` opcodes (which bounds time, memo size and object count,
  since every opcode creates at most one object), at most ``max_depth`` nested marks or
  containers (deeper trees overflow the C stack of ``hash`` and exhaust Python's recursion
  in any consumer); extension codes and out-of-band buffers are refused.

Any failure raises :class:`CheckpointError` naming the position; the low-level error, if
any, is chained.
"""

from __future__ import annotations

import io
import itertools
import pickletools
from collections.abc import Iterator
from typing import Any, Protocol

from pf_keras.weights.errors import CheckpointError, describe, quote

_KEY_INT_LIMIT = 2**31  # dict keys and set members: |int| below this (see the module docstring)
_KEY_TUPLE_LIMIT = 16  # dict keys and set members: flat tuples of at most this many scalars


class Placeholder:
    """Stands in for a global the reader does not resolve (a class or a function), or a call of one.

    ``qualname`` is "module.name" from the file; ``args``/``kwargs`` are the pickled
    arguments of a call (None for the bare global) and ``state`` what ``BUILD`` set. Nothing
    of the original implementation is imported or run.
    """

    __slots__ = ("args", "kwargs", "qualname", "state")  # a pickle may hold many: keep them small

    def __init__(self, qualname: str, args: tuple | None = None, kwargs: dict | None = None):
        self.qualname = qualname
        self.args = args
        self.kwargs = kwargs
        self.state = None

    def __repr__(self) -> str:
        return f"<unread {self.qualname[:80]}>"


class Resolver(Protocol):
    """What a caller of :func:`load` supplies: the meaning of globals, calls and persistent ids."""

    def find_global(self, module: str, name: str) -> Any:
        """A stand-in for ``module.name``, or None to make it a :class:`Placeholder`."""

    def call(self, func: Any, args: tuple, kwargs: dict | None, key: str | None) -> Any:
        """The result of calling a resolved global; raises CheckpointError for a non-callable or bad arguments.

        ``key`` is the nearest dict key below the call on the stack (for error messages).
        """

    def persistent_load(self, pid: Any, key: str | None) -> Any:
        """The object a persistent id names; raises CheckpointError for an id of the wrong shape.

        ``key`` is as for :meth:`call`.
        """


def load(data: bytes, resolver: Resolver, *, where: str, max_ops: int, max_depth: int) -> Any:
    """Interprets the pickle ``data`` under the rules of the module docstring.

    Args:
        data: bytes. The pickle stream (the first STOP ends it).
        resolver: Resolver. Globals, calls and persistent ids.
        where: str. Names the stream in error messages (e.g. "ckpt.pth: member 'a/data.pkl'").
        max_ops: int. Opcode limit.
        max_depth: int. Nesting limit of marks and containers.

    Returns:
        The unpickled object.

    Raises:
        CheckpointError: for anything malformed, refused or over a limit.
    """
    machine = _Machine(resolver, where, max_depth)
    position = 0
    try:
        for count, (opcode, arg, position) in enumerate(pickletools.genops(io.BytesIO(data)), 1):
            if count > max_ops:
                raise CheckpointError(f"{where}: more than {max_ops} pickle opcodes (limit)")
            handler = _HANDLERS.get(opcode.name)
            if handler is None:
                raise CheckpointError(f"{where}: pickle opcode {opcode.name} at byte {position} is not allowed")
            if handler(machine, arg):
                break
        else:
            raise CheckpointError(f"{where}: pickle ends without STOP")
        result = machine.result
        _check_depth(result, max_depth, where)
        return result
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - the trust boundary: every low-level error becomes one line
        raise CheckpointError(
            f"{where}: malformed or truncated pickle at byte {position or 0} ({describe(error)})"
        ) from error


class _Machine:
    def __init__(self, resolver: Resolver, where: str, max_depth: int):
        self.resolver = resolver
        self.where = where
        self.max_depth = max_depth
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.depths: dict[int, int] = {}  # id -> nesting depth of every tuple and frozenset built
        self.keep: list[Any] = []  # keeps those objects alive, so their ids stay unique
        self.result: Any = None

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: {problem}")

    # -- stack and marks --------------------------------------------------------------------
    def mark(self) -> None:
        if len(self.marks) >= self.max_depth:
            raise self.fail(f"pickle nests more than {self.max_depth} marks (limit)")
        self.marks.append(self.stack)
        self.stack = []

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise self.fail("pickle pops a mark that was never set")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def pop(self) -> Any:
        if not self.stack:
            raise self.fail("pickle pops from an empty stack")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise self.fail("pickle reads an empty stack")
        return self.stack[-1]

    def nearby_key(self) -> str | None:
        """The dict key a value being built will be stored under (torch writes the key first).

        Looks at most 8 items down the stack, across marks, past callables only.
        """
        below = itertools.chain(reversed(self.stack), *(reversed(segment) for segment in reversed(self.marks)))
        for item in itertools.islice(below, 8):
            if isinstance(item, str):
                return item
            if not _is_global(item):
                return None
        return None

    # -- containers -------------------------------------------------------------------------
    def immutable(self, container: tuple | frozenset) -> tuple | frozenset:
        depth = 1 + max((self.depths.get(id(item), 0) for item in container), default=0)
        if depth > self.max_depth:
            raise self.fail(f"pickle nests tuples more than {self.max_depth} deep (limit)")
        self.depths[id(container)] = depth
        self.keep.append(container)
        return container

    def hashable(self, value: Any, what: str) -> Any:
        if not _safe_key(value):
            raise self.fail(f"{what} {quote(value)} is not a string, bytes, None, bool, 32-bit int or a flat tuple "
                            f"of at most {_KEY_TUPLE_LIMIT} of those")
        return value

    def set_items(self, target: Any, items: list[Any]) -> None:
        if not isinstance(target, dict):
            raise self.fail(f"pickle sets items on a {type(target).__name__}, not a dict")
        if len(items) % 2:
            raise self.fail("pickle sets a key without a value")
        for i in range(0, len(items), 2):
            target[self.hashable(items[i], "dict key")] = items[i + 1]

    # -- calls ------------------------------------------------------------------------------
    def call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        if not isinstance(args, tuple) or (kwargs is not None and not isinstance(kwargs, dict)):
            raise self.fail(f"pickle calls {quote(func)} with arguments of type {type(args).__name__}")
        if isinstance(func, Placeholder):
            if func.args is not None:
                raise self.fail(f"pickle calls the result of a call of {func.qualname[:80]}")
            return Placeholder(func.qualname, args, kwargs)
        return self.resolver.call(func, args, kwargs, self.nearby_key())

    def find_global(self, module: Any, name: Any) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise self.fail("pickle names a global with non-string module or name")
        found = self.resolver.find_global(module, name)
        return Placeholder(f"{module}.{name}") if found is None else found


def _is_global(item: Any) -> bool:
    return not isinstance(item, (str, bytes, int, float, bool, type(None), tuple, list, dict, set, frozenset))


def _safe_scalar_key(value: Any) -> bool:
    if isinstance(value, (str, bytes, bool, type(None))):
        return True
    return isinstance(value, int) and -_KEY_INT_LIMIT < value < _KEY_INT_LIMIT


def _safe_key(value: Any) -> bool:
    if isinstance(value, tuple):  # flat and short: hashing it costs a bounded number of steps
        return len(value) <= _KEY_TUPLE_LIMIT and all(_safe_scalar_key(item) for item in value)
    return _safe_scalar_key(value)


def _children(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield value
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from obj
    elif isinstance(obj, Placeholder):
        yield from (obj.args or ())
        if obj.kwargs:
            yield from obj.kwargs.values()
        if obj.state is not None:
            yield obj.state


def _check_depth(root: Any, max_depth: int, where: str) -> None:
    """Refuses object trees nested deeper than ``max_depth`` (iteratively, cycles allowed)."""
    containers = (dict, list, tuple, set, frozenset, Placeholder)
    if not isinstance(root, containers):
        return
    done: dict[int, int] = {}
    on_path: set[int] = set()
    path: list[tuple[Any, Iterator[Any], int]] = [(root, _children(root), 0)]
    on_path.add(id(root))
    while path:
        obj, children, deepest = path[-1]
        for child in children:
            if not isinstance(child, containers) or id(child) in on_path:
                continue
            if id(child) in done:
                deepest = max(deepest, done[id(child)])
                if deepest >= max_depth:
                    raise CheckpointError(f"{where}: object tree nested more than {max_depth} deep (limit)")
                continue
            if len(path) >= max_depth:
                raise CheckpointError(f"{where}: object tree nested more than {max_depth} deep (limit)")
            path[-1] = (obj, children, deepest)
            path.append((child, _children(child), 0))
            on_path.add(id(child))
            break
        else:
            path.pop()
            on_path.discard(id(obj))
            done[id(obj)] = deepest + 1
            if path:
                parent, parent_children, parent_deepest = path[-1]
                path[-1] = (parent, parent_children, max(parent_deepest, deepest + 1))


# -- opcode handlers: (machine, arg) -> True at STOP ------------------------------------------


def _push(machine: _Machine, arg: Any) -> None:
    machine.stack.append(arg)


def _push_bytes(machine: _Machine, arg: Any) -> None:
    machine.stack.append(bytes(arg))


def _push_const(value: Any):
    def handler(machine: _Machine, arg: Any) -> None:
        machine.stack.append(value)

    return handler


def _stop(machine: _Machine, arg: Any) -> bool:
    machine.result = machine.pop()
    return True


def _proto(machine: _Machine, arg: Any) -> None:
    if not 0 <= arg <= 5:
        raise machine.fail(f"unsupported pickle protocol {quote(arg)}")


def _nothing(machine: _Machine, arg: Any) -> None:
    """FRAME: genops already reads through frames."""


def _empty_list(machine: _Machine, arg: Any) -> None:
    machine.stack.append([])


def _empty_dict(machine: _Machine, arg: Any) -> None:
    machine.stack.append({})


def _empty_set(machine: _Machine, arg: Any) -> None:
    machine.stack.append(set())


def _append(machine: _Machine, arg: Any) -> None:
    value = machine.pop()
    target = machine.top()
    if not isinstance(target, list):
        raise machine.fail(f"pickle appends to a {type(target).__name__}, not a list")
    target.append(value)


def _appends(machine: _Machine, arg: Any) -> None:
    items = machine.pop_mark()
    target = machine.top()
    if not isinstance(target, list):
        raise machine.fail(f"pickle appends to a {type(target).__name__}, not a list")
    target.extend(items)


def _list(machine: _Machine, arg: Any) -> None:
    items = machine.pop_mark()
    machine.stack.append(items)


def _tuple(machine: _Machine, arg: Any) -> None:
    items = machine.immutable(tuple(machine.pop_mark()))
    machine.stack.append(items)  # after pop_mark: it replaces machine.stack


def _tuple_n(n: int):
    def handler(machine: _Machine, arg: Any) -> None:
        if len(machine.stack) < n:
            raise machine.fail("pickle builds a tuple from an empty stack")
        items = tuple(machine.stack[-n:])
        del machine.stack[-n:]
        machine.stack.append(machine.immutable(items))

    return handler


def _dict(machine: _Machine, arg: Any) -> None:
    items = machine.pop_mark()
    target: dict = {}
    machine.set_items(target, items)
    machine.stack.append(target)


def _setitem(machine: _Machine, arg: Any) -> None:
    value = machine.pop()
    key = machine.pop()
    machine.set_items(machine.top(), [key, value])


def _setitems(machine: _Machine, arg: Any) -> None:
    items = machine.pop_mark()
    machine.set_items(machine.top(), items)


def _additems(machine: _Machine, arg: Any) -> None:
    items = machine.pop_mark()
    target = machine.top()
    if not isinstance(target, set):
        raise machine.fail(f"pickle adds items to a {type(target).__name__}, not a set")
    target.update(machine.hashable(item, "set member") for item in items)


def _frozenset(machine: _Machine, arg: Any) -> None:
    items = machine.pop_mark()
    machine.stack.append(machine.immutable(frozenset(machine.hashable(item, "set member") for item in items)))


def _pop(machine: _Machine, arg: Any) -> None:
    if machine.stack:
        machine.stack.pop()
    else:
        machine.pop_mark()  # POP at an empty stack discards the mark, as pickle does


def _dup(machine: _Machine, arg: Any) -> None:
    machine.stack.append(machine.top())


def _mark(machine: _Machine, arg: Any) -> None:
    machine.mark()


def _pop_mark(machine: _Machine, arg: Any) -> None:
    machine.pop_mark()


def _get(machine: _Machine, arg: Any) -> None:
    if arg not in machine.memo:
        raise machine.fail(f"pickle reads memo entry {quote(arg)}, which was never stored")
    machine.stack.append(machine.memo[arg])


def _put(machine: _Machine, arg: Any) -> None:
    if not isinstance(arg, int) or arg < 0:
        raise machine.fail(f"pickle stores memo entry {quote(arg)}")
    machine.memo[arg] = machine.top()


def _memoize(machine: _Machine, arg: Any) -> None:
    machine.memo[len(machine.memo)] = machine.top()


def _global(machine: _Machine, arg: Any) -> None:
    module, _, name = str(arg).partition(" ")
    machine.stack.append(machine.find_global(module, name))


def _stack_global(machine: _Machine, arg: Any) -> None:
    name = machine.pop()
    module = machine.pop()
    machine.stack.append(machine.find_global(module, name))


def _reduce(machine: _Machine, arg: Any) -> None:
    args = machine.pop()
    func = machine.pop()
    machine.stack.append(machine.call(func, args))


def _newobj(machine: _Machine, arg: Any) -> None:
    args = machine.pop()
    cls = machine.pop()
    machine.stack.append(machine.call(cls, args))


def _newobj_ex(machine: _Machine, arg: Any) -> None:
    kwargs = machine.pop()
    args = machine.pop()
    cls = machine.pop()
    machine.stack.append(machine.call(cls, args, kwargs))


def _inst(machine: _Machine, arg: Any) -> None:
    module, _, name = str(arg).partition(" ")
    args = tuple(machine.pop_mark())
    machine.stack.append(machine.call(machine.find_global(module, name), args))


def _obj(machine: _Machine, arg: Any) -> None:
    items = machine.pop_mark()
    if not items:
        raise machine.fail("pickle OBJ without a class")
    machine.stack.append(machine.call(items[0], tuple(items[1:])))


def _build(machine: _Machine, arg: Any) -> None:
    state = machine.pop()
    target = machine.top()
    if isinstance(target, Placeholder) and target.args is not None:
        target.state = state
    elif isinstance(target, dict):
        pass  # an OrderedDict's attributes (torch's state-dict `_metadata`): not needed, dropped
    else:
        raise machine.fail(f"pickle sets the state of a {type(target).__name__}")


def _persistent(machine: _Machine, arg: Any) -> None:
    pid = machine.pop()
    machine.stack.append(machine.resolver.persistent_load(pid, machine.nearby_key()))


def _persistent_text(machine: _Machine, arg: Any) -> None:
    machine.stack.append(machine.resolver.persistent_load(arg, machine.nearby_key()))


_HANDLERS = {
    **dict.fromkeys(("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"), _push),
    **dict.fromkeys(("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE"), _push),
    **dict.fromkeys(("BINUNICODE", "BINUNICODE8"), _push),
    **dict.fromkeys(("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"), _push_bytes),
    "NONE": _push_const(None),
    "NEWTRUE": _push_const(True),
    "NEWFALSE": _push_const(False),
    "EMPTY_TUPLE": _push_const(()),
    "PROTO": _proto,
    "FRAME": _nothing,
    "STOP": _stop,
    "EMPTY_LIST": _empty_list,
    "APPEND": _append,
    "APPENDS": _appends,
    "LIST": _list,
    "TUPLE": _tuple,
    "TUPLE1": _tuple_n(1),
    "TUPLE2": _tuple_n(2),
    "TUPLE3": _tuple_n(3),
    "EMPTY_DICT": _empty_dict,
    "DICT": _dict,
    "SETITEM": _setitem,
    "SETITEMS": _setitems,
    "EMPTY_SET": _empty_set,
    "ADDITEMS": _additems,
    "FROZENSET": _frozenset,
    "POP": _pop,
    "DUP": _dup,
    "MARK": _mark,
    "POP_MARK": _pop_mark,
    **dict.fromkeys(("GET", "BINGET", "LONG_BINGET"), _get),
    **dict.fromkeys(("PUT", "BINPUT", "LONG_BINPUT"), _put),
    "MEMOIZE": _memoize,
    "GLOBAL": _global,
    "STACK_GLOBAL": _stack_global,
    "REDUCE": _reduce,
    "NEWOBJ": _newobj,
    "NEWOBJ_EX": _newobj_ex,
    "INST": _inst,
    "OBJ": _obj,
    "BUILD": _build,
    "BINPERSID": _persistent,
    "PERSID": _persistent_text,
}
# Not handled, hence refused: EXT1/EXT2/EXT4 (copyreg's extension registry) and
# NEXT_BUFFER/READONLY_BUFFER (out-of-band buffers).
