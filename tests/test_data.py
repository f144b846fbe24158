import json
from dataclasses import replace

import pytest

from editunlearn import data
from editunlearn.data import DataError, fetch, make_idk_targets, make_split


@pytest.fixture(scope="module")
def data_dir(mirror, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    for name in data.SOURCES:
        fetch(name, out / name, mirror, allow_download=False)
    return out


def test_fetch_from_mirror_verifies_and_copies(data_dir, mirror):
    for name, src in data.SOURCES.items():
        assert (data_dir / name).read_bytes() == (mirror / src.mirror_path).read_bytes()


def test_corrupt_mirror_file_is_named_with_the_fix(mirror, tmp_path):
    bad_mirror = tmp_path / "mirror"
    (bad_mirror / "pistol").mkdir(parents=True)
    original = (mirror / "pistol" / "factual_data.json").read_text()
    (bad_mirror / "pistol" / "factual_data.json").write_text(original.replace("Shakespeare", "Marlowe"))
    dest = tmp_path / "out" / "factual_data.json"
    with pytest.raises(DataError) as err:
        fetch("factual_data.json", dest, bad_mirror)
    message = str(err.value)
    assert "checksum mismatch" in message and str(bad_mirror / "pistol" / "factual_data.json") in message
    assert not dest.exists()  # nothing half-written


def test_missing_mirror_without_network_says_where_it_looked(tmp_path, monkeypatch):
    src = data.SOURCES["sample_data_1.json"]
    # port 9 (discard) on loopback: a connection that fails at once, like no network
    monkeypatch.setitem(data.SOURCES, src.name, replace(src, url="http://127.0.0.1:9/sample_data_1.json"))
    with pytest.raises(DataError) as err:
        fetch(src.name, tmp_path / src.name, tmp_path / "no-such-mirror", timeout=5)
    message = str(err.value)
    assert "sample_data_1.json" in message and "no-such-mirror" in message
    assert "127.0.0.1:9" in message and "mirror folder" in message
    with pytest.raises(DataError, match="Downloading is off"):
        fetch(src.name, tmp_path / src.name, tmp_path / "no-such-mirror", allow_download=False)


def test_factual_split_is_deterministic_and_disjoint(data_dir):
    a = make_split("factual", 40, 0, data_dir)
    b = make_split("factual", 40, 0, data_dir)
    c = make_split("factual", 40, 1, data_dir)
    assert a == b and a["forget"] != c["forget"]
    assert (a["n_forget"], a["n_retain"], a["seed"]) == (40, 177, 0)
    forget_ids = {it["id"] for it in a["forget"]}
    assert len(forget_ids) == 40 and forget_ids.isdisjoint(it["id"] for it in a["retain"])
    # a bigger forget set is sampled independently but deterministically too
    assert make_split("factual", 100, 0, data_dir)["n_retain"] == 117


def test_pistol_forget_set_is_whole_edges_and_has_factual_locality(data_dir):
    split = make_split("pistol", 40, 0, data_dir)
    edges = {it["edge"] for it in split["forget"]}
    assert len(edges) == 2 and split["n_forget"] == 40 and split["n_retain"] == 360
    assert edges == set(split["forget_edges"])
    assert not edges & {it["edge"] for it in split["retain"]}
    assert split["n_locality"] == 217
    with pytest.raises(ValueError, match="multiple of 20"):
        make_split("pistol", 30, 0, data_dir)


def test_idk_targets_are_seeded_lines_of_the_refusal_list(data_dir):
    split = make_split("factual", 20, 0, data_dir)
    refusals = data.load_refusals(data_dir)
    assert len(refusals) == 100
    targets = make_idk_targets(split, refusals, 0)
    assert targets == make_idk_targets(split, refusals, 0)
    assert [t["id"] for t in targets] == [it["id"] for it in split["forget"]]
    assert all(t["target"] in refusals for t in targets)
    assert len({t["target"] for t in targets}) > 5


def test_edited_dataset_file_is_caught_when_loaded(data_dir, tmp_path):
    copy = tmp_path / "factual_data.json"
    rows = json.loads((data_dir / "factual_data.json").read_text())
    rows[0]["answer"] = "Christopher Marlowe"
    copy.write_text(json.dumps(rows))
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load_qa("factual", tmp_path)
