"""One LightningModule per method; `base.SemiSegModule` owns everything that is not the method."""
