import os

from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset, read_lines
from .random_split import split_train_val


@DATASET_REGISTRY.register()
class OxfordPets(CoOpDataset):
    folder = "oxford_pets"
    image_folder = "images"
    split_file = "split_zhou_OxfordPets.json"
    download_hint = (
        "Extract images.tar.gz and annotations.tar.gz (Oxford-IIIT Pet page) into oxford_pets/ "
        "and add split_zhou_OxfordPets.json (CoOp DATASETS.md); see docs/DATASETS.md."
    )

    def create_split(self):
        return split_train_val(self._read_annotations("trainval.txt"), self._read_annotations("test.txt"))

    def _read_annotations(self, name):
        # Rows "<Breed_name>_<n> <class id from 1> <species> <breed id>"; the breed name,
        # lower-cased, is the class name (as in CoOp's split).
        path = os.path.join(self.dataset_dir, "annotations", name)
        rows = []
        for line in read_lines(path, "Annotation file", self.download_hint):
            if not line.startswith("#"):
                image_id, class_id = line.split()[:2]
                breed = image_id.rsplit("_", 1)[0].lower()
                rows.append([f"{image_id}.jpg", int(class_id) - 1, breed])
        return rows
