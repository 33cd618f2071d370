"""The package's shape: no import cycles, imports inside functions only where they are meant to be
lazy, a lazy public namespace, and every exported name working."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import skimage_trd

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ("skimage_trd", "napari_trd")

# Third-party packages that may be imported inside a function: the optional dependencies (an
# import at the top would make them required) and heavy ones imported deliberately late so that
# `import skimage_trd` and the command line's help stay fast.
OPTIONAL_OR_HEAVY = {
    "cupy", "cupyx", "dask", "distributed", "zarr", "tifffile", "napari", "magicgui", "qtpy",
    "matplotlib", "PIL", "pooch", "scipy", "skimage", "tqdm", "numpy",
}
# The package's own modules imported inside a function, each with its reason.
DELIBERATELY_LAZY = {
    # the command line imports a subcommand's modules (numba, the kernels) only when it runs, so
    # that `skimage-trd --help` and usage errors answer at once
    ("skimage_trd.cli", "skimage_trd"),
    ("skimage_trd.cli", "skimage_trd._registry"),
    ("skimage_trd.cli", "skimage_trd._batch"),
    ("skimage_trd.cli", "skimage_trd.demo"),
    ("skimage_trd.cli", "skimage_trd.train.cli"),
    ("skimage_trd.cli", "skimage_trd._axes"),  # (--axes checked before any work)
    # npe2 imports the plugin package to read its manifest; the widgets (Qt, napari) load on use
    ("napari_trd.__init__", "napari_trd._widgets"),
    # the napari plugin loads the library when a widget first needs it
    ("napari_trd._jobs", "skimage_trd"),
    ("napari_trd._jobs", "skimage_trd.train"),
    # denoise_trd(adapt=True) loads the training package only when asked to adapt
    ("skimage_trd._adapt", "skimage_trd.train"),
    ("napari_trd._sample_data", "skimage_trd"),
}


def _modules():
    for pkg in PACKAGES:
        for path in sorted((SRC / pkg).rglob("*.py")):
            parts = list(path.relative_to(SRC).with_suffix("").parts)
            yield ".".join(parts), path


MODULES = dict(_modules())


def _resolve(mod, node):
    """The modules an import statement of module ``mod`` loads (the package's own only)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level == 0:
        base = node.module
    else:
        pkg = mod.split(".") if mod.endswith("__init__") else mod.split(".")[:-1]
        if mod.endswith("__init__"):
            pkg = pkg[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    # `from . import module` loads the module (its package is loaded already)
    return submodules if len(submodules) == len(node.names) else [base, *submodules]


def _own(name):
    if name in MODULES:
        return name
    if f"{name}.__init__" in MODULES:
        return f"{name}.__init__"
    return None


def _imports(mod, path):
    """(module-level imports, imports inside functions) of ``mod``, as lists of names."""
    tree = ast.parse(path.read_text())
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    inside.add(id(sub))
    top, lazy = [], []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            (lazy if id(node) in inside else top).extend((name, node.lineno)
                                                          for name in _resolve(mod, node))
    return top, lazy


def _find_cycle(graph):
    """A cycle of ``graph`` (dict: node -> set of nodes) as a list of nodes, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    graph = {}
    for mod, path in MODULES.items():
        top, _ = _imports(mod, path)
        graph[mod] = {_own(n) for n, _ in top} - {None, mod}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_inside_functions_are_optional_or_deliberate():
    bad = []
    for mod, path in MODULES.items():
        _, lazy = _imports(mod, path)
        for name, line in lazy:
            root = name.split(".")[0]
            if root in PACKAGES:
                own = _own(name)
                target = own.removesuffix(".__init__") if own else name
                if (mod, target) not in DELIBERATELY_LAZY and (mod, name) not in DELIBERATELY_LAZY:
                    bad.append(f"{mod}:{line} imports {name} inside a function")
            elif root not in OPTIONAL_OR_HEAVY:
                bad.append(f"{mod}:{line} imports {name} inside a function "
                           f"({'standard library' if root in sys.stdlib_module_names else 'required'}:"
                           " import it at the top)")
    assert not bad, "\n".join(bad)


def test_the_checks_above_can_fail():
    """The cycle finder and the import resolver on made-up modules."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    a = ast.parse("from .b import f\n").body[0]
    assert _resolve("skimage_trd._a", a) == ["skimage_trd.b"]
    a = ast.parse("from ..kernels import engine\n").body[0]
    assert _resolve("skimage_trd.train.run", a) == ["skimage_trd.kernels.engine"]
    a = ast.parse("from ..kernels import engine, BACKENDS\n").body[0]
    assert _resolve("skimage_trd.train.run", a) == ["skimage_trd.kernels",
                                                    "skimage_trd.kernels.engine"]
    a = ast.parse("from . import numba_cpu as nk\n").body[0]
    assert _resolve("skimage_trd.kernels.__init__", a) == ["skimage_trd.kernels.numba_cpu"]


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split()


def test_namespace_is_lazy():
    """Listing models loads neither Numba, nor the kernels, nor SciPy (docs/architecture.md)."""
    loaded = _run("import sys, skimage_trd; skimage_trd.list_models(); "
                  "print(*(m for m in ('numba', 'skimage_trd.kernels', 'scipy') "
                  "if m in sys.modules))")
    assert loaded == []
    loaded = _run("import sys, skimage_trd; skimage_trd.denoise_trd; "
                  "print(*(m for m in ('numba', 'skimage_trd.kernels.engine') if m in sys.modules))")
    assert loaded == ["numba", "skimage_trd.kernels.engine"]


def test_public_names():
    names = set(skimage_trd.__all__)
    assert {"denoise_trd", "deblock_trd", "deblock_jpeg", "denoise_trd_poisson", "sure_mse",
            "load_model", "list_models", "TRDModel", "plot_model"} <= names
    # test references and subpackages are not part of the flat namespace
    assert not names & {"stage_reference", "trd_reference", "train", "kernels"}
    for name in names:
        assert callable(getattr(skimage_trd, name)), name
        assert name in dir(skimage_trd)
    with pytest.raises(AttributeError):
        skimage_trd.stage_reference  # noqa: B018
    from skimage_trd.train import train_model
    assert skimage_trd.train.train_model is train_model


def test_model_cache_dir_and_jpeg_roundtrip(monkeypatch, tmp_path):
    """The two names made public for the napari plugin."""
    monkeypatch.setenv("SKIMAGE_TRD_CACHE", str(tmp_path / "cache"))
    assert skimage_trd.model_cache_dir() == tmp_path / "cache"
    pytest.importorskip("PIL")
    rng = np.random.default_rng(0)
    image = np.kron(rng.uniform(0, 255, (8, 8)), np.ones((8, 8)))
    decoded, table = skimage_trd.jpeg_roundtrip(image, 10)
    assert decoded.dtype == np.uint8 and decoded.shape == image.shape
    assert table.shape == (8, 8) and table.min() >= 1
    _, fine = skimage_trd.jpeg_roundtrip(image, 90)
    assert (table >= fine).all() and (table > fine).any()  # coarser steps at lower quality
    assert np.abs(decoded - image).mean() > 1  # quality 10 loses detail


def test_penalty_functions_and_plot_model():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    model = skimage_trd.load_model("trd-gauss-s25-7x7-5st")
    z = np.linspace(-200, 200, 101)
    phi, rho = skimage_trd.penalty_functions(model, 0, z)
    assert phi.shape == rho.shape == (model.n_filters, z.size)
    # rho is the penalty whose derivative is phi: d rho / dz = phi, and rho(0) = 0
    np.testing.assert_allclose(np.gradient(rho, z, axis=1)[:, 5:-5], phi[:, 5:-5],
                               atol=0.02 * np.abs(phi).max())
    np.testing.assert_allclose(rho[:, 50], 0, atol=1e-9)
    fig = skimage_trd.plot_model(model, stage=1, n_filters=4)
    assert len([ax for ax in fig.axes if ax.has_data()]) >= 8  # filter, phi and rho per filter
    import matplotlib.pyplot as plt

    plt.close(fig)


# Functions that still take more than six positional parameters, each with its reason. Numba
# kernels are exempt: they take arrays and scalars one by one (Numba takes no dataclasses).
MANY_POSITIONAL = {
    # the Python face of the Numba stage kernels, with their signature (it picks the kernel
    # compiled for the filter size)
    "skimage_trd.kernels.numba_cpu.trd_stage",
}


def _is_numba_kernel(node):
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name in ("njit", "jit", "vectorize", "guvectorize", "stencil"):
            return True
    return False


def test_at_most_six_positional_parameters():
    bad = []
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text())
        scopes = [(tree, mod)]
        while scopes:
            scope, prefix = scopes.pop()
            for node in ast.iter_child_nodes(scope):
                if isinstance(node, ast.ClassDef):
                    scopes.append((node, f"{prefix}.{node.name}"))
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    scopes.append((node, f"{prefix}.{node.name}"))
                    args = node.args.posonlyargs + node.args.args
                    n = len(args) - (1 if args and args[0].arg in ("self", "cls") else 0)
                    name = f"{prefix}.{node.name}"
                    if (n > 6 and not _is_numba_kernel(node) and name not in MANY_POSITIONAL
                            and not mod.endswith("_unrolled")):
                        bad.append(f"{name} takes {n} positional parameters")
    assert not bad, "\n".join(bad)


def _compares_backend_to_auto(tree):
    """Lines of ``tree`` comparing a name containing 'backend' with the string 'auto'."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, (ast.Name, ast.Attribute)):
            name = node.left.id if isinstance(node.left, ast.Name) else node.left.attr
            if "backend" in name and any(isinstance(c, ast.Constant) and c.value == "auto"
                                         for c in node.comparators):
                lines.append(node.lineno)
    return lines


def test_backend_and_array_module_told_in_one_place():
    # 'auto' is resolved by _arrays.resolve_backend only; CuPy arrays are told apart by
    # _arrays.array_module only (no duck-typing on .get, no __import__("cupy"))
    assert _compares_backend_to_auto(ast.parse('if backend == "auto": pass')) == [1]
    bad = []
    for mod, path in MODULES.items():
        text = path.read_text()
        if mod != "skimage_trd._arrays":
            bad += [f"{mod}:{n} resolves backend 'auto'"
                    for n in _compares_backend_to_auto(ast.parse(text))]
        for pattern in ('hasattr(', '__import__("cupy")'):
            for n, line in enumerate(text.splitlines(), 1):
                if pattern in line and (pattern != "hasattr(" or '"get"' in line):
                    bad.append(f"{mod}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)
