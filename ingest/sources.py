"""From paths and a column-mapping config to :class:`~kgrec.ingest.pipeline.Source` objects.

A path may be

* a file: its kind comes from ``--kind``/the config's ``[files]`` patterns, else
  from its name (``products.jsonl``, ``shop_interactions.csv.gz``... see
  ``stems`` in :mod:`kgrec.ingest.schemas`), its format from its extension;
* a directory of such files (files whose kind cannot be told are reported and skipped);
* a RecBole data set (a directory with ``*.inter``/``*.item``/``*.user``/``*.kg``/
  ``*.link``, or one of those files), see :mod:`kgrec.ingest.recbole`;
* an Amazon/UniSRec directory (``*.item2index``, ``*.text``, ``*.train.inter``...),
  see :mod:`kgrec.ingest.unisrec`.

The mapping config (TOML, JSON, or YAML when PyYAML is installed) lets a user's
own export load without renaming anything::

    [interaction]                       # a record kind (singular or plural)
    columns = { user_id = "customer", product_id = "sku", timestamp = "ts" }
    events = { "add-to-basket" = "cart" }
    default_event = "purchase"          # when there is no event column
    timestamp_unit = "ms"               # numeric timestamps: s | ms | us | ns

    [product]
    columns = { product_id = "sku", category_path = "breadcrumbs" }
    category_separator = "/"

    [files]                             # file name or glob -> kind
    "orders_*.csv" = "interaction"

    [csv]                               # how CSV/TSV files are written
    sep = ";"
    encoding = "latin-1"
    quote = '"'                         # "" = no quoting

    [ingest]                            # run settings (see kgrec.ingest.pipeline)
    dangling = { product = "create" }
    duplicates = "last"
    link_by_id = false

``--map FIELD=COLUMN`` (every kind that has FIELD) or ``--map KIND.FIELD=COLUMN``
on the command line adds to / overrides the file's column maps.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kgrec.ingest.pipeline import Source
from kgrec.ingest.readers import CsvDialect, SourceError, detect_format
from kgrec.ingest.recbole import SUFFIXES as RECBOLE_SUFFIXES
from kgrec.ingest.recbole import find_atomic_files, recbole_sources
from kgrec.ingest.schemas import SCHEMAS, kind_for_stem, kind_of
from kgrec.ingest.validate import SourceOptions

_OPTION_KEYS = {"columns", "events", "default_event", "category_separator", "timestamp_unit", "order_from_rows"}


@dataclass
class MappingConfig:
    """A parsed mapping config (see the module docstring)."""

    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    csv: dict[str, Any] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)

    def options(self, kind: str, base: SourceOptions | None = None) -> SourceOptions:
        """Source options of ``kind``: ``base`` (an adapter's defaults) updated by the config."""
        opts = replace(base) if base is not None else SourceOptions()
        cfg = self.kinds.get(kind, {})
        columns = {**opts.columns, **cfg.get("columns", {})}
        events = {**opts.events, **cfg.get("events", {})}
        rest = {k: v for k, v in cfg.items() if k not in ("columns", "events")}
        return replace(opts, columns=columns, events=events, **rest)

    def dialect(self, fmt: str) -> CsvDialect | None:
        if fmt not in ("csv", "tsv", "jsonl") or not self.csv:
            return None
        sep = self.csv.get("sep", "\t" if fmt == "tsv" else ",")
        quote = self.csv.get("quote", '"')
        return CsvDialect(sep=sep, quote=quote or None, encoding=self.csv.get("encoding", "utf-8"))

    def kind_for(self, path: Path) -> str | None:
        for pattern, kind in self.files.items():
            if fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(str(path), pattern):
                return kind
        return None


def parse_mapping(data: dict[str, Any]) -> MappingConfig:
    """Check and normalise a mapping config given as a dict."""
    cfg = MappingConfig()
    for section, value in data.items():
        if not isinstance(value, dict):
            raise ValueError(f"mapping config: [{section}] must be a table")
        if section == "files":
            cfg.files = {str(k): kind_of(str(v)) for k, v in value.items()}
        elif section == "csv":
            unknown = set(value) - {"sep", "quote", "encoding"}
            if unknown:
                raise ValueError(f"mapping config: [csv] has unknown keys {sorted(unknown)}")
            cfg.csv = dict(value)
        elif section == "ingest":
            unknown = set(value) - {"dangling", "duplicates", "link_by_id", "flush_rows", "chunk_bytes", "chunk_rows"}
            if unknown:
                raise ValueError(f"mapping config: [ingest] has unknown keys {sorted(unknown)}")
            cfg.ingest = dict(value)
        else:
            kind = kind_of(section)
            unknown = set(value) - _OPTION_KEYS
            if unknown:
                raise ValueError(f"mapping config: [{section}] has unknown keys {sorted(unknown)}; known: {sorted(_OPTION_KEYS)}")
            columns = value.get("columns", {})
            bad = set(columns) - set(SCHEMAS[kind].field_names)
            if bad:
                raise ValueError(f"mapping config: [{section}] maps unknown fields {sorted(bad)}; "
                                 f"{kind} has {list(SCHEMAS[kind].field_names)}")
            merged = cfg.kinds.setdefault(kind, {})
            merged.update({k: v for k, v in value.items() if k != "columns"})
            merged.setdefault("columns", {}).update({str(k): str(v) for k, v in columns.items()})
            SourceOptions(**merged)  # raises on bad values
    return cfg


def load_mapping(path: str | Path) -> MappingConfig:
    """Read a mapping config from a ``.toml``, ``.json`` or ``.yaml``/``.yml`` file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # pragma: no cover - Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        data = tomllib.loads(text)
    elif suffix == ".json":
        data = json.loads(text)
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError:  # pragma: no cover
            raise ValueError(f"{path}: YAML configs need PyYAML; use TOML or JSON") from None
        data = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"{path}: mapping configs are .toml, .json or .yaml")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table at the top level")
    return parse_mapping(data)


def apply_map_args(cfg: MappingConfig, items: list[str]) -> MappingConfig:
    """Add ``FIELD=COLUMN`` / ``KIND.FIELD=COLUMN`` items (the CLI's ``--map``) to ``cfg``."""
    for item in items:
        if "=" not in item:
            raise ValueError(f"--map {item!r}: expected FIELD=COLUMN or KIND.FIELD=COLUMN")
        target, column = (x.strip() for x in item.split("=", 1))
        if "." in target:
            kind_name, fld = target.split(".", 1)
            kinds = [kind_of(kind_name)]
            if fld not in SCHEMAS[kinds[0]].field_names:
                raise ValueError(f"--map {item!r}: {kinds[0]} has no field {fld!r}")
        else:
            fld = target
            kinds = [k for k, s in SCHEMAS.items() if fld in s.field_names]
            if not kinds:
                raise ValueError(f"--map {item!r}: no record kind has a field {fld!r}")
        for kind in kinds:
            cfg.kinds.setdefault(kind, {}).setdefault("columns", {})[fld] = column
    return cfg


@dataclass
class Discovery:
    """Sources found under the given paths, what was skipped, and adapter policy overrides."""

    sources: list[Source] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    dangling: dict[str, str] = field(default_factory=dict)
    adapters: list[str] = field(default_factory=list)


def discover(paths: list[str | Path], cfg: MappingConfig | None = None, kinds: dict[str, str] | None = None) -> Discovery:
    """Turn paths into sources (see the module docstring).

    Args:
        paths: files and directories.
        cfg: mapping config (column maps, file kinds, CSV dialect).
        kinds: file path or name -> kind, overriding everything else (the CLI's ``--kind``).
    """
    cfg = cfg or MappingConfig()
    kinds = {k: kind_of(v) for k, v in (kinds or {}).items()}
    out = Discovery()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise SourceError(f"{path}: no such file or directory")
        if path.is_dir():
            _directory(path, cfg, kinds, out)
        elif path.suffix in RECBOLE_SUFFIXES and _override(path, kinds, cfg) is None:
            _recbole([path], cfg, out)
        else:
            _file(path, cfg, kinds, out, explicit=True)
    return out


def _override(path: Path, kinds: dict[str, str], cfg: MappingConfig) -> str | None:
    for key in (str(path), path.name):
        if key in kinds:
            return kinds[key]
    return cfg.kind_for(path)


#: Files a data directory may hold that are not tables (skipped without a word).
NOT_TABLES = (".md", ".rst", ".toml", ".yaml", ".yml", ".lock", ".pdf", ".html")


def _directory(path: Path, cfg: MappingConfig, kinds: dict[str, str], out: Discovery) -> None:
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() not in NOT_TABLES and not p.name.upper().startswith(("README", "LICENSE")))
    if any(p.suffix == ".item2index" for p in files) and any(p.suffix == ".text" for p in files):
        _unisrec(path, files, out)
        return
    if any(p.suffix in RECBOLE_SUFFIXES for p in files):
        _recbole(find_atomic_files(path), cfg, out)
        return
    for p in files:
        _file(p, cfg, kinds, out, explicit=False)


def _file(path: Path, cfg: MappingConfig, kinds: dict[str, str], out: Discovery, explicit: bool) -> None:
    kind = _override(path, kinds, cfg)
    if kind is None:
        stem = path.name.split(".")[0] if path.name.count(".") else path.stem
        kind = kind_for_stem(stem)
    try:
        fmt = detect_format(path)
    except SourceError:
        if explicit:
            raise
        out.skipped.append(f"{path}: unknown format")
        return
    if kind is None:
        message = f"{path}: cannot tell the record kind from the name; use --kind {path.name}=KIND or [files] in the config"
        if explicit:
            raise SourceError(message)
        out.skipped.append(message)
        return
    out.sources.append(Source(kind, path=path, format=fmt, dialect=cfg.dialect(fmt), options=cfg.options(kind)))


def _recbole(paths: list[Path], cfg: MappingConfig, out: Discovery) -> None:
    sources, overrides = recbole_sources(paths)
    for s in sources:
        s.options = cfg.options(s.kind, s.options)
    out.sources += sources
    out.dangling.update(overrides)
    out.adapters.append("recbole")


def _unisrec(path: Path, files: list[Path], out: Discovery) -> None:
    from kgrec.ingest.unisrec import read_unisrec

    names = sorted({p.stem for p in files if p.suffix == ".item2index"})
    for name in names:
        tables = read_unisrec(path, name)
        out.sources += tables_sources(tables, prefix=f"{path}/{name}")
    out.adapters.append("unisrec")


def tables_sources(tables: Any, prefix: str = "tables") -> list[Source]:
    """Frame sources for :class:`~kgrec.ingest.tables.CatalogTables` (products, users, interactions)."""
    return [
        Source("product", frame=tables.products, name=f"{prefix}:products"),
        Source("user", frame=tables.users, name=f"{prefix}:users"),
        Source("interaction", frame=tables.interactions, name=f"{prefix}:interactions"),
    ]
