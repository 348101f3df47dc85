"""How the in-process engine hands messages over: private copies, arrays decoded once.

Over a network every client receives its own copy of an instruction and the server its
own copy of each reply, and every ``Array`` is decoded from its bytes where it is used.
In one process the same object can reach everyone, so the engine

- gives each client a private copy of the instruction's records (:func:`for_client`):
  Flower's strategies put one ``RecordDict`` into every message, and a client that
  changed it would otherwise change it for the clients after it;
- decodes each array's bytes at most once (:class:`DecodedOnceArray`): ``numpy()``
  returns a fresh, writable copy of the array decoded the first time, so 100 clients
  reading the same global model, and the server's update guard, aggregation and
  checkpoint reading the same reply, cost one decoding each instead of many. The
  bytes, dtype, shape and values are exactly those of the original ``Array``;
  decoding (:func:`tasks.npy.decode_npy`) parses each distinct ``.npy`` header once, where
  ``np.load`` runs ``ast.literal_eval`` on every array's header.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.common.constant import SType
from numpy.typing import NDArray

from tasks.npy import decode_npy

_DECODED = "_fedfleet_decoded"


class DecodedOnceArray(Array):
    """An ``Array`` whose bytes are decoded at most once; ``numpy()`` returns a copy."""

    @classmethod
    def of(cls, array: Array) -> DecodedOnceArray:
        """The same array (sharing its immutable bytes), decoding once from now on."""
        if isinstance(array, DecodedOnceArray):
            return array
        twin = cast(DecodedOnceArray, object.__new__(cls))
        twin.__dict__.update(
            {k: v for k, v in array.__dict__.items() if k not in ("_chunks", _DECODED)}
        )
        return twin

    def numpy(self) -> NDArray[Any]:
        decoded = self.__dict__.get(_DECODED)
        if decoded is None:
            decoded = decode_npy(self.data) if self.stype == SType.NUMPY else None
            if decoded is None:  # not a plain .npy: Flower's own decoding (and errors)
                decoded = super().numpy()
            decoded.setflags(write=False)
            self.__dict__[_DECODED] = decoded
        return cast(
            "NDArray[Any]", np.array(decoded, copy=True)
        )  # a string: no alias built per call

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Array):
            return NotImplemented
        return (self.dtype, tuple(self.shape), self.stype, self.data) == (
            other.dtype,
            tuple(other.shape),
            other.stype,
            other.data,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like Array

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickled (to a ClientApp worker process) as Flower's own ``Array``, without
        the decoded copy: the worker decodes its own."""
        return (_plain_array, ({k: v for k, v in self.__dict__.items() if k != _DECODED},))


def _plain_array(state: dict[str, Any]) -> Array:
    """Flower's ``Array`` with ``state`` (how a :class:`DecodedOnceArray` unpickles)."""
    array = cast(Array, object.__new__(Array))
    array.__dict__.update(state)
    return array


# Flower writes an object's class name into its serialized header and checks it when
# reading; a DecodedOnceArray serializes exactly as, and reads back as, an Array.
DecodedOnceArray.__qualname__ = Array.__qualname__


def decode_once(record: ArrayRecord) -> ArrayRecord:
    """Make every array of ``record`` (in place) decode at most once."""
    for key, array in list(record.items()):
        if not isinstance(array, DecodedOnceArray):
            record[key] = DecodedOnceArray.of(array)
    return record


def for_client(content: RecordDict) -> RecordDict:
    """A copy of ``content`` that no client can change for another: new records
    (Flower's own shallow ``copy``) and new lists; arrays decode once and are shared."""
    copy = content.copy()
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            decode_once(record)  # shared by every client's copy: decoded once for all
            copy[name] = record.copy()
        else:
            duplicate = record.copy()
            for key, value in record.items():
                if isinstance(value, list):
                    duplicate[key] = list(value)  # type: ignore[assignment]
            copy[name] = duplicate
    return copy


def for_server(content: RecordDict) -> RecordDict:
    """A reply as the server receives it: its arrays decode once (guard, aggregation
    and checkpoints all read them)."""
    for record in content.array_records.values():
        decode_once(record)
    return content
