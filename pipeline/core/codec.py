"""A data-only object codec for snapshots: JSON (orjson) with class tags, never pickle.

``Codec(classes).dumps(obj)`` walks an object graph made of plain data (None, bool, int, float
including inf/nan, str, bytes, list, tuple, dict, OrderedDict, set, frozenset, deque,
``array.array``, numpy arrays and scalars, enums) and instances of an explicit allow-list of
state classes. An instance is written as its class name and its ``__getstate__()`` (the same
state pickle would take: ``__dict__``, ``__slots__`` or the class's own ``__getstate__``).

``loads`` rebuilds only allow-listed classes, with ``object.__new__`` and then the class's own
``__setstate__`` or plain attribute assignment. Nothing named by the payload is imported or
called: a class name outside the allow-list, a field that would shadow a method, an object
numpy array or any malformed value raises ``CodecError``. Shared references and cycles
between instances are kept (``["r", n]`` points back to the n-th instance).

Wire layout: ``MAGIC | version (u16) | flags (u8) | crc32 (u32) | [hmac-sha256] | zlib(json)``.
With a key, the HMAC covers the compressed payload and unsigned or wrongly signed data is
refused; without one the CRC only catches accidental damage.

>>> from collections import deque
>>> codec = Codec([])
>>> codec.loads(codec.dumps({"a": (1, float("inf")), 2: deque([b"x"], maxlen=3)}))
{'a': (1, inf), 2: deque([b'x'], maxlen=3)}
"""

from __future__ import annotations

import array
import base64
import enum
import hashlib
import hmac
import math
import struct
import sys
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

MAGIC = b"SHCODE"
VERSION = 1
_HEADER = struct.Struct(">6sHBI")
_SIGNED = 1
#: a decompressed payload larger than this is refused (a zlib bomb must not exhaust memory)
MAX_PAYLOAD_BYTES = 512 * 2**20
_ARRAY_CODES = frozenset("bBuhHiIlLqQfd")
_INT64 = 2**63


