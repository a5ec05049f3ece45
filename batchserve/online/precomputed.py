"""Nightly scores served online: the predictions of the last committed run of a scored output,
looked up by a key column, answered without running the model.

Only a committed run counts (``_SUCCESS`` present; its manifest lists the files). The key column and
the prediction columns are read, sorted by key once, and kept as Arrow columns: memory is about the
Arrow size of those columns (the key's sorted values are the lookup index; a numeric key is searched
with numpy, a string key by bisection). A key that appears twice is refused at load, naming it. When a
newer run commits (``_SUCCESS`` rewritten), it is loaded in the background and swapped in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchserve import io, manifest
from batchserve.errors import BatchserveError, InputError, RequestError, SchemaError
from batchserve.layout import MANIFEST_NAME, SUCCESS_NAME
from batchserve.online.telemetry import Telemetry
from batchserve.predictions import arrow_to_prediction

__all__ = ["Nightly", "Precomputed"]

log = logging.getLogger("batchserve.serve")


@dataclasses.dataclass(frozen=True)
class Nightly:
    """One committed run's predictions, sorted by key."""

    run_id: str
    model_version: str | None
    keys: pa.Array
    columns: dict[str, pa.Array]
    marker: tuple[int, str | None]

    @property
    def rows(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        return int(self.keys.nbytes + sum(c.nbytes for c in self.columns.values()))

    def find(self, wanted: Sequence[Any]) -> list[int]:
        """Row of each key, or -1 where the run did not score it."""
        if pa.types.is_integer(self.keys.type) and self.keys.null_count == 0:
            sorted_keys = self.keys.to_numpy()
            try:
                q = np.asarray(wanted, dtype=sorted_keys.dtype)
            except (TypeError, ValueError, OverflowError):
                return [-1] * len(wanted)
            pos = np.minimum(np.searchsorted(sorted_keys, q), len(sorted_keys) - 1)
            hit = sorted_keys[pos] == q if len(sorted_keys) else np.zeros(len(q), bool)
            return [int(p) if h else -1 for p, h in zip(pos, hit, strict=True)]
        return [self._bisect(k) for k in wanted]

    def check_type(self, name: str, datatype: str) -> None:
        """A request's key input must be of the key column's kind: BYTES for a string key, an integer
        datatype for an integer key (a string key sent as INT64 used to fall through to online scoring,
        with no features to score)."""
        t = self.keys.type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
            ok, want = datatype == "BYTES", "BYTES"
        elif pa.types.is_integer(t):
            ok, want = datatype.startswith(("INT", "UINT")), "INT64"
        else:
            return
        if not ok:
            raise RequestError(f"input {name!r} is {datatype}, but the key column {name!r} of the nightly scores "
                               f"holds {t}: send it as {want}")

    def _bisect(self, key: Any) -> int:
        lo, hi = 0, len(self.keys)
        while lo < hi:
            mid = (lo + hi) // 2
            value = self.keys[mid].as_py()
            try:
                less = value < key
            except TypeError:
                return -1
            if less:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(self.keys) and self.keys[lo].as_py() == key else -1


def _marker(output: str, storage: Mapping[str, Any]) -> tuple[int, str | None] | None:
    success = io.join_url(output, SUCCESS_NAME)
    return io.input_version(success, storage) if io.exists(success, storage) else None


def load_nightly(output: str, key: str, storage: Mapping[str, Any]) -> Nightly:
    """Read the last committed run of ``output``: its key and prediction columns, sorted by key."""
    marker = _marker(output, storage)
    if marker is None:
        raise InputError(f"no committed run here ({SUCCESS_NAME} missing): --precomputed needs an output "
                         "`batchserve score` finished", path=output)
    m = manifest.loads(io.read_text(io.join_url(output, MANIFEST_NAME), storage), source=output)
    prefix = str(m.run.config.get("prefix") or "")
    wanted = [prefix + o["name"] for o in m.model.outputs]
    if key in wanted:
        raise InputError(f"--key {key!r} is a prediction column of the scored output; the key must be an input "
                         "column the run kept (score --keep), such as a customer or transaction id", path=output)
    tables = []
    for entry in m.outputs:
        url = entry.path if "://" in entry.path or entry.path.startswith("/") else io.join_url(output, entry.relpath)
        source = io.ParquetInput(url, storage)
        names = source.footer.schema.names
        if key not in names:
            source.close()
            raise SchemaError("--key column is not in the scored output", path=url, column=key)
        cols = [key, *(c for c in wanted if c in names)]
        schema = pa.schema([source.footer.schema.field(c) for c in cols])
        tables.append(pa.Table.from_batches(list(source.batches(columns=cols, batch_size=1 << 20)), schema=schema))
    table = pa.concat_tables(tables) if tables else pa.table({key: pa.array([], pa.int64())})
    keys = table.column(key).combine_chunks()
    if keys.null_count:
        raise SchemaError(f"--key column has {keys.null_count} null(s): a key must name one row", path=output,
                          column=key)
    order = pc.sort_indices(keys)
    keys = keys.take(order)
    if len(keys) > 1:
        same = pc.equal(keys.slice(1), keys.slice(0, len(keys) - 1))
        if pc.any(same).as_py():
            first = int(np.flatnonzero(same.to_numpy(zero_copy_only=False))[0])
            raise SchemaError(f"key {keys[first].as_py()!r} appears more than once in the scored output; a key must "
                              "name one row", path=output, column=key)
    columns = {c: table.column(c).combine_chunks().take(order) for c in table.column_names if c != key}
    del table, tables, order
    # Reading, combining and sorting made copies; the allocator keeps freed pages for reuse unless told:
    # without this, a server holding 23 MiB of columns kept 110 MiB (make bench-serve, 1M keys).
    pa.default_memory_pool().release_unused()
    return Nightly(m.run.id, m.model.version, keys, columns, marker)


class Precomputed:
    """The nightly scores being served, and the swap when a newer run commits."""

    def __init__(self, output: str, key: str, storage: Mapping[str, Any], telemetry: Telemetry) -> None:
        self.output = output
        self.key = key
        self.storage = dict(storage)
        self.telemetry = telemetry
        self.current: Nightly | None = None
        self.hup = asyncio.Event()

    def load(self) -> None:
        self.current = load_nightly(self.output, self.key, self.storage)
        self.telemetry.precomputed_rows.set(self.current.rows)
        log.info("serving nightly scores of run %s (model version %s, %d keys, %.1f MiB) from %s",
                 self.current.run_id, self.current.model_version, self.current.rows, self.current.nbytes() / 2**20,
                 self.output, extra={"fields": {"event": "precomputed", "run_id": self.current.run_id}})

    def answer(self, inputs: Sequence[Any], only: bool,
               ) -> tuple[dict[str, Any], int, str | None, dict[str, Any]] | None:
        """A request's answer from the nightly run when it carries the key and the run scored every key in it
        (prediction columns, rows, the version that scored them, the response's parameters); None to score it
        online; a 404 instead with ``only`` (--precomputed-only), or when the key alone was sent."""
        tensor = next((t for t in inputs if t.name == self.key), None)
        nightly = self.current
        if tensor is None or nightly is None:
            if only:
                raise RequestError(f"request has no {self.key!r} input; with --precomputed-only every request "
                                   "names its keys")
            return None
        nightly.check_type(tensor.name, tensor.datatype)
        keys = [v.decode() if isinstance(v, bytes) else v for v in tensor.data.reshape(-1).tolist()]
        rows = nightly.find(keys)
        if -1 in rows:
            missing = keys[rows.index(-1)]
            if only:
                self.telemetry.precomputed_lookups.labels("missing").inc()
                raise RequestError(f"key {missing!r} was not scored by run {nightly.run_id}", status=404)
            if len(inputs) == 1:  # the key alone: nothing to score it with online
                self.telemetry.precomputed_lookups.labels("missing").inc()
                raise RequestError(f"key {missing!r} was not scored by run {nightly.run_id}, and the request sends "
                                   "no features to score it online: send the features with the key", status=404)
            self.telemetry.precomputed_lookups.labels("online").inc()
            return None
        self.telemetry.precomputed_lookups.labels("batch").inc()
        index = pa.array(rows, pa.int64())
        columns = {k: arrow_to_prediction(c.take(index)) for k, c in nightly.columns.items()}
        params = {"source": "batch", "run_id": nightly.run_id, "model_version": nightly.model_version}
        return columns, len(rows), nightly.model_version, params

    def check_version(self, served_version: str | None) -> None:
        """A run scored by another version than the one served online is said, never silent."""
        nightly = self.current
        differs = nightly is not None and nightly.model_version != served_version
        self.telemetry.precomputed_mismatch.set(1 if differs else 0)
        if differs and nightly is not None:
            log.warning("nightly scores of run %s were made by model version %s; version %s answers online",
                        nightly.run_id, nightly.model_version, served_version,
                        extra={"fields": {"event": "precomputed_version_mismatch"}})

    async def follow(self, poll_seconds: float, slots: Any) -> None:
        """Check ``_SUCCESS`` every ``poll_seconds`` (and on SIGHUP); load a newer run and swap."""
        loop = asyncio.get_running_loop()
        self.check_version(slots.current.version if slots.ready else None)
        while True:
            try:
                await asyncio.wait_for(self.hup.wait(), poll_seconds)
            except TimeoutError:
                pass
            self.hup.clear()
            try:
                marker = await loop.run_in_executor(None, _marker, self.output, self.storage)
                if marker is None or (self.current is not None and marker == self.current.marker):
                    continue
                await loop.run_in_executor(None, self.load)
                self.telemetry.precomputed_reloads.inc()
            except BatchserveError as exc:
                log.error("cannot load the newer run of %s (still serving run %s): %s", self.output,
                          self.current.run_id if self.current else "-", exc)
                continue
            self.check_version(slots.current.version if slots.ready else None)
