"""Columnar sources: parquet, CSV and Arrow files, and Hugging Face datasets.

A Hugging Face dataset is read from a ``save_to_disk`` directory (a ``Dataset``, or one split of a
``DatasetDict``), from the local cache by name (:class:`HubDataset`; never downloaded), or as a
``datasets.Dataset`` object passed from Python. Rows are yielded as the same records as JSON lines,
located as ``<source>[row i]``, so one parser checks every format. A column whose Arrow type can
never hold what its field needs (``chosen`` as integers, say) is refused at once, by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plrlhf.data.sources import DataError, Located
from plrlhf.io import file_sha256

TABLE_SUFFIXES = (".parquet", ".csv", ".arrow", ".feather", ".ipc")
ROWS_PER_READ = 8192


@dataclass(frozen=True)
class HubDataset:
    """A Hugging Face dataset by name, read from the local cache (``datasets.load_dataset``), or a
    dataset repository / ``save_to_disk`` directory on disk. Nothing is downloaded."""

    name: str
    """Dataset name as in ``load_dataset`` (e.g. ``Anthropic/hh-rlhf``) or a local directory."""
    subset: str | None = None
    """Configuration (subset) name, e.g. ``harmless-base``."""
    split: str = "train"
    """Split to read, e.g. ``train`` or ``test[:1000]``."""


def is_hf_dataset(source: Any) -> bool:
    return type(source).__module__.startswith("datasets.") and hasattr(source, "_fingerprint")


def is_table_source(source: Any) -> bool:
    if isinstance(source, HubDataset) or is_hf_dataset(source):
        return True
    path = Path(source)
    return path.is_dir() or path.name.lower().endswith(TABLE_SUFFIXES)


def describe(source: Any) -> str:
    """How messages and summaries name a source."""
    if isinstance(source, HubDataset):
        subset = f"/{source.subset}" if source.subset else ""
        return f"{source.name}{subset}[{source.split}]"
    if is_hf_dataset(source):
        return f"datasets.Dataset({source._fingerprint})"
    return str(source)


def identity(source: Any, split: str = "train") -> str:
    """What decides a source's records: a file's bytes, a dataset's fingerprint (``datasets``
    changes it with any change of the data or of the operations that made it)."""
    if isinstance(source, HubDataset) or is_hf_dataset(source) or Path(source).is_dir():
        return f"hf:{_hf_dataset(source, split)._fingerprint}"
    return f"file:{file_sha256(source)}"


def read_table_records(source: Any, split: str = "train") -> Iterator[Located]:
    if isinstance(source, HubDataset) or is_hf_dataset(source) or Path(source).is_dir():
        dataset = _hf_dataset(source, split)
        name = describe(source)
        _check_schema(dataset.data.schema, name)
        yield from _rows(dataset.with_format("arrow").iter(batch_size=ROWS_PER_READ), name)
        return
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    yield from _rows(_file_batches(path), str(path))


def _rows(batches: Iterator[Any], name: str) -> Iterator[Located]:
    row = 0
    for batch in batches:
        decoders = {f.name: _json_decoder(f.type) for f in batch.schema}
        decoders = {k: d for k, d in decoders.items() if d is not None}
        for record in batch.to_pylist():
            for key, decode in decoders.items():
                record[key] = decode(record[key])
            yield Located(record, f"{name}[row {row}]")
            row += 1


def _json_decoder(kind: Any) -> Any:
    """A function that parses the JSON text of ``arrow.json`` values (``datasets`` stores values of
    mixed type that way, e.g. a list of differently shaped dicts) nested anywhere in a value of
    Arrow type ``kind``; ``None`` when there are none."""
    import pyarrow as pa

    if getattr(kind, "extension_name", None) == "arrow.json":
        return lambda v: json.loads(v) if isinstance(v, str) else v
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = _json_decoder(kind.value_type)
        return None if inner is None else lambda v: v if v is None else [inner(x) for x in v]
    if pa.types.is_struct(kind):
        fields = {kind.field(i).name: _json_decoder(kind.field(i).type) for i in range(kind.num_fields)}
        fields = {k: d for k, d in fields.items() if d is not None}
        if not fields:
            return None
        return lambda v: v if v is None else {k: fields[k](x) if k in fields else x for k, x in v.items()}
    return None


def _file_batches(path: Path) -> Iterator[Any]:
    import pyarrow as pa

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            handle = pq.ParquetFile(path)
            _check_schema(handle.schema_arrow, str(path))
            yield from handle.iter_batches(batch_size=ROWS_PER_READ)
        elif suffix == ".csv":
            import pyarrow.csv as pcsv

            reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 24))
            _check_schema(reader.schema, str(path))
            yield from reader
        else:
            yield from _arrow_batches(path)
    except (pa.ArrowInvalid, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise DataError(str(path), f"not a readable {suffix[1:]} file ({error})") from None


def _arrow_batches(path: Path) -> Iterator[Any]:
    """Arrow IPC in its file form (``.feather``/``.arrow``) or its stream form (what ``datasets``
    writes as ``.arrow``), memory-mapped."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            source.seek(0)
            stream = pa.ipc.open_stream(source)
            _check_schema(stream.schema, str(path))
            yield from stream
            return
        _check_schema(reader.schema, str(path))
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def _check_schema(schema: Any, name: str) -> None:
    """Refuse a column whose type can hold no text (numbers where a field needs text): the column
    is named before any row is read. Which columns are fields is not known here, so only types
    that fit no field at all are refused when the column name is a conventional field name."""
    import pyarrow as pa

    for field in schema:
        kind = field.type
        text_like = pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
        messages = pa.types.is_list(kind) or pa.types.is_large_list(kind)
        if field.name in _TEXT_COLUMNS and not (text_like or messages):
            raise DataError(
                name, f"column {field.name!r} has type {kind}; it must hold text (or chat messages)"
            )


# Columns that always hold text in preference data (the default field names); a custom field
# name with the wrong type is reported at its first row by the record parser instead.
_TEXT_COLUMNS = ("prompt", "chosen", "rejected")


def _hf_dataset(source: Any, split: str) -> Any:
    """The ``datasets.Dataset`` a source names, read offline."""
    if is_hf_dataset(source):
        return source
    if not isinstance(source, HubDataset) and not any(
        (Path(source) / marker).is_file()
        for marker in ("dataset_dict.json", "dataset_info.json", "state.json")
    ):
        raise DataError(
            str(source),
            "is a directory; expected a data file (.jsonl, .json, either optionally .gz, .parquet, .csv, "
            ".arrow) or a Hugging Face dataset saved with save_to_disk (no dataset_info.json or "
            "dataset_dict.json in it)",
        )
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported: no downloads
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.config.HF_DATASETS_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    if isinstance(source, HubDataset) and (Path(source.name) / "dataset_dict.json").is_file():
        return _hf_dataset(source.name, source.split)  # a saved DatasetDict: the split named here
    if isinstance(source, HubDataset):
        try:
            return datasets.load_dataset(source.name, source.subset, split=source.split)
        except (FileNotFoundError, ValueError, ConnectionError) as error:
            raise DataError(
                describe(source),
                f"cannot load the dataset offline ({type(error).__name__}: {error}); it must already be "
                "in the local Hugging Face cache or on disk",
            ) from None
    path = Path(source)
    if (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if split not in loaded:
            available = ", ".join(loaded) or "none"
            raise DataError(str(path), f"the saved DatasetDict has no split {split!r} (splits: {available})")
        return loaded[split]
    return datasets.load_from_disk(str(path))
