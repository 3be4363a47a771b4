"""Built-in datasets, the data directory setting, the registry and user-data loaders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fedblend.data import (
    DATA_DIR_ENV,
    DATASETS,
    SHAKESPEARE_VOCAB,
    ArraySplit,
    FederatedDataset,
    encode_text,
    from_arrays,
    from_torch_dataset,
    load_dataset,
    load_femnist,
    load_heart_disease,
    load_idx_pair,
    load_shakespeare,
    load_tabular_sites,
    read_idx,
    resolve_data_dir,
)
from fedblend.data.heart import HEART_FEATURES, HEART_SITES, _read_center, flamby_split
from fedblend.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


# --- data directory ---------------------------------------------------------------------------


def test_data_dir_precedence(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_data_dir(other) == other  # explicit beats the environment
    monkeypatch.delenv(DATA_DIR_ENV)
    default = (REPO.parent / "shared" / "data").resolve()
    if default.is_dir():  # default: <repo>/../shared/data
        assert resolve_data_dir(None).resolve() == default
    assert (data_dir / "README.md").is_file()


def test_missing_data_dir_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as e:
        load_dataset("heart_disease")
    assert DATA_DIR_ENV in str(e.value) and "--data-dir" in str(e.value) and "nowhere" in str(e.value)
    with pytest.raises(DataError, match="--data-dir"):
        resolve_data_dir(tmp_path / "also-missing")


def test_missing_file_names_file_and_setting(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert "mnist/train-images-idx3-ubyte.gz" in msg and DATA_DIR_ENV in msg and "--data-dir" in msg
    with pytest.raises(DataError, match="processed.cleveland.data"):
        load_heart_disease(tmp_path)
    with pytest.raises(DataError, match=DATA_DIR_ENV):
        load_femnist(tmp_path)


# --- heart disease (FLamby) ---------------------------------------------------------------------

# From FLamby's own code (sklearn train_test_split, random_state=43) run on these files:
# sha256[:16] of the int64 test row indices, and positive labels in train / test.
FLAMBY_TEST_IDX = {
    "cleveland": ("4f92f24211493e9c", [5, 13, 16, 24, 26, 34, 40, 42]),
    "hungary": ("8a7243ecfac687ba", [3, 7, 16, 21, 25, 26, 27, 28]),
    "switzerland": ("3b91f1b496a5f915", [5, 6, 7, 8, 13, 14, 18, 19]),
    "va": ("d33b065e24338e93", [1, 5, 6, 9, 12, 26, 29, 33]),
}
FLAMBY_POSITIVES = {"cleveland": (91, 48), "hungary": (65, 33), "switzerland": (30, 15), "va": (66, 35)}


def test_heart_flamby_split_sizes(data_dir):
    fd = load_heart_disease(data_dir)
    assert fd.site_ids == ["cleveland", "hungary", "switzerland", "va"]
    sizes = {s: (len(d.train), len(d.test)) for s, d in fd.sites.items()}
    assert sizes == {"cleveland": (199, 104), "hungary": (172, 89), "switzerland": (30, 16), "va": (85, 45)}
    assert sum(a + b for a, b in sizes.values()) == 740
    assert all(len(d.val) == 0 for d in fd.sites.values())
    assert fd.num_classes == 2 and fd.input_shape == (13,) and fd.kind == "tabular"
    assert fd.feature_names == HEART_FEATURES and len(HEART_FEATURES) == 13
    for sid, d in fd.sites.items():
        assert d.train.x.dtype == np.float32 and d.train.y.dtype == np.int64
        assert set(np.unique(d.train.y)) <= {0, 1}
        assert (int(d.train.y.sum()), int(d.test.y.sum())) == FLAMBY_POSITIVES[sid]


def test_heart_split_matches_flamby_indices(data_dir):
    for sid, rel in HEART_SITES.items():
        raw = _read_center(data_dir / rel)
        tr, te = flamby_split((raw[:, -1] != 0).astype(np.int64))
        digest, head = FLAMBY_TEST_IDX[sid]
        assert hashlib.sha256(te.astype(np.int64).tobytes()).hexdigest()[:16] == digest
        assert te[:8].tolist() == head
        assert np.intersect1d(tr, te).size == 0 and len(tr) + len(te) == len(raw)


def test_heart_normalized_per_center_with_own_train_stats(data_dir):
    fd = load_heart_disease(data_dir)
    raw = load_heart_disease(data_dir, normalize=False)
    for sid, d in fd.sites.items():
        x = d.train.x.astype(np.float64)
        np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
        std = x.std(axis=0, ddof=1)
        constant = raw.sites[sid].train.x.std(axis=0) == 0  # e.g. chol is 0 in every Swiss row
        np.testing.assert_allclose(std[~constant], 1.0, atol=1e-4)
        assert np.all(x[:, constant] == 0)
        r = raw.sites[sid]
        mean, sd = r.train.x.mean(0, dtype=np.float64), r.train.x.std(0, ddof=1, dtype=np.float64)
        np.testing.assert_allclose(d.test.x, (r.test.x - mean) / (sd + 1e-9), rtol=1e-5, atol=1e-5)
    assert constant.sum() == 0  # va: nothing constant
    assert np.all(raw.sites["switzerland"].train.x[:, HEART_FEATURES.index("chol")] == 0)


def test_heart_val_fraction_carves_from_train(data_dir):
    base = load_heart_disease(data_dir)
    a = load_heart_disease(data_dir, val_fraction=0.2, seed=3)
    b = load_heart_disease(data_dir, val_fraction=0.2, seed=3)
    c = load_heart_disease(data_dir, val_fraction=0.2, seed=4)
    for sid in base.site_ids:
        full = base.sites[sid].train
        s = a.sites[sid]
        assert len(s.val) == int(len(full) * 0.2) and len(s.train) + len(s.val) == len(full)
        pooled = np.concatenate([s.train.x, s.val.x])
        assert sorted(map(bytes, pooled)) == sorted(map(bytes, full.x))  # same rows, same features
        np.testing.assert_array_equal(s.test.x, base.sites[sid].test.x)
        assert s.version() == b.sites[sid].version()
    assert any(a.sites[s].version() != c.sites[s].version() for s in base.site_ids)


# --- MNIST / Fashion-MNIST ----------------------------------------------------------------------


def test_mnist_arrays_and_cache(data_dir):
    train, test = load_idx_pair("mnist", data_dir)
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert np.bincount(train.y).tolist()[:2] == [5923, 6742] and np.bincount(test.y).sum() == 10000
    again, _ = load_idx_pair("mnist", data_dir)
    assert again is train  # decoded once per process
    assert not train.x.flags.writeable  # the cache cannot be corrupted by a caller


def test_fashion_mnist_arrays(data_dir):
    train, test = load_idx_pair("fashion_mnist", data_dir)
    assert train.x.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert np.bincount(train.y).tolist() == [6000] * 10
    assert np.bincount(test.y).tolist() == [1000] * 10


def test_read_idx_rejects_bad_files(tmp_path):
    p = tmp_path / "bad.idx"
    p.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")  # says 5 bytes, has 2
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)
    p.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x08\x09")
    assert read_idx(p).tolist() == [7, 8, 9]


def test_mnist_federation_iid(data_dir):
    fd = load_dataset("mnist", data_dir, num_sites=10, seed=1)
    assert len(fd.sites) == 10 and fd.site_ids[0] == "site_00" and fd.num_classes == 10
    assert sum(len(s.train) + len(s.val) for s in fd.sites.values()) == 60000
    assert sum(len(s.test) for s in fd.sites.values()) == 10000
    assert all(len(s.val) == 600 for s in fd.sites.values())  # default val_fraction 0.1
    assert all(s.train.x.flags.writeable for s in fd.sites.values())
    again = load_dataset("mnist", data_dir, num_sites=10, seed=1)
    assert [s.version() for s in fd.sites.values()] == [s.version() for s in again.sites.values()]


def test_mnist_examples_per_site(data_dir):
    fd = load_dataset("fashion_mnist", data_dir, num_sites=100, examples_per_site=500, val_fraction=0.0)
    assert [len(s.train) for s in fd.sites.values()] == [500] * 100
    assert all(len(s.test) == 100 for s in fd.sites.values())
    assert fd.class_names[0] == "T-shirt/top"


def test_mnist_test_partition_same_follows_train_labels(data_dir):
    fd = load_dataset("mnist", data_dir, partition="shards", num_sites=20, test_partition="same", val_fraction=0)
    assert sum(len(s.test) for s in fd.sites.values()) == 10000
    for s in fd.sites.values():
        assert set(np.unique(s.test.y)) <= set(np.unique(s.train.y))


# --- FEMNIST and Shakespeare --------------------------------------------------------------------


def test_femnist_all_shards(data_dir):
    fd = load_femnist(data_dir)
    assert len(fd.sites) == 105 and fd.site_ids == sorted(fd.site_ids)
    assert sum(len(s.train) for s in fd.sites.values()) == 14708
    assert sum(len(s.test) for s in fd.sites.values()) == 1685
    assert fd.num_classes == 62 and fd.input_shape == (1, 28, 28) and fd.kind == "image"
    labels = np.concatenate([s.train.y for s in fd.sites.values()])
    assert len(np.unique(labels)) == 62
    x = fd.sites[fd.site_ids[0]].train.x
    assert x.dtype == np.float32 and x.shape[1:] == (1, 28, 28)
    assert 0.0 <= x.min() and x.max() <= 1.0 and float(np.median(x)) == 0.0  # inverted: background 0


def test_femnist_options(data_dir):
    leaf = load_femnist(data_dir, num_writers=5, invert=False)
    inv = load_femnist(data_dir, num_writers=5)
    assert leaf.site_ids == load_femnist(data_dir).site_ids[:5]
    w = leaf.site_ids[0]
    np.testing.assert_allclose(leaf.sites[w].train.x, 1.0 - inv.sites[w].train.x, atol=1e-7)
    assert float(np.median(leaf.sites[w].train.x)) == 1.0  # LEAF: 1.0 is background
    fd = load_dataset("femnist", data_dir, num_sites=7, val_fraction=0.2)
    assert len(fd.sites) == 7 and all(len(s.val) >= 1 for s in fd.sites.values())
    with pytest.raises(ConfigError, match="num_writers"):
        load_femnist(data_dir, num_writers=106)


def test_shakespeare_roles_and_test_counts(data_dir):
    fd = load_shakespeare(data_dir)
    assert len(fd.sites) == 10
    assert sum(len(s.test) for s in fd.sites.values()) == 3881  # len(y), not num_samples (4671)
    assert sum(len(s.train) for s in fd.sites.values()) == 41990
    iago = fd.sites["MUCH_ADO_ABOUT_NOTHING_IAGO"]
    assert (len(iago.train), len(iago.test)) == (13790, 1454)
    assert len(fd.sites["THE_TRAGEDY_OF_KING_LEAR_PHILOSTRATE"].test) == 13
    assert fd.num_classes == len(SHAKESPEARE_VOCAB) == 80 and fd.kind == "text"
    assert iago.train.x.shape == (13790, 80) and iago.train.x.dtype == np.int64


def test_shakespeare_encoding_matches_raw_json(data_dir):
    fd = load_shakespeare(data_dir)
    raw = json.loads((data_dir / "shakespeare_leaf_sample/train/all_data_niid_023_keep_64_train_9.json").read_text())
    role = "THE_TRAGEDY_OF_KING_LEAR_PHILOSTRATE"
    ud = raw["user_data"][role]
    x, y = fd.sites[role].train.x, fd.sites[role].train.y
    decoded = ["".join(SHAKESPEARE_VOCAB[i] for i in row) for row in x]
    assert decoded == ud["x"] and "".join(SHAKESPEARE_VOCAB[i] for i in y) == "".join(ud["y"])
    # LEAF windows slide by one character: the target is the next window's last character.
    assert np.array_equal(x[1:, -1], y[:-1]) and np.array_equal(x[1:, :-1], x[:-1, 1:])


def test_encode_text_rejects_unknown_characters():
    ids = encode_text(["ab", "c}"]).tolist()
    assert ids == [[53, 54], [55, 79]] and [SHAKESPEARE_VOCAB[i] for i in ids[1]] == ["c", "}"]
    with pytest.raises(DataError, match="'~'"):
        encode_text(["a~"])
    with pytest.raises(DataError, match="é"):
        encode_text(["é"])
    with pytest.raises(DataError, match="expected 2"):
        encode_text(["ab", "abc"])


# --- registry -----------------------------------------------------------------------------------


def test_registry_names_and_errors(data_dir):
    assert set(DATASETS) == {"heart_disease", "mnist", "fashion_mnist", "femnist", "shakespeare"}
    with pytest.raises(ConfigError) as e:
        load_dataset("cifar10", data_dir)
    assert "heart_disease" in str(e.value) and "shakespeare" in str(e.value)
    with pytest.raises(ConfigError, match="no natural clients"):
        load_dataset("mnist", data_dir, partition="natural")
    with pytest.raises(ConfigError, match="does not take option"):
        load_dataset("mnist", data_dir, invert=True)
    with pytest.raises(ConfigError, match="needs 'alpha'"):
        load_dataset("mnist", data_dir, partition="dirichlet")
    with pytest.raises(ConfigError, match=r"\[1, 4\]"):
        load_dataset("heart_disease", data_dir, num_sites=5)
    with pytest.raises(ConfigError, match="does not take"):
        load_dataset("mnist", data_dir, partition="iid", alpha=0.5)


def test_natural_dataset_can_be_pooled_and_repartitioned(data_dir):
    fd = load_dataset("heart_disease", data_dir, partition="iid", num_sites=3, seed=2)
    assert fd.site_ids == ["site_00", "site_01", "site_02"]
    assert sum(len(s.train) + len(s.val) for s in fd.sites.values()) == 486
    assert sum(len(s.test) for s in fd.sites.values()) == 254
    capped = load_dataset("heart_disease", data_dir, examples_per_site=50)
    assert [len(s.train) for s in capped.sites.values()] == [50, 50, 30, 50]


# --- user data ----------------------------------------------------------------------------------


def _frame(n: int, seed: int, label: str = "int"):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(0, 5, n), "target": y})
    if label == "str":
        df["target"] = np.array(["low", "mid", "high"])[y]
    return df


def test_tabular_sites_csv_and_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    _frame(100, 0).to_csv(tmp_path / "a.csv", index=False)
    _frame(50, 1).to_parquet(tmp_path / "b.parquet")
    fd = load_tabular_sites({"a": tmp_path / "a.csv", "b": tmp_path / "b.parquet"}, "target", seed=5)
    assert isinstance(fd, FederatedDataset) and fd.site_ids == ["a", "b"]
    assert fd.feature_names == ("a", "b") and fd.input_shape == (2,) and fd.num_classes == 3
    a = fd.sites["a"]
    assert (len(a.train), len(a.val), len(a.test)) == (72, 8, 20)
    assert (len(fd.sites["b"].test), len(fd.sites["b"].val)) == (10, 4)
    assert a.train.x.dtype == np.float32 and a.train.y.dtype == np.int64
    # a site loading only its own file gets the same split as in the full federation
    alone = load_tabular_sites({"b": tmp_path / "b.parquet"}, "target", seed=5)
    assert alone.sites["b"].version() == fd.sites["b"].version()
    only_a = load_tabular_sites({"a": tmp_path / "a.csv"}, "target", feature_columns=["b"], test_fraction=0.5)
    assert only_a.feature_names == ("b",) and len(only_a.sites["a"].test) == 50


def test_tabular_string_labels_and_classes(tmp_path):
    _frame(40, 2, label="str").to_csv(tmp_path / "s.csv", index=False)
    fd = load_tabular_sites({"s": tmp_path / "s.csv"}, "target")
    assert fd.class_names == ("high", "low", "mid")
    fixed = load_tabular_sites({"s": tmp_path / "s.csv"}, "target", classes=["low", "mid", "high"])
    assert fixed.class_names == ("low", "mid", "high")
    with pytest.raises(DataError, match="not in classes"):
        load_tabular_sites({"s": tmp_path / "s.csv"}, "target", classes=["low", "mid"])


def test_tabular_errors_and_missing_values(tmp_path):
    df = _frame(30, 3)
    df.loc[[1, 4], "a"] = np.nan
    df.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match="missing='drop'"):
        load_tabular_sites({"m": tmp_path / "m.csv"}, "target")
    fd = load_tabular_sites({"m": tmp_path / "m.csv"}, "target", missing="drop", test_fraction=0, val_fraction=0)
    assert len(fd.sites["m"].train) == 28
    with pytest.raises(DataError, match="does not exist"):
        load_tabular_sites({"x": tmp_path / "absent.csv"}, "target")
    with pytest.raises(DataError, match="no label column 'label'"):
        load_tabular_sites({"m": tmp_path / "m.csv"}, "label")
    df2 = _frame(10, 4)
    df2["a"] = "text"
    df2.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="not numeric"):
        load_tabular_sites({"t": tmp_path / "t.csv"}, "target")


def test_tabular_single_file_with_site_column(tmp_path):
    df = _frame(60, 5)
    df["hospital"] = np.repeat(["north", "south", "east"], 20)
    df.to_csv(tmp_path / "all.csv", index=False)
    fd = load_tabular_sites(
        tmp_path / "all.csv", "target", site_column="hospital", test_fraction=0.25, standardize=True
    )
    assert fd.site_ids == ["east", "north", "south"] and fd.feature_names == ("a", "b")
    for s in fd.sites.values():
        assert len(s.train) + len(s.val) + len(s.test) == 20
        np.testing.assert_allclose(s.train.x.mean(axis=0), 0.0, atol=1e-5)


def test_from_arrays_and_torch_dataset():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4)), rng.integers(0, 2, 50)
    fd = from_arrays({"s1": (x, y), "s2": {"train": (x[:30], y[:30]), "test": (x[30:], y[30:])}}, val_fraction=0.1)
    assert (len(fd.sites["s1"].train), len(fd.sites["s1"].val), len(fd.sites["s1"].test)) == (36, 4, 10)
    assert (len(fd.sites["s2"].train), len(fd.sites["s2"].val), len(fd.sites["s2"].test)) == (27, 3, 20)
    assert fd.kind == "tabular" and fd.input_shape == (4,) and fd.num_classes == 2
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x).float(), torch.from_numpy(y))
    td = from_torch_dataset({"t": ds}, test_fraction=0.2)
    all_x = np.concatenate([td.sites["t"].train.x, td.sites["t"].test.x])
    assert all_x.shape == (50, 4) and td.sites["t"].train.x.dtype == np.float32
    img = torch.utils.data.TensorDataset(torch.zeros(8, 1, 5, 5), torch.arange(8) % 3)
    tdi = from_torch_dataset({"i": (img, img)})
    assert tdi.kind == "image" and tdi.input_shape == (1, 5, 5) and len(tdi.sites["i"].test) == 8
    with pytest.raises(DataError, match="differ in length|labels"):
        from_arrays({"bad": (x, y[:3])})
    one = from_torch_dataset(ds)  # a single Dataset (not a {site: dataset} mapping) -> its ArraySplit
    assert isinstance(one, ArraySplit) and len(one) == 50 and one.y.dtype == np.int64
    np.testing.assert_allclose(one.x, x.astype(np.float32))


def test_public_names():
    import fedblend.data as data

    # the loaders, partitioners and statistics a user reaches for are exported and resolve
    for name in ("load_dataset", "partition", "site_stats", "heterogeneity", "from_arrays", "resolve_data_dir"):
        assert name in data.__all__
    assert len(set(data.__all__)) == len(data.__all__)
    assert all(hasattr(data, name) for name in data.__all__)


def test_array_split_subset_is_a_copy():
    s = ArraySplit(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 0]))
    sub = s.subset(np.array([0, 2]))
    sub.x[0, 0] = 99
    assert s.x[0, 0] == 0
