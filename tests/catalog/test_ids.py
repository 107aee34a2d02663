"""Ids that become paths or keys are checked at every entry point, file names made from ids
go through one safe encoding, and nothing removes files outside the folder it owns."""
import numpy as np
import pytest

from histstore.errors import InvalidInput, UnsafeRemoval
from histstore.ids import check_id, from_path_component, id_problem, path_component

BAD_IDS = ["", ".", "..", "a/b", "../x", "a\\b", "nul\x00byte", "tab\there", "new\nline", " lead",
           "trail ", "x" * 256, "é" * 128]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused_with_a_reason(bad):
    assert id_problem(bad) is not None
    with pytest.raises(InvalidInput, match="bad slide_id"):
        check_id(bad, "slide_id", "m.csv line 3")


@pytest.mark.parametrize("good", ["TCGA-AA-0001-01Z-00-DX1", "patient 7 block 2", "a.b", ".hidden", "x" * 255,
                                  "é" * 127, "50%", "~tilde"])
def test_good_ids_round_trip_through_one_safe_file_name(good):
    assert id_problem(good) is None
    name = path_component(good)
    assert "/" not in name and "\\" not in name and name not in (".", "..") and not name.startswith(".")
    assert len(name.encode()) <= 200
    if len(name) < 180:
        assert from_path_component(name) == good


def test_safe_names_never_collide_with_special_folders():
    from histstore.embeddings import arrays

    assert arrays.slide_key(".partial") != arrays.PARTIAL_DIR
    assert arrays.slide_key("..") not in ("..", ".")


def test_removal_outside_the_owner_is_refused(tmp_path):
    from histstore.embeddings import arrays
    from histstore.fsops import check_inside, remove_tree

    store_dir = tmp_path / "embeddings.zarr"
    set_dir = store_dir / "set"
    arrays.write_array(set_dir, "s1", np.ones((3, 2), np.float32))
    # the bug: a slide id '..' made remove_array delete the set folder
    arrays.remove_array(set_dir, "..")
    assert arrays.array_exists(set_dir, "s1")
    for target in (set_dir, set_dir / "..", tmp_path, set_dir / "." , "/"):
        with pytest.raises(UnsafeRemoval):
            remove_tree(target, set_dir)
    (tmp_path / "outside").mkdir()
    (set_dir / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(UnsafeRemoval):
        check_inside(set_dir / "link" / "x", set_dir)  # through a symlink out of the folder
    assert remove_tree(set_dir / "link", set_dir) and (tmp_path / "outside").is_dir()  # the link only


@pytest.mark.parametrize("row, words", [
    ("{p},..,c1", "bad slide_id"),
    ("{p},a/b,c1", "path separator"),
    ("{p},ok,../c", "bad case_id"),
    ("{p},\"tab\there\",c1", "control character"),
])
def test_manifest_ids_refused_before_anything_is_written(store, cli, synth6, tmp_path, row, words):
    m = tmp_path / "m.csv"
    m.write_text("path,slide_id,case_id\n" + row.format(p=synth6.slides[0].path) + "\n")
    r = cli("ingest", m)
    assert r.exit_code != 0 and words in r.output and "line 2" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM slides").scalar() == 0


@pytest.mark.parametrize("args, words", [
    (["labels", "import", "{f}", "--task", ".."], "bad task name"),
    (["cohort", "create", "..", "--sql", "SELECT slide_id FROM slides"], "bad cohort name"),
    (["embed", "--encoder", "resnet18", "--cohort", "c", "--name", "../x", "--random-init"], "bad embedding set name"),
    (["pretrain", "--cohort", "c", "--steps", "1", "--name", "a/b"], "bad encoder name"),
])
def test_names_from_options_are_checked(store, cli, tmp_path, args, words):
    f = tmp_path / "labels.csv"
    f.write_text("slide_id,tumor\ns1,tumor\n")
    r = cli(*[a.format(f=f) for a in args])
    assert r.exit_code != 0 and words in r.output and "Traceback" not in r.output, r.output
