from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset


@DATASET_REGISTRY.register()
class DemoWorld(CoOpDataset):
    """The generated styled-shapes world of docs/DEMO_WORLD.md (40 classes, 20 base / 20 new)."""

    folder = "demo_world"
    image_folder = "images"
    split_file = "split_zhou_DemoWorld.json"
    download_hint = "Generate it: python -m tools.demo_world --root <DATASET.ROOT> (see docs/DEMO_WORLD.md)."
