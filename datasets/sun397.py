from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset


@DATASET_REGISTRY.register()
class SUN397(CoOpDataset):
    folder = "sun397"
    image_folder = "SUN397"
    split_file = "split_zhou_SUN397.json"
    download_hint = (
        "Extract SUN397.tar.gz (SUN database page) into sun397/ and add "
        "split_zhou_SUN397.json (CoOp DATASETS.md); see docs/DATASETS.md."
    )
