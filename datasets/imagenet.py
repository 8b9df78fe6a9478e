import os

from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset, Sample, list_files, list_folders, read_lines, require_path


def read_wnid_names(path, hint):
    """classnames.txt: "<wnid> <class name with spaces>" per line, in label order."""
    return dict(line.split(" ", 1) for line in read_lines(path, "Class-name file", hint))


class ImageNetFolders(CoOpDataset):
    """Images in one folder per class; class names and label order from classnames.txt."""

    # ImageNet-A and -R hold 200 of the 1000 classes: keep those present, relabelled 0..199.
    present_classes_only = False

    def read_classnames(self):
        wnid_names = read_wnid_names(os.path.join(self.dataset_dir, "classnames.txt"), self.download_hint)
        self.class_wnids = self.select_wnids(list(wnid_names))
        return [wnid_names[w] for w in self.class_wnids]

    def select_wnids(self, wnids):
        if not self.present_classes_only:
            return wnids
        present = set(list_folders(self.image_dir))
        return [w for w in wnids if w in present]

    def class_folder(self, label, wnid):
        return wnid

    def split_dir(self, name):
        return self.image_dir

    def read_split(self, name):
        split_dir = self.split_dir(name)
        require_path(split_dir, "Image folder", self.download_hint)
        folders = [self.class_folder(y, w) for y, w in enumerate(self.class_wnids)]
        # A folder classnames.txt does not know would otherwise be dropped silently.
        unknown = sorted(set(list_folders(split_dir)) - set(folders))
        if unknown:
            raise ValueError(
                f"{split_dir} has class folders {unknown[:5]} that are not in "
                f"{os.path.join(self.dataset_dir, 'classnames.txt')}."
            )
        samples = []
        for label, folder in enumerate(folders):
            class_dir = os.path.join(split_dir, folder)
            require_path(class_dir, "Class folder", self.download_hint)
            classname = self.all_classnames[label]
            samples += [Sample(os.path.join(class_dir, f), label, classname) for f in list_files(class_dir)]
        return samples


@DATASET_REGISTRY.register()
class ImageNet(ImageNetFolders):
    """ILSVRC-2012; its val set is the test set (and Dassl's val, as in CoOp).

    With a few-shot cache, the 1.28M training images are not listed again.
    """

    folder = "imagenet"
    image_folder = "images"
    val_is_test = True
    download_hint = (
        "Put the ILSVRC-2012 train and val folders (one sub-folder per wnid) in "
        "imagenet/images/{train,val}/ and add classnames.txt (CoOp DATASETS.md); "
        "see docs/DATASETS.md."
    )

    def split_dir(self, name):
        return os.path.join(self.image_dir, "train" if name == "train" else "val")


class ImageNetVariant(ImageNetFolders):
    """A test-only ImageNet variant: train_x = test = the data, no val, NUM_SHOTS unused."""

    test_only = True
