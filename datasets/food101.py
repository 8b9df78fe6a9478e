from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset
from .random_split import split_class_folders


@DATASET_REGISTRY.register()
class Food101(CoOpDataset):
    folder = "food-101"
    image_folder = "images"
    split_file = "split_zhou_Food101.json"
    download_hint = (
        "Extract food-101.tar.gz (ETH Food-101 page) into DATASET.ROOT and add "
        "split_zhou_Food101.json (CoOp DATASETS.md); see docs/DATASETS.md."
    )

    def create_split(self):
        return split_class_folders(self.image_dir)
