"""Reading untrusted weight files with bounded memory and without running anything stored in them.

Three readers, each checking what a file declares before acting on it:

- :func:`check_zip_archive`: a zip checkpoint's directory (entry count, and
  every entry's *uncompressed* size) within bounds before torch opens it. A
  small file whose one deflated storage inflates to gigabytes is refused
  here, having cost nothing (README.md, Reliability: checkpoint bombs).
- :class:`SafeUnpickler`: a pickle interpreter with an allow-list, for the
  pickles inside ``torch.save`` files (``torch.load(..., pickle_module=
  SAFE_PICKLE)``). It reads protocols 2 to 5 (torch's own weights-only
  unpickler stops at protocol 2's opcodes and refused a benign
  ``pickle_protocol=4`` file as holding Python objects); it resolves only the
  globals a state dict or training state needs (no class is constructed, no
  other callable is called); and it checks every storage's declared size
  against the file (the zip entry's size, or what is left of a legacy file)
  and :data:`~fan_edge.limits.MAX_CHECKPOINT_BYTES` before torch allocates it.
- :func:`read_safetensors`: the header's offsets and shapes checked (every
  span inside the file, sizes that match, the total within bounds) before a
  byte of tensor data is read, then each tensor read once into its own
  memory (no memory map, whose pages would count twice).

Every refusal is an exception with a one-line message;
:mod:`fan_edge.models.checkpoints` turns them into
:class:`~fan_edge.errors.CheckpointError`.
"""

from __future__ import annotations

import codecs
import json
import math
import pickle
import struct
import types
import warnings
from collections import Counter, OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..errors import CheckpointError
from ..limits import (
    MAX_ARCHIVE_ENTRIES, MAX_CHECKPOINT_BYTES, MAX_HEADER_BYTES, MAX_PICKLE_BYTES, MAX_PICKLE_MEMORY, describe,
)

