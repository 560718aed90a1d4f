"""Materialisation: gate every feature table, then load the passing ones into Feast's online store.

A view loads incrementally while its Delta table is unchanged and its whole TTL window when the
table changed (see `materialize`). What each view last loaded is kept per online store in
`<workdir>/feast/materialized.json`, so a rerun with nothing new loads nothing.

    atelier materialize            # the CLI (feast apply, then this)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atelier.feast_store import STATE_FILE, VIEWS, feature_store, registered_view, utc
from atelier.lake import Lake
from atelier.locks import locked
from atelier.settings import Settings
from expectations.gate import validate_table
from expectations.suites import gate_checks

if TYPE_CHECKING:  # pragma: no cover
    from feast import FeatureStore

log = logging.getLogger(__name__)


@locked("materialize")
def materialize(
    settings: Settings,
    end: datetime | None = None,
    tables: Iterable[str] | None = None,
    store: FeatureStore | None = None,
) -> dict[str, dict[str, Any]]:
    """Gate every feature table that exists, then load the passing ones into the online store.

    end: the latest event time to load (default now, UTC). tables: lake feature tables
    (default all of `VIEWS`). Returns {view: {"table", "status", "failures", ...}}: status is
    "materialized" (with "mode", "start", "end", "rows", "version"), "up_to_date", "missing"
    (no Delta table yet), "unpublished" (commits a run has not published yet) or "gate_failed"
    ("failures" says why; the online store keeps what it had). Needs `apply`
    (`atelier.feast_store`) first.

    A view loads incrementally (`materialize_incremental(end)`: event times after the last
    run's end) while its Delta table is unchanged since the last run. When the table changed,
    it loads the whole TTL window up to `end` instead: rows replaced in place keep their event
    time (content features carry first_seen), so an incremental window would never see them.
    """
    end = utc(end or datetime.now(UTC))
    wanted = list(tables or VIEWS)
    unknown = sorted(set(wanted) - set(VIEWS))
    if unknown:
        raise ValueError(f"not feature tables: {unknown}; known: {sorted(VIEWS)}")
    store = store or feature_store(settings)
    lake = Lake(settings)
    state_path = settings.feast_dir / STATE_FILE
    state = _read_state(state_path)
    scope = _online_scope(store)
    result: dict[str, dict[str, Any]] = {}
    references = _reference_values(lake)
    unpublished = lake.unpublished()
    for table in wanted:
        view = VIEWS[table]
        if not lake.exists(table):
            result[view] = {"table": table, "status": "missing", "failures": []}
            continue
        if table in unpublished:
            # Feast reads the table's latest commit: wait until its run has published it.
            result[view] = _unpublished(table, *unpublished[table])
            continue
        data = lake.read_arrow(table)
        version = lake.version(table)
        gate = _gate(settings, table, data, references)
        if not gate.success:
            log.warning("%s: not materialised, the gate failed: %s", view, gate.failures)
            result[view] = {
                "table": table,
                "status": "gate_failed",
                "version": version,
                "failures": list(gate.failures),
            }
            continue
        fv = registered_view(store, view)
        key = f"{scope}|{view}"
        previous = state.get(key)
        last_end = utc(fv.most_recent_end_time) if fv.most_recent_end_time else None
        entry: dict[str, Any] = {
            "table": table,
            "version": version,
            "rows": data.num_rows,
            "end": end.isoformat(),
            "failures": [],
        }
        if previous and previous.get("version") == version and last_end is not None:
            if end <= last_end:
                result[view] = {**entry, "status": "up_to_date", "end": last_end.isoformat()}
                continue
            entry.update(mode="incremental", start=last_end.isoformat())
            store.materialize_incremental(end_date=end, feature_views=[view])
        else:
            start = end - fv.ttl
            entry.update(mode="window", start=start.isoformat())
            store.materialize(start_date=start, end_date=end, feature_views=[view])
        state[key] = {"version": version, "end": end.isoformat()}
        _write_state(state_path, state)
        result[view] = {**entry, "status": "materialized"}
    return result


def _gate(settings: Settings, table: str, data, references):
    """The table's suite over all its rows: contract, references, list checks."""
    return validate_table(
        settings,
        table,
        data,
        row_count_band=(1, settings.gate.max_rows),
        reference_values=_references_for(table, references),
        list_checks=gate_checks(settings, table, vector_size=_vector_size(table, data)),
    )


def _unpublished(table: str, published: int | None, latest: int) -> dict[str, Any]:
    return {
        "table": table,
        "status": "unpublished",
        "version": published,
        "failures": [
            f"{table}: version {latest} is committed but its run has not published it "
            f"(still running, or died between commits: rerun it); Feast keeps {published}"
        ],
    }


# The vector column whose rows must share one length, per table (see `_vector_size`).
_VECTOR_COLUMNS = {"attribute_vectors": "attribute_vector", "item_vectors": "vector"}


def _vector_size(table: str, data) -> int | None:
    """The length `attribute_vectors` / `item_vectors` rows must share: the commonest one in
    the table (the model's size is not known here; the jobs gate each batch against the
    model's). A new model rewrites every row of its table, so one length is expected."""
    if table not in _VECTOR_COLUMNS or data.num_rows == 0:
        return None
    import pyarrow.compute as pc

    column = data.column(_VECTOR_COLUMNS[table])
    counts = pc.value_counts(pc.list_value_length(column)).to_pylist()
    return max(counts, key=lambda c: (c["counts"], c["values"] or 0))["values"]


def _online_scope(store: FeatureStore) -> str:
    """Identifies the online store a materialisation wrote to (its state is kept per store)."""
    online = store.config.online_store
    where = getattr(online, "path", None) or getattr(online, "connection_string", "")
    return f"{store.project}|{online.type}|{where}"


def _reference_values(lake) -> dict[str, list]:
    """Keys of the referenced canonical tables that exist (a missing one is not checked)."""
    out = {}
    for table, column in (("products", "product_id"), ("customers", "customer_id")):
        if lake.exists(table):
            out[column] = lake.read_arrow(table, [column])[column].to_pylist()
    return out


def _references_for(table: str, references: Mapping[str, list]) -> dict[str, list] | None:
    from atelier.contracts import contract

    picked = {c: references[c] for c in contract(table).references if c in references}
    return picked or None


def _read_state(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_state(path: Path, state: Mapping[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(path)
