from dassl.data.datasets import DATASET_REGISTRY

from .coop_dataset import CoOpDataset


@DATASET_REGISTRY.register()
class UCF101(CoOpDataset):
    folder = "ucf101"
    image_folder = "UCF-101-midframes"  # CoOp's middle frame of each video
    split_file = "split_zhou_UCF101.json"
    download_hint = (
        "Extract UCF-101-midframes.zip and add split_zhou_UCF101.json into ucf101/ "
        "(both linked from CoOp DATASETS.md); see docs/DATASETS.md."
    )
