import pytest

from histstore.ingest import ingest
from histstore.wsi.tiling import TilingSpec

# 64 px tiles at 1 um/px: the same tissue as HistCode's 128 px at 0.5, at a quarter of the pixels
SMALL = TilingSpec(target_mpp=1.0, tile_size=64)


@pytest.fixture
def ingested(store, synth6, tmp_path):
    """Three synthetic slides ingested into cohort 'syn'."""
    m = tmp_path / "three.csv"
    m.write_text("path,slide_id\n" + "".join(f"{s.path},{s.slide_id}\n" for s in synth6.slides[:3]))
    ingest(store, m, SMALL, cohort="syn", workers=1, show_progress=False)
    return store
