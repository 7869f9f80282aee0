"""Vectorised validation of raw chunks against a :class:`~kgrec.ingest.schemas.RecordSchema`.

:func:`resolve_columns` decides, once per chunk's set of columns, which column
feeds which field (the source's column map, then the field's own name, then
:data:`~kgrec.ingest.schemas.FIELD_ALIASES`) and turns every other column into a free
attribute with a safe property key. :func:`validate_chunk` converts each field
(see :mod:`kgrec.ingest.schemas` for the types) and returns the rows that passed, with
canonical column names, and one :class:`~kgrec.ingest.readers.Reject` for every row
that did not: the first field, in schema order, that failed, and why.

Reasons (``Reject.reason``): ``missing`` (a required value is empty or its column
is absent), ``not_id``, ``not_text``, ``not_number``, ``not_finite``,
``not_integer``, ``out_of_range``, ``not_timestamp``, ``unknown_event``,
``bad_path``, ``no_order``.

String columns (CSV, most JSONL and Parquet text) are checked with pandas string
operations; only columns of mixed Python objects fall back to a per-value loop.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kgrec.ingest.readers import NAN_LITERAL, Reject, excerpt
from kgrec.ingest.schemas import EVENT_ALIASES, FIELD_ALIASES, RecordSchema
from kgrec.kg.schema import CATEGORY_SEPARATOR, SchemaError, property_key

MAX_ID_LENGTH = 1024
_CONTROL = r"[\x00-\x1f\x7f]"
#: Property keys an attribute may not take (edge endpoints, keys of the graph).
RESERVED_KEYS = frozenset({"source", "target", "order", "key", "props", "rows"})
_TIMESTAMP_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
#: Timestamps beyond this many seconds from 1970 are ``out_of_range`` (the order derived
#: from a timestamp is in milliseconds and must fit an int64).
MAX_TIMESTAMP_SECONDS = 9.2e15
#: Texts of a NaN number (rejected as ``not_finite`` where a number is expected).
_NAN_TEXT = ("nan", "+nan", "-nan")
#: Columns whose JSON-object values are spread into one attribute per key.
SPREAD_COLUMNS = ("attributes",)


@dataclass
class SourceOptions:
    """How one source's columns map onto a record kind.

    Attributes:
        columns: field -> column name in the file (``{"user_id": "customer"}``).
        events: extra event names -> canonical event (``{"add-to-basket": "cart"}``).
        default_event: event of interactions when the file has no event column or a row's event is empty.
        category_separator: separator of category levels in a text path.
        timestamp_unit: unit of numeric timestamps (``s``, ``ms``, ``us``, ``ns``).
        order_from_rows: with neither an order nor a timestamp column, use the
            row number as the order (otherwise every row is rejected: ``no_order``).
    """

    columns: dict[str, str] = field(default_factory=dict)
    events: dict[str, str] = field(default_factory=dict)
    default_event: str = "purchase"
    category_separator: str = CATEGORY_SEPARATOR
    timestamp_unit: str = "s"
    order_from_rows: bool = True

    def __post_init__(self) -> None:
        if self.timestamp_unit not in _TIMESTAMP_UNITS:
            raise ValueError(f"timestamp_unit must be one of {sorted(_TIMESTAMP_UNITS)}, got {self.timestamp_unit!r}")
        if EVENT_ALIASES.get(self.default_event.lower()) is None:
            raise ValueError(f"default_event {self.default_event!r} is not an event")
        for name, event in self.events.items():
            if event not in EVENT_ALIASES.values():
                raise ValueError(f"event map {name!r} -> {event!r}: not one of {sorted(set(EVENT_ALIASES.values()))}")
        if not self.category_separator:
            raise ValueError("category_separator must not be empty")


@dataclass
class ColumnPlan:
    """Which column feeds which field, and the attribute key of every other column."""

    fields: dict[str, str]
    attributes: dict[str, str]
    warnings: list[str] = field(default_factory=list)


def resolve_columns(schema: RecordSchema, columns: list[str], options: SourceOptions) -> ColumnPlan:
    """Map the columns of a chunk onto ``schema``'s fields; the rest become attributes."""
    present = set(columns)
    fields: dict[str, str] = {}
    warnings: list[str] = []
    for f in schema.fields:
        if f.name in options.columns:
            col = options.columns[f.name]
            if col in present:
                fields[f.name] = col
            else:
                warnings.append(f"column {col!r} (mapped to {f.name}) is not in the file")
            continue
        if f.name in present:
            fields[f.name] = f.name
            continue
        for alias in FIELD_ALIASES.get(f.name, ()):
            if alias in present and alias not in options.columns.values():
                fields[f.name] = alias
                break
    used = set(fields.values())
    taken = set(schema.field_names) | RESERVED_KEYS
    attributes: dict[str, str] = {}
    for col in columns:
        if col in used:
            continue
        try:
            key = property_key(col)
        except SchemaError:  # pragma: no cover - property_key always succeeds on strings
            key = property_key(repr(col))
        if key in taken:
            key = f"attr_{key}"
        base, n = key, 1
        while key in taken:
            n += 1
            key = f"{base}_{n}"
        if key != col:
            warnings.append(f"column {col!r} stored as property {key!r}")
        taken.add(key)
        attributes[col] = key
    return ColumnPlan(fields, attributes, warnings)


