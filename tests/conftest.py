import fcntl
import importlib.util
import os
import shutil
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from clipprompt.clip_loading import build_tiny_clip, save_clip_state_dict

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # pytest-xdist: the cores are shared by the workers (and the train.py runs they start), each
    # taking its share of threads rather than every worker spinning one per core.
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny_clip():
    """A small random ViT CLIP in fp32 (frozen), shared by the session's tests."""
    model = build_tiny_clip()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def shared_folder(tmp_path_factory, name, make):
    """The folder `name`, filled by `make(folder)` once per test run: with pytest-xdist, once for
    all workers (the first that asks makes it under a lock, the others wait and reuse it), so that
    the data sets and trained runs of the end-to-end tests are not made once per worker. A folder
    whose making failed is made again by the next one that asks."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above every worker's own
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory, tiny_clip):
    """The tiny CLIP saved as a plain state dict, loadable through MODEL.BACKBONE.NAME."""
    folder = shared_folder(
        tmp_path_factory, "clip", lambda f: save_clip_state_dict(tiny_clip, str(f / "tiny_clip.pt"))
    )
    return str(folder / "tiny_clip.pt")


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory):
    """`tiny_open_clip(kind)`: (the `TinyOpenCLIP` of tests/open_clip_models.py, its loaded
    frozen model), kind "causal", "layerscale" or "siglip"; each written once per session."""
    from tests.open_clip_models import write_model

    made = {}

    def get(kind):
        if kind not in made:
            spec = write_model(kind, str(tmp_path_factory.mktemp(f"open_clip_{kind}")))
            made[kind] = (spec, spec.load())
        return made[kind]

    return get


@pytest.fixture(scope="session")
def pets(tmp_path_factory):
    """Data root holding a generated Oxford Pets (6 classes; 4 train, 2 val and 3 test images
    per class, random pixels) for the end-to-end runs."""
    from tests.dataset_layouts import make_oxford_pets
    from tests.e2e import randomise_images

    def make(root):
        randomise_images(make_oxford_pets(str(root), num_classes=6, per_class=(4, 2, 3)).dataset_dir)

    return str(shared_folder(tmp_path_factory, "pets", make))


@pytest.fixture(scope="session")
def dtd(tmp_path_factory):
    """Data root holding a generated DTD (6 classes; 4 train, 2 val and 3 test images per class)."""
    from tests.dataset_layouts import make_dtd
    from tests.e2e import randomise_images

    def make(root):
        randomise_images(make_dtd(str(root), num_classes=6, per_class=(4, 2, 3)).dataset_dir)

    return str(shared_folder(tmp_path_factory, "dtd", make))


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, tiny_clip_path, pets, dtd):
    """`base_run(name)`: the output directory of a 2-epoch train.py run of `tests.e2e.CASES[name]`
    on the base classes (seed 1), trained once per test run on first use (`shared_folder`)."""
    from tests.e2e import CASES, run_train

    roots = {"pets": pets, "dtd": dtd}

    def train(folder, case):
        out = str(folder / "train_base")
        run_train(*case.args(roots[case.data], tiny_clip_path, out, "DATASET.SUBSAMPLE_CLASSES", "base"))

    def get(name):
        folder = shared_folder(tmp_path_factory, f"base_run_{name}", lambda f: train(f, CASES[name]))
        return str(folder / "train_base")

    return get


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors: a second thread gains nothing, and on
    a CPU shared with other jobs threads waiting for each other made such modules 5 to 40
    times slower. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _run_from_repository_root():
    """Config paths in tests are relative to the repository root, as in README's commands."""
    previous = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(previous)


def dassl_missing():
    """Why Dassl cannot be used (`NO_DASSL=1` set-ups have none), or "" when it can."""
    try:
        found = importlib.util.find_spec("dassl") is not None
    except ImportError:
        found = False
    return "" if found else "Dassl is not installed (NO_DASSL=1 set-up; see README set-up)"


def pytest_collection_modifyitems(items):
    """Tests that use a session's trained runs are end-to-end tests (`-m "not e2e"` skips them):
    the first of them trains the run with train.py in a subprocess. Without Dassl, train.py cannot
    run: every end-to-end test is skipped, saying so."""
    for item in items:
        if "base_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
    if reason := dassl_missing():
        for item in items:
            if item.get_closest_marker("e2e") is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item):
    """Before the test's fixtures (a session's trained runs among them) are set up: only e2e
    tests may start train.py (tests.e2e.run_train refuses otherwise)."""
    from tests import e2e

    e2e.E2E_ALLOWED = item.get_closest_marker("e2e") is not None