class CodecError(ValueError):
    """The data is not a snapshot this codec can trust or read."""

    retriable = False


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Codec:
    """Encoder/decoder bound to an allow-list of classes (and an optional HMAC key)."""

    def __init__(self, classes: Iterable[type], *, key: bytes | None = None) -> None:
        self.classes: dict[str, type] = {class_name(c): c for c in classes}
        self.key = key or None

    def allow(self, *classes: type) -> None:
        self.classes.update({class_name(c): c for c in classes})

    # -- bytes ------------------------------------------------------------------------------

    def dumps(self, obj: Any, *, level: int = 1) -> bytes:
        tree = _Encoder(self.classes).encode(obj)
        payload = zlib.compress(orjson.dumps(tree), level)
        flags = _SIGNED if self.key else 0
        head = _HEADER.pack(MAGIC, VERSION, flags, zlib.crc32(payload))
        mac = hmac.new(self.key, payload, hashlib.sha256).digest() if self.key else b""
        return head + mac + payload

    def loads(self, data: bytes) -> Any:
        payload = self._verified_payload(data)
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(payload, MAX_PAYLOAD_BYTES)
            if inflater.unconsumed_tail:
                raise CodecError(f"payload larger than {MAX_PAYLOAD_BYTES} bytes")
            tree = orjson.loads(raw)
            return _Decoder(self.classes).decode(tree)
        except CodecError:
            raise
        except (Exception, RecursionError) as exc:
            raise CodecError(f"undecodable snapshot: {type(exc).__name__}: {exc}") from exc

    def _verified_payload(self, data: bytes) -> bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CodecError("snapshot is not bytes")
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise CodecError("shorter than the header")
        magic, version, flags, crc = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CodecError("not a selfheal snapshot (bad magic)")
        if version != VERSION:
            raise CodecError(f"codec version {version}, this build reads {VERSION}")
        if flags & ~_SIGNED:
            raise CodecError(f"unknown flags {flags:#x}")
        start = _HEADER.size
        mac = b""
        if flags & _SIGNED:
            mac, start = data[start : start + 32], start + 32
        payload = data[start:]
        if zlib.crc32(payload) != crc:
            raise CodecError("checksum mismatch")
        if self.key is not None:
            if not mac:
                raise CodecError("unsigned snapshot, but a state key is configured")
            want = hmac.new(self.key, payload, hashlib.sha256).digest()
            if not hmac.compare_digest(mac, want):
                raise CodecError("HMAC mismatch (written with another key, or forged)")
        elif mac:
            raise CodecError("signed snapshot, but no state key is configured")
        return payload


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class _Encoder:
    def __init__(self, classes: dict[str, type]) -> None:
        self.allowed = {c: n for n, c in classes.items()}
        self.memo: dict[int, int] = {}
        self.keep: list[Any] = []  # keeps ids stable while walking

    def encode(self, o: Any) -> Any:
        t = type(o)
        if t is str or t is bool or o is None:
            return o
        if t is int:
            return o if -_INT64 <= o < _INT64 else ["i", str(o)]
        if t is float:
            return o if math.isfinite(o) else ["f", repr(o)]
        if t is list:
            return ["l", *o] if _plain(o) else ["l", *self._items(o)]
        if t is tuple:
            return ["t", *o] if _plain(o) else ["t", *self._items(o)]
        if t is dict:
            if all(type(k) is str for k in o):
                return self._fields(o)
            return ["d", *self._pairs(o)]
        return self._other(o, t)

    def _items(self, o: list[Any] | tuple[Any, ...]) -> list[Any]:
        # the scalar test inline (no call per item): most state values are plain numbers
        enc = self.encode
        out: list[Any] = []
        append = out.append
        for x in o:
            t = type(x)
            if (
                t is str
                or (t is float and x - x == 0.0)
                or (t is int and -_INT64 <= x < _INT64)
                or t is bool
                or x is None
            ):
                append(x)
            else:
                append(enc(x))
        return out

    def _fields(self, o: dict[str, Any]) -> dict[str, Any]:
        enc = self.encode
        out: dict[str, Any] = {}
        for k, x in o.items():
            t = type(x)
            if (
                t is str
                or (t is float and x - x == 0.0)
                or (t is int and -_INT64 <= x < _INT64)
                or t is bool
                or x is None
            ):
                out[k] = x
            else:
                out[k] = enc(x)
        return out

    def _pairs(self, o: dict[Any, Any]) -> list[Any]:
        out: list[Any] = []
        for k, v in o.items():
            out.append(self.encode(k))
            out.append(self.encode(v))
        return out

    def _other(self, o: Any, t: type) -> Any:
        if isinstance(o, enum.Enum):
            return ["e", self._name(t), self.encode(o.value)]
        if t is OrderedDict:
            return ["o", *self._pairs(o)]
        if t is set or t is frozenset:
            items = sorted((self.encode(x) for x in o), key=orjson.dumps)  # deterministic
            return ["s" if t is set else "z", *items]
        if t is deque:
            return ["q", o.maxlen, *map(self.encode, o)]
        if t is bytes or t is bytearray:
            return ["b", _b64(bytes(o))]
        if t is array.array:
            a = array.array(o.typecode, o)
            if sys.byteorder == "big":
                a.byteswap()  # little-endian on the wire
            return ["a", o.typecode, _b64(a.tobytes())]
        if t is np.ndarray:
            if o.dtype.hasobject:
                raise CodecError("object arrays are not data")
            le = o.astype(o.dtype.newbyteorder("<"), copy=False)
            return ["n", le.dtype.str, list(o.shape), _b64(np.ascontiguousarray(le).tobytes())]
        if isinstance(o, np.generic):
            return ["g", o.dtype.newbyteorder("<").str, _b64(np.asarray(o, o.dtype).tobytes())]
        return self._instance(o, t)

    def _instance(self, o: Any, t: type) -> Any:
        ref = self.memo.get(id(o))
        if ref is not None:
            return ["r", ref]
        if issubclass(t, list | dict | set | tuple):
            # their items live outside __getstate__ (pickle uses __reduce_ex__ for them)
            raise CodecError(f"{class_name(t)}: container subclasses are not supported")
        name = self._name(t)
        self.memo[id(o)] = len(self.memo)
        self.keep.append(o)
        return ["c", name, self.encode(o.__getstate__())]

    def _name(self, t: type) -> str:
        name = self.allowed.get(t)
        if name is None:
            raise CodecError(f"{class_name(t)} is not an allow-listed state class")
        return name


