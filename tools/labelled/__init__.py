"""predict.py on labelled folders: the true classes of images from their class sub-folders
(`labels`), and the accuracy, per-class accuracy and confusion matrix of the predictions
(`metrics`, `figure`)."""
