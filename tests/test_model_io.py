"""Saving and loading models; malformed and unsafe files are refused with the file named."""

import json
import pickle

import numpy as np
import pytest
from conftest import AUTHORS, random_model, require_shared

from skimage_trd import ModelFileError, TRDModel, import_matlab_model, load_model
from skimage_trd.kernels.reference import trd_reference


def test_roundtrip(tmp_path, model):
    model.metadata["provenance"] = {"command": "x", "seed": 3}
    path = model.save(tmp_path / "m.npz")
    back = TRDModel.load(path)
    for key in ("filters", "weights", "centers", "lambdas"):
        np.testing.assert_array_equal(getattr(back, key), getattr(model, key))
    assert back.precision == model.precision and back.sigma == model.sigma
    assert back.metadata == model.metadata and back.name == model.name
    assert load_model(str(path)).n_stages == model.n_stages


def _write(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _arrays(model):
    return {
        "filters": model.filters, "weights": model.weights, "centers": model.centers,
        "precision": np.array(model.precision), "lambdas": model.lambdas,
        "metadata": np.array(json.dumps(model.to_dict())),
    }


def test_truncated_file(tmp_path, model):
    path = model.save(tmp_path / "m.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="m.npz"):
        TRDModel.load(path)


def test_object_array_is_not_unpickled(tmp_path, model):
    arrays = _arrays(model)
    arrays["weights"] = np.array([object()], dtype=object)
    path = _write(tmp_path / "evil.npz", **arrays)
    with pytest.raises(ModelFileError, match="evil.npz"):
        TRDModel.load(path)


def test_pickle_file_is_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    path.write_bytes(pickle.dumps({"filters": 1}))
    with pytest.raises(ModelFileError, match="pickled.npz"):
        TRDModel.load(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(weights=a["weights"][:, :, :-1]), "weights must have shape"),
        (lambda a: a.update(weights=np.where(a["weights"] > 0, np.nan, 1.0)), "NaN"),
        (lambda a: a.update(filters=a["filters"].astype(np.int64)), "dtype"),
        (lambda a: a.pop("lambdas"), "lambdas"),
        (lambda a: a.pop("filters"), "missing"),
        (lambda a: a.update(metadata=np.array("{not json")), "JSON"),
        (lambda a: a.update(metadata=np.array(json.dumps({"format_version": 99}))), "version"),
    ],
)
def test_malformed_files(tmp_path, model, change, message):
    arrays = _arrays(model)
    change(arrays)
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelFileError, match=message):
        TRDModel.load(path)


def test_missing_and_unknown(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        TRDModel.load(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


def test_validation_of_constructor():
    m = random_model()
    with pytest.raises(ValueError, match="task"):
        TRDModel(m.filters, m.weights, m.centers, m.precision, m.lambdas, task="sharpen", sigma=25)
    with pytest.raises(ValueError, match="lambdas"):
        TRDModel(m.filters, m.weights, m.centers, m.precision, None, sigma=25)
    with pytest.raises(ValueError, match="equidistant"):
        TRDModel(m.filters, m.weights, m.centers ** 3, m.precision, m.lambdas, sigma=25)


# ------------------------------------------------------------- authors' models (../shared)
@pytest.mark.shared
def test_import_authors_models():
    folder = require_shared(AUTHORS / "denoising")
    m25 = import_matlab_model(folder / "JointTraining_7x7_400_180x180_stage=5_sigma=25.mat")
    assert (m25.n_stages, m25.n_filters, m25.kernel_size) == (5, 48, 7)
    assert m25.sigma == 25 and m25.precision == 0.01 and m25.centers[0] == -310
    # filters: zero mean, unit norm
    assert np.allclose(m25.filters.sum(axis=(-2, -1)), 0, atol=1e-10)
    assert np.allclose((m25.filters ** 2).sum(axis=(-2, -1)), 1)
    m50 = import_matlab_model(folder / "JointTraining_7x7_400_180x180_stage=5_sigma=50.mat")
    assert m50.precision == 0.0064 and m50.centers[0] == -387.5 and m50.centers.size == 63
    m5 = import_matlab_model(folder / "JointTraining_5x5_400_180x180_stage=5_sigma=15.mat")
    assert (m5.n_filters, m5.kernel_size) == (24, 5)
    deb = import_matlab_model(AUTHORS / "jpeg_deblocking" / "JointTraining_7x7_400_176X176_stage=4.mat")
    assert deb.task == "deblock" and deb.lambdas is None and deb.quality == 10 and deb.n_stages == 4


@pytest.mark.shared
def test_imported_model_roundtrips_through_npz(tmp_path):
    folder = require_shared(AUTHORS / "denoising")
    m = load_model(folder / "JointTraining_5x5_400_180x180_stage=5_sigma=25.mat")
    back = TRDModel.load(m.save(tmp_path / "a.npz"))
    f = np.random.default_rng(0).uniform(0, 255, (12, 10))
    np.testing.assert_array_equal(trd_reference(f, back), trd_reference(f, m))


def test_not_a_matlab_model(tmp_path):
    bad = tmp_path / "x.mat"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="x.mat"):
        import_matlab_model(bad)
