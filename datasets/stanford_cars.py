import os

from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset


@DATASET_REGISTRY.register()
class StanfordCars(CoOpDataset):
    folder = "stanford_cars"
    image_folder = ""  # split rows start with cars_train/ or cars_test/
    split_file = "split_zhou_StanfordCars.json"
    download_hint = (
        "Extract cars_train.tgz, cars_test.tgz and car_devkit.tgz (Stanford Cars page) into "
        "stanford_cars/ and add split_zhou_StanfordCars.json (CoOp DATASETS.md); "
        "see docs/DATASETS.md."
    )

    def required_paths(self):
        return [os.path.join(self.dataset_dir, f) for f in ("cars_train", "cars_test")]
