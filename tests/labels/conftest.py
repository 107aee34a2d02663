import pandas as pd
import pytest

from histstore.catalog.bulk import insert_frame

# 4 cases, each with a tumour (01Z) and a normal (11Z) slide, plus a non-TCGA slide
SLIDES = [(f"TCGA-AA-000{i}-{t}Z-00-DX1", f"TCGA-AA-000{i}") for i in range(1, 5) for t in ("01", "11")]
SLIDES.append(("local_slide_7", "patient7"))


@pytest.fixture
def catalog(store):
    with store.write() as conn:
        insert_frame(conn, "cases", pd.DataFrame({"case_id": sorted({c for _, c in SLIDES})}))
        insert_frame(conn, "slides", pd.DataFrame({"slide_id": [s for s, _ in SLIDES],
                                                   "case_id": [c for _, c in SLIDES],
                                                   "status": "registered"}))
    return store


def snapshot(store):
    """Every row of the tables these commands touch, to prove refusals change nothing."""
    with store.read() as conn:
        return {t: conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY ALL").all()
                for t in ("labels", "genes", "fold_changes", "cohorts", "cohort_slides")}
