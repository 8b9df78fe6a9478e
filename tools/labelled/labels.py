"""Labelled folders for predict.py: class sub-folders, as ImageFolder reads them, give each image
its true class, and the predictions their accuracy, per-class accuracy and confusion matrix.

A folder given to predict.py is labelled when it has no image directly in it and at least one of
its sub-folders is named after a class of the run: the folder's name with underscores as spaces,
or its line in the folder's `classnames.txt` (`<folder> <class name>`, as ImageFolder), compared
with the run's class names without regard to case. Every image below a sub-folder has that
sub-folder's class. A sub-folder whose name is no class of the run (an open-set class, a typo)
is named in a note; its images are predicted but left out of the accuracy, as they have no true
class among the ones the model chooses from.
"""

import os
from dataclasses import dataclass, field

from clipprompt.templates import clean_classname
from datasets.coop_dataset import list_files, list_folders
from datasets.image_folder import CLASSNAMES_FILE, is_image, read_classnames_file

SHOWN = 8  # names listed in a note


@dataclass
class FolderLabels:
    labels: dict = field(default_factory=dict)  # {image path: label index of the run's classes}
    unknown: dict = field(default_factory=dict)  # {sub-folder path: images in it}
    notes: list = field(default_factory=list)  # what the user should know, printed as given


def _key(name):
    return clean_classname(name).lower()


def _folder_classes(folder):
    """{sub-folder: class name} of a folder (classnames.txt or the folder names)."""
    subfolders = list_folders(folder)
    names_file = os.path.join(folder, CLASSNAMES_FILE)
    if os.path.exists(names_file):
        return dict(zip(subfolders, read_classnames_file(names_file, subfolders)))
    return {sub: clean_classname(sub) for sub in subfolders}


def folder_labels(inputs, classnames, images_below):
    """The FolderLabels of the folders among `inputs` (module docstring); `images_below(folder)`
    lists a folder's images as predict.py reads them."""
    by_key = {_key(name): label for label, name in enumerate(classnames)}
    found = FolderLabels()
    for folder in inputs:
        if not os.path.isdir(folder) or any(is_image(n) for n in list_files(folder)):
            continue
        classes = _folder_classes(folder)
        known = {sub: by_key[_key(name)] for sub, name in classes.items() if _key(name) in by_key}
        if not known:
            if classes:
                found.notes.append(
                    f"No accuracy for {folder}: none of its sub-folders ({_listed(classes)}) is named after "
                    f"a class of the run ({_listed(classnames)})."
                )
            continue
        for sub in classes:
            images = images_below(os.path.join(folder, sub))
            if sub in known:
                found.labels.update(dict.fromkeys(images, known[sub]))
            elif images:
                found.unknown[os.path.join(folder, sub)] = len(images)
    if found.unknown:
        found.notes.append(
            f"{len(found.unknown)} class folder(s) name no class of the run; their images are predicted "
            "but left out of the accuracy: "
            + _listed([f"{path} ({n} images)" for path, n in found.unknown.items()])
            + f". The run's classes: {_listed(classnames)}."
        )
    return found


def _listed(names):
    names = list(names)
    return ", ".join(names[:SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > SHOWN else "")