# -- conversions ----------------------------------------------------------------------------
#
# Each converter takes a raw Series and returns (values, bad, reason, message):
# ``values`` the converted Series (None / NaN where missing), ``bad`` a boolean
# array of rows with an unusable value, ``missing`` a boolean array of empty values.


@dataclass
class Converted:
    values: pd.Series
    missing: np.ndarray
    bad: np.ndarray
    reason: str = ""
    message: Callable[[Any], str] | None = None
    #: per bad row (position): a message, and a finer reason than ``reason``
    messages: dict[int, str] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)


def _is_str(s: pd.Series) -> bool:
    if isinstance(s.dtype, pd.StringDtype) or s.dtype == str:
        return True
    if s.dtype == object:
        return pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty")
    return False


def _isna(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _elementwise(s: pd.Series, fn: Callable[[Any], tuple[Any, str | None]]) -> tuple[list, np.ndarray, np.ndarray, list]:
    """Apply ``fn(value) -> (converted, error)``; error "" = missing, None = fine."""
    out: list[Any] = []
    missing, bad = np.zeros(len(s), bool), np.zeros(len(s), bool)
    errors: list[str | None] = [None] * len(s)
    for i, v in enumerate(s.tolist()):
        if _isna(v):
            out.append(None)
            missing[i] = True
            continue
        value, error = fn(v)
        if error == "":
            missing[i] = True
            out.append(None)
        elif error is not None:
            bad[i] = True
            errors[i] = error
            out.append(None)
        else:
            out.append(value)
    return out, missing, bad, errors


def _blank(s: pd.Series) -> np.ndarray:
    return (s.isna() | (s.str.strip() == "")).to_numpy(dtype=bool)


def convert_text(s: pd.Series) -> Converted:
    if _is_str(s):
        missing = _blank(s)
        return Converted(s.where(~missing) if missing.any() else s, missing, np.zeros(len(s), bool))

    def one(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, str):
            return (v, None) if v.strip() else (None, "")
        if isinstance(v, bool):
            return None, "expected text, got a boolean"
        if isinstance(v, (int, np.integer)):
            return str(int(v)), None
        if isinstance(v, (float, np.floating)):
            return (repr(float(v)), None) if math.isfinite(v) else (None, "expected text, got a non-finite number")
        if v is NAN_LITERAL:
            return None, "expected text, got a non-finite number"
        if isinstance(v, (list, tuple, np.ndarray)) and all(isinstance(x, str) for x in v):
            text = "\n".join(v)
            return (text, None) if text.strip() else (None, "")
        return None, f"expected text, got {type(v).__name__}"

    values, missing, bad, errors = _elementwise(s, one)
    return _from_errors(values, missing, bad, errors, "not_text", s.index)


def _from_errors(values: list, missing: np.ndarray, bad: np.ndarray, errors: list, reason: str, index: pd.Index) -> Converted:
    messages = dict(zip(np.flatnonzero(bad).tolist(), [errors[i] for i in np.flatnonzero(bad)]))
    return Converted(pd.Series(values, index=index, dtype=object), missing, bad, reason, messages=messages)


def convert_id(s: pd.Series) -> Converted:
    if _is_str(s):
        # ids repeat (users, products of interactions): check each distinct value once
        codes, uniques = pd.factorize(s)
        u = pd.Series(uniques, dtype=str).str.strip()
        u_missing = (u == "").to_numpy(dtype=bool)
        u_bad = (u.str.contains(_CONTROL, regex=True) | (u.str.len() > MAX_ID_LENGTH)).to_numpy(dtype=bool)
        missing = np.append(u_missing, True)[codes]  # code -1 (a null) -> the appended value
        bad = np.append(u_bad, False)[codes] & ~missing
        values = pd.Series(u.array.take(codes, allow_fill=True), index=s.index)
        conv = Converted(values.where(~missing) if missing.any() else values, missing, bad, "not_id")
        conv.message = lambda raw: ("id longer than 1024 characters" if len(str(raw).strip()) > MAX_ID_LENGTH
                                    else "id contains control characters")
        return conv
    if pd.api.types.is_bool_dtype(s.dtype):
        return Converted(pd.Series([None] * len(s), index=s.index, dtype=object), s.isna().to_numpy(),
                         ~s.isna().to_numpy(dtype=bool), "not_id", lambda raw: "expected an id, got a boolean")
    if pd.api.types.is_integer_dtype(s.dtype):
        missing = s.isna().to_numpy(dtype=bool)
        values = s.astype(object).where(~missing, None).map(lambda x: None if x is None else str(int(x)))
        return Converted(values, missing, np.zeros(len(s), bool), "not_id")

    def one(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, str):
            t = v.strip()
            if not t:
                return None, ""
            if len(t) > MAX_ID_LENGTH:
                return None, "id longer than 1024 characters"
            if any(ord(c) < 32 or ord(c) == 127 for c in t):
                return None, "id contains control characters"
            return t, None
        if isinstance(v, (bool, np.bool_)):
            return None, "expected an id, got a boolean"
        if isinstance(v, (int, np.integer)):
            return str(int(v)), None
        if isinstance(v, (float, np.floating)):
            if math.isfinite(v) and float(v).is_integer():
                return str(int(v)), None
            return None, f"expected an id, got the number {v!r}"
        if v is NAN_LITERAL:
            return None, "expected an id, got the number NaN"
        return None, f"expected an id, got {type(v).__name__}"

    values, missing, bad, errors = _elementwise(s, one)
    return _from_errors(values, missing, bad, errors, "not_id", s.index)


def _numbers(s: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray, dict[int, str]]:
    """(float values, missing, bad, messages) for any raw column."""
    n = len(s)
    if pd.api.types.is_bool_dtype(s.dtype):
        bad = ~s.isna().to_numpy(dtype=bool)
        return pd.Series(np.nan, index=s.index), ~bad, bad, {i: "expected a number, got a boolean" for i in np.flatnonzero(bad).tolist()}
    if pd.api.types.is_numeric_dtype(s.dtype):
        values = s.astype("float64")
        return values, values.isna().to_numpy(dtype=bool), np.zeros(n, bool), {}
    if _is_str(s):
        missing = _blank(s)
        present = s.where(~missing) if missing.any() else s
        num = _arrow_cast(present, "float64")
        if num is None:
            num = pd.to_numeric(present.str.strip(), errors="coerce").astype("float64")
        bad = ~missing & num.isna().to_numpy(dtype=bool)
        if bad.any():  # the text NaN is a number, just not a finite one (the caller rejects it as such)
            bad &= ~present.str.strip().str.lower().isin(_NAN_TEXT).to_numpy(dtype=bool)
        return num, missing, bad, {i: "not a number" for i in np.flatnonzero(bad).tolist()}
    out = np.full(n, np.nan)
    missing = np.zeros(n, bool)
    bad = np.zeros(n, bool)
    messages: dict[int, str] = {}
    for i, v in enumerate(s.tolist()):
        if v is NAN_LITERAL:
            pass  # NaN but not missing: the caller rejects it as not finite
        elif _isna(v):
            missing[i] = True
        elif isinstance(v, (bool, np.bool_)):
            bad[i], messages[i] = True, "expected a number, got a boolean"
        elif isinstance(v, (int, float, np.integer, np.floating)):
            out[i] = float(v)
        elif isinstance(v, str):
            if not v.strip():
                missing[i] = True
                continue
            num = pd.to_numeric(pd.Series([v.strip()]), errors="coerce").iloc[0]
            if pd.isna(num) and v.strip().lower() in _NAN_TEXT:
                out[i] = np.nan
            elif pd.isna(num):
                bad[i], messages[i] = True, "not a number"
            else:
                out[i] = float(num)
        else:
            try:
                out[i] = float(v)  # Decimal and friends
            except (TypeError, ValueError):
                bad[i], messages[i] = True, f"expected a number, got {type(v).__name__}"
    return pd.Series(out, index=s.index), missing, bad, messages


def _arrow_cast(s: pd.Series, to: str) -> pd.Series | None:
    """Strings -> numbers with Arrow's strict parser; None when any value does not parse."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        arr = pc.cast(pa.array(s.astype(str).array if not isinstance(s.dtype, pd.StringDtype) else s.array,
                               from_pandas=True), getattr(pa, to)())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError, ValueError):
        return None
    if to == "int64":
        return pd.Series(pd.array(arr.to_pylist() if arr.null_count else arr.to_numpy(zero_copy_only=False),
                                  dtype="Int64"), index=s.index)
    return pd.Series(arr.to_numpy(zero_copy_only=False).astype("float64"), index=s.index)


def convert_float(s: pd.Series) -> Converted:
    values, missing, bad, messages = _numbers(s)
    arr = values.to_numpy(dtype=float)
    nonfinite = ~missing & ~bad & ~np.isfinite(np.where(np.isnan(arr) & ~missing & ~bad, np.inf, arr))
    for i in np.flatnonzero(nonfinite):
        messages[int(i)] = "not a finite number"
    conv = Converted(values.where(~(bad | nonfinite)), missing, bad | nonfinite, "not_number")
    conv.messages = messages
    conv.reasons = {int(i): "not_finite" for i in np.flatnonzero(nonfinite)}
    return conv


def convert_int(s: pd.Series) -> Converted:
    if _is_str(s):
        missing = _blank(s)
        ints = _arrow_cast(s.where(~missing) if missing.any() else s, "int64")
        if ints is not None:  # every value a plain integer: exact, no float detour
            return Converted(ints, missing, np.zeros(len(s), bool), "not_integer")
    conv = convert_float(s)
    arr = conv.values.to_numpy(dtype=float)
    ok = ~conv.missing & ~conv.bad
    with np.errstate(invalid="ignore"):
        fractional = ok & (np.mod(arr, 1) != 0)
        huge = ok & ~fractional & (np.abs(arr) >= 2.0**63)
    messages = dict(conv.messages)
    reasons = dict(conv.reasons)
    for i in np.flatnonzero(fractional):
        messages[int(i)], reasons[int(i)] = "not an integer", "not_integer"
    for i in np.flatnonzero(huge):
        messages[int(i)], reasons[int(i)] = "outside the int64 range", "out_of_range"
    bad = conv.bad | fractional | huge
    good = ~bad & ~conv.missing
    values = pd.Series(pd.array([None] * len(arr), dtype="Int64"), index=s.index)
    if good.any():
        values[good] = arr[good].astype(np.int64)
    out = Converted(values, conv.missing, bad, "not_integer")
    out.messages = messages
    out.reasons = reasons
    return out


def convert_timestamp(s: pd.Series, unit: str = "s") -> Converted:
    n = len(s)
    factor = _TIMESTAMP_UNITS[unit]
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        dt = s.dt.tz_convert("UTC") if getattr(s.dt, "tz", None) is not None else s.dt.tz_localize("UTC")
        missing = dt.isna().to_numpy(dtype=bool)
        secs = (dt - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        return Converted(secs, missing, np.zeros(n, bool), "not_timestamp")
    if _is_str(s) or s.dtype == object:
        text = s.map(lambda v: v if isinstance(v, str) else (None if _isna(v) else v))
        is_text = text.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        numeric_part = text.where(~is_text, None)
        nums, missing, bad, messages = _numbers(numeric_part.where(numeric_part.notna(), None).astype(object))
        secs = nums.to_numpy(dtype=float) * factor
        stripped = pd.Series([v.strip() if isinstance(v, str) else "" for v in text], index=s.index, dtype=object)
        blank = is_text & (stripped == "").to_numpy()
        missing = (missing & ~is_text) | blank
        bad = bad & ~is_text
        todo = is_text & ~blank
        if todo.any():
            as_num = pd.to_numeric(stripped[todo], errors="coerce").to_numpy(dtype=float)
            secs[np.flatnonzero(todo)] = as_num * factor
            nan_text = stripped[todo].str.lower().isin(_NAN_TEXT).to_numpy(dtype=bool)
            need_dt = np.flatnonzero(todo)[np.isnan(as_num) & ~nan_text]
            if len(need_dt):
                dt = pd.to_datetime(stripped.iloc[need_dt], format="ISO8601", utc=True, errors="coerce")
                val = (dt - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float)
                secs[need_dt] = val
                for i in need_dt[np.isnan(val)]:
                    bad[i] = True
                    messages[int(i)] = "not a number or an ISO-8601 date-time"
        return _finite_times(secs, missing, bad, messages, s.index)
    nums, missing, bad, messages = _numbers(s)
    return _finite_times(nums.to_numpy(dtype=float) * factor, missing, bad, messages, s.index)


def _finite_times(secs: np.ndarray, missing: np.ndarray, bad: np.ndarray, messages: dict[int, str],
                  index: pd.Index) -> Converted:
    """Seconds -> a Converted that rejects NaN/±inf (``not_finite``) and times outside
    :data:`MAX_TIMESTAMP_SECONDS` (``out_of_range``)."""
    usable = ~missing & ~bad
    nonfinite = usable & ~np.isfinite(secs)
    with np.errstate(invalid="ignore"):
        huge = usable & ~nonfinite & (np.abs(secs) > MAX_TIMESTAMP_SECONDS)
    reasons: dict[int, str] = {}
    for i in np.flatnonzero(nonfinite).tolist():
        messages[i], reasons[i] = "not a finite time", "not_finite"
    for i in np.flatnonzero(huge).tolist():
        messages[i], reasons[i] = f"more than {MAX_TIMESTAMP_SECONDS:g} seconds from 1970", "out_of_range"
    bad = bad | nonfinite | huge
    conv = Converted(pd.Series(np.where(bad | missing, np.nan, secs), index=index), missing, bad, "not_timestamp")
    conv.messages = messages
    conv.reasons = reasons
    return conv


def convert_event(s: pd.Series, extra: dict[str, str]) -> Converted:
    aliases = {**EVENT_ALIASES, **{k.strip().lower(): v for k, v in extra.items()}}
    text = convert_text(s)
    codes, uniques = pd.factorize(text.values)
    mapped = np.asarray([aliases.get(str(u).strip().lower()) for u in uniques] + [None], dtype=object)
    events = pd.Series(mapped[codes], index=s.index, dtype=object)  # code -1 -> the trailing None
    unknown = ~text.missing & ~text.bad & events.isna().to_numpy(dtype=bool)
    conv = Converted(events, text.missing, text.bad | unknown, "unknown_event")
    known = sorted(set(aliases.values()))
    conv.messages = {**text.messages,
                     **{int(i): f"unknown event; known: {known} (and aliases)" for i in np.flatnonzero(unknown)}}
    conv.reasons = {int(i): "not_text" for i in np.flatnonzero(text.bad)}
    return conv


def convert_path(s: pd.Series, separator: str) -> Converted:
    """Category paths -> the deepest category's id (levels joined by ``" > "``; ``""`` = no category).

    Each distinct path is checked once (catalogues share few paths among many products).
    """
    def levels(items: Any) -> tuple[str | None, str | None]:
        out = []
        for x in items:
            if not isinstance(x, str):
                return None, f"category level {excerpt(x)} is not a string"
            x = x.strip()
            if not x:
                return None, "empty category level"
            if separator in x or CATEGORY_SEPARATOR in x:
                return None, f"category level {x!r} contains the separator"
            out.append(x)
        return CATEGORY_SEPARATOR.join(out), None

    def key(v: Any) -> tuple:
        """A hashable stand-in: ("L", items) list, ("S", text) string, ("E",) empty, ("O", type) other."""
        if isinstance(v, (list, tuple, np.ndarray)):
            items = v.tolist() if isinstance(v, np.ndarray) else list(v)
            try:
                hash(tuple(items))
            except TypeError:
                return ("O", "a list holding lists or objects")
            return ("L", tuple(items))
        if isinstance(v, str):
            return ("S", v) if v.strip() else ("E",)
        if _isna(v):
            return ("E",)
        if v is NAN_LITERAL:
            return ("O", "the number NaN")
        return ("O", type(v).__name__)

    def check(k: tuple) -> tuple[str | None, str | None]:
        if k[0] == "E":
            return "", None
        if k[0] == "L":
            return levels(k[1])
        if k[0] == "O":
            return None, f"expected a list of category levels, got {k[1]}"
        text = k[1].strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                return None, "starts with '[' but is not a JSON list"
            if not isinstance(parsed, list):
                return None, "not a JSON list"
            return levels(parsed)
        return levels(text.split(separator))

    keys = [key(v) for v in s.tolist()]
    index: dict[tuple, int] = {}
    codes = np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.int64, count=len(keys))
    results = [check(k) for k in index]
    values = np.asarray([r[0] for r in results] + [None], dtype=object)
    failed = np.asarray([r[1] is not None for r in results] + [False], dtype=bool)
    bad = failed[codes] if len(codes) else np.zeros(0, bool)
    errors = {int(i): results[codes[i]][1] for i in np.flatnonzero(bad)}
    conv = Converted(pd.Series(values[codes] if len(codes) else [], index=s.index, dtype=object),
                     np.zeros(len(s), bool), bad, "bad_path")
    conv.messages = errors
    return conv


def attribute_values(s: pd.Series) -> pd.Series:
    """Free-attribute values as strings (None where empty); numbers/booleans/lists/objects as JSON."""
    if _is_str(s):
        return s.astype(object).where(~_blank(s), None)
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype(object).map(lambda v: None if _isna(v) else ("true" if v else "false"))
    if pd.api.types.is_integer_dtype(s.dtype):
        return s.astype(object).map(lambda v: None if _isna(v) else str(int(v)))

    def one(v: Any) -> str | None:
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if _isna(v):
            return None
        if isinstance(v, str):
            return v if v.strip() else None
        if isinstance(v, (bool, np.bool_)):
            return "true" if v else "false"
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        if isinstance(v, (float, np.floating)):
            return repr(float(v)) if math.isfinite(v) else str(v)
        if v is NAN_LITERAL:
            return "NaN"
        try:
            return json.dumps(v, ensure_ascii=False, default=str, sort_keys=True)
        except (TypeError, ValueError, RecursionError):
            return str(v)

    return pd.Series([one(v) for v in s.tolist()], index=s.index, dtype=object)


def spread_attributes(frame: pd.DataFrame, mapped: set[str]) -> pd.DataFrame:
    """Columns named in :data:`SPREAD_COLUMNS` holding JSON objects become one column per key."""
    for col in SPREAD_COLUMNS:
        if col not in frame.columns or col in mapped:
            continue
        values = frame[col].tolist()
        if not all(isinstance(v, dict) or _isna(v) for v in values):
            continue
        records = [v if isinstance(v, dict) else {} for v in values]
        extra = pd.DataFrame(records, index=frame.index)
        extra.columns = [f"{col}.{c}" if f"{col}.{c}" in frame.columns or c in frame.columns else str(c)
                         for c in extra.columns]
        frame = pd.concat([frame.drop(columns=[col]), extra], axis=1)
    return frame


# -- a chunk --------------------------------------------------------------------------------


@dataclass
class Validated:
    """Rows that passed (canonical columns + attributes + ``_row``/``_line``) and rejects."""

    clean: pd.DataFrame
    rejects: list[Reject]
    plan: ColumnPlan


def validate_chunk(
    schema: RecordSchema,
    frame: pd.DataFrame,
    rows: np.ndarray,
    lines: np.ndarray | None,
    options: SourceOptions,
    file: str,
) -> Validated:
    """Check and convert one chunk (see the module docstring)."""
    n = len(frame)
    frame = frame.reset_index(drop=True)
    frame = spread_attributes(frame, set(options.columns.values()))
    plan = resolve_columns(schema, [str(c) for c in frame.columns], options)
    ok = np.ones(n, bool)
    rejects: list[Reject] = []
    out: dict[str, Any] = {}

    def fail(mask: np.ndarray, fld: str, reason: str | dict[int, str], message: Callable[[int], str],
             raw: pd.Series | None) -> None:
        """Reject the rows of ``mask`` that are still fine (first failure wins)."""
        hit = mask & ok
        for i in np.flatnonzero(hit).tolist():
            why = reason.get(i, "") if isinstance(reason, dict) else reason
            value = None if raw is None else excerpt(raw.iloc[i])
            rejects.append(Reject(file, int(rows[i]), fld, why, message(i), value,
                                  None if lines is None else int(lines[i])))
        ok[hit] = False

    for f in schema.fields:
        col = plan.fields.get(f.name)
        if col is None:
            if f.required:
                fail(np.ones(n, bool), f.name, "missing", _constant(f"no column for required field {f.name!r}"), None)
            continue
        raw = frame[col]
        conv = _convert(f.type, raw, options)
        messages = conv.messages
        reasons = {i: conv.reasons.get(i, conv.reason) for i in np.flatnonzero(conv.bad).tolist()}

        def message(i: int, m: dict = messages, c: Converted = conv, r: pd.Series = raw) -> str:
            return m.get(i) or (c.message(r.iloc[i]) if c.message else c.reason)

        fail(conv.bad, f.name, reasons, message, raw)
        if f.required:
            fail(conv.missing, f.name, "missing", _constant(f"empty {f.name}"), raw)
        out[f.name] = conv.values
    _derive(schema, out, frame, rows, options, fail, plan, ok)
    clean = pd.DataFrame(out, index=frame.index) if out else pd.DataFrame(index=frame.index)
    for col, key in plan.attributes.items():
        clean[key] = attribute_values(frame[col])
    clean["_row"] = rows
    clean["_line"] = lines if lines is not None else rows
    return Validated(clean if ok.all() else clean[ok].reset_index(drop=True), rejects, plan)


def _constant(message: str) -> Callable[[int], str]:
    """The same reject message for every row."""
    return lambda i: message


def _convert(kind: str, raw: pd.Series, options: SourceOptions) -> Converted:
    if kind == "id":
        return convert_id(raw)
    if kind in ("text", "relation"):
        return convert_text(raw)
    if kind == "float":
        return convert_float(raw)
    if kind == "int":
        return convert_int(raw)
    if kind == "timestamp":
        return convert_timestamp(raw, options.timestamp_unit)
    if kind == "event":
        return convert_event(raw, options.events)
    if kind == "path":
        return convert_path(raw, options.category_separator)
    raise ValueError(f"unknown field type {kind!r}")  # pragma: no cover


def _derive(schema: RecordSchema, out: dict, frame: pd.DataFrame, rows: np.ndarray, options: SourceOptions,
            fail: Callable, plan: ColumnPlan, ok: np.ndarray) -> None:
    """Fields with defaults: interaction event/order, judgement query_id/label (``ok``: rows not rejected yet)."""
    n = len(frame)
    if schema.kind == "interaction":
        default = EVENT_ALIASES[options.default_event.lower()]
        if "event" not in plan.fields:
            out["event"] = pd.Series([default] * n, index=frame.index, dtype=object)
        else:
            events = out["event"]
            empty = events.isna().to_numpy(dtype=bool) & ok  # rows with an unusable event are rejected already
            if empty.any():
                plan.warnings.append(f"rows with an empty event get the default event {options.default_event!r}")
                out["event"] = events.where(~empty, default)
        if "order" not in plan.fields:
            if "timestamp" in plan.fields:
                ts = out["timestamp"].to_numpy(dtype=float)
                missing = np.isnan(ts)
                fail(missing, "timestamp", "missing", lambda i: "empty timestamp (the order comes from it)",
                     frame[plan.fields["timestamp"]])
                order = pd.Series(pd.array([None] * n, dtype="Int64"), index=frame.index)
                good = ~missing
                if good.any():
                    order[good] = np.round(ts[good] * 1000.0).astype(np.int64)
                out["order"] = order
            elif options.order_from_rows:
                plan.warnings.append("no order or timestamp column: the row number is the order")
                out["order"] = pd.Series(rows.astype(np.int64), index=frame.index, dtype="Int64")
            else:
                fail(np.ones(n, bool), "order", "no_order", lambda i: "no order or timestamp column", None)
                out["order"] = pd.Series(pd.array([None] * n, dtype="Int64"), index=frame.index)
        else:
            order = out["order"]
            fail(order.isna().to_numpy(dtype=bool), "order", "missing", lambda i: "empty order", frame[plan.fields["order"]])
    if schema.kind == "judgement":
        if "query" not in out:  # no query column: every row is already rejected
            out["query"] = pd.Series([None] * n, index=frame.index, dtype=object)
        if "query_id" in plan.fields:
            qid = out["query_id"]
            out["query_id"] = qid.where(qid.notna(), out["query"].map(lambda q: q.strip() if isinstance(q, str) else q))
        else:
            out["query_id"] = out["query"].map(lambda q: q.strip() if isinstance(q, str) else q)
        if "label" not in plan.fields:
            out["label"] = pd.Series(np.ones(n), index=frame.index)
        else:
            label = out["label"]
            fail(label.isna().to_numpy(dtype=bool), "label", "missing", lambda i: "empty label", frame[plan.fields["label"]])
        bad_q = out["query_id"].map(lambda q: not isinstance(q, str) or len(q) > MAX_ID_LENGTH).to_numpy(dtype=bool)
        fail(bad_q, "query_id", "not_id", lambda i: "query id empty or longer than 1024 characters", None)
