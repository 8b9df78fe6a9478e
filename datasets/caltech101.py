from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset
from .random_split import split_class_folders

# Not object classes: clutter images and a near-duplicate of "Faces".
IGNORED_FOLDERS = ("BACKGROUND_Google", "Faces_easy")
# Singular names, as in split_zhou_Caltech101.json.
RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(CoOpDataset):
    folder = "caltech-101"
    image_folder = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    download_hint = (
        "Extract 101_ObjectCategories.tar.gz (Caltech101 page) into caltech-101/ and add "
        "split_zhou_Caltech101.json (CoOp DATASETS.md); see docs/DATASETS.md."
    )

    def create_split(self):
        return split_class_folders(self.image_dir, IGNORED_FOLDERS, RENAMES)
