"""Genes (driver lists) and per-case fold changes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from histstore.catalog.bulk import duckdb_connection, insert_frame, query_numpy
from histstore.errors import InvalidInput
from histstore.ids import refuse_bad_ids
from histstore.store import Store
from histstore.tabular import read_table, refuse_rows

_SYMBOL_OK = r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$"


@dataclass
class GeneImport:
    n_genes: int
    n_new: int
    n_marked_driver: int


@dataclass
class FoldChangeImport:
    source: str
    n_values: int
    n_cases: int
    n_genes: int
    n_new_genes: int
    replaced: int


def _read_symbols(path: Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"gene file {p} does not exist")
    text = p.read_text(errors="replace")
    first = text.splitlines()[0] if text.strip() else ""
    if "," in first or "\t" in first or first.strip().lower() == "symbol":
        df = read_table(p, required=["symbol"], what="gene file")
        symbols = df["symbol"]
    else:
        symbols = pd.Series([ln.strip() for ln in text.splitlines() if ln.strip()])
        if symbols.empty:
            raise InvalidInput(f"gene file {p} is empty")
        symbols.index = symbols.index - 1  # no header: line numbers start at 1
    refuse_rows(p, ~symbols.str.match(_SYMBOL_OK), "do not hold a gene symbol")
    return list(dict.fromkeys(symbols.tolist()))


def _add_genes(conn: sa.Connection, symbols, is_driver: bool, source: str | None) -> int:
    known = set(query_numpy(conn, "SELECT symbol FROM genes")["symbol"].tolist())
    new = [s for s in symbols if s not in known]
    insert_frame(conn, "genes", pd.DataFrame({"symbol": new, "is_driver": is_driver, "source": source}))
    return len(new)


def import_genes(store: Store, path: Path | str, drivers: bool = False,
                 source: str | None = None) -> GeneImport:
    """Add genes (one symbol per line, or a table with `symbol`); --drivers marks them as
    cancer driver genes, recording the list's name as their source."""
    symbols = _read_symbols(Path(path))
    source = source or Path(path).stem
    with store.write() as conn:
        n_new = _add_genes(conn, symbols, drivers, source)
        marked = 0
        if drivers:
            raw = duckdb_connection(conn)
            marked = raw.execute(
                "UPDATE genes SET is_driver = true, source = $1 WHERE symbol IN "
                "(SELECT unnest($2::VARCHAR[])) AND NOT is_driver", [source, symbols]).fetchone()[0]
    return GeneImport(len(symbols), n_new, n_new + max(marked, 0) if drivers else 0)


def _to_float(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series.replace("", np.nan), errors="coerce")


def import_fold_changes(store: Store, path: Path | str, source: str, fmt: str = "long",
                        value: str = "log2fc") -> FoldChangeImport:
    """Per-case fold changes. Long: case_id, gene, log2_fold_change[, p_adj]; wide: one row
    per case (`case_id`), one column per gene. value=ratio (HistCode's data) stores log2(ratio).
    Re-importing a source replaces it. Unknown genes are added as non-drivers."""
    path = Path(path)
    if not source:
        raise InvalidInput("--source is required (e.g. the study or pipeline the values came from)")
    if fmt not in ("long", "wide"):
        raise InvalidInput(f"--format must be long or wide, not {fmt!r}")
    if value not in ("log2fc", "ratio"):
        raise InvalidInput(f"--value must be log2fc or ratio, not {value!r}")
    if fmt == "long":
        vcol = "log2_fold_change" if value == "log2fc" else "fold_change"
        df = read_table(path, required=["case_id", "gene", vcol], what="fold-change file")
        raw = df[vcol]
        vals = _to_float(raw)
        refuse_rows(path, vals.isna() | ~np.isfinite(vals.fillna(0)), f"have a non-numeric, NaN or infinite {vcol}")
        p_adj = _to_float(df["p_adj"]) if "p_adj" in df.columns else pd.Series(np.nan, index=df.index)
        if "p_adj" in df.columns:
            bad_p = (df["p_adj"] != "") & (p_adj.isna() | (p_adj < 0) | (p_adj > 1))
            refuse_rows(path, bad_p, "have a p_adj that is not a number in [0, 1]")
        long = pd.DataFrame({"case_id": df["case_id"], "gene": df["gene"], "v": vals, "p_adj": p_adj})
        refuse_rows(path, (long.case_id == "") | (long.gene == ""), "have an empty case_id or gene")
        refuse_bad_ids(path, long.case_id, "case_id")
        dup = long.duplicated(["case_id", "gene"], keep=False)
        conflicting = dup & long.groupby(["case_id", "gene"])["v"].transform("nunique").gt(1)
        refuse_rows(path, conflicting, "give conflicting values for the same case and gene")
        long = long.drop_duplicates(["case_id", "gene"])
    else:
        df = read_table(path, required=["case_id"], what="fold-change file")
        genes = [c for c in df.columns if c != "case_id"]
        if not genes:
            raise InvalidInput(f"fold-change file {path} has no gene columns")
        num = df[genes].apply(_to_float)
        bad = (num.isna() | ~np.isfinite(num.fillna(0))) & (df[genes] != "")
        refuse_rows(path, bad.any(axis=1), "have a non-numeric, NaN or infinite value")
        refuse_rows(path, df["case_id"] == "", "have an empty case_id")
        refuse_bad_ids(path, df["case_id"], "case_id")
        refuse_rows(path, df["case_id"].duplicated(keep=False), "repeat a case_id")
        long = num.assign(case_id=df["case_id"]).melt(id_vars="case_id", var_name="gene", value_name="v")
        long = long.dropna(subset=["v"])
        long["p_adj"] = np.nan
    if value == "ratio":
        bad = long["v"] <= 0
        if bad.any():
            raise InvalidInput(f"{path.name}: {int(bad.sum())} fold-change ratio(s) are <= 0 and have "
                               "no log2; nothing was written")
        long["v"] = np.log2(long["v"])
    with store.write() as conn:
        known_cases = set(query_numpy(conn, "SELECT case_id FROM cases")["case_id"].tolist())
        unknown = sorted(set(long["case_id"]) - known_cases)
        if unknown:
            raise InvalidInput(f"{path.name}: {len(unknown)} case_id(s) are not in the catalog "
                               f"(e.g. {', '.join(unknown[:5])}); nothing was written",
                               hint="ingest the cases' slides first")
        genes = list(dict.fromkeys(long["gene"].tolist()))
        n_new = _add_genes(conn, genes, False, None)
        replaced = conn.exec_driver_sql(
            "SELECT count(*) FROM fold_changes WHERE source = ?", (source,)).scalar()
        conn.exec_driver_sql("DELETE FROM fold_changes WHERE source = ?", (source,))
        insert_frame(conn, "fold_changes", pd.DataFrame({
            "case_id": long["case_id"].values, "gene": long["gene"].values, "source": source,
            "log2_fold_change": long["v"].astype(float).values,
            "p_adj": long["p_adj"].astype(float).values}))
    return FoldChangeImport(source, len(long), long["case_id"].nunique(), len(genes), n_new, replaced)
