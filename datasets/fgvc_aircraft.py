import os

from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset, read_lines


@DATASET_REGISTRY.register()
class FGVCAircraft(CoOpDataset):
    """The official variant-level train/val/test lists; there is no split json."""

    folder = "fgvc_aircraft"  # the data/ folder of fgvc-aircraft-2013b, renamed
    image_folder = "images"
    download_hint = (
        "Extract fgvc-aircraft-2013b.tar.gz (FGVC-Aircraft page), keep its data/ folder and "
        "rename it to fgvc_aircraft/; see docs/DATASETS.md."
    )

    def read_classnames(self):
        return self._read_lines("variants.txt")

    def read_split(self, name):
        list_file = f"images_variant_{name}.txt"
        label_of = {variant: y for y, variant in enumerate(self.all_classnames)}
        rows = []
        for line in self._read_lines(list_file):
            # "<image id> <variant name, may contain spaces>"
            image_id, variant = line.split(" ", 1)
            if variant not in label_of:
                raise ValueError(
                    f"{os.path.join(self.dataset_dir, list_file)} lists variant {variant!r}, "
                    f"which is not in {os.path.join(self.dataset_dir, 'variants.txt')}."
                )
            rows.append([f"{image_id}.jpg", label_of[variant], variant])
        return self.samples_from_rows(rows, self.image_dir, os.path.join(self.dataset_dir, list_file))

    def _read_lines(self, name):
        return read_lines(os.path.join(self.dataset_dir, name), "Annotation file", self.download_hint)