MAX_PICKLE_ITEM = MAX_PICKLE_BYTES  # one string, bytes or integer inside a pickle
MAX_GLOBAL_LINE = 1024  # "module\n" or "name\n" of a protocol-2 GLOBAL
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that names or calls something outside the allow-list: it was refused before anything ran."""


class MalformedPickle(pickle.UnpicklingError):
    """A pickle that is truncated, inconsistent or uses opcodes a weights file never needs."""


# ---- zip checkpoints -----------------------------------------------------------------------------------------


def _zip_directory_size(fh: BinaryIO, file_size: int) -> tuple[int, int]:
    """Entry count and central-directory size from a zip's end record (zip64 included), before anything else is read."""
    tail_len = min(file_size, 22 + 65535)
    fh.seek(file_size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        raise CheckpointError("not a zip archive (no end-of-directory record)")
    _, _, _, _, entries, cd_size, _, _ = struct.unpack("<4s4H2LH", tail[at : at + 22])
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        locator_at = at - 20
        if locator_at < 0 or tail[locator_at : locator_at + 4] != _EOCD64_LOCATOR:
            raise CheckpointError("a zip64 archive without its zip64 locator")
        (record_offset,) = struct.unpack("<Q", tail[locator_at + 8 : locator_at + 16])
        if record_offset + 56 > file_size:
            raise CheckpointError("a zip64 end record outside the file")
        fh.seek(record_offset)
        record = fh.read(56)
        if len(record) < 56 or record[:4] != _EOCD64:
            raise CheckpointError("a damaged zip64 end record")
        entries, cd_size = struct.unpack("<QQ", record[32:48])
    return entries, cd_size


def check_zip_archive(path: str | Path, limit: int = MAX_CHECKPOINT_BYTES) -> dict[str, int]:
    """Uncompressed size of every record of a zip checkpoint (``data/0``..., the archive's top folder dropped).

    Refused, before any entry is decompressed: more than
    :data:`~fan_edge.limits.MAX_ARCHIVE_ENTRIES` entries, a pickle over
    :data:`~fan_edge.limits.MAX_PICKLE_BYTES`, or entries that together
    inflate to more than ``limit`` bytes. A zip's sizes are declared in its
    central directory; the readers (Python's and torch's) never write past
    them, so checking the declaration bounds the memory.
    """
    import zipfile

    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        entries, cd_size = _zip_directory_size(fh, size)
    if entries > MAX_ARCHIVE_ENTRIES or cd_size > MAX_ARCHIVE_ENTRIES * 1024:
        raise CheckpointError(f"a zip of {entries:,} entries ({cd_size:,}-byte directory), more than fan-edge reads "
                              f"({MAX_ARCHIVE_ENTRIES:,})")
    with zipfile.ZipFile(p) as zf:
        infos = zf.infolist()
    records: dict[str, int] = {}
    total = 0
    for info in infos:
        records[info.filename.split("/", 1)[-1]] = info.file_size
        if info.filename.endswith(".pkl"):  # pickles have their own bound; everything else counts as tensor data
            if info.file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(f"its pickle {info.filename} inflates to {info.file_size:,} bytes, more than "
                                      f"fan-edge reads ({MAX_PICKLE_BYTES:,})")
        else:
            total += info.file_size
    if total > limit:
        raise CheckpointError(f"its {len(infos):,} entries inflate to {total:,} bytes, more than fan-edge reads ({limit:,}); "
                              "refused before decompressing anything")
    return records


# ---- the pickle interpreter ----------------------------------------------------------------------------------


class StorageBudget:
    """The tensor storages a torch pickle declares, checked one by one before torch allocates them.

    ``records`` (zip checkpoints): each storage must be exactly as large as
    its ``data/KEY`` entry. ``available`` (legacy checkpoints, whose storages
    follow the pickle in the same file): the declared total must fit in the
    file. Either way the total stays within ``limit``.
    """

    def __init__(self, limit: int = MAX_CHECKPOINT_BYTES, records: Mapping[str, int] | None = None,
                 available: int | None = None) -> None:
        self.limit = limit
        self.records = records
        self.available = available
        self.claimed: dict[str, int] = {}
        self.total = 0

    def claim(self, pid: Any) -> None:
        """Check a persistent id ``('storage', storage_type, key, location, numel[, view])`` before it is loaded."""
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] not in ("storage", b"storage"):
            raise RefusedPickle(f"persistent id {describe(pid)} is not a tensor storage")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if not isinstance(key, str) or isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise MalformedPickle(f"storage id {describe(pid)} has no key or element count")
        if isinstance(storage_type, torch.serialization.StorageType):
            item = storage_type.dtype.itemsize
        elif storage_type is torch.UntypedStorage:
            item = 1
        else:
            raise RefusedPickle(f"storage of type {describe(storage_type)}")
        nbytes = numel * item
        if key in self.claimed:
            if self.claimed[key] != nbytes:
                raise MalformedPickle(f"storage {describe(key)} is declared with two sizes")
            return
        if self.records is not None and self.records.get(f"data/{key}") != nbytes:
            raise CheckpointError(f"storage {describe(key)} declares {nbytes:,} bytes, its record holds "
                                  f"{self.records.get(f'data/{key}', 'none')}")
        self.total += nbytes
        if self.total > self.limit:
            raise CheckpointError(f"its tensors declare more than {self.limit:,} bytes (fan-edge's bound); "
                                  "refused before reading them")
        if self.available is not None and self.total > self.available:
            raise CheckpointError(f"its tensors declare {self.total:,} bytes, more than the file holds ({self.available:,})")
        self.claimed[key] = nbytes


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """torch's ``_rebuild_tensor_v2`` for plain tensors only: a storage, an offset and integer sizes and strides, no hooks.

    ``set_`` refuses a view that reaches past its storage, so no argument can
    make it read memory the file did not provide.
    """
    if not isinstance(storage, torch.storage.TypedStorage):
        raise MalformedPickle(f"a tensor whose storage is {describe(storage)}")
    ints = (storage_offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
    if ints is None or len(size) != len(stride) or not all(type(v) is int for v in ints) or storage_offset < 0:
        raise MalformedPickle("a tensor with malformed sizes, strides or offset")
    if type(requires_grad) is not bool or backward_hooks or metadata:
        raise RefusedPickle("a tensor with hooks or metadata")
    tensor = torch.empty((0,), dtype=storage.dtype)
    tensor.set_(storage._untyped_storage, storage_offset, size, stride)
    tensor.requires_grad_(requires_grad)
    return tensor


def _rebuild_tensor_v1(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> torch.nn.Parameter:
    if type(data) is not torch.Tensor or type(requires_grad) is not bool or backward_hooks:
        raise RefusedPickle("a parameter with hooks or of an unexpected type")
    return torch.nn.Parameter(data, requires_grad)


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode``, which protocol 2 uses for ``bytes``: text to bytes and nothing else."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle("_codecs.encode of something other than latin-1 text")
    return codecs.encode(text, "latin1")


def _bytearray(data: Any = b"") -> bytearray:
    """``bytearray`` of bytes only (``bytearray(10**10)`` would allocate 10 GB)."""
    if type(data) not in (bytes, bytearray):
        raise RefusedPickle("bytearray of something other than bytes")
    return bytearray(data)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Everything a state dict or a training state names: containers, tensor rebuilding, dtypes, storage types."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("collections", "Counter"): Counter,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v1,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("_codecs", "encode"): _encode,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): _bytearray,
    }
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
        elif name.endswith("Storage") and name not in ("TypedStorage", "UntypedStorage"):
            try:
                allowed[("torch", name)] = torch.serialization.StorageType(name)
            except (KeyError, AttributeError):
                pass
    allowed[("torch", "UntypedStorage")] = torch.UntypedStorage
    return allowed


_ALLOWED: dict[tuple[str, str], Any] | None = None
_CALLABLE = (OrderedDict, Counter, _rebuild_tensor, _rebuild_tensor_v1, _rebuild_parameter, torch.Size, torch.device,
             _encode, set, frozenset, _bytearray)


def allowed_globals() -> dict[tuple[str, str], Any]:
    """The ``(module, name)`` pairs a checkpoint's pickle may name, with what each resolves to."""
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = _allowed_globals()
    return _ALLOWED


class SafeUnpickler:
    """An allow-list pickle interpreter for torch checkpoints, protocols 2 to 5.

    Plain data (numbers, strings, bytes, tuples, lists, dicts, sets) is built
    as ``pickle`` builds it. Globals resolve through :meth:`find_class` (the
    allow-list of :func:`allowed_globals`); REDUCE calls only the allowed
    callables, each of which checks its arguments; BUILD only sets
    attributes of an OrderedDict (a state dict's ``_metadata``); classes are
    never constructed (NEWOBJ, INST, OBJ, extension codes are refused).
    Persistent ids must be tensor storages and go through ``budget`` before
    ``persistent_load`` (torch's, when loaded through ``torch.load``) reads
    them. Every size inside the pickle is bounded by
    :data:`MAX_PICKLE_ITEM`, so a declared length cannot make it allocate.
    """

    def __init__(self, file: BinaryIO, *, encoding: str = "utf-8", errors: str = "strict",
                 budget: StorageBudget | None = None, **_ignored: Any) -> None:
        self._read = file.read
        self._readline = file.readline
        self.encoding = encoding
        self.errors = errors
        self.budget = budget
        self.memo: dict[int, Any] = {}
        self.cost = 0  # bytes of Python objects built so far, roughly (see _run)

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object ``module.name``; anything else is refused (it is never imported)."""
        found = allowed_globals().get((module, name))
        if found is None:
            raise RefusedPickle(f"GLOBAL {module}.{name} is not allowed in a weights file")
        return found

    def persistent_load(self, pid: Any) -> Any:  # torch.load replaces it with its storage reader
        raise RefusedPickle("persistent ids outside torch.load")

    # -- reading ---------------------------------------------------------------------------------------------

    def _bytes(self, n: int) -> bytes:
        if n < 0 or n > MAX_PICKLE_ITEM:
            raise MalformedPickle(f"an item of {n:,} bytes, more than fan-edge reads ({MAX_PICKLE_ITEM:,})")
        self.cost += n
        data = self._read(n)
        if len(data) != n:
            raise MalformedPickle("pickle data was truncated")
        return data

    def _unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self._bytes(struct.calcsize(fmt)))[0]

    def _line(self) -> str:
        line = self._readline(MAX_GLOBAL_LINE)
        if not line.endswith(b"\n"):
            raise MalformedPickle("a GLOBAL name that is truncated or too long")
        return line[:-1].decode("utf-8")

    def _text(self, data: bytes) -> Any:
        return data if self.encoding == "bytes" else data.decode(self.encoding, self.errors)

    # -- the machine -----------------------------------------------------------------------------------------

    def load(self) -> Any:
        """The object the pickle describes; RefusedPickle or MalformedPickle (one line) otherwise."""
        try:
            return self._run()
        except pickle.UnpicklingError:
            raise
        except CheckpointError:
            raise
        except (IndexError, KeyError, TypeError, ValueError, struct.error, UnicodeDecodeError, OverflowError,
                AttributeError, RecursionError, EOFError) as exc:
            text = str(exc).splitlines()[0][:200] if str(exc).strip() else ""
            raise MalformedPickle(f"malformed pickle ({type(exc).__name__}{': ' + text if text else ''})") from None

    def _global(self, module: Any, name: Any) -> Any:
        if type(module) is not str or type(name) is not str:
            raise MalformedPickle("STACK_GLOBAL of non-strings")
        return self.find_class(module, name)

    def _run(self) -> Any:  # noqa: C901 - one branch per opcode, as in pickle.py
        stack: list[Any] = []
        marks: list[list[Any]] = []
        memo = self.memo
        proto = 0

        def pop_mark() -> list[Any]:  # rebinds ``stack``: call it before touching ``stack`` in the same statement
            nonlocal stack
            items = stack
            stack = marks.pop()
            return items

        while True:
            key = self._read(1)
            if not key:
                raise MalformedPickle("pickle data was truncated")
            op = key[0]
            # Every opcode builds at most one object: charge what the largest (a set, a dict, a tensor) costs, so that
            # a pickle of a million empty sets is refused rather than built.
            self.cost += 256
            if self.cost > MAX_PICKLE_MEMORY:
                raise CheckpointError(f"its pickle builds more than {MAX_PICKLE_MEMORY:,} bytes of Python objects "
                                      "(fan-edge's bound)")
            if op == 0x80:  # PROTO
                proto = self._bytes(1)[0]
                if proto > pickle.HIGHEST_PROTOCOL:
                    raise MalformedPickle(f"unsupported pickle protocol {proto}")
            elif op == 0x95:  # FRAME: a length hint only
                self._bytes(8)
            elif op == 0x2E:  # STOP
                if len(stack) != 1 or marks:
                    raise MalformedPickle("pickle stops with a malformed stack")
                return stack[0]
            elif op == 0x28:  # MARK
                marks.append(stack)
                stack = []
            elif op == 0x30:  # POP
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif op == 0x31:  # POP_MARK
                pop_mark()
            elif op == 0x32:  # DUP
                stack.append(stack[-1])
            # numbers and constants
            elif op == 0x4E:  # NONE
                stack.append(None)
            elif op == 0x88:  # NEWTRUE
                stack.append(True)
            elif op == 0x89:  # NEWFALSE
                stack.append(False)
            elif op == 0x4A:  # BININT
                stack.append(self._unpack("<i"))
            elif op == 0x4B:  # BININT1
                stack.append(self._bytes(1)[0])
            elif op == 0x4D:  # BININT2
                stack.append(self._unpack("<H"))
            elif op == 0x8A:  # LONG1
                stack.append(int.from_bytes(self._bytes(self._bytes(1)[0]), "little", signed=True))
            elif op == 0x8B:  # LONG4
                stack.append(int.from_bytes(self._bytes(self._unpack("<i")), "little", signed=True))
            elif op == 0x47:  # BINFLOAT
                stack.append(self._unpack(">d"))
            # strings and bytes
            elif op == 0x58:  # BINUNICODE
                stack.append(self._bytes(self._unpack("<I")).decode("utf-8", "surrogatepass"))
            elif op == 0x8C:  # SHORT_BINUNICODE
                stack.append(self._bytes(self._bytes(1)[0]).decode("utf-8", "surrogatepass"))
            elif op == 0x8D:  # BINUNICODE8
                stack.append(self._bytes(self._unpack("<Q")).decode("utf-8", "surrogatepass"))
            elif op == 0x54:  # BINSTRING (Python 2 str)
                stack.append(self._text(self._bytes(self._unpack("<i"))))
            elif op == 0x55:  # SHORT_BINSTRING
                stack.append(self._text(self._bytes(self._bytes(1)[0])))
            elif op == 0x42:  # BINBYTES
                stack.append(self._bytes(self._unpack("<I")))
            elif op == 0x43:  # SHORT_BINBYTES
                stack.append(self._bytes(self._bytes(1)[0]))
            elif op == 0x8E:  # BINBYTES8
                stack.append(self._bytes(self._unpack("<Q")))
            elif op == 0x96:  # BYTEARRAY8
                stack.append(bytearray(self._bytes(self._unpack("<Q"))))
            # containers
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(())
            elif op == 0x74:  # TUPLE
                items = pop_mark()
                stack.append(tuple(items))
            elif op == 0x85:  # TUPLE1
                stack[-1] = (stack[-1],)
            elif op == 0x86:  # TUPLE2
                stack[-2:] = [tuple(stack[-2:])] if len(stack) >= 2 else _underflow()
            elif op == 0x87:  # TUPLE3
                stack[-3:] = [tuple(stack[-3:])] if len(stack) >= 3 else _underflow()
            elif op == 0x5D:  # EMPTY_LIST
                stack.append([])
            elif op == 0x6C:  # LIST
                items = pop_mark()
                stack.append(items)
            elif op == 0x61:  # APPEND
                item = stack.pop()
                _expect(stack[-1], list, "APPEND").append(item)
            elif op == 0x65:  # APPENDS
                items = pop_mark()
                _expect(stack[-1], list, "APPENDS").extend(items)
            elif op == 0x7D:  # EMPTY_DICT
                stack.append({})
            elif op == 0x64:  # DICT
                items = pop_mark()
                stack.append(dict(zip(items[::2], items[1::2])))
            elif op == 0x73:  # SETITEM
                value = stack.pop()
                k = stack.pop()
                _expect(stack[-1], dict, "SETITEM")[k] = value
            elif op == 0x75:  # SETITEMS
                items = pop_mark()
                target = _expect(stack[-1], dict, "SETITEMS")
                if len(items) % 2:
                    raise MalformedPickle("SETITEMS with an odd number of items")
                for i in range(0, len(items), 2):
                    target[items[i]] = items[i + 1]
            elif op == 0x8F:  # EMPTY_SET
                stack.append(set())
            elif op == 0x90:  # ADDITEMS
                items = pop_mark()
                _expect(stack[-1], set, "ADDITEMS").update(items)
            elif op == 0x91:  # FROZENSET
                items = pop_mark()
                stack.append(frozenset(items))
            # memo
            elif op == 0x68:  # BINGET
                stack.append(memo[self._bytes(1)[0]])
            elif op == 0x6A:  # LONG_BINGET
                stack.append(memo[self._unpack("<I")])
            elif op == 0x71:  # BINPUT
                memo[self._bytes(1)[0]] = stack[-1]
            elif op == 0x72:  # LONG_BINPUT
                memo[self._unpack("<I")] = stack[-1]
            elif op == 0x94:  # MEMOIZE
                memo[len(memo)] = stack[-1]
            # globals, calls, storages: the allow-list
            elif op == 0x63:  # GLOBAL
                module, name = self._line(), self._line()
                if proto < 3:  # Python 2 names, as pickle's fix_imports maps them
                    module, name = _python3_name(module, name)
                stack.append(self._global(module, name))
            elif op == 0x93:  # STACK_GLOBAL
                name = stack.pop()
                module = stack.pop()
                stack.append(self._global(module, name))
            elif op == 0x52:  # REDUCE
                args = stack.pop()
                func = stack[-1]
                if not any(func is allowed for allowed in _CALLABLE):
                    raise RefusedPickle(f"a call of {describe(func)}")
                if type(args) is not tuple:
                    raise MalformedPickle("REDUCE arguments are not a tuple")
                stack[-1] = func(*args)
            elif op == 0x62:  # BUILD
                state = stack.pop()
                inst = stack[-1]
                if type(inst) is not OrderedDict or type(state) is not dict or not all(type(k) is str for k in state):
                    raise RefusedPickle(f"setting the state of {describe(type(inst).__name__)}")
                inst.__dict__.update(state)
            elif op == 0x51:  # BINPERSID
                pid = stack.pop()
                if self.budget is not None:
                    self.budget.claim(pid)
                elif not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
                    raise RefusedPickle(f"persistent id {describe(pid)} is not a tensor storage")
                stack.append(self.persistent_load(pid))
            elif op in _OBJECT_OPCODES:
                raise RefusedPickle(f"a Python object ({_OBJECT_OPCODES[op]})")
            else:
                raise MalformedPickle(f"unsupported pickle opcode {key!r}")


_OBJECT_OPCODES = {0x81: "NEWOBJ", 0x92: "NEWOBJ_EX", 0x69: "INST", 0x6F: "OBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4",
                   0x50: "PERSID"}


def _underflow() -> Any:
    raise MalformedPickle("stack underflow")


def _expect(target: Any, kind: type, op: str) -> Any:
    if not isinstance(target, kind) or (kind is dict and type(target) not in (dict, OrderedDict, Counter)):
        raise MalformedPickle(f"{op} on a {type(target).__name__}")
    return target


def _python3_name(module: str, name: str) -> tuple[str, str]:
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    if (module, name) in NAME_MAPPING:
        return NAME_MAPPING[(module, name)]
    return IMPORT_MAPPING.get(module, module), name


def _load(file: BinaryIO, **kwargs: Any) -> Any:
    return SafeUnpickler(file, **kwargs).load()


# What torch.load needs of a pickle module: Unpickler (subclassed, with persistent_load set) and load (the legacy
# format's header pickles).
SAFE_PICKLE = types.SimpleNamespace(__name__="fan_edge.models.safe_load", Unpickler=SafeUnpickler, load=_load,
                                    UnpicklingError=pickle.UnpicklingError)


def torch_load(path: str | Path, limit: int = MAX_CHECKPOINT_BYTES) -> Any:
    """``torch.load`` of an untrusted ``torch.save`` file (zip or legacy format) through :class:`SafeUnpickler`.

    A zip's directory is checked first (:func:`check_zip_archive`); every
    storage the pickle declares is checked against its record (zip) or the
    file's size (legacy) and ``limit`` before torch reads it. The tar format
    of PyTorch before 0.4 is refused (it extracts members to disk first).
    """
    import tarfile

    p = Path(path)
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PK\x03\x04":  # as torch tells its zip format from the legacy one
        budget = StorageBudget(limit, records=check_zip_archive(p, limit))
    elif tarfile.is_tarfile(p):
        raise CheckpointError("a PyTorch tar checkpoint (before 0.4); load and save it again with a current PyTorch")
    else:
        budget = StorageBudget(limit, available=p.stat().st_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation notes: the user needs one line, not torch's internals
        return torch.load(p, map_location="cpu", pickle_module=SAFE_PICKLE, weights_only=False, budget=budget)


# ---- safetensors ---------------------------------------------------------------------------------------------

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def read_safetensors_header(path: str | Path, limit: int = MAX_CHECKPOINT_BYTES) -> tuple[dict[str, Any], dict[str, str], int]:
    """A safetensors file's tensor entries (name -> dtype, shape, begin, end), metadata and data start, all checked.

    Checked before any tensor byte is read: the header's length and JSON,
    every dtype known, every span inside the file and as long as its shape
    and dtype say, no two spans overlapping, and the total within ``limit``.
    """
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError("a safetensors file shorter than its header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"a safetensors header of {n:,} bytes (file {size:,} bytes, bound {MAX_HEADER_BYTES:,})")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"a safetensors header that is not JSON ({str(exc).splitlines()[0][:100]})") from None
    if not isinstance(header, dict):
        raise CheckpointError("a safetensors header that is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("safetensors metadata that is not a map of strings")
    start = 8 + n
    data_len = size - start
    entries: dict[str, Any] = {}
    spans = []
    total = 0
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) - {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"safetensors entry {describe(name)} is malformed")
        dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if dtype is None:
            raise CheckpointError(f"safetensors entry {describe(name)} has dtype {describe(entry.get('dtype'))}")
        if (not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and 0 <= d < 1 << 62 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)):
            raise CheckpointError(f"safetensors entry {describe(name)} has a malformed shape or offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len or end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"safetensors entry {describe(name)}: bytes {begin}..{end} do not hold a {dtype} "
                                  f"tensor of shape {describe(shape)} inside the file's {data_len:,} data bytes")
        total += end - begin
        if total > limit:
            raise CheckpointError(f"its tensors declare more than {limit:,} bytes (fan-edge's bound); refused before "
                                  "reading them")
        spans.append((begin, end, name))
        entries[name] = (dtype, tuple(shape), begin, end)
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise CheckpointError(f"safetensors entries {describe(a)} and {describe(b)} overlap")
    return entries, metadata, start


def read_safetensors(path: str | Path, entries: Mapping[str, Any], start: int) -> dict[str, torch.Tensor]:
    """The tensors of a checked header (:func:`read_safetensors_header`), each read once into its own memory."""
    tensors: dict[str, torch.Tensor] = {}
    with open(path, "rb") as fh:
        for name, (dtype, shape, begin, end) in entries.items():
            buffer = torch.empty(end - begin, dtype=torch.uint8)
            fh.seek(start + begin)
            if end > begin and fh.readinto(memoryview(buffer.numpy())) != end - begin:
                raise CheckpointError(f"safetensors entry {describe(name)} is cut short")
            tensors[name] = buffer.view(dtype).reshape(shape) if end > begin else torch.empty(shape, dtype=dtype)
    return tensors


def meta_tensors(entries: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors on the meta device with the header's shapes and dtypes: what a config can be checked against, free."""
    return {name: torch.empty(shape, dtype=dtype, device="meta") for name, (dtype, shape, _, _) in entries.items()}