class _Decoder:
    def __init__(self, classes: dict[str, type]) -> None:
        self.classes = classes
        self.objects: list[Any] = []
        #: fields already checked per class: a field never shadows a method
        self.fields: dict[type, set[str]] = {}

    def decode(self, v: Any) -> Any:
        t = type(v)
        if t is dict:
            dec = self.decode
            return {k: x if type(x) not in _NESTED else dec(x) for k, x in v.items()}
        if t is not list:
            return v  # str, int, float, bool, None
        if not v or type(v[0]) is not str:
            raise CodecError("untagged array")
        tag, rest = v[0], v[1:]
        if tag == "l":
            return rest if _flat(rest) else [self.decode(x) for x in rest]
        if tag == "t":
            return tuple(rest) if _flat(rest) else tuple(self.decode(x) for x in rest)
        if tag == "d" or tag == "o":
            if len(rest) % 2:
                raise CodecError("odd mapping")
            it = iter(rest)
            pairs = [(self.decode(k), self.decode(x)) for k, x in zip(it, it, strict=True)]
            return dict(pairs) if tag == "d" else OrderedDict(pairs)
        return self._tagged(tag, rest)

    def _tagged(self, tag: str, rest: list[Any]) -> Any:
        if tag == "f":
            if rest not in (["inf"], ["-inf"], ["nan"]):
                raise CodecError("bad non-finite float")
            return float(rest[0])
        if tag == "i":
            return int(_one(rest, str))
        if tag == "s":
            return {self.decode(x) for x in rest}
        if tag == "z":
            return frozenset(self.decode(x) for x in rest)
        if tag == "q":
            if not rest or not (rest[0] is None or type(rest[0]) is int):
                raise CodecError("bad deque")
            return deque((self.decode(x) for x in rest[1:]), maxlen=rest[0])
        if tag == "b":
            return base64.b64decode(_one(rest, str), validate=True)
        if tag == "a":
            return _array(rest)
        if tag == "n":
            return _ndarray(rest)
        if tag == "g":
            dtype, raw = _dtype(rest[:1]), base64.b64decode(_one(rest[1:], str), validate=True)
            return np.frombuffer(raw, dtype=dtype, count=1)[0].astype(dtype.newbyteorder("="))
        if tag == "e":
            cls = self._cls(rest[:1])
            if not issubclass(cls, enum.Enum) or len(rest) != 2:
                raise CodecError("bad enum")
            return cls(self.decode(rest[1]))
        if tag == "r":
            idx = _one(rest, int)
            if not 0 <= idx < len(self.objects):
                raise CodecError("dangling reference")
            return self.objects[idx]
        if tag == "c":
            return self._instance(rest)
        raise CodecError(f"unknown tag {tag[:16]!r}")

    def _cls(self, rest: list[Any]) -> type:
        name = _one(rest, str)
        cls = self.classes.get(name)
        if cls is None:
            raise CodecError(f"class {name[:120]!r} is not allow-listed")
        return cls

    def _instance(self, rest: list[Any]) -> Any:
        if len(rest) != 2:
            raise CodecError("bad instance")
        cls = self._cls(rest[:1])
        if issubclass(cls, enum.Enum):
            raise CodecError("enum as instance")
        obj = object.__new__(cls)
        self.objects.append(obj)  # before the state: cycles point back to it
        state = self.decode(rest[1])
        setstate = getattr(cls, "__setstate__", None)
        if setstate is not None:
            setstate(obj, state)  # the allow-listed class's own code, on data
            return obj
        slots: Any = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        if slots is None and type(state) is dict and hasattr(obj, "__dict__"):
            known = self.fields.setdefault(cls, set())
            if not state.keys() <= known:
                for k in state:
                    self._check_field(cls, k)
                known.update(state)
            obj.__dict__.update(state)
            return obj
        for attrs in (state, slots):
            if attrs is None:
                continue
            if type(attrs) is not dict:
                raise CodecError(f"bad state for {class_name(cls)}")
            known = self.fields.setdefault(cls, set())
            for k, x in attrs.items():
                if k not in known:
                    self._check_field(cls, k)
                    known.add(k)
                object.__setattr__(obj, k, x)
        return obj

    @staticmethod
    def _check_field(cls: type, k: Any) -> None:
        """A field must be a plain name that does not shadow a method or a dunder."""
        if type(k) is not str or k.startswith("__") or callable(getattr(cls, k, None)):
            raise CodecError(f"field {str(k)[:60]!r} not settable on {class_name(cls)}")


_NESTED = (list, dict)


def _scalar(x: Any) -> bool:
    """A JSON scalar that needs no tag."""
    t = type(x)
    if t is float:
        return x - x == 0.0  # not inf or nan
    if t is int:
        return -_INT64 <= x < _INT64
    return t is str or t is bool or x is None


def _plain(seq: list[Any] | tuple[Any, ...]) -> bool:
    """Only JSON scalars that need no tag (finite floats, 64-bit ints, str, bool, None)."""
    for x in seq:
        t = type(x)
        if t is float:
            if x - x != 0.0:  # inf or nan
                return False
        elif t is int:
            if not -_INT64 <= x < _INT64:
                return False
        elif t is not str and t is not bool and x is not None:
            return False
    return True


def _flat(items: list[Any]) -> bool:
    """No nested array or object: every item decodes to itself."""
    for x in items:
        t = type(x)
        if t is list or t is dict:
            return False
    return True


def _one(rest: list[Any], kind: type) -> Any:
    if len(rest) != 1 or type(rest[0]) is not kind:
        raise CodecError("malformed value")
    return rest[0]


def _array(rest: list[Any]) -> array.array[Any]:
    if len(rest) != 2 or rest[0] not in _ARRAY_CODES:
        raise CodecError("bad array")
    a = array.array(rest[0])
    a.frombytes(base64.b64decode(_one(rest[1:], str), validate=True))
    if sys.byteorder == "big":
        a.byteswap()
    return a


def _dtype(rest: list[Any]) -> np.dtype[Any]:
    dtype = np.dtype(_one(rest, str))
    if dtype.hasobject or dtype.kind not in "biufcSU":
        raise CodecError("dtype is not plain data")
    return dtype


def _ndarray(rest: list[Any]) -> np.ndarray[Any, Any]:
    if len(rest) != 3 or type(rest[1]) is not list:
        raise CodecError("bad ndarray")
    dtype = _dtype(rest[:1])
    shape = rest[1]
    if not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 32:
        raise CodecError("bad ndarray shape")
    raw = base64.b64decode(_one(rest[2:], str), validate=True)
    if math.prod(shape) * dtype.itemsize != len(raw):
        raise CodecError("ndarray size does not match its shape")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # a writable native copy
