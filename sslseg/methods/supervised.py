"""Supervised baseline: labeled images only, same model, schedule and evaluation as the methods.

Difference from UniMatch's `supervised.py`: an epoch is the unlabeled list's length (the labeled list repeated,
`data.epoch_length: unlabeled`) at the methods' labeled batch, so the baseline takes as many steps as the methods
it is compared with; the release counts epochs over the labeled list.
"""

from __future__ import annotations

from sslseg.methods.base import SemiSegModule


class Supervised(SemiSegModule):
    def training_step(self, batch: dict, batch_idx: int):
        labeled = batch["labeled"]
        loss = self.supervised_loss(self.model(self.normalize(labeled["image"])), labeled["mask"])
        self.log("train/loss", loss)  # no prog_bar: that would sync with the GPU every step
        return loss
