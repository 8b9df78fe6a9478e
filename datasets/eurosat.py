from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset
from .random_split import split_class_folders

# Folder names are CamelCase codes; the split file (and prompts) use these descriptive names.
READABLE_NAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(CoOpDataset):
    folder = "eurosat"
    image_folder = "2750"
    split_file = "split_zhou_EuroSAT.json"
    download_hint = (
        "Extract EuroSAT.zip (RGB version, giving 2750/) into eurosat/ and add "
        "split_zhou_EuroSAT.json (CoOp DATASETS.md); see docs/DATASETS.md."
    )

    def create_split(self):
        return split_class_folders(self.image_dir, renames=READABLE_NAMES)
