from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetVariant):
    folder = "imagenetv2"
    image_folder = "imagenetv2-matched-frequency-format-val"
    download_hint = (
        "Extract imagenetv2-matched-frequency.tar.gz (ImageNetV2 GitHub page) into imagenetv2/ "
        "and copy imagenet/classnames.txt there; see docs/DATASETS.md."
    )

    def class_folder(self, label, wnid):
        return str(label)  # this release names its class folders by ImageNet label
