"""Codecs by name behind one small interface. Classical codecs register on import; learned codecs register
when their module is first asked for, so using PNG does not import torch."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import numpy as np

from .container import Header
from .errors import UnsupportedStream
from .image import DecodedImage


@dataclass
class Encoded:
    payload: bytes
    params: dict  # every parameter the decoder needs, defaults included
    model_id: str = ""  # sha256 of the weights; "" for classical codecs


class Codec:
    """One image <-> one payload. Subclasses set the class attributes and implement the four methods.

    Learned codecs (``learned = True``) also take ``device`` in ``encode`` and ``decode``: a name checked by
    ``check_device`` ('cpu', 'cuda', 'cuda:N') where their integer network runs. The payload never depends on it
    (CPU and GPU streams are byte-identical). Classical codecs run on the CPU and take no device: the API passes
    ``device`` to learned codecs only."""

    name: str = ""
    # The codec version the container header records, which `versions` lists as decodable. A codec that versions
    # its payload inside (mspsm and msr: the payload's own version byte) keeps this at 1 while its payload changes.
    version: int = 1
    versions: tuple[int, ...] = (1,)
    learned: bool = False
    # The stream gives back the original file's bytes (store: the payload itself; lepton: recompressed), so it
    # carries none of the metadata blobs recoded images need; ``original_bytes`` returns them.
    keeps_original = False
    summary: str = ""
    defaults: dict = {}
    ranges: dict = {}  # integer parameter -> (lowest, highest) it takes

    def supports(self, image: DecodedImage) -> str | None:
        """None when this codec can code ``image`` losslessly, else the reason it cannot."""
        raise NotImplementedError

    def encode(self, image: DecodedImage, **params) -> Encoded:
        raise NotImplementedError

    def decode(self, payload: bytes, header: Header) -> np.ndarray | None:
        """Pixels (HxWxC) from a payload; None for a stored file that has no pixels."""
        raise NotImplementedError

    def encode_many(self, images: list[DecodedImage], **params) -> list:
        """``encode`` of each image (same ``params``): per image its ``Encoded`` or the exception it raised, so one
        bad image costs only itself. Learned codecs override it to share network batches across images (the same
        payloads, fewer network calls); this default codes them one by one."""
        out: list = []
        for image in images:
            try:
                out.append(self.encode(image, **params))
            except Exception as exc:
                out.append(exc)
        return out

    def decode_many(self, payloads: list[bytes], headers: list[Header], **kw) -> list:
        """``decode`` of each (payload, header): per payload its pixels (or None) or the exception it raised. As
        ``encode_many``: learned codecs batch, this default decodes one by one."""
        out: list = []
        for payload, header in zip(payloads, headers):
            try:
                out.append(self.decode(payload, header, **kw))
            except Exception as exc:
                out.append(exc)
        return out

    def original_bytes(self, payload: bytes, header: Header) -> bytes | None:
        """The original file's bytes from a payload of a ``keeps_original`` codec (checked), else None."""
        return payload if self.keeps_original and not header.params.get("raw") else None

    def available(self) -> bool:
        """Ready to use (for learned codecs: weights are installed)."""
        return True

    def describe(self) -> dict:
        return {"name": self.name, "summary": self.summary, "learned": self.learned, "params": dict(self.defaults),
                "ranges": {k: list(v) for k, v in self.ranges.items()}, "available": self.available()}

    def params(self, given: dict) -> dict:
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise ValueError(f"codec {self.name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(self.defaults)}")
        for key, value in given.items():
            self._check_param(key, value)
        return {**self.defaults, **given}

    def _check_param(self, key: str, value) -> None:
        if key not in self.ranges:  # a codec checks its other parameters itself (msr's q also takes 'auto')
            return
        lo, hi = self.ranges[key]
        takes = f"; {key} takes an integer from {lo} to {hi}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"codec {self.name!r}: {key}={value!r} is not an integer{takes}")
        if not lo <= value <= hi:
            raise ValueError(f"codec {self.name!r}: {key}={value} is out of range{takes}")


_CODECS: dict[str, Codec] = {}
# Learned codecs and the module that registers each; imported on first use.
_LAZY = {"mspsm": "pixark.codec.mspsm", "msr": "pixark.codec.msr"}


def register(codec: Codec) -> Codec:
    _CODECS[codec.name] = codec
    return codec


def _load(name: str) -> None:
    if name not in _CODECS and name in _LAZY:
        try:
            importlib.import_module(_LAZY[name])
        except ImportError:  # learned codec not part of this build
            pass


def is_learned(name: str) -> bool:
    """Whether ``name`` is a learned codec, without importing it: the learned codecs import torch, and a driver
    that only sizes decode tasks by codec should not pay for that (about 240 MB)."""
    return name in _LAZY or (name in _CODECS and _CODECS[name].learned)


def get(name: str) -> Codec:
    _load(name)
    if name not in _CODECS:
        raise UnsupportedStream(f"unknown codec {name!r}; this pixark knows {', '.join(names())}")
    return _CODECS[name]


def names() -> list[str]:
    for name in _LAZY:
        _load(name)
    return sorted(_CODECS)


def all_codecs() -> list[Codec]:
    return [get(n) for n in names()]


_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


def check_device(device=None, available: bool = False) -> str:
    """A codec ``device`` argument as a torch device name: None -> 'cpu'; 'cpu', 'cuda' or 'cuda:N' (or the
    torch.device of one) as given. Anything else is a ValueError: the integer networks are proven exact on CPUs and
    on CUDA GPUs (the int path: int8 tensor-core products, checked per layer), on nothing else. With
    ``available`` (a learned codec is about to run there) a CUDA device must also exist on this machine; torch is
    imported only then."""
    if device is None:
        return "cpu"
    name = str(device).strip()
    if not _DEVICE.fullmatch(name):
        raise ValueError(f"unknown codec device {device!r}: use 'cpu', 'cuda' or 'cuda:N' (None means cpu)")
    if available and name != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"codec device {name!r}: torch {torch.__version__} sees no CUDA GPU on this machine; "
                             "use device='cpu' (or leave it unset)")
        n = torch.cuda.device_count()
        index = int(name.partition(":")[2] or 0)
        if index >= n:
            raise ValueError(f"codec device {name!r}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    return name


def parse_spec(spec: str) -> tuple[str, dict]:
    """'jxl-ll:effort=9,x=1' -> ('jxl-ll', {'effort': 9, 'x': 1}). Values are ints, floats, or strings."""
    name, _, rest = spec.partition(":")
    params: dict = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"bad codec parameter {item!r} in {spec!r}; use name:key=value,key=value")
        params[key.strip()] = _value(value.strip())
    return name.strip(), params


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
