from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset
from .random_split import split_class_folders


@DATASET_REGISTRY.register()
class DescribableTextures(CoOpDataset):
    folder = "dtd"
    image_folder = "images"
    split_file = "split_zhou_DescribableTextures.json"
    download_hint = (
        "Extract dtd-r1.0.1.tar.gz (DTD page) into DATASET.ROOT and add "
        "split_zhou_DescribableTextures.json (CoOp DATASETS.md); see docs/DATASETS.md."
    )

    def create_split(self):
        return split_class_folders(self.image_dir)
