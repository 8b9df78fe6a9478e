from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset


@DATASET_REGISTRY.register()
class OxfordFlowers(CoOpDataset):
    folder = "oxford_flowers"
    image_folder = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    download_hint = (
        "Extract 102flowers.tgz (Oxford 102 Flowers page) into oxford_flowers/ and add "
        "split_zhou_OxfordFlowers.json (CoOp DATASETS.md); see docs/DATASETS.md."
    )
