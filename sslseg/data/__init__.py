"""Split lists, datasets, augmentation, the toy generator and the SemiSegDataModule."""
